"""Operations, end to end against `nemo-stt serve` processes: readiness and graceful shutdown on SIGTERM,
Prometheus metrics, the API key and the longest audio accepted."""

import asyncio
import json
import re
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from nemo_stt.audio import decode_audio

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, ServerProcess, free_port, module_server, wer
from .recordings import as_pcm16, as_wav, meeting
from .test_websocket import StreamingServerProcess, finals_text


def multipart(name: str, content: bytes, boundary: str = "nemo-stt-boundary") -> tuple[bytes, dict]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def slow_post(url: str, content: bytes, seconds: float, pieces: int = 10, headers: dict | None = None):
    """A /transcribe request whose body takes `seconds` to arrive: it is in flight all that time."""
    body, form_headers = multipart("slow.wav", content)
    step = len(body) // pieces + 1

    def chunks():
        for offset in range(0, len(body), step):
            yield body[offset:offset + step]
            time.sleep(seconds / pieces)

    return httpx.post(f"{url}/transcribe", content=chunks(), timeout=60,
                      headers={**form_headers, "content-length": str(len(body)), **(headers or {})})


def metric(server_url: str, name: str, **labels) -> float:
    """The value of one sample of /metrics (0 when it is not there yet)."""
    text = httpx.get(f"{server_url}/metrics").text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name and ",".join(sorted((match[2] or "").split(","))) == wanted:
            return float(match[3])
    return 0.0


