"""Adapters that plug tview's Recorder into training frameworks (Lightning: `tview.integrations.lightning`)."""
