"""The on-disk run store: schema, per-rank shard writer, manifest and run reader (numpy + h5py only)."""

from tview.store.reader import Run, open_run

__all__ = ["Run", "open_run"]
