"""The run manifest (run.tview, JSON): what the run is, written once by rank 0, read by every reader."""

from __future__ import annotations

import json
import os
import tempfile

from tview.errors import CorruptShardError, NotARunError, SchemaVersionError
from tview.store import schema


def manifest_path(run_dir: str) -> str:
    return os.path.join(run_dir, schema.MANIFEST_NAME)


def write_manifest(run_dir: str, manifest: dict) -> str:
    """Write the manifest atomically (temporary file, then rename) and return its path."""
    path = manifest_path(run_dir)
    body = dict(manifest, tview_schema_version=schema.SCHEMA_VERSION)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".run.tview.")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def read_manifest(run_dir: str) -> dict:
    """Read and check a run's manifest; errors name the path and the problem."""
    if os.path.isfile(run_dir) and os.path.basename(run_dir) == schema.MANIFEST_NAME:
        run_dir = os.path.dirname(run_dir)
    if not os.path.exists(run_dir):
        raise NotARunError(f"{run_dir}: no such folder")
    if not os.path.isdir(run_dir):
        raise NotARunError(f"{run_dir}: not a folder (a run is a folder holding {schema.MANIFEST_NAME})")
    path = manifest_path(run_dir)
    if not os.path.exists(path):
        raise NotARunError(f"{run_dir}: not a tview run (no {schema.MANIFEST_NAME} in it)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise CorruptShardError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or "tview_schema_version" not in manifest:
        raise CorruptShardError(f"{path}: not a tview manifest (no tview_schema_version)")
    version = manifest["tview_schema_version"]
    if not isinstance(version, int) or version > schema.SCHEMA_VERSION:
        raise SchemaVersionError(f"{path}: store schema version {version} is newer than this tview reads "
                                 f"({schema.SCHEMA_VERSION}); upgrade tview")
    return manifest