def test_sigterm_lets_a_request_in_flight_finish_refuses_new_work_and_exits_0(fixture_texts):
    server = ServerProcess({"SHUTDOWN_GRACE_SECONDS": "30", "NUM_THREADS": "2"})
    try:
        assert httpx.get(f"{server.url}/ready").status_code == 200
        answer: dict = {}
        request = threading.Thread(target=lambda: answer.setdefault(
            "response", slow_post(server.url, (FIXTURES / "anna_bread.wav").read_bytes(), seconds=4)))
        request.start()
        time.sleep(1.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        ready = httpx.get(f"{server.url}/ready")
        assert (ready.status_code, ready.text) == (503, "draining")
        assert httpx.get(f"{server.url}/healthcheck").text == "1"  # alive, for LinTO's clients and liveness
        refused = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", b"RIFF")})
        assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
        openai = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")})
        assert openai.status_code == 503 and openai.json()["error"]["type"] == "server_error"
        assert server.process.poll() is None  # still draining: the slow request is in flight
        request.join(30)
        response = answer["response"]
        assert response.status_code == 200, response.text
        assert wer(fixture_texts["anna_bread.wav"], response.json()["text"]) <= OWN_TEXT_MAX_WER
        assert server.process.wait(15) == 0
        assert "drained: every request in flight was answered" in server.output()
    finally:
        if server.process.poll() is None:
            server.process.kill()


def stalled_upload(url: str, path: str) -> socket.socket:
    """A connection whose request to `path` has sent its headers and part of its body, then waits: in flight."""
    body, headers = multipart("stalled.wav", (FIXTURES / "anna_bread.wav").read_bytes())
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {headers['content-type']}\r\n"
                       f"content-length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
    return connection


def answer_of(connection: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the answer on `connection`, read until the server closes it."""
    connection.settimeout(30)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    connection.close()
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_past_the_grace_what_is_left_is_answered_503_and_logged_in_a_line():
    server = ServerProcess({"SHUTDOWN_GRACE_SECONDS": "1"})
    try:
        linto = stalled_upload(server.url, "/transcribe")
        openai = stalled_upload(server.url, "/v1/audio/transcriptions")
        time.sleep(1.0)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # Cancelled past the grace: a 503 to retry elsewhere, in each API's error shape, not uvicorn's 500.
        status, body = answer_of(linto)
        assert status == 503 and "shut down before this request finished" in body["detail"]
        status, body = answer_of(openai)
        assert status == 503 and body["error"]["type"] == "server_error"
        # The grace and uvicorn's second to cancel (2.2 s here), not the time the uploads would have taken.
        assert time.monotonic() - signalled < 8
        assert server.process.wait(60) == 0  # the interpreter's exit (torch, NeMo) takes 6 to 12 s here
        log = server.output()
        assert "cancelling 2 request(s) in flight" in log
        assert log.count("cancelled at shutdown, unfinished after the grace: answered 503") == 2
        assert "Traceback" not in log and "CancelledError" not in log
    finally:
        if server.process.poll() is None:
            server.process.kill()


keyed_server = module_server({"API_KEY": "s3cret-key", "MAX_AUDIO_SECONDS": "20", "VAD": "false"})


def test_probes_and_metrics_need_no_key(keyed_server):
    assert httpx.get(f"{keyed_server.url}/healthcheck").text == "1"
    assert httpx.get(f"{keyed_server.url}/ready").status_code == 200
    assert "nemo_stt_http_requests_total" in httpx.get(f"{keyed_server.url}/metrics").text


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "s3cret-key", "Basic czNjcmV0LWtleQ=="])
def test_a_wrong_or_missing_key_is_401_in_each_api_shape(keyed_server, authorization):
    headers = {"authorization": authorization} if authorization else {}
    files = {"file": ("anna_bread.wav", (FIXTURES / "anna_bread.wav").read_bytes())}
    linto = httpx.post(f"{keyed_server.url}/transcribe", files=files, headers=headers)
    assert linto.status_code == 401 and "API key" in linto.json()["detail"]
    assert linto.headers["www-authenticate"] == "Bearer"
    openai = httpx.post(f"{keyed_server.url}/v1/audio/transcriptions", files=files, headers=headers)
    assert openai.status_code == 401
    assert openai.json()["error"]["code"] == "invalid_api_key"
    assert openai.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{keyed_server.url}/v1/models", headers=headers).status_code == 401


def test_the_key_is_refused_before_the_body_is_read(keyed_server):
    # Headers announcing a 100-MB body that never comes: the answer does not wait for it.
    with socket.create_connection(("127.0.0.1", keyed_server.port), timeout=5) as sock:
        sock.sendall(b"POST /transcribe HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=b\r\n"
                     b"content-length: 100000000\r\n\r\n")
        assert sock.recv(1000).startswith(b"HTTP/1.1 401")


def test_the_right_key_is_served_on_both_routes_and_counted(keyed_server, fixture_texts):
    headers = {"authorization": "Bearer s3cret-key"}
    before = {
        "requests": metric(keyed_server.url, "nemo_stt_http_requests_total", route="/transcribe", status="200"),
        "batches": metric(keyed_server.url, "nemo_stt_batch_size_count"),
        "audio": metric(keyed_server.url, "nemo_stt_audio_seconds_total", mode="http"),
        "latency": metric(keyed_server.url, "nemo_stt_http_request_duration_seconds_count", route="/transcribe"),
        "refused": metric(keyed_server.url, "nemo_stt_http_requests_total", route="/transcribe", status="401"),
    }
    content = (FIXTURES / "red_car.mp3").read_bytes()
    response = httpx.post(f"{keyed_server.url}/transcribe", files={"file": ("red_car.mp3", content)},
                          headers=headers, timeout=60)
    assert response.status_code == 200
    assert wer(fixture_texts["red_car.mp3"], response.json()["text"]) <= OWN_TEXT_MAX_WER
    openai = httpx.post(f"{keyed_server.url}/v1/audio/transcriptions", files={"file": ("red_car.mp3", content)},
                        headers=headers, timeout=60)
    assert openai.status_code == 200 and openai.json()["text"] == response.json()["text"]
    httpx.post(f"{keyed_server.url}/transcribe", files={"file": ("red_car.mp3", content)})  # no key: 401
    duration = len(decode_audio(FIXTURES / "red_car.mp3", 16000)) / 16000
    assert metric(keyed_server.url, "nemo_stt_http_requests_total", route="/transcribe",
                  status="200") == before["requests"] + 1
    assert metric(keyed_server.url, "nemo_stt_http_requests_total", route="/transcribe",
                  status="401") == before["refused"] + 1
    assert metric(keyed_server.url, "nemo_stt_http_request_duration_seconds_count",
                  route="/transcribe") == before["latency"] + 2
    assert metric(keyed_server.url, "nemo_stt_batch_size_count") == before["batches"] + 2  # no batch for the 401
    assert metric(keyed_server.url, "nemo_stt_audio_seconds_total", mode="http") == pytest.approx(
        before["audio"] + 2 * duration, abs=0.01)
    assert metric(keyed_server.url, "nemo_stt_http_requests_total", route="/v1/audio/transcriptions",
                  status="200") >= 1
    assert metric(keyed_server.url, "nemo_stt_inference_seconds_count") >= 2
    assert metric(keyed_server.url, "nemo_stt_real_time_factor_count") >= 2
    assert metric(keyed_server.url, "nemo_stt_engine_admitted_requests") == 0


def test_audio_longer_than_the_limit_is_413_before_it_is_decoded(keyed_server):
    headers = {"authorization": "Bearer s3cret-key"}
    batches = metric(keyed_server.url, "nemo_stt_batch_size_count")
    too_long = as_wav(meeting(25))
    for route, message in (("/transcribe", lambda r: r.json()["detail"]),
                           ("/v1/audio/transcriptions", lambda r: r.json()["error"]["message"])):
        response = httpx.post(f"{keyed_server.url}{route}", files={"file": ("long.wav", too_long)}, headers=headers,
                              timeout=60)
        assert response.status_code == 413
        assert "25.0 s" in message(response) and "20 s" in message(response)
    assert metric(keyed_server.url, "nemo_stt_batch_size_count") == batches  # nothing was transcribed
    within = httpx.post(f"{keyed_server.url}/transcribe", files={"file": ("ok.wav", as_wav(meeting(19)))},
                        headers=headers, timeout=60)
    assert within.status_code == 200 and within.json()["text"]


def live_webm(audio: np.ndarray, rate: int = 48000) -> bytes:
    """Opus in WebM as a browser's MediaRecorder writes it (live: no duration in the header)."""
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm", options={"live": "1"}) as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((np.clip(audio, -1, 1) * 32767).astype(np.int16)[None, :],
                                           format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def test_audio_whose_container_states_no_duration_is_413_once_decoded(keyed_server):
    content = live_webm(meeting(25, rate=48000))
    response = httpx.post(f"{keyed_server.url}/transcribe", files={"file": ("recording.webm", content)},
                          headers={"authorization": "Bearer s3cret-key"}, timeout=60)
    assert response.status_code == 413 and "longer than the limit of 20 s" in response.json()["detail"]


# ------------------------------------------------------------------------------------------------ websocket


async def stream_file(url: str, audio: np.ndarray, started: asyncio.Event | None = None, speed: float = 1.0,
                      **connect_args) -> tuple[list[dict], int]:
    pcm, step = as_pcm16(audio), 3200
    messages = []
    async with connect(url, **connect_args) as ws:
        await ws.send(json.dumps({"config": {"sample_rate": 16000}}))

        async def read():
            async for message in ws:
                messages.append(json.loads(message))

        reader = asyncio.create_task(read())
        begin = time.monotonic()
        for offset in range(0, len(pcm), step):
            await ws.send(pcm[offset:offset + step])
            if started is not None and offset > step * 5:
                started.set()
            await asyncio.sleep(max(0.0, begin + (offset + step) / 32000 / speed - time.monotonic()))
        await ws.send(json.dumps({"eof": 1}))
        await asyncio.wait_for(reader, 60)
    return messages, ws.close_code


async def close_of(url: str, **connect_args) -> tuple[int | None, str]:
    async with connect(url, **connect_args) as ws:
        try:  # the server may close before these are sent
            await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
            await ws.send(json.dumps({"eof": 1}))
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason


def test_sigterm_during_a_stream_sends_its_final_then_1000_and_refuses_new_streams(fixture_texts):
    metrics_port = free_port()
    server = StreamingServerProcess(SHUTDOWN_GRACE_SECONDS="30", METRICS_PORT=str(metrics_port),
                                    STREAMING_PAUSE_FOR_FINAL="1.0")
    try:
        speech = np.concatenate([decode_audio(FIXTURES / "old_house.flac", 16000), np.zeros(16000 * 3, np.float32)])

        async def scenario():
            started = asyncio.Event()
            streaming = asyncio.create_task(stream_file(server.url, speech, started))
            await started.wait()
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            refused = await close_of(server.url)
            # While the stream goes on: once it ends, the process exits.
            scraped = (await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{metrics_port}/metrics")).text
            assert not streaming.done()
            return await streaming, refused, scraped

        (messages, code), refused, scraped = asyncio.run(scenario())
        assert code == 1000
        assert "text" in messages[-1]
        assert wer(fixture_texts["old_house.flac"], finals_text(messages)) <= OWN_TEXT_MAX_WER
        assert refused[0] == 1013 and "shutting down" in refused[1]
        assert 'nemo_stt_streams_rejected_total{reason="draining"} 1.0' in scraped
        assert "nemo_stt_streams_active 1.0" in scraped
        assert server.process.wait(15) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_the_websocket_key_by_header_or_query_and_its_metrics():
    metrics_port = free_port()
    server = StreamingServerProcess(API_KEY="s3cret-key", METRICS_PORT=str(metrics_port))
    try:
        audio = meeting(4)
        scrape = f"http://127.0.0.1:{metrics_port}"
        refused_before = metric(scrape, "nemo_stt_streams_rejected_total", reason="unauthorized")  # the readiness ping
        assert asyncio.run(close_of(server.url))[0] == 1008
        assert asyncio.run(close_of(server.url, additional_headers={"Authorization": "Bearer nope"}))[0] == 1008
        assert asyncio.run(close_of(server.url + "?api_key=nope"))[0] == 1008
        by_header = asyncio.run(stream_file(server.url, audio, speed=4,
                                            additional_headers={"Authorization": "Bearer s3cret-key"}))
        by_query = asyncio.run(stream_file(server.url + "?api_key=s3cret-key", audio, speed=4))
        assert by_header[1] == by_query[1] == 1000
        assert finals_text(by_header[0]) and finals_text(by_header[0]) == finals_text(by_query[0])
        assert metric(scrape, "nemo_stt_streams_rejected_total", reason="unauthorized") == refused_before + 3
        assert metric(scrape, "nemo_stt_streams_closed_total", code="1000") == 2
        assert metric(scrape, "nemo_stt_streams_active") == 0
        assert metric(scrape, "nemo_stt_auth_failures_total", mode="websocket") == refused_before + 3
    finally:
        server.stop()
