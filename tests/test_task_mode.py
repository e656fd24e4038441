"""Task mode against real brokers: a Celery client that does only what linto-transcription-service does."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from celery import Celery

from nemo_stt.audio import decode_audio

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, free_port, wer
from .recordings import RATE, UTTERANCES, as_wav, meeting

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
# Broker and result backend. With RabbitMQ, results go to Redis (RESULT_BACKEND), as in deployments that
# poll task states: the rpc:// backend reports no reliable intermediate state (tested on its own below).
BROKERS = {
    "redis": ("redis://127.0.0.1:{port}", "redis://127.0.0.1:{port}/1"),
    "rabbitmq": (RABBITMQ, "redis://127.0.0.1:{port}/1"),
}


@pytest.fixture(scope="module")
def redis_port():
    """A redis-server of the test's own on a free port (one of the machine's would do as well)."""
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(50):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() == b"PONG":
            break
        time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory, fixture_texts):
    folder = tmp_path_factory.mktemp("shared")
    for name in fixture_texts:
        shutil.copy(FIXTURES / name, folder / name)
    (folder / "sub").mkdir()
    shutil.copy(FIXTURES / "red_car.mp3", folder / "sub" / "red_car.mp3")
    (folder / "notes.txt").write_text("not audio\n" * 10)
    (folder / "corrupt.wav").write_bytes((FIXTURES / "anna_bread.wav").read_bytes()[:40] + b"\x13" * 100)
    outside = tmp_path_factory.mktemp("outside") / "secret.wav"
    shutil.copy(FIXTURES / "anna_bread.wav", outside)
    (folder / "link.wav").symlink_to(outside)
    audio = decode_audio(FIXTURES / "old_house.flac", 16000)
    (folder / "long.wav").write_bytes(as_wav(np.tile(np.concatenate([audio, np.zeros(8000, np.float32)]), 150)))
    (folder / "meeting-150s.wav").write_bytes(as_wav(meeting(150)))  # a few seconds' work
    return folder


class Worker:
    def __init__(self, broker: str, queue: str, folder: Path, **env: str):
        self.broker = broker
        self.log_path = folder.parent / f"worker-{uuid.uuid4().hex[:6]}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        full_env = {**os.environ, "SERVICE_MODE": "task", "SERVICES_BROKER": broker, "SERVICE_NAME": queue,
                    "SHARED_FOLDER": str(folder), "DEVICE": "cpu", "NUM_THREADS": "1", "CONCURRENCY": "1", **env}
        self.process = subprocess.Popen([sys.executable, "-m", "nemo_stt", "serve"], env=full_env,
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "ready." in self.log_path.read_text():
                return
            if self.process.poll() is not None:
                raise RuntimeError(self.log_path.read_text())
            time.sleep(0.3)
        raise RuntimeError(f"worker not ready:\n{self.log_path.read_text()}")

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        """The worker's log once it holds `text` (a task's result can reach the client before its log line)."""
        deadline = time.time() + timeout
        while text not in (log := self.log_path.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        assert text in log, f"{text!r} not in the worker's log:\n{log[-3000:]}"
        return log

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="module", params=sorted(BROKERS))
def served(request, redis_port, shared_folder):
    broker, backend = (url.format(port=redis_port) for url in BROKERS[request.param])
    # With Redis the worker finds its results database (db 1) by itself.
    env = {"RESULT_BACKEND": backend} if request.param == "rabbitmq" else {}
    queue = f"stt-test-{uuid.uuid4().hex[:8]}"
    worker = Worker(broker, queue, shared_folder, TASK_VISIBILITY_TIMEOUT="4", **env)
    worker.wait_ready()
    client = Celery("client", broker=broker, backend=backend)
    yield (request.param, broker, queue, client, env), worker
    worker.stop()


@pytest.fixture(scope="module")
def setup(served):
    """(broker kind, broker URL, queue, client, the worker's extra environment) of the module's worker."""
    return served[0]


@pytest.fixture(scope="module")
def worker(served):
    return served[1]


def send(client: Celery, queue: str, *args, **kwargs):
    return client.send_task("transcribe_task", queue=queue, args=list(args), kwargs=kwargs)


def assert_input_error(worker: Worker, task, message: str) -> None:
    """`task` failed with `message`, logged as the client's error: at INFO, without a traceback."""
    with pytest.raises(Exception, match=message):
        task.get(timeout=120)
    assert task.state == "FAILURE"
    # Celery logs an exception the task declares in `throws` this way; any other with ERROR and a traceback.
    worker.wait_for_log(f"INFO celery.app.trace: Task transcribe_task[{task.id}] raised expected: TaskInputError")


def test_transcripts_with_metadata(setup, shared_folder, fixture_texts):
    _, _, queue, client, _ = setup
    names = ["anna_bread.wav", "red_car.mp3", "doctor_letter.ogg", "children_park.m4a"]
    # The transcription service sends absolute paths inside the shared folder; relative ones work too.
    tasks = [send(client, queue, str(shared_folder / name), True, "en") for name in names[:2]]
    tasks += [send(client, queue, name, True) for name in names[2:]]
    for name, task in zip(names, tasks, strict=True):
        result = task.get(timeout=120)
        assert set(result) == {"text", "words", "confidence-score", "language"}
        assert wer(fixture_texts[name], result["text"]) <= OWN_TEXT_MAX_WER, (name, result["text"])
        assert result["words"] and all(set(w) == {"word", "start", "end", "conf"} for w in result["words"])
        assert 0 < result["confidence-score"] <= 1
    assert tasks[0].get()["language"] == "en"


def test_without_metadata(setup, fixture_texts):
    _, _, queue, client, _ = setup
    result = send(client, queue, "sub/red_car.mp3", False).get(timeout=120)
    assert result["words"] == [] and result["confidence-score"] == 0.0
    assert wer(fixture_texts["red_car.mp3"], result["text"]) <= OWN_TEXT_MAX_WER


@pytest.mark.parametrize(("path", "message"), [
    ("../outside/secret.wav", "outside the shared folder"),
    ("/etc/passwd", "outside the shared folder"),
    ("link.wav", "outside the shared folder"),
    ("missing.wav", "no such file"),
    ("corrupt.wav", "corrupt.wav"),
    ("notes.txt", "not a readable audio file"),
    ("anna_bread.wav\0.mp3", "must not contain a NUL byte"),
    ("x" * 300 + ".wav", "File name too long"),
])
def test_bad_input_fails_that_task_with_a_message(setup, worker, path, message, fixture_texts):
    _, _, queue, client, _ = setup
    assert_input_error(worker, send(client, queue, path, True), message)
    good = send(client, queue, "anna_bread.wav", True).get(timeout=120)
    assert wer(fixture_texts["anna_bread.wav"], good["text"]) <= OWN_TEXT_MAX_WER


def test_with_metadata_is_read_as_a_boolean_from_booleans_0_1_and_boolean_words(setup):
    _, _, queue, client, _ = setup
    # (value, what it means): JSON keeps 1 and true apart, so the worker sees both kinds.
    values = [(True, True), ("true", True), ("TRUE", True), (" Yes ", True), (1, True), ("1", True),
              (False, False), ("false", False), ("False", False), ("no", False), (0, False), ("0", False)]
    tasks = [send(client, queue, "anna_bread.wav", value) for value, _ in values]
    for (value, meaning), task in zip(values, tasks, strict=True):
        result = task.get(timeout=120)
        assert bool(result["words"]) is meaning, value
        assert (result["confidence-score"] > 0) is meaning, value


@pytest.mark.parametrize("value", ["maybe", "", 2, -1, 1.0, None, [], {"x": 1}])
def test_a_with_metadata_that_is_not_a_boolean_fails_the_task(setup, worker, value):
    _, _, queue, client, _ = setup
    assert_input_error(worker, send(client, queue, "anna_bread.wav", value), "with_metadata must be a boolean")


def test_language_must_be_a_string_or_null(setup, worker):
    _, _, queue, client, _ = setup
    for value in (5, True, ["en"], {"code": "en"}):
        assert_input_error(worker, send(client, queue, "anna_bread.wav", True, value),
                           "language must be a string or null")
    # Null or empty: the default language (the demo model's).
    assert [send(client, queue, "anna_bread.wav", True, value).get(timeout=120)["language"]
            for value in (None, "", "fr")] == ["en", "en", "fr"]


@pytest.mark.parametrize(("args", "kwargs", "reason"), [
    ([], {}, "missing a required argument: 'file_path'"),
    (["anna_bread.wav", True, "en", "extra"], {}, "too many positional arguments"),
    (["anna_bread.wav"], {"speaker": 2}, "unexpected keyword argument 'speaker'"),
    (["anna_bread.wav"], {"file_path": "red_car.mp3"}, "multiple values for argument 'file_path'"),
])
def test_a_call_with_wrong_arguments_fails_saying_what_the_task_takes(setup, worker, args, kwargs, reason):
    _, _, queue, client, _ = setup
    message = re.escape("transcribe_task takes (file_path, with_metadata=True, language=None)") + ".*" + reason
    assert_input_error(worker, send(client, queue, *args, **kwargs), message)


def test_the_arguments_may_be_given_by_keyword_and_the_last_two_left_out(setup, fixture_texts):
    _, _, queue, client, _ = setup
    by_keyword = send(client, queue, file_path="red_car.mp3", with_metadata=False, language="de").get(timeout=120)
    assert by_keyword["language"] == "de" and by_keyword["words"] == []
    alone = send(client, queue, "red_car.mp3").get(timeout=120)
    assert alone["words"] and alone["text"] == by_keyword["text"]
    assert wer(fixture_texts["red_car.mp3"], alone["text"]) <= OWN_TEXT_MAX_WER


def test_twenty_queued_tasks_all_complete(setup, fixture_texts):
    _, _, queue, client, _ = setup
    names = sorted(fixture_texts) * 3
    tasks = [send(client, queue, name, True) for name in names[:20]]
    texts = [task.get(timeout=300)["text"] for task in tasks]
    alone = {name: send(client, queue, name, True).get(timeout=120)["text"] for name in fixture_texts}
    assert texts == [alone[name] for name in names[:20]]


def test_a_long_task_publishes_progress(setup):
    _, _, queue, client, _ = setup
    task = send(client, queue, "long.wav", False)
    progress = []
    deadline = time.time() + 300
    while not task.ready() and time.time() < deadline:
        if task.state == "PROGRESS":
            progress.append(task.info["progress"])
        time.sleep(0.02)
    assert task.get(timeout=10)["text"]
    assert progress and all(0 < fraction < 1 for fraction in progress)
    assert progress == sorted(progress)


def test_a_killed_worker_loses_no_task(setup, shared_folder):
    kind, broker, _, client, env = setup
    queue = f"stt-kill-{uuid.uuid4().hex[:8]}"
    first = Worker(broker, queue, shared_folder, TASK_VISIBILITY_TIMEOUT="4", LONG_FILE_THRESHOLD="30",
                   LONG_FILE_CHUNK_LEN="20", **env)
    first.wait_ready()
    task = send(client, queue, "long.wav", True)
    deadline = time.time() + 120
    while task.state not in ("STARTED", "PROGRESS") and time.time() < deadline:
        time.sleep(0.05)
    assert task.state in ("STARTED", "PROGRESS")
    first.stop(signal.SIGKILL)
    second = Worker(broker, queue, shared_folder, TASK_VISIBILITY_TIMEOUT="4", **env)
    try:
        second.wait_ready()
        result = task.get(timeout=180)
        assert result["text"].count("house") >= 100, kind
    finally:
        second.stop()


def test_rabbitmq_with_the_rpc_result_backend(shared_folder, fixture_texts):
    # The default backend with an amqp:// broker: results go back to the client that sent the task.
    queue = f"stt-rpc-{uuid.uuid4().hex[:8]}"
    worker = Worker(RABBITMQ, queue, shared_folder)
    try:
        worker.wait_ready()
        client = Celery("client", broker=RABBITMQ, backend="rpc://")
        result = send(client, queue, "red_car.mp3", True).get(timeout=120)
        assert wer(fixture_texts["red_car.mp3"], result["text"]) <= OWN_TEXT_MAX_WER and result["words"]
        with pytest.raises(Exception, match="no such file"):
            send(client, queue, "missing.wav", True).get(timeout=120)
    finally:
        worker.stop()


def one_slot_worker(redis_port: int, shared_folder: Path) -> tuple[Worker, Celery, str]:
    """A worker on Redis that runs one task at a time (the others wait in the broker), and its client."""
    broker, backend = (url.format(port=redis_port) for url in BROKERS["redis"])
    queue = f"stt-revoke-{uuid.uuid4().hex[:8]}"
    worker = Worker(broker, queue, shared_folder, CONCURRENCY="0")
    worker.wait_ready()
    return worker, Celery("client", broker=broker, backend=backend), queue


def revoke_one_waiting(worker: Worker, client: Celery, queue: str):
    """A task of a few seconds, then one revoked while it waits behind that, then a short one: the three results."""
    running, revoked, last = (send(client, queue, name, False)
                              for name in ("meeting-150s.wav", "red_car.mp3", "anna_bread.wav"))
    deadline = time.time() + 60
    while running.state not in ("STARTED", "PROGRESS") and time.time() < deadline:
        time.sleep(0.05)
    revoked.revoke()  # terminate=False
    log = worker.wait_for_log(f"Tasks flagged as revoked: {revoked.id}")
    # The worker heard the revoke while the task still waited in the queue, behind the running one.
    assert not running.ready() and f"[{revoked.id}] received" not in log
    return running, revoked, last


def assert_skipped(worker: Worker, revoked, last) -> None:
    """`revoked` was skipped, with a line at INFO, and never transcribed; `last` ran after it."""
    assert last.get(timeout=300)["text"]
    assert revoked.state == "REVOKED"
    log = worker.wait_for_log(f"INFO celery.worker.request: Discarding revoked task: transcribe_task[{revoked.id}]")
    assert f"transcribe_task[{revoked.id}] succeeded" not in log
    assert not [line for line in log.splitlines() if revoked.id in line and " INFO " not in line]


def test_a_revoked_task_waiting_in_the_queue_is_skipped(redis_port, shared_folder):
    worker, client, queue = one_slot_worker(redis_port, shared_folder)
    try:
        running, revoked, last = revoke_one_waiting(worker, client, queue)
        assert running.get(timeout=300)["text"]
        assert_skipped(worker, revoked, last)
    finally:
        worker.stop()


def test_a_revoked_task_is_skipped_by_a_worker_started_after_the_revoke(redis_port, shared_folder):
    first, client, queue = one_slot_worker(redis_port, shared_folder)
    try:
        running, revoked, last = revoke_one_waiting(first, client, queue)
    finally:
        first.stop()  # SIGTERM: the running task finishes; the other two stay in the queue
    assert running.get(timeout=10)["text"] and f"[{revoked.id}] received" not in first.log_path.read_text()
    # The next worker never heard the revoke: it learns it from the result backend.
    second = Worker(first.broker, queue, shared_folder, CONCURRENCY="0")
    try:
        second.wait_ready()
        assert_skipped(second, revoked, last)
    finally:
        second.stop()


PAUSE = 1.6  # seconds of silence after each utterance of a meeting


def meeting_text(seconds: float, fixture_texts: dict[str, str]) -> str:
    """The words of the utterances that `meeting(seconds, PAUSE)` holds whole, in order (the last may be cut)."""
    lengths = [len(decode_audio(FIXTURES / name, RATE)) / RATE for name in UTTERANCES]
    texts, start, index = [], 0.0, 0
    while start + lengths[index % len(UTTERANCES)] <= seconds:
        texts.append(fixture_texts[UTTERANCES[index % len(UTTERANCES)]])
        start += lengths[index % len(UTTERANCES)] + PAUSE
        index += 1
    return " ".join(texts)


@pytest.fixture(scope="module")
def meeting_file(shared_folder, fixture_texts):
    """A 470-s meeting: 106 whole utterances and their pauses, which the VAD cuts into 107 segments."""
    (shared_folder / "meeting.wav").write_bytes(as_wav(meeting(470, PAUSE)))
    return "meeting.wav", meeting_text(470, fixture_texts)


def assert_meeting_transcribed(task, expected: str) -> None:
    result = task.get(timeout=300)
    assert task.state == "SUCCESS"
    # The demo model is small: most of the words are there, in order, and not many more.
    words = result["text"].split()
    missing = Counter(expected.split()) - Counter(words)
    assert missing.total() <= 0.25 * len(expected.split()), missing.most_common(10)
    assert wer(expected, result["text"]) <= 0.3
    assert len(result["words"]) == len(words)


def test_a_meeting_of_more_speech_segments_than_the_queue_size_succeeds(setup, meeting_file):
    _, _, queue, client, _ = setup  # QUEUE_MAX_SIZE is 64
    name, expected = meeting_file
    assert_meeting_transcribed(send(client, queue, name, True), expected)


def test_two_meetings_at_once_succeed_with_a_queue_size_of_eight(redis_port, shared_folder, meeting_file):
    broker, backend = (url.format(port=redis_port) for url in BROKERS["redis"])
    queue = f"stt-queue8-{uuid.uuid4().hex[:8]}"
    worker = Worker(broker, queue, shared_folder, QUEUE_MAX_SIZE="8")  # two task slots, as CONCURRENCY=1 gives
    try:
        worker.wait_ready()
        client = Celery("client", broker=broker, backend=backend)
        name, expected = meeting_file
        tasks = [send(client, queue, name, True) for _ in range(2)]
        for task in tasks:
            assert_meeting_transcribed(task, expected)
    finally:
        worker.stop()


def test_the_worker_serves_its_metrics_on_metrics_port(redis_port, shared_folder):
    import httpx

    broker = BROKERS["redis"][0].format(port=redis_port)
    queue, port = f"stt-test-{uuid.uuid4().hex[:8]}", free_port()
    worker = Worker(broker, queue, shared_folder, METRICS_PORT=str(port))
    try:
        worker.wait_ready()
        client = Celery("client", broker=broker, backend=BROKERS["redis"][1].format(port=redis_port))
        name = sorted(p.name for p in shared_folder.iterdir() if p.suffix in (".wav", ".mp3", ".flac"))[0]
        send(client, queue, name, True).get(timeout=120)
        with pytest.raises(Exception, match="outside the shared folder"):
            send(client, queue, "../../etc/passwd", True).get(timeout=120)
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'nemo_stt_tasks_total{outcome="success"} 1.0' in scraped
        assert 'nemo_stt_tasks_total{outcome="invalid_input"} 1.0' in scraped
        audio = float(re.search(r'nemo_stt_audio_seconds_total\{mode="task"\} (\S+)', scraped)[1])
        assert audio == pytest.approx(len(decode_audio(shared_folder / name, RATE)) / RATE, abs=0.01)
        assert float(re.search(r"nemo_stt_batch_size_count (\S+)", scraped)[1]) >= 1
    finally:
        worker.stop()
