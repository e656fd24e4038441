"""Task mode: a Celery worker serving `transcribe_task` on the queue SERVICE_NAME, as LinTO's services expect.

Clients (linto-transcription-service) call
`send_task("transcribe_task", queue=SERVICE_NAME, args=[file_path, with_metadata, language])` and read
the result with `AsyncResult.get()`. The audio is read from the shared folder; nothing else is.

Reliability: tasks are acknowledged after they finish (`acks_late`) and given back to the broker
when the worker dies (`reject_on_worker_lost`), with a prefetch of one, so that a killed worker
loses nothing; SIGTERM lets the running tasks finish first (Celery's warm shutdown). A revoked task
that has not started is skipped, by a worker that did not hear the revoke too (`_RevokeCheckedRequest`).
"""

import inspect
import logging
import os
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from celery import Celery, Task, states
from celery.backends.rpc import RPCBackend
from celery.worker import state as worker_state
from celery.worker.request import Request

from . import metrics, results
from .audio import AudioDecodeError
from .service import load_engine, runs_on_gpu
from .settings import Settings

log = logging.getLogger(__name__)

TASK_NAME = "transcribe_task"


class TaskInputError(ValueError):
    """The task's arguments cannot be served (a path outside the shared folder, a missing file...)."""


_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})


def _shown(value) -> str:
    """`value` as an error message quotes it: its repr, cut short (a client may send anything, of any size)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def metadata_flag(value) -> bool:
    """`with_metadata` as a boolean: True/False, the ints 1/0, or true/false/1/0/yes/no in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise TaskInputError("with_metadata must be a boolean (true or false; 1, 0, yes and no are accepted), "
                         f"not {_shown(value)}")


def task_language(value) -> str | None:
    """`language` as the engine takes it: a string, or None (null or empty) for the default language."""
    if value is None or isinstance(value, str):
        return value or None
    raise TaskInputError(f"language must be a string or null, not {_shown(value)}")


class _RevokeCheckedRequest(Request):
    """A task message that is skipped once revoked, whether or not this worker heard the revoke.

    Celery keeps revokes in each worker's memory, filled by the broadcast that `revoke()` sends: a worker
    that was not running then (restarted, or started later: `--without-mingle`, so it asks no peer) would
    run the task. The workers that hear the broadcast also write REVOKED to the result backend (Celery
    5.6.2 and later), which this reads before a task runs.
    """

    def revoked(self):
        if super().revoked():
            return True
        backend = self.task.backend
        if isinstance(backend, RPCBackend):  # results are messages to the client: nothing to read back
            return False
        try:
            if backend.get_state(self.id) != states.REVOKED:
                return False
        except Exception as error:  # the backend unreachable: run the task rather than lose it
            log.warning("could not read the state of task %s: %s", self.id, error)
            return False
        worker_state.revoked.add(self.id)
        return super().revoked()


class _TranscribeTask(Task):
    """The task's class: its messages are `_RevokeCheckedRequest`s, and its calls are checked against
    the function's signature before it runs.

    Celery calls the function with whatever the message holds: a wrong number of arguments or an unknown
    keyword would be a TypeError with a traceback, logged as the worker's error. It is the client's.
    """

    Request = _RevokeCheckedRequest

    def before_start(self, task_id, args, kwargs):
        signature = inspect.signature(self.run)
        try:
            signature.bind(*args, **kwargs)
        except TypeError as error:
            plain = signature.replace(parameters=[parameter.replace(annotation=inspect.Parameter.empty)
                                                  for parameter in signature.parameters.values()],
                                      return_annotation=inspect.Signature.empty)
            keywords = f" and the keywords {_shown(sorted(kwargs))}" if kwargs else ""
            raise TaskInputError(f"{self.name} takes {plain}; called with {len(args)} positional "
                                 f"argument(s){keywords}: {error}") from None


