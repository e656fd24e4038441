"""`nemo-stt serve` starts in every mode on a small replica of each family and says which family, decoder
and streaming engine it runs; each answers one request, task or stream.

One process per mode and replica, started in turn (each imports NeMo: a few seconds of the suite's time),
and killed once it has answered: clean shutdowns are tested elsewhere, and the interpreter's teardown would
cost the suite seconds per process.
"""

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from celery import Celery

from nemo_stt.audio import decode_audio

from .conftest import FIXTURES, REPO, ServerProcess, free_port
from .test_task_mode import Worker, redis_port, send  # noqa: F401 (redis_port: the module's Redis server)
from .test_websocket import stream

# On the CPU, transducers decode with the engine's NumPy greedy decoder (engine/transducer_greedy.py).
GREEDY = "rnnt (NumPy greedy)"
# replica (benchmarks/make_replicas.py --small) -> the model class, family and decoder the start-up log
# names, and the streaming engine that STREAMING_ENGINE=auto picks for it
FAMILIES = {
    "parakeet-ctc-1.1b": ("EncDecCTCModelBPE", "CTC", "ctc", "buffered"),
    "parakeet-tdt-0.6b-v2": ("EncDecRNNTBPEModel", "TDT", GREEDY, "buffered"),
    "parakeet-tdt-0.6b-v3": ("EncDecRNNTBPEModel", "TDT", GREEDY, "buffered"),
    "stt_fr_fastconformer_hybrid_large_pc": ("EncDecHybridRNNTCTCBPEModel", "hybrid RNNT+CTC", GREEDY, "buffered"),
    "stt_en_fastconformer_hybrid_medium_streaming_80ms_pc": ("EncDecHybridRNNTCTCBPEModel", "hybrid RNNT+CTC",
                                                             GREEDY, "cache-aware"),
}
# The multilingual replica runs with LANGUAGE set: results report it, or the language a request names
# (the model itself reports none).
MULTILINGUAL = "parakeet-tdt-0.6b-v3"
LANGUAGE = "de"
AUDIO = "anna_bread.wav"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> dict[str, str]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_replicas

    directory = tmp_path_factory.mktemp("replicas")
    torch.manual_seed(0)
    return {name: str(make_replicas.build(name, directory, small=True)) for name in FAMILIES}


def environment(name: str) -> dict[str, str]:
    return {"NUM_THREADS": "1", "VAD": "false", **({"LANGUAGE": LANGUAGE} if name == MULTILINGUAL else {})}


def assert_logs_family(log: str, name: str) -> None:
    model_class, family, decoder, _ = FAMILIES[name]
    ready = [line for line in log.splitlines() if "model ready" in line]
    assert ready and re.search(rf"\({re.escape(model_class)}: {re.escape(family)}, {re.escape(decoder)} decoding\)",
                               ready[0]), log[-2000:]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_http_mode_starts_on_a_replica_and_logs_its_family_and_decoder(replicas, name):
    server = ServerProcess({"MODEL": replicas[name], **environment(name)})
    try:
        assert_logs_family(server.output(), name)

        def post(route: str, **fields: str) -> dict:
            with open(FIXTURES / AUDIO, "rb") as audio:
                response = httpx.post(f"{server.url}{route}", files={"file": ("a.wav", audio, "audio/wav")},
                                      data=fields, headers={"accept": "application/json"}, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()

        assert "text" in post("/transcribe")
        if name == MULTILINGUAL:
            assert post("/transcribe")["language"] == LANGUAGE
            assert post("/transcribe", language="fr")["language"] == "fr"
            verbose = {"model": "any", "response_format": "verbose_json"}
            assert post("/v1/audio/transcriptions", **verbose)["language"] == LANGUAGE
            assert post("/v1/audio/transcriptions", **verbose, language="es")["language"] == "es"
    finally:
        server.process.kill()
        server.process.wait(30)
        server.log.close()


@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shared")
    shutil.copy(FIXTURES / AUDIO, folder / AUDIO)
    return folder


@pytest.mark.parametrize("name", list(FAMILIES))
def test_task_mode_starts_on_a_replica_and_answers_a_task(replicas, name, redis_port, shared_folder):  # noqa: F811
    broker, backend = f"redis://127.0.0.1:{redis_port}", f"redis://127.0.0.1:{redis_port}/1"
    queue = f"stt-replica-{uuid.uuid4().hex[:8]}"
    worker = Worker(broker, queue, shared_folder, MODEL=replicas[name], CONCURRENCY="0", **environment(name))
    try:
        worker.wait_ready()
        assert_logs_family(worker.log_path.read_text(), name)
        client = Celery("client", broker=broker, backend=backend)
        result = send(client, queue, AUDIO, True).get(timeout=120)
        assert set(result) == {"text", "words", "confidence-score", "language"}
        if name == MULTILINGUAL:
            assert result["language"] == LANGUAGE
            assert send(client, queue, AUDIO, False, "it").get(timeout=120)["language"] == "it"
    finally:
        worker.stop(signal.SIGKILL)


class StreamingServer:
    """`nemo-stt serve` in websocket mode, with its log kept."""

    def __init__(self, log_path: Path, env: dict[str, str]):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/streaming"
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "nemo_stt", "serve"],
                                            env={**os.environ, "SERVICE_MODE": "websocket", "DEVICE": "cpu",
                                                 "STREAMING_PORT": str(self.port), **env},
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while f"streaming on port {self.port}" not in self.log():
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streaming server not ready:\n{self.log()[-3000:]}")
            time.sleep(0.3)

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_websocket_mode_starts_on_a_replica_with_its_streaming_engine(replicas, name, tmp_path):
    server = StreamingServer(tmp_path / "server.log", {"MODEL": replicas[name], **environment(name)})
    try:
        log = server.log()
        assert_logs_family(log, name)
        assert f"streaming engine: {FAMILIES[name][3]}" in log, log[-2000:]
        audio = np.concatenate([decode_audio(FIXTURES / AUDIO, 16000), np.zeros(8000, np.float32)])
        messages = asyncio.run(stream(server.url, audio, 16000, speed=float("inf")))
        assert "text" in messages[-1], messages  # the last final, after eof (stream() checked the close: 1000)
    finally:
        server.kill()
