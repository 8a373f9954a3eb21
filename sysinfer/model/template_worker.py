"""Chat templates from model files are untrusted code: they render in worker processes with hard limits.

The jinja2 sandbox refuses attribute escapes, but it can't stop a template that loops for hours
(`{% for i in range(100000) %}{% for j in range(100000) %}`) or builds gigabytes (`{{ 'a' * 10**9 }}`,
`{{ x|center(10**9) }}`), and a render holding the GIL would freeze every stream. So each render runs
in a small pool of worker processes (started once through a fork server, so a new one costs a fork):
- time: the caller waits at most `RENDER_SECONDS`; a worker past it is killed and replaced;
- memory: each worker's address space is capped (RLIMIT_AS), so a huge allocation is a MemoryError
  inside the worker, never pressure on the server;
- size: the output is built piece by piece and stops at `MAX_RENDER_CHARS`.
Every failure comes back as ChatTemplateError with a one-line reason; the server keeps serving.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from functools import lru_cache
from typing import Any

RENDER_SECONDS = 2.0              # one render's wall-clock limit
MAX_RENDER_CHARS = 16 * 2**20     # the rendered prompt's size limit (well past any context we serve)
WORKER_ADDRESS_SPACE = 2 * 2**30  # RLIMIT_AS of a worker process: python + jinja2 + the render
MAX_WORKERS = 2                   # renders that run at once; more callers wait for a free worker


class ChatTemplateError(ValueError):
    """A template that can't be rendered (bad syntax, refused operation, raise_exception, a limit)."""


# ---- inside a worker process ----

def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from .chat_template import template_globals

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
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


def _worker_main(conn) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE, WORKER_ADDRESS_SPACE))
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
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="sysinfer-template")
        self.process.start()
        child.close()

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
        except (EOFError, OSError):
            self.kill()
            raise ChatTemplateError("chat template render crashed its worker") from None
        if status != "ok":
            raise ChatTemplateError(value)
        return value

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class RenderPool:
    """Up to MAX_WORKERS worker processes, made when first needed and replaced when killed."""

    def __init__(self, max_workers: int = MAX_WORKERS):
        # A fork server, not fork: the server process runs native threads, and forking it is unsafe.
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload([__name__])
        self._idle: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(max_workers)
        self._lock = threading.Lock()

    def render(self, source: str, context: dict[str, Any], seconds: float = RENDER_SECONDS) -> str:
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker.alive:
                worker = _Worker(self._ctx)
            try:
                return worker.render(source, context, seconds)
            finally:
                if worker.alive:
                    with self._lock:
                        self._idle.append(worker)

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for w in workers:
            w.kill()


_pool: RenderPool | None = None
_pool_lock = threading.Lock()
_pool_pid = 0


def render_isolated(source: str, context: dict[str, Any]) -> str:
    """Renders `source` with `context` in a worker process under the limits above."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = RenderPool(), os.getpid()
    return _pool.render(source, context)