def broker_urls(settings: Settings) -> tuple[str, str]:
    """Broker and result backend URLs: BROKER_PASS goes into the URL; Redis keeps results on db 1."""
    parts = urlsplit(settings.SERVICES_BROKER)
    netloc = parts.netloc
    if settings.BROKER_PASS and "@" not in netloc:
        user = "guest" if parts.scheme.startswith("amqp") else ""
        netloc = f"{user}:{quote(settings.BROKER_PASS, safe='')}@{netloc}"
    if parts.scheme in ("redis", "rediss"):
        broker = urlunsplit((parts.scheme, netloc, "/0", parts.query, ""))
        backend = settings.RESULT_BACKEND or urlunsplit((parts.scheme, netloc, "/1", parts.query, ""))
    else:
        broker = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        backend = settings.RESULT_BACKEND or "rpc://"
    return broker, backend


def resolve_audio_path(shared_folder: str, file_path: str) -> Path:
    """The file named by a task, which must lie inside the shared folder once links are resolved."""
    root = Path(shared_folder).resolve()
    if not isinstance(file_path, str) or not file_path:
        raise TaskInputError(f"file_path must be a non-empty string, not {_shown(file_path)}")
    if "\0" in file_path:  # no file name holds one; the system calls would raise a bare ValueError
        raise TaskInputError(f"file_path must not contain a NUL byte: {_shown(file_path)}")
    candidate = Path(file_path)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise TaskInputError(f"{file_path} is outside the shared folder {root}")
    try:
        is_file = resolved.is_file()
    except OSError as error:  # a name too long, a component that is not a folder...
        raise TaskInputError(f"{_shown(file_path)}: {error.strerror}") from None
    if not is_file:
        raise TaskInputError(f"{file_path}: no such file in the shared folder {root}")
    return resolved


def create_celery(settings: Settings, engine=None) -> Celery:
    """The Celery app with `transcribe_task`; `engine` is loaded on first use when not given."""
    broker, backend = broker_urls(settings)
    app = Celery("nemo_stt", broker=broker, backend=backend)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_default_queue=settings.SERVICE_NAME,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.TASK_VISIBILITY_TIMEOUT},
        result_extended=True,
        worker_hijack_root_logger=False,
    )
    state = {"engine": engine}

    def get_engine():
        if state["engine"] is None:
            state["engine"] = load_engine(settings, warm_up=False)
        return state["engine"]

    # Input errors are the client's: report them as failures without a traceback in the log.
    @app.task(name=TASK_NAME, bind=True, base=_TranscribeTask, throws=(TaskInputError,))
    def transcribe_task(self, file_path: str, with_metadata: bool = True, language: str | None = None) -> dict:
        try:
            with_metadata = metadata_flag(with_metadata)
            language = task_language(language)
            path = resolve_audio_path(settings.SHARED_FOLDER, file_path)

            def progress(fraction: float) -> None:
                if fraction < 1.0:
                    self.update_state(state="PROGRESS", meta={"progress": round(fraction, 3)})

            try:
                transcript = get_engine().transcribe_source(path, language, progress=progress)
            except AudioDecodeError as error:
                raise TaskInputError(f"{file_path}: {error}") from None
        except TaskInputError:
            metrics.TASKS.labels("invalid_input").inc()
            raise
        except Exception:
            metrics.TASKS.labels("failure").inc()
            raise
        metrics.TASKS.labels("success").inc()
        metrics.AUDIO_SECONDS.labels("task").inc(transcript.duration or 0.0)
        return results.to_json(transcript, with_metadata=with_metadata)

    return app


def run_worker(settings: Settings) -> None:
    # The model is loaded before the worker consumes anything: "ready" means ready to transcribe.
    engine = load_engine(settings)
    app = create_celery(settings, engine)
    metrics.watch_engine(engine)
    metrics.serve_on_port(settings.METRICS_PORT)
    on_gpu = runs_on_gpu(settings)
    # Threads share one model and its batcher: parallel tasks are batched together. On GPU one
    # process owns the device and runs tasks one at a time (solo pool), as the seed advises.
    pool = ["--pool=solo"] if on_gpu else ["--pool=threads", f"--concurrency={settings.CONCURRENCY + 1}"]
    app.worker_main([
        "worker", f"--queues={settings.SERVICE_NAME}", *pool, "--loglevel=INFO",
        f"--hostname={settings.SERVICE_NAME}@{os.uname().nodename}-{os.getpid()}", "--without-gossip",
        "--without-mingle",
    ])
