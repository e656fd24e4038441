"""HTTP mode: POST /transcribe, GET /healthcheck and Swagger UI at /docs, as LinTO-STT-NeMo serves them; OpenAI's
speech-to-text API under /v1 (`openai_api`); a page to try the service at / (`page`)."""

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import metrics, page, results
from .audio import AudioDecodeError, AudioStream, decodes_quickly, too_long
from .engine import Engine, QueueFull
from .http_protocol import with_header_timeout
from .lifecycle import Lifecycle, bearer, key_matches

log = logging.getLogger(__name__)

# Media types /transcribe can answer with, in the order preferred when the client accepts several.
_FORMATS = {
    "application/json": "json",
    "text/plain": "text",
    "text/vtt": "vtt",
    "application/x-subrip": "srt",
    "text/srt": "srt",
}


def negotiate(accept: str | None) -> str:
    """The output format for an Accept header: JSON when absent or */*, 406 when nothing fits."""
    if not accept or not accept.strip():
        return "json"
    ranges = []
    for position, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranges.append((-quality, position, media.lower()))
    for _, _, media in sorted(ranges):
        if media in _FORMATS:
            return _FORMATS[media]
        if media in ("*/*", "application/*"):
            return "json"
        if media == "text/*":
            return "text"
    raise HTTPException(406, f"cannot answer with {accept!r}; supported: {', '.join(_FORMATS)}")


