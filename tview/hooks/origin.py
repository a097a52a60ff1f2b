"""The weights a run started from (what init_distance measures against), kept beside the shard so that a resumed
Recorder measures from the same origin: `rank-NNNNN.init.npz`, one float32 array per parameter tensor."""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
import zipfile

import numpy as np
import torch


def origin_path(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, f"rank-{rank:05d}.init.npz")


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


def save_origin(path: str, params: list[torch.Tensor]) -> None:
    """This rank's weights now (the shards it holds under FSDP2), written atomically; made before training."""
    tmp = path + ".tmp.npz"
    try:
        _write_npz(tmp, params)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # a full disk leaves no partial file behind
        warnings.warn(f"tview: could not keep the initial weights in {path} ({exc}); a resumed run will measure "
                      f"init_distance from the weights it resumes with", RuntimeWarning, stacklevel=3)


def _write_npz(path: str, params: list[torch.Tensor]) -> None:
    """What np.savez writes (uncompressed members p0.npy, p1.npy, ...), one tensor at a time and with no copy of a
    float32 CPU tensor (np.savez copies its arrays through 16 MiB byte strings)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for k, p in enumerate(params):
            a = np.ascontiguousarray(_local(p).detach().float().cpu().numpy())
            with z.open(f"p{k}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(a))
                f.write(memoryview(a).cast("B"))


def load_origin(path: str, params: list[torch.Tensor]) -> list[np.ndarray] | None:
    """The kept initial weights, or None (said) when missing or not of these parameters' shapes."""
    try:
        with np.load(path) as f:
            arrays = [f[f"p{k}"] for k in range(len(params))]
    except (OSError, KeyError, ValueError) as exc:
        warnings.warn(f"tview: {path} cannot be read ({exc}); init_distance of the resumed run is measured from "
                      f"the weights it resumes with", RuntimeWarning, stacklevel=3)
        return None
    if [a.shape for a in arrays] != [tuple(_local(p).shape) for p in params]:
        warnings.warn(f"tview: {path} holds weights of other shapes than this model's; init_distance of the resumed "
                      f"run is measured from the weights it resumes with", RuntimeWarning, stacklevel=3)
        return None
    return arrays


def origin_offsets(path: str, params: list[torch.Tensor]) -> list[int] | None:
    """Where each parameter tensor's float32 values start in the kept file (np.savez stores its members
    uncompressed), so they can be read back piece by piece; None when the file is missing or not laid out so."""
    try:
        with zipfile.ZipFile(path) as z, open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offsets = [_member_data(z, f, f"p{k}.npy", _local(p)) for k, p in enumerate(params)]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    ok = all(o is not None and o + 4 * _local(p).numel() <= size for o, p in zip(offsets, params))
    return offsets if ok else None


def _member_data(z: zipfile.ZipFile, f, name: str, p: torch.Tensor) -> int | None:
    """The file offset of member `name`'s array data, when it is an uncompressed float32 array of p's shape."""
    info = z.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    f.seek(info.header_offset)
    head = f.read(30)  # the local file header: its name and extra field lengths end it
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype != np.dtype("<f4") or shape != tuple(p.shape) or (fortran and p.dim() > 1):
        return None
    return f.tell()


@contextlib.contextmanager
def weights_set_to(params: list[torch.Tensor], arrays: list[np.ndarray]):
    """The parameters hold `arrays` inside the block, their own values again after it."""
    saved = [_local(p).detach().clone() for p in params]
    with torch.no_grad():
        try:
            for p, a in zip(params, arrays):
                _local(p).copy_(torch.from_numpy(a))
            yield
        finally:
            for p, s in zip(params, saved):
                _local(p).copy_(s)
