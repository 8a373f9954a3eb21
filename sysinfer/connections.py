"""`uvicorn sysinfer.api:app --http sysinfer.connections:BoundedH11Protocol`, as documented before the
server package: the protocol lives in sysinfer/server/connections.py."""

from .server.connections import BoundedH11Protocol, bounded_protocol

__all__ = ["BoundedH11Protocol", "bounded_protocol"]
