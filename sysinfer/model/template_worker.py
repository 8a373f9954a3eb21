"""Chat templates from model files are untrusted code: they render in worker processes with hard limits.

The jinja2 sandbox refuses attribute escapes, but it can't stop a template that loops for hours
(`{% for i in range(100000) %}{% for j in range(100000) %}`) or builds gigabytes (`{{ 'a' * 10**9 }}`,
`{{ x|center(10**9) }}`), and a render holding the GIL would freeze every stream. So each render runs
in a small pool of worker processes (`python -m sysinfer.model.template_worker`, started once and
replaced when killed; a plain child process: no fork of the threaded server, no re-import of the
embedding program's main module as multiprocessing's start methods would do):
- time: the caller waits at most `RENDER_SECONDS`; a worker past it is killed and replaced;
- memory: each worker's address space is capped (RLIMIT_AS), so a huge allocation is a MemoryError
  inside the worker, never pressure on the server;
- size: the output is built piece by piece and stops at `MAX_RENDER_CHARS`.
Every failure comes back as ChatTemplateError with a one-line reason; the server keeps serving.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from functools import lru_cache
from typing import Any

from .template_env import ChatTemplateError

__all__ = ["ChatTemplateError", "render_here", "render_isolated"]

RENDER_SECONDS = 2.0              # one render's wall-clock limit (the worker's start-up not counted)
START_SECONDS = 60.0              # a new worker's start-up (imports), on a machine that may be busy
MAX_RENDER_CHARS = 16 * 2**20     # the rendered prompt's size limit (well past any context we serve)
WORKER_ADDRESS_SPACE = 2 * 2**30  # RLIMIT_AS of a worker process: python + jinja2 + the render
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds sysinfer/
MAX_WORKERS = 2                   # renders that run at once; more callers wait for a free worker


# ---- inside a worker process ----

def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from .template_env import template_filters, template_globals

    # Hugging Face's rendering environment, which the templates are written for (and tested against:
    # tests/unit/test_chat_template_real.py renders real templates with transformers too).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters.update(template_filters())
    env.globals.update(template_globals())
    return env


@lru_cache(maxsize=8)
def _compiled(source: str):
    return _environment().from_string(source)


def render_here(source: str, context: dict[str, Any]) -> str:
    """Renders in this process, stopping at MAX_RENDER_CHARS (the worker's job; tests call it too)."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    try:
        template = _compiled(source)
    except TemplateError as e:
        raise ChatTemplateError(f"chat template does not compile: {_short(e)}") from None
    pieces, size = [], 0
    try:
        for piece in template.generate(**context):
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise ChatTemplateError(f"chat template output passed {MAX_RENDER_CHARS} characters")
            pieces.append(piece)
    except ChatTemplateError:  # raise_exception() or the size limit
        raise
    except SecurityError as e:
        raise ChatTemplateError(f"chat template refused: {_short(e)}") from None
    except MemoryError:
        raise ChatTemplateError("chat template ran out of memory") from None
    except Exception as e:  # any other failure inside a template is the template's fault
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {_short(e)}") from None
    return "".join(pieces)


def _short(e: Exception, limit: int = 300) -> str:
    text = str(e)
    return text if len(text) <= limit else text[:limit] + "..."


def _worker_main(conn: Connection) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE, WORKER_ADDRESS_SPACE))
    _environment()  # imports done before the first job's clock starts
    conn.send(("ready", None))
    while True:
        try:
            source, context = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", render_here(source, context))
        except ChatTemplateError as e:
            reply = ("error", str(e))
        except MemoryError:
            reply = ("error", "chat template ran out of memory")
        conn.send(reply)


# ---- in the server ----

class _Worker:
    def __init__(self):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # `-m` puts the working directory first on the child's path: run it from the folder that holds
        # this very sysinfer, so the worker imports the same package (from a source checkout's root it
        # imported the uncompiled source tree, failed, and no chat template could render).
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(to_child_r), str(from_child_w)], cwd=_PACKAGE_PARENT,
            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, close_fds=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self.conn = _Duplex(Connection(from_child_r, writable=False), Connection(to_child_w, readable=False))
        # Wait for the worker's imports here, so a render's time limit measures the render alone.
        if not self.conn.poll(START_SECONDS) or self.conn.recv()[0] != "ready":
            self.kill()
            raise ChatTemplateError("the chat template worker did not start")

    def render(self, source: str, context: dict[str, Any], seconds: float) -> str:
        """Raises ChatTemplateError; a worker that timed out or died is no longer usable (alive False)."""
        try:
            self.conn.send((source, context))
        except OSError:
            self.kill()
            raise ChatTemplateError("chat template worker is gone") from None
        if not self.conn.poll(seconds):
            self.kill()
            raise ChatTemplateError(f"chat template took longer than {seconds:g} s to render")
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError, ValueError):
            self.kill()
            raise ChatTemplateError("chat template render crashed its worker") from None
        if status != "ok":
            raise ChatTemplateError(value)
        return value

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)
        self.conn.close()


class _Duplex:
    """Two one-way connections (pipes) used as one."""

    def __init__(self, receive: Connection, send: Connection):
        self._receive, self._send = receive, send

    def send(self, obj) -> None:
        self._send.send(obj)

    def recv(self):
        return self._receive.recv()

    def poll(self, seconds: float) -> bool:
        return self._receive.poll(seconds)

    def close(self) -> None:
        self._receive.close()
        self._send.close()


class RenderPool:
    """Up to MAX_WORKERS worker processes, made when first needed and replaced when killed."""

    def __init__(self, max_workers: int = MAX_WORKERS):
        self._idle: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()

    def render(self, source: str, context: dict[str, Any], seconds: float = RENDER_SECONDS) -> str:
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker.alive:
                worker = _Worker()
            try:
                return worker.render(source, context, seconds)
            finally:
                if worker.alive:
                    with self._lock:
                        self._idle.append(worker)

    def warm(self) -> None:
        """Starts one worker now (at server start-up), so the first request doesn't wait for it."""
        with self._lock:
            if not self._idle:
                self._idle.append(_Worker())

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for w in workers:
            w.kill()


_pool: RenderPool | None = None
_pool_lock = threading.Lock()
_pool_pid = 0


def _the_pool() -> RenderPool:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = RenderPool(), os.getpid()
        return _pool


def render_isolated(source: str, context: dict[str, Any]) -> str:
    """Renders `source` with `context` in a worker process under the limits above."""
    return _the_pool().render(source, context)


def warm_up() -> None:
    """Starts a render worker ahead of the first request (the server calls this at start-up)."""
    _the_pool().warm()


if __name__ == "__main__":  # a worker: `python -m sysinfer.model.template_worker READ_FD WRITE_FD`
    from sysinfer.model import template_worker as this  # the package's copy, whose classes callers catch

    this._worker_main(this._Duplex(Connection(int(sys.argv[1]), writable=False),
                                   Connection(int(sys.argv[2]), readable=False)))
