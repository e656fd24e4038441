"""Admission by request on the demo model: a meeting's hundred pauses need one place, and a caller that
leaves takes its queued pieces with it."""

import asyncio
import time

import pytest

from nemo_stt.engine import BatchPolicy, Engine, EngineConfig, QueueFull, VadConfig

from .recordings import as_wav, meeting


@pytest.fixture(scope="module")
def meeting_wav() -> bytes:
    return as_wav(meeting(470))


@pytest.fixture(scope="module")
def vad_engine():
    engine = Engine(EngineConfig(device="cpu", num_threads=2, vad=VadConfig(method="auditok"), max_requests=2,
                                 batching=BatchPolicy(max_batch_items=16)))
    yield engine
    engine.close()


def test_a_meeting_with_more_speech_segments_than_places_is_transcribed_whole(vad_engine, meeting_wav):
    assert len(vad_engine.vad.segments(meeting(470))) > 100
    transcript = asyncio.run(vad_engine.transcribe_source_async(meeting_wav))
    assert transcript.words[-1].end > 460 and transcript.duration == pytest.approx(470)
    assert len(transcript.words) > 700  # about eight words per utterance, 107 utterances
    assert vad_engine.admission.active == 0


def test_requests_past_the_limit_are_refused_while_admitted_ones_run_and_accepted_after(vad_engine):
    recording = as_wav(meeting(30))

    async def three_at_once():
        return await asyncio.gather(*(vad_engine.transcribe_source_async(recording) for _ in range(3)),
                                    return_exceptions=True)

    outcomes = asyncio.run(three_at_once())
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    assert len(refused) == 1 and refused[0].retry_after >= 1
    assert all(len(o.words) > 40 for o in outcomes if not isinstance(o, Exception))
    assert len(asyncio.run(vad_engine.transcribe_source_async(recording)).words) > 40


def test_a_cancelled_caller_leaves_its_pieces_unrun(vad_engine, meeting_wav, caplog):
    async def leave_early():
        task = asyncio.create_task(vad_engine.transcribe_source_async(meeting_wav))
        while vad_engine.batcher.queued < 50:  # its segments are queued
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level("INFO", logger="nemo_stt.engine.batcher"):
        asyncio.run(leave_early())
        deadline = time.monotonic() + 10
        while vad_engine.batcher.queued and time.monotonic() < deadline:
            time.sleep(0.01)
        vad_engine.transcribe(meeting(5))  # the loop takes its next batch: the cancelled pieces are counted
    skipped = [int(line.split("skipped ")[1].split()[0]) for line in caplog.messages if "skipped" in line]
    assert sum(skipped) >= 50
    assert vad_engine.admission.active == 0


def test_a_cancelled_long_file_stops_after_its_current_windows(meeting_wav, caplog):
    engine = Engine(EngineConfig(device="cpu", num_threads=2, long_file_threshold=20, long_file_chunk=15,
                                 long_file_context=2, max_requests=1))
    try:
        async def leave_early():
            task = asyncio.create_task(engine.transcribe_source_async(meeting_wav))
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        with caplog.at_level("INFO", logger="nemo_stt.engine.engine"):
            started = time.monotonic()
            asyncio.run(leave_early())
            ticket = engine.admission.enter()  # the window thread gives the place back when it stops
            stopped = time.monotonic() - started
        ticket.release()
        assert stopped < 5  # the whole file takes much longer
        assert "windows skipped" in caplog.text
    finally:
        engine.close()
