"""uvicorn's h11 protocol with a deadline for reading a request's line and headers.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``), but a connection that
never sends a request, or sends it a byte at a time, has no deadline at all (h11 only bounds
the size of a request head), so a few slow clients could hold connections for ever. Here the
clock starts when a connection opens and again after each response; a request head that has
not arrived whole ``read_timeout`` seconds later closes the connection. The body's deadline is
:class:`ulmfit.serve.BodyLimit`'s (the app sees the body, not the head).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class ReadTimeoutH11Protocol(H11Protocol):
    """H11Protocol whose request heads must arrive within ``read_timeout`` seconds (pass it
    to ``uvicorn.Config(http=functools.partial(ReadTimeoutH11Protocol, read_timeout=...))``)."""

    def __init__(self, *args, read_timeout: float = 30.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout = read_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._settle()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()
        self._settle()  # a pipelined request may have been read already

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.read_timeout, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _settle(self) -> None:
        """Stops the clock once a whole request head has been read (h11 has left IDLE)."""
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection: no request head within %ss", self.read_timeout)
            self.transport.close()
