"""Requests the app refuses before any callback runs: bodies over a size cap, and run choices that are
not run ids (a hostile or broken client gets a 400 that says why, never a 500 or a huge reply)."""

from __future__ import annotations

import flask

MAX_BODY_BYTES = 1 << 20  # a callback request is a few kilobytes; Flask answers 413 beyond this
RUN_INPUTS = {"runs"}  # component ids whose value must be a run id or a list of them


def bad_runs_value(value) -> str | None:
    """Why `value` cannot be the run picker's value (None: it can)."""
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value) and len(value) <= 64:
        return None
    return f"'runs' must be a run id or a list of at most 64 run ids, got {type(value).__name__}"


def bad_callback_body(body) -> str | None:
    """Why a /_dash-update-component body is refused (None: it is not)."""
    if not isinstance(body, dict):
        return "a callback request must be a JSON object"
    for entry in list(body.get("inputs") or []) + list(body.get("state") or []):
        if isinstance(entry, dict) and entry.get("id") in RUN_INPUTS:
            why = bad_runs_value(entry.get("value"))
            if why:
                return why
    return None


def install(server: flask.Flask) -> None:
    """Cap request bodies and check callback inputs on every request of `server`."""
    server.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @server.before_request
    def check_callback():
        if flask.request.path.endswith("/_dash-update-component") and flask.request.method == "POST":
            why = bad_callback_body(flask.request.get_json(silent=True))
            if why:
                return flask.Response(why, status=400, mimetype="text/plain")
        return None
