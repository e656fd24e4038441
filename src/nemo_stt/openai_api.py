"""OpenAI's speech-to-text API on the loaded model: POST /v1/audio/transcriptions, GET /v1/models and
GET /v1/models/{id}, with OpenAI's error JSON on every /v1 path.

A thin adapter: it reads OpenAI's form, transcribes the upload as /transcribe does
(`http_api.transcribe_upload`: the same engine call, disconnect handling and status codes) and shapes the
answer in OpenAI's formats. Subtitles and verbose_json segments are `results.segments`, as on /transcribe.
"""

import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import results
from .engine import Engine, demo_model_path
from .http_api import UPLOAD_ERRORS, render, transcribe_upload, upload_form_body

PREFIX = "/v1"

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
# OpenAI streams only its text formats; the subtitle and verbose formats are answered whole.
STREAMED_FORMATS = ("json", "text")

# verbose_json fields that Whisper computes and this service has no counterpart for; documented in the README.
NO_SPEECH_PROB = 0.0  # the VAD keeps non-speech from the model, which gives no such estimate
TEMPERATURE = 0.0  # decoding is greedy, which is sampling at temperature 0
MIN_CONFIDENCE = 1e-6  # the floor of word confidences before their log, so that a 0 is not -inf


def serves(path: str) -> bool:
    """Whether `path` belongs to this API, whose errors take OpenAI's shape."""
    return path == PREFIX or path.startswith(PREFIX + "/")


class OpenAIError(HTTPException):
    """An HTTPException that names the request parameter at fault and OpenAI's error code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(status, message, headers=headers)
        self.param = param
        self.code = code


def error_content(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                      "param": param, "code": code}}


async def http_error_handler(request: Request, error: StarletteHTTPException) -> Response:
    """The app's handler of HTTPExceptions: OpenAI's shape under /v1, FastAPI's own elsewhere. It also
    shapes the router's own 404 and 405 for unknown /v1 paths and methods."""
    if not serves(request.url.path):
        return await http_exception_handler(request, error)
    content = error_content(error.status_code, str(error.detail), getattr(error, "param", None),
                            getattr(error, "code", None))
    return JSONResponse(content, error.status_code, headers=error.headers)


def model_id(engine: Engine) -> str:
    """The id under which the loaded model is listed: its Hugging Face id, or the name of its .nemo file
    without the extension (the demo model's is `demo-en-fastconformer`)."""
    source = engine.config.model
    if source is None:
        return demo_model_path().stem
    return Path(source).stem if source.endswith(".nemo") else source


def _owner(engine: Engine) -> str:
    source = engine.config.model
    if source is None:
        return "nemo-stt"  # this project trains the demo model
    if source.endswith(".nemo"):
        return "local"
    return source.split("/")[0] if "/" in source else "huggingface"


@dataclass(frozen=True)
class _Form:
    file: UploadFile
    language: str | None
    response_format: str
    granularities: frozenset[str]
    stream: bool


def router(engine: Engine, max_upload_bytes: int, max_audio_seconds: float | None = None) -> APIRouter:
    api = APIRouter(prefix=PREFIX, tags=["OpenAI-compatible"])
    # created: when this server loaded the model, the closest honest figure for a model loaded from anywhere.
    card = {"id": model_id(engine), "object": "model", "created": int(time.time()), "owned_by": _owner(engine)}

    @api.get("/models", summary="The loaded model, in OpenAI's list of models")
    async def list_models() -> dict:
        return {"object": "list", "data": [card]}

    @api.get("/models/{model:path}", summary="The loaded model when `model` is its id; else 404")
    async def retrieve_model(model: str) -> dict:
        if model != card["id"]:
            raise OpenAIError(404, f"The model '{model}' does not exist; this server serves '{card['id']}'",
                              param="model", code="model_not_found")
        return card

    @api.post(
        "/audio/transcriptions",
        summary="Transcribe an audio file (OpenAI's API)",
        responses={
            200: {"content": {"application/json": {}, "text/plain": {}, "text/vtt": {}, "application/x-subrip": {},
                              "text/event-stream": {}},
                  "description": "as `response_format` says; server-sent events with `stream=true`"},
            400: {"description": "a parameter with a value this API does not take, or a malformed body"},
            **UPLOAD_ERRORS,
        },
        openapi_extra={"requestBody": _TRANSCRIPTIONS_BODY},
    )
    async def create_transcription(request: Request) -> Response:
        # Read by hand as /transcribe reads its form (FastAPI's validation of declared fields costs the event
        # loop), and so that every error is OpenAI's JSON with the parameter at fault.
        async with request.form() as form:
            fields = _read_form(form)
            transcript = await transcribe_upload(engine, request, fields.file, fields.language, max_upload_bytes,
                                                 max_audio_seconds)
        if fields.stream:
            return _events(transcript)
        if fields.response_format == "json":
            return JSONResponse({"text": transcript.text})
        if fields.response_format == "verbose_json":
            return JSONResponse(verbose_json(transcript, fields.granularities))
        return render(transcript, fields.response_format)

    return api


