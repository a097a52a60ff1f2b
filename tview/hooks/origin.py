"""The weights a run started from (what init_distance measures against), kept beside the shard so that a resumed
Recorder measures from the same origin: `rank-NNNNN.init.npz`, one float32 array per parameter tensor."""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import torch


def origin_path(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, f"rank-{rank:05d}.init.npz")


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


def save_origin(path: str, params: list[torch.Tensor]) -> None:
    """This rank's weights now (the shards it holds under FSDP2), written atomically; made before training."""
    arrays = {f"p{k}": _local(p).detach().float().cpu().numpy() for k, p in enumerate(params)}
    tmp = path + ".tmp.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # a full disk leaves no partial file behind
        warnings.warn(f"tview: could not keep the initial weights in {path} ({exc}); a resumed run will measure "
                      f"init_distance from the weights it resumes with", RuntimeWarning, stacklevel=3)


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
