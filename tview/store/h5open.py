"""Opening a shard for reading without hanging: file checks before HDF5 sees it, few metadata retries.

A SWMR reader retries a metadata read whose checksum fails (a live writer may be halfway through
writing it): 100 times by default with growing sleeps, while Python's global lock is held. One
damaged byte then stalls a read, and every thread of a server, for minutes. Opening through a
file-access property list with a handful of attempts (set through the HDF5 library h5py itself
loaded, with ctypes) makes such a read fail in milliseconds; a live writer's torn reads still get
those retries.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
import time

import h5py

from tview.errors import CorruptShardError

MDC_BYTES = 2**20  # metadata cache per open shard, at most (the reader keeps 64 open at most)
READ_ATTEMPTS = 20  # sleeps of 1 ns doubling: about 1 ms in all before a damaged read gives up
_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@functools.lru_cache(maxsize=1)
def _hdf5_library():
    """The HDF5 C library h5py uses (among those in this process's memory map: ParaView's process holds
    more than one), or None: the one in which an h5py property list's id is valid."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "libhdf5" in line and "_hl" not in line})
        probe = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        for path in paths:
            lib = ctypes.CDLL(path)
            if hasattr(lib, "H5Pset_metadata_read_attempts") and lib.H5Iis_valid(ctypes.c_int64(probe.id)) > 0:
                return lib
    except (OSError, AttributeError):
        pass
    return None


@functools.lru_cache(maxsize=4)
def _file_access(attempts: int) -> h5py.h5p.PropFAID:
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    mdc, _, _, w0 = fapl.get_cache()
    fapl.set_cache(mdc, 0, 0, w0)  # no chunk cache: strided reads fetch only the rows they select
    cfg = fapl.get_mdc_config()  # metadata cache: HDF5's default grows to 32 MiB per file as a live shard grows
    cfg.set_initial_size, cfg.initial_size, cfg.min_size, cfg.max_size = True, MDC_BYTES // 2, MDC_BYTES // 4, MDC_BYTES
    cfg.max_increment = MDC_BYTES // 2
    fapl.set_mdc_config(cfg)
    lib = _hdf5_library()
    if lib is not None:
        lib.H5Pset_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(attempts))
    return fapl


def superblock_eof_address(head: bytes) -> int | None:
    """The end-of-file address a version 2/3 superblock records (None for other versions)."""
    if head[:8] != _SIGNATURE or len(head) < 48 or head[8] not in (2, 3):
        return None
    size = head[9]  # size of offsets; base, extension, then end-of-file address
    start = 12 + 2 * size
    return int.from_bytes(head[start:start + size], "little")


def writer_closed(head: bytes) -> bool:
    """Whether no HDF5 writer held the file open when its superblock (version 2/3) was read: HDF5 sets the
    superblock's consistency flags while a writer has it open and clears them when it closes it. False when
    unknown (older superblocks), or when a writer was killed (it never cleared them)."""
    return head[:8] == _SIGNATURE and len(head) >= 12 and head[8] in (2, 3) and head[11] == 0


def check_shard_file(path: str, settle: float = 0.5) -> bool:
    """Raise CorruptShardError unless `path` is a regular, non-empty HDF5 file no shorter than its
    superblock says; return writer_closed() of it. A live writer may have allocated space it has not
    written yet, so a short file gets one more look after `settle` seconds."""
    for attempt in range(2):
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptShardError(f"{path}: not a regular file (a folder, pipe or device); not a shard")
            with open(path, "rb") as f:
                head = f.read(48)
        except OSError as exc:
            raise CorruptShardError(f"{path}: cannot be read: {exc}") from None
        if head[:8] != _SIGNATURE:
            raise CorruptShardError(f"{path}: not a readable HDF5 shard (no HDF5 signature; "
                                    f"{'empty' if not head else 'damaged or another kind of file'})")
        eoa = superblock_eof_address(head)
        if eoa is None or st.st_size >= eoa:
            return writer_closed(head)
        if attempt == 0:
            time.sleep(settle)
    raise CorruptShardError(f"{path}: truncated: {st.st_size} bytes on disk, its superblock says {eoa}")


def open_shard_file(path: str, swmr: bool = True, attempts: int = READ_ATTEMPTS) -> h5py.File:
    """Open an HDF5 file read-only (SWMR by default) after check_shard_file, with few metadata retries."""
    return h5py.File(open_shard_id(path, swmr, attempts))


def open_shard_id(path: str, swmr: bool = True, attempts: int = READ_ATTEMPTS, checked: bool = False
                  ) -> h5py.h5f.FileID:
    """open_shard_file's HDF5 file id without h5py's File object (a third of the cost of opening); checked: the
    file was checked when opened before, and is unchanged since (the same identity, shard_header.identity)."""
    if not checked:
        check_shard_file(path)
    flags = h5py.h5f.ACC_RDONLY | (h5py.h5f.ACC_SWMR_READ if swmr else 0)
    try:
        fid = h5py.h5f.open(os.fsencode(path), flags, fapl=_file_access(attempts))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CorruptShardError(f"{path}: not a readable HDF5 shard (truncated, damaged, or being created?): "
                                f"{exc}") from None
    return fid
