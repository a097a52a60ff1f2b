"""Background writer: a thread that drains a bounded queue of StepRecords into a shard.

The training thread only enqueues. A full queue drops the record and counts it (never blocks);
a write failure is kept and raised on the training thread at its next step() or close().
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from typing import Callable

from tview.errors import StoreWriteError
from tview.store.records import ShardLayout, StepRecord
from tview.store.shard import ShardWriter

_STOP = object()


class BackgroundWriter:
    def __init__(self, path: str, finalize: Callable[[object], StepRecord], resume: bool = False,
                 queue_size: int = 256, batch_seconds: float = 1.0, done: Callable[[object], None] | None = None):
        self.path = path
        self.finalize = finalize  # turns what the training thread queued into a StepRecord
        self.done = done  # called with each queued item once it is written (or failed): what it lent is free
        self.resume = resume
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        # Records are gathered for up to batch_seconds and written (and flushed) together: fewer,
        # larger HDF5 writes hold the GIL less often. Readers and crash-safety lag by that much.
        # A queue half full is written at once, so fast steps are not dropped.
        self.batch_seconds = batch_seconds
        self._wake = threading.Event()
        self._wake_at = max(1, queue_size // 2)
        self.dropped = 0
        self.written = 0
        self.cpu_split: dict = {}  # CPU seconds of the writer thread: finalize, write, flush; and records written
        self.error: BaseException | None = None
        self.writer: ShardWriter | None = None
        self._layout: ShardLayout | None = None
        self._thread = threading.Thread(target=self._run, name=f"tview-writer:{path}", daemon=True)
        self._thread.start()
        self._cpu_clock = _cpu_clock(self._thread)
        self._cpu_last = 0.0

    def put(self, layout: ShardLayout, item, urgent: bool = False) -> bool:
        """Queue one step's data; False (and counted) if the queue is full or the writer failed. `urgent`:
        written now, not at the end of the batch's time (the item lends memory the training thread wants back)."""
        if self.error is not None:
            return False
        self._layout = self._layout or layout
        try:
            self.queue.put_nowait(item)
            if urgent or self.queue.qsize() >= self._wake_at:
                self._wake.set()
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                warnings.warn(f"tview: writer for {self.path} is behind; {self.dropped} recorded step(s) dropped "
                              f"so far (raise queue_size or record less often)", RuntimeWarning, stacklevel=3)
            return False

    def _run(self):
        stopping = False
        while not stopping:
            # Sleep a batch's time, unless woken early (queue half full, flush(), close(), an urgent put()): the
            # training thread's put() does not otherwise wake this thread, so no GIL hand-off per step.
            self._wake.wait(self.batch_seconds)
            self._wake.clear()
            batch, flushed, stopping = self._drain()
            if batch and self.error is None:
                self._write(batch)
            for item in batch if self.done is not None else ():
                self.done(item)
            for done in flushed:
                done.set()

    def _drain(self) -> tuple[list, list, bool]:
        """(queued items, flush() events, whether close() came) taken from the queue now."""
        batch, flushed = [], []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return batch, flushed, False
            if item is _STOP:
                return batch, flushed, True
            if isinstance(item, threading.Event):  # flush(): set once what came before is written
                flushed.append(item)
            else:
                batch.append(item)

    def _write(self, batch: list):
        try:
            t0 = time.thread_time()
            records = [self.finalize(x) for x in batch]
            finalized = time.thread_time() - t0
            if self.writer is None:
                self.writer = ShardWriter(self.path, self._layout, resume=self.resume)
            t1 = time.thread_time()  # the shard's creation (once) is counted nowhere
            self.writer.write(records)
            self.writer.set_dropped(self.dropped)
            self.written += len(records)
            t2 = time.thread_time()
            self.writer.flush()  # visible to SWMR readers, and on disk should the process die
            self._count_cpu(len(records), finalized, t2 - t1, time.thread_time() - t2)
        except BaseException as exc:  # kept for the training thread; the thread goes on draining
            self.error = exc
            self._abandon()

    def _count_cpu(self, records: int, finalize: float, write: float, flush: float) -> None:
        split = self.cpu_split
        for key, value in (("records", records), ("finalize", finalize), ("write", write), ("flush", flush)):
            split[key] = split.get(key, 0) + value

    def _abandon(self):
        """After a failed write, let go of the file now (HDF5 must not meet it again at exit)."""
        writer, self.writer = self.writer, None
        if writer is not None and writer.file is not None:
            writer.release()

    def flush(self, timeout: float = 60.0):
        """Block until everything queued so far is written and flushed to the file."""
        if self._thread.is_alive():
            done = threading.Event()
            self._wake.set()  # a full queue makes room first
            try:
                self.queue.put(done, timeout=timeout)
            except queue.Full:
                raise StoreWriteError(f"tview: writer for {self.path} accepted nothing for {timeout:.0f} s") from None
            self._wake.set()
            if not done.wait(timeout):
                raise StoreWriteError(f"tview: writer for {self.path} did not flush within {timeout:.0f} s")
        self.check()

    def cpu_seconds(self) -> float:
        """The writer thread's CPU seconds so far, read from any thread (0.0 where the platform cannot say)."""
        if self._cpu_clock is not None:
            try:
                self._cpu_last = time.clock_gettime(self._cpu_clock)
            except OSError:  # the thread has ended: what it used up to the last reading
                pass
        return self._cpu_last

    def alive(self) -> bool:
        return self._thread.is_alive()

    def check(self):
        """Raise, on the caller's thread, a write failure from the background thread."""
        if self.error is not None:
            exc = self.error
            raise StoreWriteError(f"tview could not write {self.path}: {type(exc).__name__}: {exc}") from exc

    def close(self, timeout: float = 60.0):
        """Write what is queued, mark the shard closed cleanly, close the file, report failures."""
        while self._thread.is_alive():
            self._wake.set()
            try:
                self.queue.put(_STOP, timeout=0.1)
                self._wake.set()
                break
            except queue.Full:
                continue
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise StoreWriteError(f"tview: writer for {self.path} did not finish within {timeout:.0f} s")
        if self.writer is not None:
            try:
                self.writer.set_dropped(self.dropped)
                self.writer.close(clean=self.error is None)
            except BaseException as exc:
                self.error = self.error or exc
            self.writer = None
        self.check()


def _cpu_clock(thread: threading.Thread) -> int | None:
    """The CPU-time clock of a running thread (POSIX), or None."""
    try:
        clock = time.pthread_getcpuclockid(thread.ident)
        time.clock_gettime(clock)
        return clock
    except (AttributeError, OSError, TypeError):
        return None
