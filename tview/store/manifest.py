"""The run manifest (run.tview, JSON): what the run is, written once by rank 0, read by every reader."""

from __future__ import annotations

import json
import os
import tempfile

from tview.errors import CorruptShardError, NotARunError, SchemaVersionError
from tview.store import schema


def manifest_path(run_dir: str) -> str:
    return os.path.join(run_dir, schema.MANIFEST_NAME)


MAX_WORLD_SIZE = 1 << 20  # a manifest asking for more ranks is damaged, not a job


def write_manifest(run_dir: str, manifest: dict) -> str:
    """Write the manifest atomically (temporary file, then rename) and return its path. A failure
    (full disk, ...) leaves no temporary file behind."""
    path = manifest_path(run_dir)
    body = dict(manifest, tview_schema_version=schema.SCHEMA_VERSION)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".run.tview.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1, sort_keys=True)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the run from another user (a dashboard's)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _check_fields(path: str, manifest: dict) -> None:
    """The keys readers rely on, with their types and bounds; errors name the file and the key."""
    ws = manifest.get("world_size")
    if isinstance(ws, bool) or not isinstance(ws, int) or not 1 <= ws <= MAX_WORLD_SIZE:
        raise CorruptShardError(f"{path}: world_size must be an integer from 1 to {MAX_WORLD_SIZE}, got {ws!r}")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in layers):
        raise CorruptShardError(f"{path}: layers must be a list of {{\"name\": ...}} objects, got {str(layers)[:80]}")
    for key in ("filter_layers", "probe_layers"):
        value = manifest.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise CorruptShardError(f"{path}: {key} must be a list of layer names, got {str(value)[:80]}")


def _manifest_file(run_dir: str) -> str:
    """The manifest's path in a run folder (or the run.tview given), or NotARunError saying why not."""
    if os.path.isfile(run_dir) and os.path.basename(run_dir) == schema.MANIFEST_NAME:
        run_dir = os.path.dirname(run_dir)
    if not os.path.exists(run_dir):
        raise NotARunError(f"{run_dir}: no such folder")
    if not os.path.isdir(run_dir):
        raise NotARunError(f"{run_dir}: not a folder (a run is a folder holding {schema.MANIFEST_NAME})")
    path = manifest_path(run_dir)
    if not os.path.exists(path):
        raise NotARunError(f"{run_dir}: not a tview run (no {schema.MANIFEST_NAME} in it)")
    return path


def read_manifest(run_dir: str) -> dict:
    """Read and check a run's manifest; errors name the path and the problem."""
    path = _manifest_file(run_dir)
    if not os.path.isfile(path):
        raise CorruptShardError(f"{path}: not a regular file")
    if os.path.getsize(path) > 64 * 2**20:
        raise CorruptShardError(f"{path}: {os.path.getsize(path)} bytes; a manifest is a few kilobytes (damaged?)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:
        raise CorruptShardError(f"{path}: unreadable manifest: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(manifest, dict) or "tview_schema_version" not in manifest:
        raise CorruptShardError(f"{path}: not a tview manifest (no tview_schema_version)")
    version = manifest["tview_schema_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CorruptShardError(f"{path}: tview_schema_version must be a positive integer, got {version!r}")
    if version > schema.SCHEMA_VERSION:
        raise SchemaVersionError(f"{path}: store schema version {version} is newer than this tview reads "
                                 f"({schema.SCHEMA_VERSION}); upgrade tview")
    _check_fields(path, manifest)
    return manifest


def find_runs(folder: str) -> list[str]:
    """Run folders at or below `folder` (a run itself, or a folder of runs), sorted."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NotARunError(f"{folder}: no such folder")
    found = []
    for root, dirs, files in os.walk(folder):
        if schema.MANIFEST_NAME in files:
            found.append(root)
            dirs[:] = []
        dirs.sort()
    return sorted(found)
