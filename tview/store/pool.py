"""A run's shards: found, opened on use with a bound on how many stay open, and why those left out are."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import time
from collections import OrderedDict

from tview.errors import CorruptShardError, TviewError
from tview.store import schema
from tview.store.h5open import check_shard_file
from tview.store.lock import serialized
from tview.store.shard_header import identity
from tview.store.shard_reader import ShardReader

_SHARD_RE = re.compile(r"^rank-(\d{5})\.h5$")
EAGER_SHARDS = 64  # runs with more ranks open each shard on first use (opening costs ~1 ms a shard)
OPEN_SHARDS = 64  # shards kept open at most, least recently used closed first: HDF5 holds ~0.5 MiB per open file
NEW_FILE_SECONDS = 2.0  # a shard of a few hundred bytes written this recently is being created


def being_created(path: str) -> bool:
    """True when a writer holds `path` locked (HDF5 locks a file it creates until it switches to SWMR
    mode), or when it is a few hundred bytes written in the last two seconds: not ready, not damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            return True
        except OSError:
            pass
        st = os.fstat(fd)
        return st.st_size < 512 and time.time() - st.st_mtime < NEW_FILE_SECONDS
    finally:
        os.close(fd)


def shard_files(folder: str) -> dict[int, str]:
    """rank -> path of every file in `folder` named as a shard."""
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            m = _SHARD_RE.match(entry.name)
            if m:
                found[int(m.group(1))] = entry.path
    return found


class ShardPool:
    """A run's shards by rank: those that look sound (`files`), at most OPEN_SHARDS of them open, least recently
    used closed first (the reference shard, the first readable one, stays open), and `problems`: rank -> why its
    shard is not read. A bad shard raises unless skip_bad_shards; then it is left out and described."""

    def __init__(self, path: str, world_size: int, layer_info: list[dict], skip_bad_shards: bool = False):
        self.path = path
        self.world_size = world_size
        self.layer_info = layer_info  # the manifest's, then the first shard's (it knows channel counts)
        self.layers = [layer["name"] for layer in layer_info]
        self.skip_bad_shards = skip_bad_shards
        self.problems: dict[int, str] = {}
        self.files: dict[int, str] = {}  # ranks whose shard looks sound, opened or not
        self._open_shards: OrderedDict[int, ShardReader] = OrderedDict()  # least recently used first
        self._checked: dict[int, tuple] = {}  # rank -> (identity, writer closed) when check_shard_file passed it
        self.first: ShardReader | None = None
        self.scan()

    def shard_path(self, rank: int) -> str:
        return self.files.get(rank) or os.path.join(self.path, schema.shard_name(rank))

    def leave_out(self, rank: int, why: str):
        """A rank whose shard is not read: why in problems, its file forgotten, closed if it was open."""
        self.problems[rank] = why
        self.files.pop(rank, None)
        shard = self._open_shards.pop(rank, None)
        if shard is not None:
            if shard is self.first:
                self.first = None
            shard.close()

    def _bad(self, rank: int, exc: TviewError):
        path = os.path.join(self.path, schema.shard_name(rank))
        young = being_created(path)
        self.leave_out(rank, f"{path}: not ready yet (its writer is creating it)" if young else str(exc))
        if not self.skip_bad_shards and not young:
            self.close()
            raise exc

    @serialized
    def scan(self):
        """Find the shards (again: new ones of a live run are added); open every shard of a small run, of a
        larger one only the first (what the run holds), the rest on use."""
        found = shard_files(self.path)
        for rank, p in sorted(found.items()):
            if rank in self.files:
                continue
            checked = None
            with contextlib.suppress(OSError):  # gone: check_shard_file says so
                checked = identity(p)
            try:
                # the reader that opens it need not check it again, if unchanged
                self._checked[rank] = checked, check_shard_file(p)
                self.files[rank] = p
                self.problems.pop(rank, None)
            except TviewError as exc:
                self._bad(rank, exc)
        for rank in sorted(self.files)[: None if len(self.files) <= EAGER_SHARDS else 1]:
            self.open(rank)
        for rank in range(self.world_size):
            if rank not in found:
                self.problems[rank] = (f"{os.path.join(self.path, schema.shard_name(rank))}: no shard yet (rank has "
                                       f"recorded nothing, or its file is missing)")

    def open(self, rank: int) -> ShardReader | None:
        """The rank's shard, opened if it is not (None, and the rank left out, when it cannot be read)."""
        if rank in self._open_shards:
            self._open_shards.move_to_end(rank)
            return self._open_shards[rank]
        try:
            shard = ShardReader(self.files[rank], rank, self._checked.get(rank))
            self._check_layers(shard)
        except TviewError as exc:
            self._bad(rank, exc)
            return None
        self._open_shards[rank] = shard
        self._close_least_used()
        if self.first is None:
            self.first = shard
            self.layer_info = shard.layer_info
        return shard

    def _close_least_used(self):
        """Keep at most OPEN_SHARDS shards open (the reference shard stays): memory bounded whatever the ranks."""
        excess = len(self._open_shards) - OPEN_SHARDS
        if excess > 0:  # the least used, among which the reference shard may be once
            least = itertools.islice(self._open_shards.items(), excess + 1)
            for rank in [r for r, shard in least if shard is not self.first][:excess]:
                self._open_shards.pop(rank).close()

    def _check_layers(self, shard: ShardReader):
        manifest = os.path.join(self.path, schema.MANIFEST_NAME)
        if shard.world_size != self.world_size:
            shard.close()
            raise CorruptShardError(f"{shard.path}: written by a job of {shard.world_size} ranks, while {manifest} "
                                    f"says world_size {self.world_size}; the manifest was edited or belongs to "
                                    f"another run")
        if shard.layers != self.layers:
            shard.close()
            raise CorruptShardError(f"{shard.path}: its layers {shard.layers} differ from those of {manifest} "
                                    f"{self.layers}; the manifest was edited or belongs to another run")

    @property
    def ranks(self) -> list[int]:
        return sorted(self.files)

    @serialized
    def shard(self, rank: int) -> ShardReader:
        """The rank's open shard; TviewError saying why when it cannot be read."""
        if rank in self.files:
            shard = self.open(rank)
            if shard is not None:
                return shard
        why = self.problems.get(rank, f"no rank {rank} in this run (ranks: {self.ranks})")
        raise TviewError(f"{self.path}: rank {rank} cannot be read: {why}")

    def reference(self) -> ShardReader | None:
        """The first readable shard: what statistics the run holds."""
        if self.first is None:
            for rank in self.ranks:
                if self.open(rank) is not None:
                    break
        return self.first

    @serialized
    def close(self):
        for shard in self._open_shards.values():
            shard.close()
        self._open_shards.clear()
        self.first = None
