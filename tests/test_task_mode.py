"""Task mode against real brokers: a Celery client that does only what linto-transcription-service does."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from celery import Celery

from nemo_stt.audio import decode_audio

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, free_port, wer
from .test_long_files import as_wav

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
    return folder


class Worker:
    def __init__(self, broker: str, queue: str, folder: Path, **env: str):
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

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="module", params=sorted(BROKERS))
def setup(request, redis_port, shared_folder):
    broker, backend = (url.format(port=redis_port) for url in BROKERS[request.param])
    # With Redis the worker finds its results database (db 1) by itself.
    env = {"RESULT_BACKEND": backend} if request.param == "rabbitmq" else {}
    queue = f"stt-test-{uuid.uuid4().hex[:8]}"
    worker = Worker(broker, queue, shared_folder, TASK_VISIBILITY_TIMEOUT="4", **env)
    worker.wait_ready()
    client = Celery("client", broker=broker, backend=backend)
    yield request.param, broker, queue, client, env
    worker.stop()


def send(client: Celery, queue: str, *args):
    return client.send_task("transcribe_task", queue=queue, args=list(args))


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
])
def test_bad_input_fails_that_task_with_a_message(setup, path, message, fixture_texts):
    _, _, queue, client, _ = setup
    bad = send(client, queue, path, True)
    with pytest.raises(Exception, match=message):
        bad.get(timeout=120)
    assert bad.state == "FAILURE"
    good = send(client, queue, "anna_bread.wav", True).get(timeout=120)
    assert wer(fixture_texts["anna_bread.wav"], good["text"]) <= OWN_TEXT_MAX_WER


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
