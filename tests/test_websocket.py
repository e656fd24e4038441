"""Websocket mode end to end: a real websockets client against `nemo-stt serve` in its own process."""

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from nemo_stt.audio import decode_audio

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, free_port, wer
from .recordings import as_pcm16, meeting


class StreamingServerProcess:
    def __init__(self, **env: str):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/streaming"
        full_env = {**os.environ, "SERVICE_MODE": "websocket", "STREAMING_PORT": str(self.port), "DEVICE": "cpu",
                    "NUM_THREADS": "2", **env}
        self.process = subprocess.Popen([sys.executable, "-m", "nemo_stt", "serve"], env=full_env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.time() + 180  # as ServerProcess: a loaded machine takes minutes to start two servers
        try:
            while time.time() < deadline:
                try:
                    asyncio.run(self._ping())
                    return
                except OSError:
                    time.sleep(0.3)
            raise RuntimeError("streaming server not ready")
        except BaseException:
            self.process.kill()  # a server that is not handed to a fixture would outlive the tests
            raise

    async def _ping(self):
        async with connect(self.url) as ws:
            await ws.close()

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture(scope="module", params=["cache_aware", "buffered"])
def server(request):
    # The demo model was trained for streaming: both engines run on it.
    process = StreamingServerProcess(STREAMING_ENGINE=request.param, STREAMING_PAUSE_FOR_FINAL="1.0",
                                     STREAMING_MAX_CONNECTIONS="12", STREAMING_IDLE_TIMEOUT="3")
    yield process
    process.stop()


def speech_with_pauses(names: list[str], rate: int, pause: float = 2.0) -> np.ndarray:
    pieces = []
    for name in names:
        pieces += [decode_audio(FIXTURES / name, rate), np.zeros(int(pause * rate), dtype=np.float32)]
    return np.concatenate(pieces)


async def stream(url: str, audio: np.ndarray, rate: int, speed: float = 1.0, frame: float = 0.1,
                 start_delay: float = 0.0) -> list[dict]:
    await asyncio.sleep(start_delay)
    messages = []
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(frame * rate) * 2
    async with connect(url) as ws:
        await ws.send(json.dumps({"config": {"sample_rate": rate}}))

        async def read():
            async for message in ws:
                messages.append({**json.loads(message), "at": time.monotonic()})

        reader = asyncio.create_task(read())
        started = time.monotonic()
        for offset in range(0, len(pcm), step):
            await ws.send(pcm[offset:offset + step])
            if speed != float("inf"):
                await asyncio.sleep(max(0.0, started + (offset + step) / 2 / rate / speed - time.monotonic()))
        await ws.send(json.dumps({"eof": 1}))
        await asyncio.wait_for(reader, 120)
        assert ws.close_code == 1000
    return messages


def finals_text(messages) -> str:
    return " ".join(m["text"] for m in messages if m.get("text")).strip()


def test_streaming_at_real_time_gives_partials_then_finals_close_to_the_offline_text(server, demo_engine,
                                                                                     fixture_texts):
    names = ["anna_bread.wav", "red_car.mp3", "old_house.flac"]
    audio = speech_with_pauses(names, 16000)
    offline = demo_engine.transcribe(audio).text
    messages = asyncio.run(stream(server.url, audio, 16000))
    reference = " ".join(fixture_texts[n] for n in names)
    assert wer(reference, finals_text(messages)) <= wer(reference, offline) + 0.02
    assert any("partial" in m for m in messages)
    finals = [m for m in messages if "text" in m]
    assert len(finals) >= 3  # one after each pause, and the last one after eof
    assert "text" in messages[-1]
    for final in finals:
        if final["words"]:
            assert final["start"] <= final["words"][0]["start"] <= final["words"][-1]["end"] <= final["end"] + 1e-6


def test_faster_than_real_time_and_another_sample_rate(server, fixture_texts):
    names = ["doctor_letter.ogg", "children_park.m4a"]
    audio = speech_with_pauses(names, 8000)
    messages = asyncio.run(stream(server.url, audio, 8000, speed=4.0))
    reference = " ".join(fixture_texts[n] for n in names)
    assert wer(reference, finals_text(messages)) <= OWN_TEXT_MAX_WER


def test_ten_connections_at_once_each_get_their_own_text(server, fixture_texts):
    names = sorted(fixture_texts)

    async def all_streams():
        jobs = [stream(server.url, speech_with_pauses([names[i % len(names)]], 16000, pause=1.2), 16000, speed=2.0,
                       start_delay=0.3 * i) for i in range(10)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(all_streams())
    for index, messages in enumerate(results):
        assert wer(fixture_texts[names[index % len(names)]], finals_text(messages)) <= OWN_TEXT_MAX_WER, index


async def expect_close(url: str, *messages, wait: float = 10.0) -> tuple[int, str]:
    async with connect(url) as ws:
        for message in messages:
            await ws.send(message)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), wait)
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason


