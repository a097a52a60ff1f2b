"""The reader's one lock, and the decorators that hold it and turn h5py's failures into CorruptShardError."""

from __future__ import annotations

import functools
import inspect
import threading
import traceback

from tview.errors import CorruptShardError, TviewError

# h5py makes each HDF5 call atomic, not a refresh followed by a read: two threads refreshing and
# reading the same SWMR dataset (a web server's callbacks on one open run) got HDF5 errors such as
# "can't insert duplicate key". Every read sequence holds this lock. HDF5 runs one call at a time
# anyway, so the lock costs no parallelism.
READ_LOCK = threading.RLock()

H5_FAILURES = (KeyError, OSError, RuntimeError, IndexError, ValueError, AttributeError, TypeError)


def serialized(method):
    """A method run under READ_LOCK."""
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with READ_LOCK:
            return method(*args, **kwargs)
    return locked


def from_h5py(exc: BaseException) -> bool:
    """Whether an exception was raised inside h5py (a damaged file), not by tview's own checks."""
    return any("h5py" in frame.filename for frame in traceback.extract_tb(exc.__traceback__))


def guarded(method):
    """A Run method under READ_LOCK whose h5py failures (a damaged object the checks at opening did not
    reach) come out as CorruptShardError naming the shard (`self.shard_path(rank)`), never as a foreign
    exception."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with READ_LOCK:
            try:
                return method(self, *args, **kwargs)
            except H5_FAILURES as exc:
                if isinstance(exc, TviewError) or not from_h5py(exc):
                    raise
                rank = signature.bind_partial(self, *args, **kwargs).arguments.get("rank", 0)
                where = self.shard_path(rank) if isinstance(rank, int) else self.path
                raise CorruptShardError(f"{where}: cannot be read (damaged?): {type(exc).__name__}: "
                                        f"{str(exc)[:300]}") from None
    return call
