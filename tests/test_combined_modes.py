"""SERVICE_MODE=http,websocket: both front ends in one `nemo-stt serve` process, on one engine and one model."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from nemo_stt.audio import decode_audio

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, ServerProcess, free_port, wer
from .test_operations import close_of, metric, slow_post, stream_file
from .test_websocket import finals_text

ROOT = Path(__file__).resolve().parent.parent
KEY = {"Authorization": "Bearer s3cret-key"}


def combined_server(**env: str) -> ServerProcess:
    streaming_port = free_port()
    server = ServerProcess({"SERVICE_MODE": "http,websocket", "STREAMING_PORT": str(streaming_port), **env})
    server.ws_url = f"ws://127.0.0.1:{streaming_port}/streaming"
    return server


@pytest.fixture(scope="module")
def server():
    metrics_port = free_port()
    process = combined_server(API_KEY="s3cret-key", SHUTDOWN_GRACE_SECONDS="30", STREAMING_PAUSE_FOR_FINAL="1.0",
                              NUM_THREADS="2", METRICS_PORT=str(metrics_port))
    process.metrics_port = metrics_port
    yield process
    if process.process.poll() is None:
        process.stop()


def test_both_modes_answer_in_one_process_with_one_model_and_one_metrics_endpoint(server, fixture_texts):
    upload = httpx.post(f"{server.url}/transcribe", headers=KEY, timeout=60,
                        files={"file": ("anna_bread.wav", (FIXTURES / "anna_bread.wav").read_bytes())})
    assert upload.status_code == 200, upload.text
    assert wer(fixture_texts["anna_bread.wav"], upload.json()["text"]) <= OWN_TEXT_MAX_WER
    speech = np.concatenate([decode_audio(FIXTURES / "red_car.mp3", 16000), np.zeros(16000, np.float32)])
    messages, code = asyncio.run(stream_file(server.ws_url, speech, speed=4, additional_headers=KEY))
    assert code == 1000
    assert wer(fixture_texts["red_car.mp3"], finals_text(messages)) <= OWN_TEXT_MAX_WER
    log = server.output()
    assert log.count("model ready:") == 1, log
    # /metrics on the HTTP port counts both modes; METRICS_PORT is left unbound, with a warning.
    assert metric(server.url, "nemo_stt_http_requests_total", route="/transcribe", status="200") >= 1
    assert metric(server.url, "nemo_stt_streams_closed_total", code="1000") >= 1
    assert metric(server.url, "nemo_stt_audio_seconds_total", mode="http") > 0
    assert f"METRICS_PORT={server.metrics_port} is not used" in log
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.metrics_port), timeout=2).close()


def test_the_api_key_guards_both_modes_but_not_the_probes(server):
    refused = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", b"RIFF")})
    assert refused.status_code == 401
    assert asyncio.run(close_of(server.ws_url))[0] == 1008
    assert asyncio.run(close_of(server.ws_url + "?api_key=nope"))[0] == 1008
    assert httpx.get(f"{server.url}/ready").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_sigterm_drains_a_request_and_a_stream_in_flight_then_exits_0(server, fixture_texts):
    # Last in the module: it ends the module's server.
    speech = np.concatenate([decode_audio(FIXTURES / "old_house.flac", 16000), np.zeros(16000 * 3, np.float32)])
    answer: dict = {}
    request = threading.Thread(target=lambda: answer.setdefault("response", slow_post(
        server.url, (FIXTURES / "anna_bread.wav").read_bytes(), seconds=5, headers=KEY)))

    async def scenario():
        started = asyncio.Event()
        streaming = asyncio.create_task(stream_file(server.ws_url, speech, started, additional_headers=KEY))
        await started.wait()
        request.start()
        await asyncio.sleep(1.0)
        server.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        ready = await asyncio.to_thread(httpx.get, f"{server.url}/ready")
        new_request = await asyncio.to_thread(httpx.post, f"{server.url}/transcribe", headers=KEY,
                                              files={"file": ("a.wav", b"RIFF")})
        new_stream = await close_of(server.ws_url, additional_headers=KEY)
        assert not streaming.done() and server.process.poll() is None  # still draining
        return await streaming, ready, new_request, new_stream

    (messages, code), ready, new_request, new_stream = asyncio.run(scenario())
    assert (ready.status_code, ready.text) == (503, "draining")
    assert new_request.status_code == 503 and "shutting down" in new_request.json()["detail"]
    assert new_stream[0] == 1013 and "shutting down" in new_stream[1]
    assert code == 1000 and "text" in messages[-1]
    assert wer(fixture_texts["old_house.flac"], finals_text(messages)) <= OWN_TEXT_MAX_WER
    request.join(30)
    assert answer["response"].status_code == 200, answer["response"].text
    assert wer(fixture_texts["anna_bread.wav"], answer["response"].json()["text"]) <= OWN_TEXT_MAX_WER
    assert server.process.wait(60) == 0  # the interpreter's exit (torch, NeMo) is slow on a loaded machine
    assert "drained: every request and stream in flight ended" in server.output()


def test_a_taken_streaming_port_stops_start_up_with_one_line():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"SERVICE_MODE": "http,websocket", "HTTP_PORT": str(free_port()), "STREAMING_PORT": str(port),
               "DEVICE": "cpu", "NUM_THREADS": "1"}
        completed = subprocess.run([sys.executable, "-m", "nemo_stt", "serve"], env={**os.environ, **env},
                                   capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == f"error: cannot listen on STREAMING_PORT={port}: error " \
        f"while attempting to bind on address ('0.0.0.0', {port}): address already in use"
    assert "Traceback" not in completed.stderr


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_the_combined_process_holds_the_model_once(tmp_path_factory):
    # A random ~30 M parameter model (122 MB of weights): loaded twice, it would show in the RSS, which the
    # demo model (a few MB) would not.
    model = tmp_path_factory.mktemp("model") / "medium.nemo"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_benchmark_model.py"), "--out", str(model)],
                   check=True, capture_output=True, timeout=600)
    weights = model.stat().st_size
    env = {"MODEL": str(model), "NUM_THREADS": "2", "VAD": "false"}
    rss = {}
    for name, start in (("http", lambda: ServerProcess(env)), ("http,websocket", lambda: combined_server(**env))):
        process = start()  # one at a time: never two models loading at once
        try:
            time.sleep(1)  # past the warm-up's last allocations
            rss[name] = _rss_bytes(process.process.pid)
            assert process.output().count("model ready:") == 1
        finally:
            process.stop()
    assert rss["http,websocket"] < rss["http"] + weights / 2, (rss, weights)