class BodyGuardMiddleware:
    """Guards the reading of request bodies, which the app does at its own pace through `receive`.

    - 413 as soon as a body grows past `max_bytes`, before it is read whole.
    - 408, and the connection closed, when a body stops (no data for `timeout` seconds: a Content-Length
      larger than what is sent, a stalled client) or trickles in: after `timeout` seconds of grace, each
      byte received buys 1/`min_rate` s more, so a body of n bytes must be in within timeout + n/min_rate
      seconds (the rule of Apache's mod_reqtimeout). A slow link that keeps up `min_rate` on average can
      upload any size; a client that sends a byte every few seconds is cut off after `timeout`. uvicorn has
      no such limit (its keep-alive timeout only runs between requests), so a connection would otherwise be
      held for ever.
    - A client that leaves during its upload ends the request with one INFO line, not an error.

    `error_content(path, status, detail)` gives the JSON of its answers, so that each API answers in its
    own error shape; by default FastAPI's `{"detail"}`.
    """

    def __init__(self, app, max_bytes: int, timeout: float = 30, min_rate: float = 10_000,
                 error_content: Callable[[str, int, str], dict] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.min_rate = min_rate
        self.error_content = error_content or (lambda path, status, detail: {"detail": detail})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._answer(scope, send, *self._too_large())
        body = _BodyReader(self, receive, declared)
        replaced = False

        async def guarded_send(message):
            # Whatever the app answers once the body has failed (it may catch the error), the client gets
            # the answer to the failure.
            nonlocal replaced
            if body.failure is None:
                return await send(message)
            if not replaced and message["type"] == "http.response.start":
                replaced = True
                await self._answer(scope, send, *body.failure)

        try:
            await self.app(scope, body.receive, guarded_send)
        except _BodyFailed:
            if not replaced:
                await self._answer(scope, send, *body.failure)
        except ClientDisconnect:
            log.info("client left during its upload (%d of %s bytes received): nothing transcribed",
                     body.received, declared.decode() if declared is not None else "?")
        except _ClientLeft:
            pass  # logged where it was seen

    def _too_large(self) -> tuple[int, str, dict]:
        return 413, f"the upload is larger than the limit of {self.max_bytes / 1e6:g} MB", {}

    async def _answer(self, scope, send, status: int, detail: str, headers: dict) -> None:
        content = self.error_content(scope.get("path", ""), status, detail)
        await JSONResponse(content, status, headers=headers)({"type": "http"}, None, send)


# Probes and scraping: never refused (neither by the API key nor while draining) and not work in flight.
UNGUARDED_PATHS = frozenset({"/healthcheck", "/ready", "/metrics"})
# The routes' own paths, the labels of requests refused before routing (any other path counts as "other").
_ROUTES = UNGUARDED_PATHS | {"/", "/transcribe", "/v1/audio/transcriptions", "/v1/models", "/docs",
                             "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


class ServiceMiddleware:
    """The outermost layer of the app: the API key (which the page at / does not need to load), refusals while
    draining, work in flight and the request metrics. It answers before the body is read, so that a refused
    request costs no upload and no work.

    `error_content(path, status, detail, code)` shapes its answers as each API shapes its errors.
    """

    def __init__(self, app, lifecycle: Lifecycle, api_key: str | None, error_content: Callable[..., dict]):
        self.app = app
        self.lifecycle = lifecycle
        self.api_key = api_key
        self.error_content = error_content

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        started = time.monotonic()
        status: list[int | None] = [None]

        async def recorded_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if path in UNGUARDED_PATHS:
                await self.app(scope, receive, recorded_send)
                return
            authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not page.serves(path) and not key_matches(self.api_key, bearer(authorization)):
                metrics.AUTH_FAILURES.labels("http").inc()
                await self._answer(scope, recorded_send, 401, "a valid API key is required (Authorization: "
                                   "Bearer KEY)", {"www-authenticate": "Bearer"}, code="invalid_api_key")
            elif self.lifecycle.draining:
                await self._answer(scope, recorded_send, 503, "the server is shutting down; retry on another "
                                   "instance", {"retry-after": "1", "connection": "close"})
            else:
                self.lifecycle.in_flight += 1
                metrics.HTTP_IN_FLIGHT.inc()
                try:
                    await self.app(scope, receive, recorded_send)
                except asyncio.CancelledError:
                    if not self.lifecycle.draining or status[0] is not None:
                        raise
                    # Past SHUTDOWN_GRACE_SECONDS uvicorn cancels what is left, and would answer its 500 and log a
                    # traceback: the client gets a 503 to retry elsewhere instead, and the log one line.
                    log.warning("%s %s cancelled at shutdown, unfinished after the grace: answered 503",
                                scope.get("method"), path)
                    await self._answer(scope, recorded_send, 503, "the server shut down before this request "
                                       "finished; retry on another instance", {"retry-after": "1",
                                                                               "connection": "close"})
                finally:
                    self.lifecycle.in_flight -= 1
                    metrics.HTTP_IN_FLIGHT.dec()
        except BaseException:
            status[0] = status[0] or 500
            raise
        finally:
            route = self._route(scope, path)
            # 499 (nginx's code): the client left before any answer was sent.
            metrics.HTTP_REQUESTS.labels(route, str(status[0] or 499)).inc()
            metrics.HTTP_LATENCY.labels(route).observe(time.monotonic() - started)

    def _route(self, scope, path: str) -> str:
        """The route's template, so that labels stay few whatever the paths clients ask for."""
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        if path in _ROUTES:
            return path
        if path.startswith("/v1/models/"):
            return "/v1/models/{model}"
        return "/page/{name}" if path.startswith("/page/") else "other"

    async def _answer(self, scope, send, status: int, detail: str, headers: dict, code: str | None = None) -> None:
        content = self.error_content(scope.get("path", ""), status, detail, code)
        await JSONResponse(content, status, headers=headers)({"type": "http"}, None, send)


class _BodyReader:
    """The `receive` of one request as the app sees it, with the limits of `BodyGuardMiddleware`."""

    def __init__(self, guard: BodyGuardMiddleware, receive, declared: bytes | None):
        self.guard = guard
        self._receive = receive
        self.declared = declared
        self.received = 0
        self.complete = False
        self.failure: tuple[int, str, dict] | None = None  # (status, detail, headers) once the body failed
        self.started = asyncio.get_running_loop().time()

    async def receive(self):
        if self.complete:  # after the body: the next message is the disconnect, waited for without a limit
            return await self._receive()
        guard = self.guard
        loop = asyncio.get_running_loop()
        by_rate = math.inf
        if guard.min_rate:
            by_rate = self.started + guard.timeout + self.received / guard.min_rate - loop.time()
        try:
            async with asyncio.timeout(max(0.0, min(guard.timeout, by_rate))):
                message = await self._receive()
        except TimeoutError:
            raise self._timed_out(too_slow=by_rate < guard.timeout, elapsed=loop.time() - self.started) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > guard.max_bytes:
                self.failure = guard._too_large()
                raise _BodyFailed
            if not message.get("more_body", False):
                self.complete = True
        return message

    def _timed_out(self, too_slow: bool, elapsed: float) -> "_BodyFailed":
        guard = self.guard
        if too_slow:
            detail = (f"the request body came too slowly: {self.received} bytes in {elapsed:.0f} s, "
                      f"below {guard.min_rate:g} bytes/s after the first {guard.timeout:g} s")
        else:
            detail = f"the request body stopped: no data for {guard.timeout:g} s"
        log.info("408 after %d of %s bytes: %s", self.received,
                 self.declared.decode() if self.declared is not None else "?", detail)
        # The rest of the body will not be read: the connection cannot carry another request.
        self.failure = (408, detail, {"connection": "close"})
        return _BodyFailed()


class _BodyFailed(Exception):
    """Raised to the app by `receive` when the body broke a limit: the middleware answers in its place."""


class _ClientLeft(Exception):
    """The client disconnected after its upload: nothing is to be answered."""


# The answers both transcription routes give to a bad or untimely upload, for their OpenAPI schemas.
UPLOAD_ERRORS = {
    408: {"description": "the body stopped for HTTP_BODY_TIMEOUT seconds, or came slower than HTTP_BODY_MIN_RATE"},
    413: {"description": "the upload is larger than MAX_UPLOAD_MB, or its audio longer than MAX_AUDIO_SECONDS"},
    415: {"description": "the file is not decodable audio"},
    422: {"description": "the form has no `file`, or a field of the wrong kind"},
    503: {"description": "the server is busy (retry after Retry-After seconds) or shutting down"},
}


def create_app(engine: Engine, max_upload_bytes: int, body_timeout: float = 30,
               body_min_rate: float = 10_000, lifecycle: Lifecycle | None = None, api_key: str | None = None,
               max_audio_seconds: float | None = None, streaming_port: int = 80,
               page_websocket_url: str | None = None) -> FastAPI:
    """The app; `body_timeout` (s) and `body_min_rate` (bytes/s) bound the reading of bodies (see
    `BodyGuardMiddleware`); `lifecycle` says whether it takes work (see `ServiceMiddleware`); with `api_key`,
    requests need it; `max_audio_seconds` bounds the audio's duration (413); the page at / streams to
    `page_websocket_url`, or by default to the websocket mode at `streaming_port` on its own host."""
    lifecycle = lifecycle or Lifecycle()
    metrics.watch_engine(engine)
    from . import openai_api  # imports this module's shared pieces

    app = FastAPI(
        title="nemo-stt",
        description="Speech-to-text with NeMo ASR models, compatible with LinTO-STT-NeMo, and OpenAI's "
                    "speech-to-text API under /v1.",
        version=_version(),
    )

    def error_content(path: str, status: int, detail: str, code: str | None = None) -> dict:
        if openai_api.serves(path):
            return openai_api.error_content(status, detail, code=code)
        return {"detail": detail}

    app.add_middleware(BodyGuardMiddleware, max_bytes=max_upload_bytes, timeout=body_timeout,
                       min_rate=body_min_rate, error_content=error_content)
    # Added last, so outermost: it refuses before the body guard reads anything.
    app.add_middleware(ServiceMiddleware, lifecycle=lifecycle, api_key=api_key, error_content=error_content)
    app.add_exception_handler(StarletteHTTPException, openai_api.http_error_handler)
    app.include_router(openai_api.router(engine, max_upload_bytes, max_audio_seconds))
    app.include_router(page.router(streaming_port, page_websocket_url, api_key_required=api_key is not None))

    @app.get("/healthcheck", response_class=PlainTextResponse, summary="1 when the model is loaded")
    async def healthcheck() -> str:
        return "1"

    @app.get("/ready", response_class=PlainTextResponse, summary="200 while the server takes work, 503 while it "
             "drains for shutdown", responses={503: {"description": "draining: new work is refused"}})
    async def ready() -> Response:
        if lifecycle.ready:
            return PlainTextResponse("ready")
        return PlainTextResponse("draining", 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        body, media_type = metrics.exposition()
        return Response(body, media_type=media_type)

    @app.post(
        "/transcribe",
        summary="Transcribe an audio file",
        responses={
            200: {"content": {"application/json": {}, "text/plain": {}, "text/vtt": {}, "application/x-subrip": {}},
                  "description": "JSON with text, words, language and confidence-score; or text, WebVTT, SRT "
                                 "according to the Accept header"},
            406: {"description": "the Accept header names no supported format"},
            **UPLOAD_ERRORS,
        },
        openapi_extra={"requestBody": _TRANSCRIBE_BODY},
    )
    async def transcribe(request: Request) -> Response:
        output = negotiate(request.headers.get("accept"))
        # The form is read here rather than declared as parameters: FastAPI's validation of declared form
        # fields cost about a tenth of the event loop's time per request (0.1-0.2 of 1.3 ms), time during
        # which a batch waits for its last uploads. The documented body is in `_TRANSCRIBE_BODY`.
        async with request.form() as form:
            file, language = _form_fields(form)
            transcript = await transcribe_upload(engine, request, file, language, max_upload_bytes,
                                                 max_audio_seconds)
        return render(transcript, output)

    return app


async def transcribe_upload(engine: Engine, request: Request, file: UploadFile, language: str | None,
                            max_upload_bytes: int, max_audio_seconds: float | None = None) -> results.Transcript:
    """The transcript of an uploaded file, for every route that takes one: HTTPException 413 (too large, or
    longer than `max_audio_seconds`), 415 (empty, or not audio), 503 with Retry-After (the queue is full) or
    500; _ClientLeft, which the body guard ends quietly, when the client disconnects before its transcript is
    ready."""
    if file.size is not None and file.size > max_upload_bytes:
        raise HTTPException(413, f"the upload is larger than the limit of {max_upload_bytes / 1e6:g} MB")
    if file.size == 0:
        raise HTTPException(415, f"{file.filename or 'file'}: the file is empty")
    try:
        # The container's header, read before any decoding: a file that says it is too long costs nothing.
        if max_audio_seconds is not None and (reason := too_long(await _stated_duration(file.file),
                                                                  max_audio_seconds)):
            raise HTTPException(413, reason)
        # The upload is spooled to disk by the form parser; decoding reads it incrementally.
        transcript = await _unless_client_leaves(engine.transcribe_source_async(file.file, language),
                                                 request.receive)
        if reason := too_long(transcript.duration, max_audio_seconds):
            # A container without a stated duration (a stream of MP3 or Ogg pages): only decoding tells.
            raise HTTPException(413, reason)
        metrics.AUDIO_SECONDS.labels("http").inc(transcript.duration or 0.0)
        return transcript
    except (_ClientLeft, HTTPException):
        raise
    except AudioDecodeError as error:
        raise HTTPException(415, f"{file.filename or 'file'}: {error}") from None
    except QueueFull as full:
        raise HTTPException(503, str(full), headers={"Retry-After": str(int(full.retry_after + 0.5))}) from None
    except Exception:
        log.exception("transcription failed")
        raise HTTPException(500, "transcription failed; see the server log") from None


async def _stated_duration(upload) -> float | None:
    """The duration the upload's container states, or None; AudioDecodeError for what is not audio."""
    position = upload.tell()

    def probe() -> float | None:
        try:
            with AudioStream(upload, 16000) as stream:  # the rate is unused: nothing is decoded
                return stream.duration
        finally:
            upload.seek(position)

    if decodes_quickly(upload):  # a small WAV or FLAC: its header is read in microseconds
        return probe()
    return await asyncio.to_thread(probe)


T = TypeVar("T")


async def _unless_client_leaves(work: Awaitable[T], receive) -> T:
    """The result of `work`, which is cancelled (raising _ClientLeft) if the client disconnects first.

    The body has been read, so the next message `receive` gives is the disconnect. Cancelling the engine's
    coroutine drops the request's pieces that are still queued, so the model spends no forward on them.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request is cancelled itself (server shutdown)
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.wait((task,))  # until it has dropped its queued pieces
    watcher.result()  # a watcher that failed fails the request
    log.info("client left before its transcription finished: cancelled")
    raise _ClientLeft


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def upload_form_body(**fields: dict) -> dict:
    """The OpenAPI request body of a transcription form: the audio file, the language and `fields`."""
    properties = {
        "file": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                 "description": "audio in any format FFmpeg reads (wav, flac, mp3, ogg, m4a, webm...)"},
        "language": {"type": "string", "description": "language to report, overriding LANGUAGE"},
        **fields,
    }
    return {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": properties}}}}


_TRANSCRIBE_BODY = upload_form_body()


def _form_fields(form) -> tuple[UploadFile, str | None]:
    """The upload and the language of a /transcribe form; 422 (as FastAPI words it) when they are not there."""
    file, language = form.get("file"), form.get("language")
    errors = []
    if not isinstance(file, UploadFile):
        errors.append({"type": "missing", "loc": ("body", "file"), "msg": "Field required, an uploaded file",
                       "input": None})
    if language is not None and not isinstance(language, str):
        errors.append({"type": "string_type", "loc": ("body", "language"), "msg": "Input should be a string",
                       "input": None})
    if errors:
        raise RequestValidationError(errors)
    return file, language or None


def render(transcript: results.Transcript, output: str) -> Response:
    if output == "json":
        return JSONResponse(results.to_json(transcript))
    if output == "text":
        return PlainTextResponse(results.to_text(transcript))
    if output == "vtt":
        return PlainTextResponse(results.to_vtt(transcript), media_type="text/vtt")
    return PlainTextResponse(results.to_srt(transcript), media_type="application/x-subrip")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nemo-stt")
    except PackageNotFoundError:
        return "0"



def run(engine: Engine, settings) -> None:
    """Serve the app until SIGTERM or SIGINT has drained it (see `DrainingServer`)."""
    draining_server(engine, settings, Lifecycle()).run()


def draining_server(engine: Engine, settings, lifecycle: Lifecycle,
                    streams_in_flight: Callable[[], int] | None = None) -> "DrainingServer":
    """The HTTP mode's server as the settings say, its app taking work while `lifecycle` does; with
    `streams_in_flight`, its drain also waits for the streams of a websocket mode in the same process."""
    app = create_app(engine, max_upload_bytes=int(settings.MAX_UPLOAD_MB * 1e6),
                     body_timeout=settings.HTTP_BODY_TIMEOUT, body_min_rate=settings.HTTP_BODY_MIN_RATE,
                     lifecycle=lifecycle, api_key=settings.API_KEY, max_audio_seconds=settings.MAX_AUDIO_SECONDS,
                     streaming_port=settings.STREAMING_PORT, page_websocket_url=settings.PAGE_WEBSOCKET_URL)
    # uvicorn's own grace only cancels what the drain left (past SHUTDOWN_GRACE_SECONDS).
    config = uvicorn.Config(app, host="0.0.0.0", port=settings.HTTP_PORT, log_level="info",
                            timeout_graceful_shutdown=1, http=with_header_timeout(settings.HTTP_HEADER_TIMEOUT))
    return DrainingServer(config, lifecycle, settings.SHUTDOWN_GRACE_SECONDS, streams_in_flight)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain before its shutdown.

    uvicorn alone stops listening at the first SIGTERM, so a readiness probe cannot see the server leave, and
    re-raises the signal once done, so the process dies of it (exit code 143). Here the first SIGTERM or
    SIGINT sets the lifecycle draining (/ready 503, new requests 503) and waits until the requests in flight
    are answered, at most `grace` seconds; then uvicorn shuts down, cancelling what is left, and the process
    exits 0. A second signal stops at once. With `streams_in_flight` (a websocket mode in the same process,
    sharing the lifecycle), the drain waits for those streams too.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace: float,
                 streams_in_flight: Callable[[], int] | None = None):
        super().__init__(config)
        self.lifecycle = lifecycle
        self.grace = grace
        self.streams_in_flight = streams_in_flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:  # a signal handler, run on the event loop's thread
        if self.lifecycle.draining or self._loop is None:
            self.should_exit = self.force_exit = True
            return
        self.lifecycle.draining = True
        self._drain = self._loop.create_task(self._drain_then_exit(sig))

    async def _drain_then_exit(self, sig: int) -> None:
        loop = asyncio.get_running_loop()
        lifecycle = self.lifecycle
        streams = self.streams_in_flight or (lambda: 0)
        if self.streams_in_flight is None:
            log.info("signal %d: draining, %d request(s) in flight, %g s of grace", sig, lifecycle.in_flight,
                     self.grace)
        else:
            log.info("signal %d: draining, %d request(s) and %d stream(s) in flight, %g s of grace", sig,
                     lifecycle.in_flight, streams(), self.grace)
        deadline = loop.time() + self.grace
        while (lifecycle.in_flight or streams()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if lifecycle.in_flight:
            log.warning("shutdown grace of %g s over: cancelling %d request(s) in flight", self.grace,
                        lifecycle.in_flight)
        if streams():
            log.warning("shutdown grace of %g s over: closing %d stream(s) in flight (1001)", self.grace, streams())
        if not lifecycle.in_flight and not streams():
            log.info("drained: every request in flight was answered" if self.streams_in_flight is None
                     else "drained: every request and stream in flight ended")
        self.should_exit = True
