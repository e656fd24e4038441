"""HTTP mode: POST /transcribe, GET /healthcheck and Swagger UI at /docs, as LinTO-STT-NeMo serves them."""

import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile

from . import results
from .audio import AudioDecodeError
from .engine import Engine, QueueFull

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


class UploadLimitMiddleware:
    """Answers 413 as soon as a request body grows past the limit, before it is read whole."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        received = 0
        exceeded = False
        replaced = False

        async def counting_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            # The body parser turns any receive error into its own 400: answer 413 in its place.
            nonlocal replaced
            if not exceeded:
                return await send(message)
            if not replaced and message["type"] == "http.response.start":
                replaced = True
                await self._too_large(send)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if not replaced:
                await self._too_large(send)

    async def _too_large(self, send):
        limit_mb = self.max_bytes / 1e6
        response = JSONResponse({"detail": f"the upload is larger than the limit of {limit_mb:g} MB"}, 413)
        await response({"type": "http"}, None, send)


class _BodyTooLarge(Exception):
    pass


def create_app(engine: Engine, max_upload_bytes: int) -> FastAPI:
    app = FastAPI(
        title="nemo-stt",
        description="Speech-to-text with NeMo ASR models, compatible with LinTO-STT-NeMo.",
        version=_version(),
    )
    app.add_middleware(UploadLimitMiddleware, max_bytes=max_upload_bytes)

    @app.get("/healthcheck", response_class=PlainTextResponse, summary="1 when the model is loaded")
    async def healthcheck() -> str:
        return "1"

    @app.post(
        "/transcribe",
        summary="Transcribe an audio file",
        responses={
            200: {"content": {"application/json": {}, "text/plain": {}, "text/vtt": {}, "application/x-subrip": {}},
                  "description": "JSON with text, words, language and confidence-score; or text, WebVTT, SRT "
                                 "according to the Accept header"},
            406: {"description": "the Accept header names no supported format"},
            413: {"description": "the upload is larger than MAX_UPLOAD_MB"},
            415: {"description": "the file is not decodable audio"},
            422: {"description": "the form has no `file`, or a field of the wrong kind"},
            503: {"description": "the transcription queue is full; retry after Retry-After seconds"},
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
            if file.size is not None and file.size > max_upload_bytes:
                raise HTTPException(413, f"the upload is larger than the limit of {max_upload_bytes / 1e6:g} MB")
            if file.size == 0:
                raise HTTPException(415, f"{file.filename or 'file'}: the file is empty")
            try:
                # The upload is spooled to disk by the form parser; decoding reads it incrementally.
                transcript = await engine.transcribe_source_async(file.file, language)
            except AudioDecodeError as error:
                raise HTTPException(415, f"{file.filename or 'file'}: {error}") from None
            except QueueFull as full:
                raise HTTPException(503, str(full),
                                    headers={"Retry-After": str(int(full.retry_after + 0.5))}) from None
            except Exception:
                log.exception("transcription failed")
                raise HTTPException(500, "transcription failed; see the server log") from None
        return render(transcript, output)

    return app


_TRANSCRIBE_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                     "description": "audio in any format FFmpeg reads (wav, flac, mp3, ogg...)"},
            "language": {"type": "string", "description": "language to report, overriding LANGUAGE"},
        },
    }}},
}


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
