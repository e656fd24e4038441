"""Prometheus metrics of every mode, in the process's default registry (one mode, one engine per process).

The HTTP mode serves them at /metrics; the websocket and task modes on METRICS_PORT (`serve_on_port`).
"""

import logging

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest, start_http_server

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter("nemo_stt_http_requests_total", "HTTP requests answered, by route and status",
                        ["route", "status"])
HTTP_LATENCY = Histogram("nemo_stt_http_request_duration_seconds", "Time from a request's arrival to the end of "
                         "its answer, by route", ["route"],
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
HTTP_IN_FLIGHT = Gauge("nemo_stt_http_requests_in_flight", "HTTP requests being served (probes and /metrics "
                       "aside)")
AUTH_FAILURES = Counter("nemo_stt_auth_failures_total", "Requests and streams refused for a wrong or missing "
                        "API key", ["mode"])
ADMITTED = Gauge("nemo_stt_engine_admitted_requests", "Requests in the engine (waiting or running), of "
                 "QUEUE_MAX_SIZE")
QUEUED = Gauge("nemo_stt_engine_queued_pieces", "Pieces of work (segments, windows) waiting for a forward")
BATCH_SIZE = Histogram("nemo_stt_batch_size", "Items per forward", buckets=(1, 2, 4, 8, 16, 32, 64))
INFERENCE_SECONDS = Histogram("nemo_stt_inference_seconds", "Seconds of one batched forward",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BATCH_AUDIO_SECONDS = Counter("nemo_stt_inference_audio_seconds_total", "Seconds of audio through forwards "
                              "(speech segments, with VAD)")
REAL_TIME_FACTOR = Histogram("nemo_stt_real_time_factor", "Forward seconds per second of audio, per batch "
                             "(below 1: faster than real time)",
                             buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2))
AUDIO_SECONDS = Counter("nemo_stt_audio_seconds_total", "Seconds of audio transcribed, as the clients sent it",
                        ["mode"])
STREAMS_ACTIVE = Gauge("nemo_stt_streams_active", "Websocket streams being served")
STREAMS_REJECTED = Counter("nemo_stt_streams_rejected_total", "Websocket connections refused, by reason",
                           ["reason"])
STREAMS_CLOSED = Counter("nemo_stt_streams_closed_total", "Websocket streams ended, by close code", ["code"])
TASKS = Counter("nemo_stt_tasks_total", "Celery tasks ended, by outcome", ["outcome"])


def watch_engine(engine) -> None:
    """Sample the engine's queue as metrics are scraped, and time its forwards."""
    ADMITTED.set_function(lambda: engine.admission.active)
    QUEUED.set_function(lambda: engine.batcher.queued)

    def on_batch(items: int, seconds: float, audio_seconds: float) -> None:
        BATCH_SIZE.observe(items)
        INFERENCE_SECONDS.observe(seconds)
        BATCH_AUDIO_SECONDS.inc(audio_seconds)
        if audio_seconds > 0:
            REAL_TIME_FACTOR.observe(seconds / audio_seconds)

    engine.batcher.on_batch = on_batch


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its media type."""
    return generate_latest(), CONTENT_TYPE_LATEST


def serve_on_port(port: int | None) -> None:
    """Serve the metrics on `port` from a thread of their own (websocket and task modes); None: not at all."""
    if port is not None:
        start_http_server(port)
        log.info("metrics on port %d (/metrics)", port)
