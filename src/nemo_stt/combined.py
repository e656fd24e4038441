"""Several modes in one process (SERVICE_MODE=http,websocket): one engine, one model in memory, each mode on
its own port as when it runs alone.

Both front ends run on one event loop and share one `Lifecycle`: the HTTP server's SIGTERM handling drains
both (readiness and new requests 503, new streams 1013), waits for the requests and the streams in flight
within SHUTDOWN_GRACE_SECONDS, then stops uvicorn and closes the streams left (1001). /ready and /metrics on
HTTP_PORT cover the whole process (one Prometheus registry), so METRICS_PORT is not bound.
"""

import logging

from .engine import Engine
from .http_api import draining_server
from .lifecycle import Lifecycle
from .settings import Settings
from .websocket_server import StreamingServer, listen

log = logging.getLogger(__name__)


async def run(engine: Engine, settings: Settings) -> None:
    """Serve the HTTP and websocket modes until SIGTERM or SIGINT has drained both; `engine` not warmed up
    (each mode's part is warmed up here, once)."""
    lifecycle = Lifecycle()
    streaming = StreamingServer(engine, settings, lifecycle)  # warms up what the streams use
    if streaming.streaming_engine != "buffered":
        # Cache-aware streams run on their own streamer: the batcher that serves the uploads is still cold.
        # (Buffered streams go through the batcher, which their warm-up has just warmed.)
        engine.warm_up()
    if settings.METRICS_PORT is not None:
        log.warning("METRICS_PORT=%d is not used: with the http mode in the process, /metrics on HTTP_PORT "
                    "(%d) covers every mode", settings.METRICS_PORT, settings.HTTP_PORT)
    http = draining_server(engine, settings, lifecycle, streams_in_flight=lambda: streaming.in_flight)
    async with listen(streaming, settings):
        await http.serve()
    # Leaving `listen` closed the streaming socket and the streams the grace left (see the drain's log).
