"""One owner of the model at a time: offline batches may overlap, a streaming step runs alone, and a step
with another look-ahead leaves offline transcription with the model's own attention context."""

import asyncio
import threading
import time

import numpy as np

from nemo_stt.engine import Engine, EngineConfig, StreamingParams
from nemo_stt.engine.model_lock import ModelLock

from .recordings import meeting


def test_shared_holders_overlap_and_an_exclusive_holder_runs_alone_and_first():
    lock = ModelLock()
    events: list[str] = []
    inside = threading.Event()

    def shared(name: str, hold: float):
        with lock.shared():
            events.append(f"{name} in")
            inside.set()
            time.sleep(hold)
            events.append(f"{name} out")

    def exclusive():
        with lock.exclusive():
            events.append("step in")
            time.sleep(0.05)
            events.append("step out")

    first = threading.Thread(target=shared, args=("a", 0.2))
    second = threading.Thread(target=shared, args=("b", 0.1))
    first.start()
    second.start()
    inside.wait(5)
    time.sleep(0.02)
    step = threading.Thread(target=exclusive)
    step.start()
    time.sleep(0.02)
    late = threading.Thread(target=shared, args=("c", 0.0))  # arrives while the step waits: goes after it
    late.start()
    for thread in (first, second, step, late):
        thread.join(5)
    assert events.index("a in") < events.index("b out") and events.index("b in") < events.index("a out")
    assert events.index("step in") > max(events.index("a out"), events.index("b out"))
    assert events.index("step out") == events.index("step in") + 1
    assert events.index("c in") > events.index("step out")


def test_a_stream_with_another_lookahead_leaves_offline_transcription_unchanged():
    engine = Engine(EngineConfig(device="cpu", num_threads=2))
    try:
        audio = meeting(12)
        before = engine.transcribe(audio)
        default_context = list(engine.model.encoder.att_context_size)
        assert engine.start_streaming(StreamingParams(lookahead_ms=160)) == "cache-aware"
        assert list(engine.model.encoder.att_context_size) == default_context

        async def stream_and_transcribe():
            stream = engine.open_stream()
            stream.push(audio)
            offline = asyncio.get_running_loop().run_in_executor(None, engine.transcribe, audio)
            finals = await stream.finish()
            return finals, await offline

        finals, during = asyncio.run(stream_and_transcribe())
        assert list(engine.model.encoder.att_context_size) == default_context
        assert during.text == before.text and engine.transcribe(audio).text == before.text
        assert " ".join(segment.text for segment in finals).split()  # the stream has words of its own
    finally:
        engine.close()


def test_a_cache_aware_stream_steps_one_chunk_at_a_time_whatever_its_backlog():
    engine = Engine(EngineConfig(device="cpu", num_threads=2))
    try:
        engine.start_streaming(StreamingParams())
        stream = engine.open_stream()
        stream.push(np.zeros(16000 * 10, dtype=np.float32))
        backlog = stream.backlog_seconds
        asyncio.run(stream.step())
        assert 0.5 < backlog - stream.backlog_seconds < 1.5  # one chunk (1.12 s on the demo model)
    finally:
        engine.close()