def _read_form(form) -> _Form:
    """The fields of a transcription form, checked before any audio is decoded; unknown fields are ignored.

    `model` (any value: the loaded model answers), `prompt` and `temperature` are accepted and unused.
    """
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise OpenAIError(422, "file: Field required, an uploaded file", param="file")
    text = {}
    for name in ("model", "language", "prompt", "response_format", "temperature", "stream"):
        value = form.get(name)
        if value is not None and not isinstance(value, str):
            raise OpenAIError(422, f"{name}: Input should be a string, not a file", param=name)
        text[name] = value or None
    response_format = text["response_format"] or "json"
    if response_format not in RESPONSE_FORMATS:
        raise OpenAIError(400, f"response_format {response_format!r} is not supported; supported: "
                               f"{', '.join(RESPONSE_FORMATS)}", param="response_format")
    if text["temperature"] is not None:
        try:
            temperature = float(text["temperature"])
        except ValueError:
            temperature = math.nan
        if not 0 <= temperature <= 1:
            raise OpenAIError(400, f"temperature must be a number between 0 and 1, not {text['temperature']!r}",
                              param="temperature")
    granularities = []
    for name in ("timestamp_granularities[]", "timestamp_granularities"):  # SDKs send the first
        for value in form.getlist(name):
            if value not in GRANULARITIES:
                raise OpenAIError(400, f"timestamp_granularities must be among {', '.join(GRANULARITIES)}, "
                                       f"not {value if isinstance(value, str) else 'a file'!r}",
                                  param="timestamp_granularities[]")
            granularities.append(value)
    stream = (text["stream"] or "false").lower()
    if stream not in ("true", "false", "1", "0"):
        raise OpenAIError(400, f"stream must be true or false, not {text['stream']!r}", param="stream")
    streamed = stream in ("true", "1")
    if streamed and response_format not in STREAMED_FORMATS:
        raise OpenAIError(400, f"stream is supported with response_format {' or '.join(STREAMED_FORMATS)}, "
                               f"not {response_format}", param="stream")
    return _Form(file=file, language=text["language"], response_format=response_format,
                 granularities=frozenset(granularities or ["segment"]), stream=streamed)


def verbose_json(transcript: results.Transcript, granularities: frozenset[str] = frozenset(GRANULARITIES)) -> dict:
    """OpenAI's verbose_json; `segments` and `words` as `timestamp_granularities` ask (the route's default is
    segments only; this function's, both, as `nemo-stt transcribe --format verbose_json` writes it)."""
    body = {"task": "transcribe", "language": transcript.language, "duration": round(transcript.duration or 0.0, 3),
            "text": transcript.text}
    if "segment" in granularities:
        body["segments"] = [_segment(index, segment) for index, segment in enumerate(results.segments(transcript))]
    if "word" in granularities:
        body["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                         for w in transcript.words]
    return body


def _segment(index: int, segment: results.Segment) -> dict:
    text = segment.text.encode()
    return {
        "id": index,
        "seek": 0,  # Whisper's offset of its 30-s window; the audio here is not read in such windows
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": [],  # the model's token ids are not part of the transcript
        "temperature": TEMPERATURE,
        # The mean log of the words' confidences: NeMo's max-probability measure, which for vocabularies of
        # hundreds of tokens is within 1/vocabulary of the probability of the token emitted.
        "avg_logprob": round(sum(math.log(max(w.conf, MIN_CONFIDENCE)) for w in segment.words) / len(segment.words),
                             5),
        # As Whisper computes it: repetitive text compresses well, so a high ratio flags a decoder loop.
        "compression_ratio": round(len(text) / len(zlib.compress(text)), 5),
        "no_speech_prob": NO_SPEECH_PROB,
    }


def _events(transcript: results.Transcript) -> Response:
    """The transcript as OpenAI's server-sent events: a `transcript.text.delta` per segment (with the space
    before it, so that the deltas add up to the text), then `transcript.text.done`. The engine gives the
    transcript whole, so the events all go out once it is ready."""
    deltas = [segment.text if index == 0 else " " + segment.text
              for index, segment in enumerate(results.segments(transcript))]
    if "".join(deltas) != transcript.text:  # a text that is not its words joined: one delta for all of it
        deltas = [transcript.text] if transcript.text else []
    events = [{"type": "transcript.text.delta", "delta": delta} for delta in deltas]
    events.append({"type": "transcript.text.done", "text": transcript.text})
    body = "".join(f"data: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n" for event in events)
    return Response(body, media_type="text/event-stream", headers={"cache-control": "no-cache"})


_TRANSCRIPTIONS_BODY = upload_form_body(
    model={"type": "string", "description": "any value (SDKs send `whisper-1`): the loaded model answers; "
                                            "GET /v1/models gives its id"},
    prompt={"type": "string", "description": "accepted and unused"},
    response_format={"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
    temperature={"type": "number", "minimum": 0, "maximum": 1,
                 "description": "accepted and unused: decoding is greedy"},
    stream={"type": "boolean", "default": False,
            "description": "server-sent events (json and text formats), sent once the transcript is ready"},
    **{"timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": list(GRANULARITIES)},
                                     "description": "verbose_json: `segment` (the default) and/or `word`"}},
)