@pytest.mark.parametrize(("messages", "code", "reason"), [
    ((b"\x00\x01" * 100,), 1008, "config"),
    (('{"config": {}}',), 1007, "sample_rate"),
    (('{"config": {"sample_rate": "fast"}}',), 1007, "sample_rate"),
    (("not json",), 1007, "invalid JSON"),
    (('{"config": {"sample_rate": 16000}}', b"\x00\x01\x02"), 1007, "even number of bytes"),
    (('{"config": {"sample_rate": 16000}}', '{"hello": 1}'), 1003, "eof"),
    ((), 1008, "no config"),
    (('{"config": {"sample_rate": 16000}}',), 1008, "no data"),
    (('{"config": {"sample_rate": 1000}}', b"\x00\x01" * 35000), 1009, "at most 30 s per frame"),
    (('{"config": {"sample_rate": 16000}}', b"\x00\x01" * 2**20), 1009, ""),
])
def test_bad_input_closes_that_connection_with_a_code_and_reason(server, messages, code, reason, fixture_texts):
    async def scenario():
        good = asyncio.create_task(stream(server.url, speech_with_pauses(["red_car.mp3"], 16000), 16000, speed=2.0))
        closed = await expect_close(server.url, *messages)
        return closed, await good

    (close_code, close_reason), good_messages = asyncio.run(scenario())
    assert close_code == code and reason in close_reason
    assert wer(fixture_texts["red_car.mp3"], finals_text(good_messages)) <= OWN_TEXT_MAX_WER


def test_more_connections_than_the_cap_are_told_to_retry_later(server):
    async def scenario():
        async with asyncio.TaskGroup() as group:
            holders = [group.create_task(connect(server.url).__aenter__()) for _ in range(12)]
        extra_code, extra_reason = await expect_close(server.url)
        for holder in holders:
            await holder.result().close()
        return extra_code, extra_reason

    code, reason = asyncio.run(scenario())
    assert code == 1013 and "too many" in reason


def finals_of(messages) -> list[tuple[str, float, float]]:
    return [(m["text"], m["start"], m["end"]) for m in messages if m.get("text")]


def test_a_meeting_gives_the_same_finals_at_real_time_eight_times_faster_and_unpaced(server):
    audio = meeting(60)

    async def three_speeds():
        # One after the other: streams decoded together could be padded into one batch (buffered engine).
        return [await stream(server.url, audio, 16000, speed=speed) for speed in (1.0, 8.0, float("inf"))]

    paced, fast, unpaced = (finals_of(messages) for messages in asyncio.run(three_speeds()))
    assert len(paced) >= 10  # one per utterance of the meeting: 1.6-s pauses, finals after 1.0 s
    assert fast == paced
    assert unpaced == paced


def test_a_backlog_still_gets_partials_at_most_at_the_rate_limit(server):
    # Long enough that decoding its backlog outlasts the partials' rate limit (4 a second) several times over.
    messages = asyncio.run(stream(server.url, meeting(120), 16000, speed=float("inf")))
    partials = [m for m in messages if "partial" in m]
    assert len(partials) >= 2
    assert [m["decoded"] for m in partials] == sorted(m["decoded"] for m in partials)
    # STREAMING_MAX_PARTIAL_ACTUALIZATION_PER_SECOND is 4 by default
    assert len(partials) <= 4 * (partials[-1]["at"] - partials[0]["at"]) + 1


def test_eof_right_after_speech_keeps_the_last_words(server, demo_engine, fixture_texts):
    # No pause after the speech: eof arrives while the last unit may still be decoding.
    speech = decode_audio(FIXTURES / "red_car.mp3", 16000)
    speech = speech[: np.flatnonzero(np.abs(speech) > 0.01)[-1] + 1]
    messages = asyncio.run(stream(server.url, speech, 16000))
    assert wer(fixture_texts["red_car.mp3"], finals_text(messages)) <= OWN_TEXT_MAX_WER
    assert finals_text(messages).split()[-1] == demo_engine.transcribe(speech).text.split()[-1]


def test_a_client_asking_for_compression_gets_plain_frames_and_its_text(server, fixture_texts):
    async def scenario():
        async with connect(server.url, compression="deflate") as ws:  # websockets' default, made explicit
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
            await ws.send(as_pcm16(decode_audio(FIXTURES / "anna_bread.wav", 16000)))
            await ws.send(json.dumps({"eof": 1}))
            return extensions, [json.loads(m) async for m in ws]

    extensions, messages = asyncio.run(scenario())
    assert extensions is None  # permessage-deflate declined: audio does not compress
    assert wer(fixture_texts["anna_bread.wav"], finals_text(messages)) <= OWN_TEXT_MAX_WER


