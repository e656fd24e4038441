"""Hostile and impatient HTTP clients, against `nemo-stt serve` in its own process: bodies that stop or
trickle in, clients that leave during their upload or before their transcript is ready."""

import os
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, ServerProcess, wer
from .recordings import as_wav, meeting

BODY_TIMEOUT = 2.0  # HTTP_BODY_TIMEOUT of the server under test
MIN_RATE = 1000  # HTTP_BODY_MIN_RATE, bytes/s
HEADER_TIMEOUT = 2.0  # HTTP_HEADER_TIMEOUT


@pytest.fixture(scope="module")
def server():
    # Without VAD a request is one piece in the engine's queue, so that many of them fit it.
    process = ServerProcess({"VAD": "false", "NUM_THREADS": "1", "HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
                             "HTTP_BODY_MIN_RATE": str(MIN_RATE), "HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT)})
    yield process
    process.stop()


def multipart(data: bytes, name: str = "upload.wav") -> bytes:
    return (f'--xyz\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n--xyz--\r\n"


def request_head(server, content_length: int) -> bytes:
    return (f"POST /transcribe HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAccept: application/json\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {content_length}\r\n\r\n").encode()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b"" if it resets it)."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def read_answer_head(sock: socket.socket) -> bytes:
    """The status line and headers of the server's answer, on a connection the server keeps open."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    return answer


def served_meanwhile(server, fixture_texts) -> None:
    """A normal request is answered with its own text."""
    response = httpx.post(f"{server.url}/transcribe", files={"file": ("anna_bread.wav",
                          (FIXTURES / "anna_bread.wav").read_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    assert wer(fixture_texts["anna_bread.wav"], response.json()["text"]) <= OWN_TEXT_MAX_WER


def log_since(server, start: int, wanted: str, timeout: float = 10) -> str:
    """The server's log after offset `start`, once it holds `wanted` (or after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        new = server.output()[start:]
        if wanted in new or time.monotonic() > deadline:
            return new
        time.sleep(0.1)


def cpu_seconds(server) -> float:
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_body_shorter_than_its_content_length_gets_408_and_others_are_served(server, fixture_texts):
    body = multipart((FIXTURES / "anna_bread.wav").read_bytes())
    with connect(server) as stalled:
        started = time.monotonic()
        stalled.sendall(request_head(server, len(body)) + body[:1000])
        served_meanwhile(server, fixture_texts)
        stalled.settimeout(BODY_TIMEOUT + 10)
        answer = read_answer(stalled)  # the server closes the connection after its answer
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in answer.lower()
    assert b'"detail":"the request body stopped: no data for 2 s"' in answer
    assert BODY_TIMEOUT - 0.1 <= elapsed <= BODY_TIMEOUT + 3


def test_a_slow_drip_client_is_cut_off_while_others_are_served(server, fixture_texts):
    # One byte every 0.2 s: never BODY_TIMEOUT without data, but far below MIN_RATE.
    body = multipart((FIXTURES / "anna_bread.wav").read_bytes())
    outcome = {}

    def drip():
        with connect(server) as sock:
            started = time.monotonic()
            sock.sendall(request_head(server, len(body)))
            try:
                for index in range(len(body)):
                    if time.monotonic() - started > BODY_TIMEOUT + 10:
                        outcome["still sending"] = True
                        return
                    sock.sendall(body[index:index + 1])
                    if select.select([sock], [], [], 0.2)[0]:
                        break
                outcome["answer"] = read_answer(sock)
            except (BrokenPipeError, ConnectionResetError):
                outcome["answer"] = b""  # cut off without an answer
            outcome["elapsed"] = time.monotonic() - started

    dripping = threading.Thread(target=drip)
    dripping.start()
    time.sleep(0.5)
    served_meanwhile(server, fixture_texts)
    dripping.join()
    assert "still sending" not in outcome, "the server kept reading a body that came at 5 bytes/s"
    assert outcome["answer"] == b"" or outcome["answer"].startswith(b"HTTP/1.1 408 "), outcome["answer"]
    assert b"too slowly" in outcome["answer"] or not outcome["answer"]
    assert outcome["elapsed"] <= BODY_TIMEOUT + 3


def test_a_client_leaving_during_its_upload_is_one_info_line_not_a_traceback(server):
    body = multipart((FIXTURES / "anna_bread.wav").read_bytes())
    start = len(server.output())
    with connect(server) as sock:
        sock.sendall(request_head(server, len(body)) + body[: len(body) // 2])
        time.sleep(0.3)
    log = log_since(server, start, "client left during its upload")
    assert f"INFO nemo_stt.http_api: client left during its upload ({len(body) // 2} of {len(body)} bytes" in log
    assert "Exception in ASGI application" not in log and "Traceback" not in log and "ERROR" not in log


def test_clients_leaving_after_their_upload_have_their_transcriptions_cancelled(server, fixture_texts):
    clients = 24
    upload = multipart(as_wav(meeting(36)), "meeting.wav")
    alone_started = cpu_seconds(server)
    with connect(server) as sock:
        sock.sendall(request_head(server, len(upload)) + upload)
        assert read_answer_head(sock).startswith(b"HTTP/1.1 200 ")
    one_transcription = cpu_seconds(server) - alone_started

    def upload_and_leave(_):
        with connect(server) as sock:
            sock.sendall(request_head(server, len(upload)) + upload)
            time.sleep(0.05)

    start = len(server.output())
    burst_started = cpu_seconds(server)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(upload_and_leave, range(clients)))
    # Right after them a client that stays gets its transcript, neither 503 nor a wait behind the others.
    served_meanwhile(server, fixture_texts)
    time.sleep(0.5)  # a batch that was running when its clients left ends
    burst = cpu_seconds(server) - burst_started
    log = log_since(server, start, "cancelled")
    cancelled = log.count("INFO nemo_stt.http_api: client left before its transcription finished: cancelled")
    assert cancelled >= clients * 3 // 4, log
    # Transcribed, the burst would cost `clients` transcriptions; cancelled, at most the batch that had begun.
    assert burst < clients * one_transcription / 4, (burst, one_transcription)
    assert "Exception in ASGI application" not in log and "Traceback" not in log and "ERROR" not in log



def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes `sock` (None if it is still open after `seconds`)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_connection_that_sends_no_request_is_closed_after_the_header_timeout(server):
    with connect(server) as silent:
        waited = closed_within(silent, HEADER_TIMEOUT + 5)
    assert waited is not None and HEADER_TIMEOUT - 0.5 <= waited <= HEADER_TIMEOUT + 3
    assert "request head did not come within 2 s" in server.output()


def test_a_client_dripping_its_headers_is_closed_while_others_are_served(server, fixture_texts):
    with connect(server) as dripping:
        dripping.sendall(b"POST /transcribe HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < HEADER_TIMEOUT + 5:
            try:
                dripping.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            readable, _, _ = select.select([dripping], [], [], 0.3)
            if readable and not dripping.recv(65536):
                closed = True
                break
        assert closed and time.monotonic() - started <= HEADER_TIMEOUT + 3
    answer = httpx.post(f"{server.url}/transcribe", files={"file": (FIXTURES / "anna_bread.wav").read_bytes()},
                        timeout=60)
    assert wer(fixture_texts["anna_bread.wav"], answer.json()["text"]) <= OWN_TEXT_MAX_WER
