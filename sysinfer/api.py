"""`uvicorn sysinfer.api:app`: the server (sysinfer/server/) configured from SYSINFER_*. The app is built
on first access, so importing this module reads no environment and loads no model."""

from __future__ import annotations

_app = None


def __getattr__(name: str):
    global _app
    if name == "app":
        if _app is None:
            from .server.app import create_app

            _app = create_app()
        return _app
    raise AttributeError(name)