def test_eof_zero_does_not_end_the_stream(server, fixture_texts):
    async def scenario():
        first, second = (decode_audio(FIXTURES / name, 16000) for name in ("anna_bread.wav", "red_car.mp3"))
        async with connect(server.url) as ws:
            await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
            await ws.send(as_pcm16(first))
            await ws.send(json.dumps({"eof": 0}))
            await ws.send(as_pcm16(second))
            await ws.send(json.dumps({"eof": 1}))
            return [json.loads(m) async for m in ws]

    text = finals_text(asyncio.run(scenario()))
    assert wer(fixture_texts["red_car.mp3"], " ".join(text.split()[-7:])) <= OWN_TEXT_MAX_WER


def test_the_idle_timeout_sends_the_pending_words_as_a_final_before_closing(server, fixture_texts):
    async def scenario():
        speech = decode_audio(FIXTURES / "old_house.flac", 16000)
        async with connect(server.url) as ws:
            await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
            await ws.send(as_pcm16(speech[: np.flatnonzero(np.abs(speech) > 0.01)[-1] + 1]))
            messages = []
            with contextlib.suppress(ConnectionClosed):  # nothing more is sent: the idle timeout (3 s) ends it
                while True:
                    messages.append(json.loads(await ws.recv()))
            return messages, ws.close_code, ws.close_reason

    messages, code, reason = asyncio.run(scenario())
    assert code == 1008 and "no data" in reason
    assert wer(fixture_texts["old_house.flac"], finals_text(messages)) <= OWN_TEXT_MAX_WER


def test_a_client_that_reconnects_at_once_is_never_refused(server):
    async def scenario():
        # Eleven of the twelve places held, and one client that keeps closing and coming back.
        holders = [await connect(server.url).__aenter__() for _ in range(11)]
        refused = 0
        for _ in range(50):
            async with connect(server.url) as ws:
                await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
                await ws.send(json.dumps({"eof": 1}))
                async for _ in ws:
                    pass
                refused += ws.close_code == 1013
        for holder in holders:
            await holder.close()
        return refused

    assert asyncio.run(scenario()) == 0


def rss_mb(process: subprocess.Popen) -> float:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def partial_latencies(url: str, audio: np.ndarray, start_delay: float = 0.0) -> list[float]:
    """A real-time client's partial latencies: arrival minus when the audio a partial accounts for was sent."""
    await asyncio.sleep(start_delay)
    pcm, step = as_pcm16(audio), 3200
    latencies = []
    async with connect(url) as ws:
        await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
        started = time.monotonic()

        async def read():
            async for message in ws:
                payload = json.loads(message)
                if "partial" in payload:
                    latencies.append(time.monotonic() - (started + payload["decoded"]))

        reader = asyncio.create_task(read())
        for offset in range(0, len(pcm), step):
            # As a microphone would: a frame goes out once its audio has been spoken.
            await asyncio.sleep(max(0.0, started + (offset + step) / 32000 - time.monotonic()))
            await ws.send(pcm[offset:offset + step])
        await ws.send(json.dumps({"eof": 1}))
        await asyncio.wait_for(reader, 60)
    return latencies


async def flood(url: str, audio: np.ndarray) -> list[dict]:
    """Everything at once, in 1-s frames, then eof."""
    pcm = as_pcm16(audio)
    # No keepalive pings: under back-pressure they would wait behind the client's own audio.
    async with connect(url, ping_interval=None) as ws:
        await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
        for offset in range(0, len(pcm), 32000):
            await ws.send(pcm[offset:offset + 32000])
        await ws.send(json.dumps({"eof": 1}))
        return [json.loads(m) async for m in ws]


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def test_a_flooding_client_leaves_a_real_time_client_its_latency_and_the_memory_returns(server):
    real_time, backlog = meeting(15), meeting(180)
    alone = asyncio.run(partial_latencies(server.url, real_time))
    time.sleep(11)  # idle: the server gives freed memory back
    idle_before = rss_mb(server.process)

    async def side_by_side():
        return await asyncio.gather(flood(server.url, backlog), partial_latencies(server.url, real_time, 1.0))

    flooded, beside = asyncio.run(side_by_side())
    peak = rss_mb(server.process)
    time.sleep(11)
    idle_after = rss_mb(server.process)
    print(f"p95 partial latency alone {p95(alone):.3f} s, beside the flood {p95(beside):.3f} s; "
          f"RSS idle {idle_before:.0f} MB, after the flood {peak:.0f} MB, idle again {idle_after:.0f} MB")
    assert len(finals_of(flooded)) >= 30  # the flood was served too, by its pauses
    assert p95(beside) <= 2 * p95(alone) + 0.05
    assert idle_after <= idle_before + 50
