"""uvicorn's HTTP protocol with a time limit on a request's line and headers.

uvicorn bounds the idle time between requests (`timeout_keep_alive`) but not the time a client takes
to send a request's head: a connection that sends nothing, or drips its headers a byte at a time,
is held for ever, and any number of them can be. The app cannot see such a request (it starts once
the head is complete), so the limit is here: a head not complete `header_timeout` seconds after the
connection opened, or after the previous response, closes the connection. Bodies are bounded by the
app's body guard (`http_api.BodyGuardMiddleware`).
"""

import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


def with_header_timeout(header_timeout: float) -> type[HttpToolsProtocol]:
    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's head, if the client keeps the connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.info("closing a connection whose request head did not come within %g s", header_timeout)
                self.transport.close()

    return HeaderTimeoutProtocol
