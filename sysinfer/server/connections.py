"""Connection limits uvicorn's HTTP/1.1 protocol lacks: the time a client may take to send a request's
headers, and the number of connections open at once.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that has
sent part of a request line, or trickles its headers a byte at a time, is held for as long as the
client likes (300 such sockets stayed open in the probe of issue 29), each one a file descriptor and
a protocol object. Here:

- a request's headers must be complete within `header_timeout` seconds of the connection opening or
  of the previous response ending (a partial request is answered 408 and the connection closed; a
  silent one is closed, as a keep-alive timeout would). The body has its own limit (body_timeout,
  enforced by the app while it reads it).
- past `max_connections` open connections, a new one is answered 503 with Retry-After and closed
  at once, before anything of it is read (uvicorn's `limit_concurrency` counts the same connections
  but reads and parses the request first, and keeps the connection).

`sysinfer serve` uses it with the server's configuration; with plain uvicorn, pass
`--http sysinfer.server.connections:BoundedH11Protocol` (limits from SYSINFER_HEADER_TIMEOUT and
SYSINFER_MAX_CONNECTIONS).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("sysinfer.server.connections")

_TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n"
             b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_TOO_MANY_BODY = (b'{"error":{"message":"too many open connections","type":"server_error","param":null,'
                  b'"code":"too_many_connections"}}')
_TOO_SLOW = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: %d\r\n\r\n%s")
_TOO_SLOW_BODY = (b'{"error":{"message":"request headers not received within %s s","type":"invalid_request_error",'
                  b'"param":null,"code":"request_timeout"}}')


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a bound on the time to receive a request's headers and on the
    number of open connections (class attributes; None: from SYSINFER_* on first use)."""

    header_timeout: float | None = None
    max_connections: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.header_timeout is None or cls.max_connections is None:
            from ..config import ServerConfig

            cfg = ServerConfig.from_env()
            cls.header_timeout, cls.max_connections = cfg.header_timeout, cfg.max_connections
        self._headers_due: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:  # this one is counted
            self._refused = True
            log.warning("connection refused: %d open (max_connections %d)", len(self.connections) - 1,
                        self.max_connections)
            transport.write(_TOO_MANY % (len(_TOO_MANY_BODY), _TOO_MANY_BODY))
            transport.close()
            return
        self._expect_headers()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers were parsed: its cycle started
            self._headers_arrived()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # may start a pipelined request's cycle at once
        if not self.transport.is_closing() and self.cycle is cycle:
            self._expect_headers()  # the next request on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def _expect_headers(self) -> None:
        self._headers_arrived()
        self._headers_due = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _headers_arrived(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _headers_overdue(self) -> None:
        """No complete request headers in time: a partial request gets 408, a silent connection is
        closed (a request in progress, e.g. pipelined behind a running one, is left alone)."""
        self._headers_due = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        if self.conn.trailing_data[0]:
            body = _TOO_SLOW_BODY % f"{self.header_timeout:g}".encode()
            self.transport.write(_TOO_SLOW % (len(body), body))
        self.transport.close()


def bounded_protocol(header_timeout: float, max_connections: int) -> type[BoundedH11Protocol]:
    """The protocol class with these limits (for uvicorn's `http=`)."""
    return type("BoundedH11Protocol", (BoundedH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections})
