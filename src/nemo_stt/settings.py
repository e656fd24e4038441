"""Every environment variable of the service, with the names, defaults and meanings of LinTO-STT-NeMo.

This is the only module that reads the environment. An empty value means the default
(`NUM_THREADS=` is the same as not setting it). An invalid value stops start-up with
one line per variable naming it, the value and what is allowed.
"""

import re
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Architecture = Literal["ctc_bpe", "rnnt_bpe", "hybrid_bpe", "hybrid_bpe_ctc", "hybrid_bpe_rnnt"]
VadMethod = Literal["auditok", "silero"]
# The modes of SERVICE_MODE, in the order its canonical spelling lists them.
MODES = ("http", "websocket", "task")


class SettingsError(ValueError):
    """An environment variable has a value the service cannot run with."""


# Settings whose values have a form: the pattern and how the error message states it.
_FORMS = {
    "PAGE_WEBSOCKET_URL": (r"wss?://[^\s/?#]+\S*", "a ws:// or wss:// URL"),
    "DEVICE": (r"cpu|cuda(:\d+)?", "cpu, cuda, cuda:N"),
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, case_sensitive=True, extra="ignore",
                                      populate_by_name=True, use_attribute_docstrings=True)

    # Common
    SERVICE_MODE: str = "http"
    """Which front end `nemo-stt serve` starts: `http`, `task` or `websocket`, or `http,websocket` (both in one
    process, sharing one engine and model, each on its own port). Read as `modes`."""
    MODEL: str | None = None
    """A Hugging Face id or a path to a `.nemo` file; unset means the embedded demo model."""
    ARCHITECTURE: Architecture | None = None
    """Which decoder to use; unset means the one the loaded model was trained to use (RNNT for hybrids)."""
    LANGUAGE: str | None = None
    """Language reported in results when a request does not name one."""
    DEVICE: str | None = None
    """`cpu`, `cuda` or `cuda:N`; unset means cuda when available, else cpu."""
    NUM_THREADS: int | None = Field(default=None, ge=1)
    """Torch threads per inference worker (on a GPU, for their host work); unset means cores / (CONCURRENCY + 1)."""
    CUDA_VISIBLE_DEVICES: str | None = None
    """Read by CUDA itself; held here so that it is documented and shown at start-up."""
    CONCURRENCY: int = Field(default=0, ge=0)
    """Parallel transcriptions minus one: CONCURRENCY=0 runs one inference worker, 1 runs two (the default
    on a GPU and with INFERENCE_BACKEND=onnx: see GPU_DEFAULTS and ONNX_DEFAULTS)."""
    GPU_AUTOCAST: Literal["bf16", "off"] = "bf16"
    """On a CUDA device, `bf16` runs the encoder under bf16 autocast when the device supports bf16 (decoding
    stays fp32); `off` runs it in fp32. No effect on the CPU."""
    CPU_AUTOCAST: Literal["auto", "bf16", "off"] = "auto"
    """On the CPU, `bf16` runs the encoder (INFERENCE_BACKEND=torch) under bf16 autocast when the CPU has
    bf16 kernels (AVX-512: fastest with AVX512_BF16 or AMX); texts may then differ a little from NeMo's fp32
    ones. `off`: fp32, as NeMo runs it. `auto`: bf16 for encoders of 100 M parameters or more on a CPU with
    AVX512_BF16 or AMX, fp32 otherwise."""
    INFERENCE_BACKEND: Literal["torch", "onnx"] = "torch"
    """What runs the encoder: `torch` (PyTorch), or `onnx` (ONNX Runtime, CPU only: the encoder exported once
    with NeMo's export into ONNX_CACHE_DIR; features and decoding stay NeMo's). See the README for which to pick."""
    ONNX_QUANTIZE: Literal["none", "int8"] = "none"
    """With INFERENCE_BACKEND=onnx, `int8` quantises the encoder's MatMul weights to 8 bits (dynamic
    quantisation): a smaller graph; on CPUs without VNNI not faster (the README gives its speed and WER)."""
    ONNX_CACHE_DIR: str | None = None
    """Where the exported ONNX graphs are kept, keyed by the model's config and weights and the versions of
    NeMo, torch and ONNX; unset, `nemo-stt/onnx` in XDG_CACHE_HOME (`~/.cache` when unset)."""
    XDG_CACHE_HOME: str | None = None
    """The user's cache folder, read for ONNX_CACHE_DIR's default (the Docker image sets it)."""
    USER_ID: int | None = Field(default=None, ge=0)
    """When running as root, switch to this user before serving (the container default is 33)."""
    GROUP_ID: int | None = Field(default=None, ge=0)
    """When running as root, switch to this group before serving."""

    MEMORY_ALLOCATOR: Literal["jemalloc", "system"] = "jemalloc"
    """`jemalloc`: `nemo-stt` restarts itself with jemalloc preloaded (when the library is installed and
    LD_PRELOAD is unset), so that memory does not grow with the variety of input lengths; `system`: the C
    library's malloc."""
    LD_PRELOAD: str | None = None
    """Libraries the dynamic loader preloads: when the user sets it, the service keeps it and does not
    preload jemalloc itself."""
    MALLOC_CONF: str | None = None
    """jemalloc's options; unset, the service keeps freed pages for reuse and releases them after 10 s idle."""

    # Voice activity detection
    VAD: VadMethod | None = "auditok"
    """`auditok`, `silero`, or false to disable; `true`/`1` mean auditok, `0` means false."""
    VAD_DILATATION: float = Field(default=0.5, ge=0)
    """Seconds added on each side of every detected speech segment."""
    VAD_MIN_SPEECH_DURATION: float = Field(default=0.1, ge=0)
    """Shortest speech segment kept, in seconds."""
    VAD_MIN_SILENCE_DURATION: float = Field(default=0.1, ge=0)
    """Shortest silence that separates two speech segments, in seconds."""
    VAD_MAX_SEGMENT_DURATION: float = Field(default=60, gt=0)
    """Longest speech segment transcribed in one forward (seconds); longer ones are cut at their quietest moment."""

    # Long files
    LONG_FILE_THRESHOLD: float = Field(default=480, gt=0)
    """Files longer than this (seconds) are transcribed in chunks."""
    LONG_FILE_CHUNK_LEN: float = Field(default=240, gt=0)
    """Length of each chunk (seconds)."""
    LONG_FILE_CHUNK_CONTEXT_LEN: float = Field(default=10, ge=0)
    """Context added before and after each chunk (seconds)."""

    LONG_FILE_LOCAL_ATTENTION: Literal["auto", "on", "off"] = "auto"
    """Local attention for full-context models: `auto` switches it on when inputs can exceed 60 s."""

    # HTTP
    HTTP_PORT: int = Field(default=80, ge=1, le=65535)
    """Port of the HTTP mode."""
    MAX_UPLOAD_MB: float = Field(default=500, gt=0)
    """Largest accepted upload to /transcribe and /v1/audio/transcriptions, in MB; larger ones get 413."""
    HTTP_HEADER_TIMEOUT: float = Field(default=10, gt=0)
    """Seconds a client has to send a request's line and headers (from its connection, or from the previous
    response on a kept-alive connection); past it, the connection is closed."""
    HTTP_BODY_TIMEOUT: float = Field(default=30, gt=0)
    """Seconds a request body may go without any data before the request gets 408 and its connection is
    closed; also the grace period of HTTP_BODY_MIN_RATE."""
    HTTP_BODY_MIN_RATE: float = Field(default=10_000, ge=0)
    """Slowest accepted upload, in bytes per second: after HTTP_BODY_TIMEOUT seconds of grace, each byte
    received buys 1/HTTP_BODY_MIN_RATE s more, so a body must have arrived within HTTP_BODY_TIMEOUT +
    size / HTTP_BODY_MIN_RATE seconds (408 past it); 0 turns this rule off."""

    PAGE_WEBSOCKET_URL: str | None = None
    """The websocket URL that the page at / streams the microphone to, as it first shows it (the user can
    change it there); unset, `ws://` (`wss://` on an HTTPS page) on the page's own host at STREAMING_PORT,
    path `/streaming`. Set it when a proxy serves the websocket mode elsewhere."""

    MAX_AUDIO_SECONDS: float | None = Field(default=None, gt=0)
    """Longest audio accepted by /transcribe and /v1/audio/transcriptions, in seconds; longer gets 413 (and
    fails that file in `nemo-stt transcribe`).
    Checked on the container's stated duration before any decoding when it has one, else on the decoded length."""
    API_KEY: str | None = None
    """When set, every route but /healthcheck, /ready, /metrics and the page (/, /page/*), and every stream, needs
    `Authorization: Bearer API_KEY` (streams may pass `?api_key=` instead); unset, no key is checked."""

    # Operations
    SHUTDOWN_GRACE_SECONDS: float = Field(default=30, ge=0)
    """After SIGTERM, seconds that requests and streams in flight have to finish (new work is refused
    meanwhile); what is left after that is cancelled."""
    METRICS_PORT: int | None = Field(default=None, ge=1, le=65535)
    """Port of a Prometheus /metrics endpoint for the websocket and task modes (the HTTP mode serves
    /metrics on HTTP_PORT); unset, none."""

    # Batching (every front end's requests share one queue)
    BATCH_MAX_SIZE: int = Field(default=16, ge=1)
    """Most requests in one forward (on CPU too: measured in benchmarks/throughput.py); 64 on a GPU, 4 with
    INFERENCE_BACKEND=onnx."""
    BATCH_MAX_AUDIO_SEC: float = Field(default=120, gt=0)
    """Most padded audio in one forward (longest item x items), in seconds; 1200 on a GPU."""
    BATCH_MAX_WAIT_MS: float = Field(default=5, ge=0)
    """How long a forming batch waits for the next request: it waits while requests keep coming at most
    this far apart, so a lone request waits this long and a batch at most this x (BATCH_MAX_SIZE - 1)."""
    QUEUE_MAX_SIZE: int = Field(default=64, ge=1)
    """Requests in the engine at once, waiting or running, each with all its VAD segments and long-file
    windows; beyond, HTTP answers 503 with Retry-After, tasks wait, streams wait for their next decode;
    256 on a GPU."""

    # Task mode
    SERVICE_NAME: str = "stt"
    """Queue consumed by the Celery worker."""
    SERVICES_BROKER: str = Field(default="redis://localhost:6379",
                                 validation_alias=AliasChoices("SERVICES_BROKER", "SERVICE_BROKER"))
    """Broker URL (SERVICE_BROKER is accepted too)."""
    BROKER_PASS: str = ""
    """Broker password, put into the URL."""
    SHARED_FOLDER: str = "/opt/audio"
    """Folder holding the audio files that tasks name; nothing outside it is read."""
    RESULT_BACKEND: str | None = None
    """Celery result backend; unset means db 1 of a Redis broker, or rpc:// with RabbitMQ."""
    TASK_VISIBILITY_TIMEOUT: float = Field(default=3600, gt=0)
    """Redis broker: seconds before a task taken by a worker that died is given to another one."""

    # Streaming
    STREAMING_PORT: int = Field(default=80, ge=1, le=65535, validate_default=True)
    """Port of the websocket mode (with http in SERVICE_MODE too, another port than HTTP_PORT); the page at /
    (HTTP mode) streams to it on its own host unless PAGE_WEBSOCKET_URL says otherwise."""
    STREAMING_MIN_CHUNK_SIZE: float = Field(default=0.5, gt=0)
    """Seconds of new audio gathered before each decode."""
    STREAMING_BUFFER_TRIMMING_SEC: float = Field(default=8, gt=0)
    """Targeted maximum length of the audio buffer, in seconds."""
    STREAMING_PAUSE_FOR_FINAL: float = Field(default=1.5, gt=0)
    """Seconds of silence after which a final is sent."""
    STREAMING_TIMEOUT_FOR_SILENCE: float | None = Field(default=None, ge=1, le=2)
    """If set, a packet missing for this many packet durations counts as silence."""
    STREAMING_MAX_WORDS_IN_BUFFER: int = Field(default=4, ge=1)
    """How many words at the end of a partial may still change."""
    STREAMING_MAX_PARTIAL_ACTUALIZATION_PER_SECOND: float = Field(default=4, ge=0)
    """At most this many partials per second; 0 means no limit."""
    STREAMING_MAX_CONNECTIONS: int = Field(default=32, ge=1)
    """Streams served at once; more are closed with code 1013 (try again later)."""
    STREAMING_IDLE_TIMEOUT: float = Field(default=30, gt=0)
    """Seconds without any message after which a stream is closed (code 1008), after its last final."""
    STREAMING_MAX_BACKLOG_SEC: float = Field(default=30, gt=0)
    """Received audio of one stream not yet decoded, in seconds: past it the server stops reading that
    connection until its decoding catches up (back-pressure); a single frame holding more is closed with 1009."""
    STREAMING_MAX_BATCH: int = Field(default=64, ge=1)
    """Cache-aware streaming: most streams encoded in one batched step."""
    STREAMING_ENGINE: Literal["auto", "cache_aware", "buffered"] = "auto"
    """auto: cache-aware streaming when the model was trained with a limited right context, else buffered."""
    STREAMING_LOOKAHEAD_MS: float | None = Field(default=None, gt=0)
    """Cache-aware streaming: chunk length in ms, the closest the model was trained with; unset, the
    model's default context, with which streaming gives the offline transcript."""

    # Punctuation
    PUNCTUATION_MODEL: str | None = None
    """Path to a recasepunc checkpoint (0.4 or later) restoring case and punctuation in transcripts and
    streaming finals; `demo` is the embedded demo model (English, the demo model's vocabulary)."""
    PUNCTUATION_FORCE: bool = False
    """Apply PUNCTUATION_MODEL to an ASR model that writes punctuation and capitals itself (otherwise it is
    left out, with a warning)."""

    @field_validator("VAD", mode="before")
    @classmethod
    def _vad_aliases(cls, value):
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "1"):
                return "auditok"
            if lowered in ("false", "0", "none", "no"):
                return None
            return lowered
        return value

    @field_validator(*_FORMS)
    @classmethod
    def _has_its_form(cls, value, info):
        pattern, allowed = _FORMS[info.field_name]
        if value is not None and not re.fullmatch(pattern, value):
            raise ValueError(f"allowed: {allowed}")
        return value

    @field_validator("ARCHITECTURE", "SERVICE_MODE", mode="before")
    @classmethod
    def _lowercase(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("SERVICE_MODE")
    @classmethod
    def _modes(cls, value: str) -> str:
        """One canonical spelling: the modes in MODES' order, without spaces or repeats ("websocket, http,http"
        is "http,websocket"), so that a single mode is the same string as before."""
        names = [name.strip() for name in value.split(",")]
        unknown = [name for name in names if name not in MODES]
        if unknown:
            what = f"unknown mode {unknown[0]!r}" if unknown[0] else "an empty mode name"
            raise ValueError(f"{what}; allowed: http, task, websocket, or http,websocket "
                             "(several modes separated by commas)")
        modes = [mode for mode in MODES if mode in names]
        if "task" in modes and len(modes) > 1:
            # Celery's worker takes over the process: it installs its own signal handlers (warm and cold
            # shutdown), which Python lets only the main thread do, and runs its own pool and main loop.
            raise ValueError("task runs alone: the Celery worker takes the main thread and the process's "
                             "signal handling; run it as its own process beside the http/websocket one")
        return ",".join(modes)

    @field_validator("STREAMING_PORT")
    @classmethod
    def _own_port(cls, value: int, info: ValidationInfo) -> int:
        modes = info.data.get("SERVICE_MODE", "").split(",")
        if "http" in modes and "websocket" in modes and value == info.data.get("HTTP_PORT"):
            raise ValueError("the same port as HTTP_PORT: with SERVICE_MODE=http,websocket each mode needs its "
                             "own port (set STREAMING_PORT or HTTP_PORT)")
        return value

    @property
    def onnx_cache_dir(self) -> str:
        from pathlib import Path

        if self.ONNX_CACHE_DIR:
            return self.ONNX_CACHE_DIR
        return str(Path(self.XDG_CACHE_HOME or Path.home() / ".cache") / "nemo-stt" / "onnx")

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes `serve` runs, in MODES' order."""
        return tuple(self.SERVICE_MODE.split(","))


# Defaults of the variables that a GPU wants set otherwise, used when the environment leaves them unset:
# batches that fill the device (64 requests of up to about 19 s), and two inference loops, each on its
# own CUDA stream, so that one loop's host work overlaps the other's kernels; the queue holds the
# batches of both loops and the next ones. Not measured yet (see the README's GPU section).
GPU_DEFAULTS = {"BATCH_MAX_SIZE": 64, "BATCH_MAX_AUDIO_SEC": 1200.0, "CONCURRENCY": 1, "QUEUE_MAX_SIZE": 256}


def with_device_defaults(settings: Settings, on_gpu: bool) -> Settings:
    """`settings`, with GPU_DEFAULTS for the variables the environment (or an override) left unset, on a GPU."""
    return _unset_ones(settings, GPU_DEFAULTS) if on_gpu else settings


# Defaults of the onnx backend on a CPU, for the variables the environment leaves unset: two inference loops
# (NUM_THREADS then halves) sharing one ONNX Runtime session, and batches of at most 4 requests. Measured
# in benchmarks/throughput.py: the fastest layout of the raw graph, and of the service (see the README).
ONNX_DEFAULTS = {"CONCURRENCY": 1, "BATCH_MAX_SIZE": 4}


def with_backend_defaults(settings: Settings, on_gpu: bool) -> Settings:
    """`settings`, with ONNX_DEFAULTS for the variables left unset, for the onnx backend on a CPU."""
    return _unset_ones(settings, ONNX_DEFAULTS) if settings.INFERENCE_BACKEND == "onnx" and not on_gpu else settings


def _unset_ones(settings: Settings, defaults: dict) -> Settings:
    """`settings` with `defaults` for the variables that neither the environment nor an override set."""
    return settings.model_copy(update={name: value for name, value in defaults.items()
                                       if name not in settings.model_fields_set})


def load_settings(**overrides) -> Settings:
    """Read the environment (and explicit overrides); raise SettingsError with one line per bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = str(problem["loc"][0]) if problem["loc"] else "?"
            allowed = problem["msg"].removeprefix("Value error, ")  # pydantic's prefix to our own messages
            lines.append(f"invalid {name}={problem.get('input')!r}: {allowed}")
        raise SettingsError("\n".join(lines)) from None
