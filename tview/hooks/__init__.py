"""Training-side hooks: the Recorder callback, its probes, schedules and presets (imports torch)."""
