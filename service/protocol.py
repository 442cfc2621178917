"""uvicorn's HTTP protocol with the timeouts it lacks, and the time a request's bytes were complete.

uvicorn bounds only the idle time between requests (keep-alive): a client that opens a connection
and sends nothing, trickles its headers, or sends headers and then withholds the body keeps the
connection, and whatever the application holds for it, forever.  :class:`EdgeProtocol` arms one
timer per request: ``header_timeout`` from the connection (or the request's first byte) to the end
of its headers, then ``body_timeout`` to the end of its body.  When it fires, a request whose reply
has not started gets ``408`` (the service's JSON error envelope) and the connection is closed; the
application sees a disconnect.  Nothing is counted against the service's admission before the body
is complete (service/routes.py), so slow clients cost a socket and a timer, never a slot.

It also stamps ``scope[COMPLETE]`` with the ``perf_counter`` time the request's last byte was
parsed: the start of its queueing, which the rank pipeline's deadline measures (service/routes.py).

Used by ``adrank serve`` (``uvicorn.Config(http="service.protocol:EdgeProtocol")``: a name, so
that every worker process imports it); the timeouts are ``ADRANK_HEADER_TIMEOUT`` and
``ADRANK_BODY_TIMEOUT`` (service/settings.py), read when the class is first used in a process.
"""

from __future__ import annotations

import asyncio
from time import perf_counter

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

COMPLETE = "adrank.complete"
_in_progress = [0]  # requests of this process between their headers and the end of their reply


def in_progress() -> int:
    return _in_progress[0]


def _reply_408(message: str) -> bytes:
    body = msgspec.json.encode({"error": "request_timeout", "message": message})
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class EdgeProtocol(HttpToolsProtocol):
    header_timeout: float | None = None  # None: from the settings, on the first connection
    body_timeout: float | None = None
    _timer: asyncio.TimerHandle | None = None
    _counted = False

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        if self.header_timeout is None or self.body_timeout is None:
            from service.settings import Settings

            s = Settings.from_env()
            type(self).header_timeout, type(self).body_timeout = s.header_timeout, s.body_timeout

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, what: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        started = cycle is not None and not cycle.response_complete and cycle.response_started
        if not started:
            self.transport.write(_reply_408(f"the request's {what} did not arrive within {seconds:g} s"))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm(self.header_timeout or 5.0, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._uncount()
        super().connection_lost(exc)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            _in_progress[0] -= 1

    def on_response_complete(self) -> None:
        self._uncount()
        super().on_response_complete()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout or 5.0, "headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._uncount()  # a pipelined request: the previous one is counted until its reply
        self._counted = True
        _in_progress[0] += 1
        self._arm(self.body_timeout or 10.0, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        if self.cycle is not None:
            self.cycle.scope[COMPLETE] = perf_counter()  # type: ignore[literal-required]
        super().on_message_complete()
