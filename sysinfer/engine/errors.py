"""Errors the engine reports to callers (the server maps them to HTTP statuses)."""


class EngineError(Exception):
    """Base of the engine's request errors."""


class QueueFullError(EngineError):
    """Too many requests are waiting (max_queue); try again later."""


class TooManyChoicesError(EngineError, ValueError):
    """A request asks for more choices (`n`) than the queue can ever hold: it can never be served."""


class ContextLengthError(EngineError, ValueError):
    """The prompt, with the tokens asked for, does not fit the context or the KV cache."""


class EngineClosedError(EngineError):
    """The engine is shutting down."""
