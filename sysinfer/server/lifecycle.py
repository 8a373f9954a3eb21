"""The server's life: the model loads in a worker thread at start-up (/health says 503 until it is
ready, or why it failed), the engine runs; SIGTERM/SIGINT drain before uvicorn's own handler stops
the server, and `sysinfer serve` exits with a status that says whether the drain had to cut requests."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import anyio

from ..engine.async_engine import AsyncEngine
from .encoders import load_encoders, start_runners
from .state import ServerState
from .web import page_url


def _load(state: ServerState) -> None:
    """Runs in a worker thread: validate and load the models (the chat model unless only encoders were
    named, then the encoders), build tokenizer and engine."""
    from ..startup import load_serving_model

    # The encoders first: the chat model's KV cache is sized from the memory still available
    # (config.kv_blocks_for), which must already count the encoders' weights.
    state.encoders = load_encoders(state.config)
    if state.serves_chat:
        loaded = load_serving_model(state.config)
        state.tokenizer, state.model, state.model_name = loaded.tokenizer, loaded.model, loaded.name
        state.draft = loaded.draft


def _draft_note(draft) -> str:
    return f"; drafts from {draft.path.rsplit('/', 1)[-1]}, {draft.n_kv_blocks} KV blocks" if draft else ""


async def load_and_run(state: ServerState) -> None:
    try:
        await anyio.to_thread.run_sync(_load, state)
    except Exception as e:  # reported by /health; the process stays up to say why
        state.load_error = f"{type(e).__name__}: {str(e)[:1000]}"
        print(f"sysinfer: model failed to load: {state.load_error}", flush=True)
        if state.on_load_error is not None:
            state.on_load_error()
        return
    cfg = state.config
    if state.serves_chat:
        state.engine = AsyncEngine(state.model, state.tokenizer, cfg.engine_config(), draft_model=state.draft)
    start_runners(state.encoders, cfg, state.engine)  # encoder work takes turns with the engine's steps
    state.loaded = True
    # The address is known only when sysinfer's CLI started uvicorn with this config; `uvicorn
    # sysinfer.api:app --port N` binds where its own flags say (its "Uvicorn running on" line).
    where = (f"on port {cfg.port}; chat page: {page_url(cfg.host, cfg.port)}" if state.address_known
             else "; chat page: / on the address uvicorn listens on")
    if state.engine is not None:
        print(f"sysinfer: serving {state.model_name} ({state.model.kernels} kernels, {state.model.n_threads} threads, "
              f"{state.model.n_kv_blocks} KV blocks{_draft_note(state.draft)}){_encoder_note(state)} {where}", flush=True)
        await state.engine.run()
    else:
        print(f"sysinfer: serving {_encoder_note(state).removeprefix(', with ')} (no chat model) on port {cfg.port}",
              flush=True)


def _encoder_note(state: ServerState) -> str:
    served = [f"{e.kind} model {e.name} ({e.model.dim} dimensions, context {e.model.n_ctx})"
              for e in state.encoders.values()]
    return ", with " + " and ".join(served) if served else ""


async def drain_on_signals(state: ServerState) -> None:
    """On SIGTERM/SIGINT, drain first, then let the server's own handler run.

    While draining, the server still listens: /health answers 503 "shutting_down" (balancers and
    readiness probes take the replica out), new requests get 503 with Retry-After, so do the ones
    still queued (at once), and running requests get drain_seconds (SYSINFER_DRAIN_SECONDS) to
    finish, then end with finish_reason "abort" and [DONE]. Then the signal goes to uvicorn's
    handler, which finds no stream left to cut. A second signal cuts the drain short (the running
    requests end now, properly) and the server still answers 503 until they have; a third stops at
    once. `state.drain_cut` counts the requests the drain had to end (`sysinfer serve` exits 3)."""
    import asyncio

    loop, requested, cut = asyncio.get_running_loop(), anyio.Event(), anyio.Event()
    received: list[int] = []
    previous_handlers = {}

    def handler(signum, frame):
        received.append(signum)
        if len(received) == 1:
            loop.call_soon_threadsafe(requested.set)
        elif len(received) == 2:  # asked twice: end the running requests now, then stop
            loop.call_soon_threadsafe(cut.set)
        else:  # three times: stop now
            _pass_signal_on(signum, previous_handlers)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (an embedding app): no graceful drain
            return
    await requested.wait()
    state.draining = True
    if state.engine is not None:
        state.drain_cut = await state.engine.drain(state.config.drain_seconds, cut)
    _pass_signal_on(received[0], previous_handlers)


EXIT_DRAIN_CUT = 3  # `sysinfer serve`'s exit status when the drain had to end running requests


def exit_status(state: ServerState) -> int:
    """`sysinfer serve`'s status after a drain: 0 when every request finished (SIGTERM or SIGINT
    alike), EXIT_DRAIN_CUT when the drain had to end running ones."""
    return EXIT_DRAIN_CUT if state.drain_cut else 0


@contextmanager
def exit_status_on_signals():
    """Around uvicorn's run in `sysinfer serve`: uvicorn puts back the handlers it found and raises
    the signal it caught again once it has shut down. With Python's defaults SIGTERM then ended the
    process by the signal (-15 to a parent) and SIGINT with 0; handlers that do nothing let the CLI
    return exit_status() instead."""
    quiet = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, previous in quiet.items():
            signal.signal(sig, previous)


def _pass_signal_on(signum: int, previous_handlers: dict) -> None:
    """Put the handlers that were there before back and send the signal again: uvicorn's handler
    (or Python's default) does what it would have done at first."""
    for sig, previous in previous_handlers.items():
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    signal.raise_signal(signum)
