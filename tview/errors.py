"""Exceptions of tview's own: each names the file or value and what is wrong with it."""


class TviewError(Exception):
    """Base class of every error tview raises on purpose."""


class NotARunError(TviewError):
    """A path that is not a tview run (no manifest, or not a folder)."""


class CorruptShardError(TviewError):
    """A shard or manifest that exists but cannot be read (truncated, damaged, not HDF5)."""


class SchemaVersionError(TviewError):
    """A run written with a store schema newer than this tview understands."""


class RunExistsError(TviewError):
    """A run folder that already holds data, reused without mode='resume' or 'overwrite'."""


class StoreWriteError(TviewError):
    """Writing a shard failed in the background writer (full disk, removed folder, ...)."""


class ConfigError(TviewError, ValueError):
    """A Recorder argument that cannot work, found when the Recorder is made."""
