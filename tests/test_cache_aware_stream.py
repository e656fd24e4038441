"""Cache-aware streaming mechanics on a tiny random-weight streaming model: exact incremental features,
streams independent of how their audio is cut and of which other streams share their encoder steps."""

import asyncio
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nemo_stt.audio import decode_audio
from nemo_stt.engine.cache_aware_stream import CacheAwareStream, CacheAwareStreamer, supports_cache_aware_streaming
from nemo_stt.engine.decoding import configure_decoding
from nemo_stt.engine.model_loading import load_asr_model
from nemo_stt.engine.transcriber import Transcriber

from . import tiny_models
from .conftest import FIXTURES, OWN_TEXT_MAX_WER, wer


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming-models")
    tokenizer = tiny_models.train_tokenizer(root / "tokenizer")
    return {kind: tiny_models.build(kind, tokenizer, root / f"{kind}.nemo") for kind in ("streaming_hybrid", "hybrid")}


@pytest.fixture(scope="module")
def models(model_paths):
    return {kind: load_asr_model(str(path), None) for kind, path in model_paths.items()}


@pytest.fixture(scope="module", params=["rnnt", "ctc"])
def streamer(request, models):
    model = models["streaming_hybrid"]
    configure_decoding(model, request.param)  # as the engine does: timestamps and confidence estimation
    streamer = CacheAwareStreamer(model, request.param, lookahead_ms=None)
    yield streamer
    streamer.close()


def fixture_audio(name: str) -> np.ndarray:
    return decode_audio(FIXTURES / name, 16000)


def run_stream(streamer, audio: np.ndarray, piece_sizes) -> list[tuple[int, int]]:
    """Feed `audio` in pieces of the given sizes (cycled), stepping whenever a chunk is ready."""
    async def go():
        stream = CacheAwareStream(streamer, pause_for_final=1000.0)
        position, index = 0, 0
        while position < len(audio):
            size = piece_sizes[index % len(piece_sizes)]
            stream.push(audio[position : position + size])
            position += size
            index += 1
            if stream.ready():
                await stream._run(flush=False)
        await stream._run(flush=True)
        return [(token, frame) for token, frame, _ in stream._tokens]

    return asyncio.run(go())


def test_detects_models_trained_for_streaming(models):
    assert supports_cache_aware_streaming(models["streaming_hybrid"])
    assert not supports_cache_aware_streaming(models["hybrid"])


def test_incremental_features_equal_the_whole_signal_features(streamer):
    audio = fixture_audio("anna_bread.wav")
    state = streamer.new_state()
    for start in range(0, len(audio), 1234):
        streamer._add_features([(state, audio[start : start + 1234], False)])
    streamer._add_features([(state, np.zeros(0, dtype=np.float32), True)])
    incremental = np.concatenate([p.numpy() for p in state.pending], axis=1)

    signal = torch.from_numpy(np.concatenate([audio, np.zeros(4000, dtype=np.float32)]))[None]
    whole, _ = streamer.model.preprocessor(input_signal=signal, length=torch.tensor([signal.shape[1]]))
    frames = len(audio) // streamer.hop  # frames whose window holds only real audio and its own padding
    np.testing.assert_allclose(incremental[:, :frames], whole[0, :, :frames].numpy(), atol=1e-4)
    assert (incremental.shape[1] - streamer.first_frames) % streamer.shift_frames == 0


def test_tokens_do_not_depend_on_how_the_audio_is_cut(streamer):
    audio = fixture_audio("pilot_train.wav")
    whole = run_stream(streamer, audio, [len(audio)])
    small = run_stream(streamer, audio, [320, 1600, 77, 4000])
    assert whole, "the random model should emit tokens for the mechanics to be checked"
    assert small == whole


@pytest.fixture(scope="module", params=["rnnt", "ctc"])
def demo_streamer(request):
    model = load_asr_model(None, torch.device("cpu"))  # the demo model, a model of its own for this module
    configure_decoding(model, request.param)  # as the engine does: timestamps and confidence estimation
    streamer = CacheAwareStreamer(model, request.param, lookahead_ms=None)
    yield streamer
    streamer.close()


def test_token_confidences_come_from_the_model(demo_streamer, fixture_texts):
    async def go():
        stream = CacheAwareStream(demo_streamer, pause_for_final=1000.0)
        stream.push(fixture_audio("red_car.mp3"))
        (segment,) = await stream.finish()
        return segment

    segment = asyncio.run(go())
    confidences = [word.conf for word in segment.words]
    assert all(0.0 <= conf <= 1.0 for conf in confidences)
    assert len(set(confidences)) > 1, "confidences should be estimated per word, not a constant"


def test_with_the_default_context_a_stream_gives_the_offline_transcript(demo_streamer, fixture_texts):
    names = ["anna_bread.wav", "red_car.mp3", "old_house.flac", "children_park.m4a"]
    audio = np.concatenate([np.concatenate([fixture_audio(n), np.zeros(8000, np.float32)]) for n in names])
    offline = Transcriber(demo_streamer.model, demo_streamer.decoder).transcribe_batch([audio])[0]

    async def go():
        stream = CacheAwareStream(demo_streamer, pause_for_final=1000.0)
        for start in range(0, len(audio), 1600):
            stream.push(audio[start : start + 1600])
            if stream.ready():
                await stream.step()
        (segment,) = await stream.finish()
        return segment

    streamed = asyncio.run(go())
    assert wer(" ".join(fixture_texts[n] for n in names), offline.text) < 0.3
    assert streamed.text == offline.text
    # Times count from the start of the stream. NeMo's offline CTC times give a word the blank frames
    # before it; a stream's words start where their first token is emitted: only the ends compare.
    for ours, theirs in zip(streamed.words, offline.words, strict=True):
        assert abs(ours.end - theirs.end) <= 0.16, (ours, theirs)
        if demo_streamer.decoder == "rnnt":
            assert abs(ours.start - theirs.start) <= 0.08, (ours, theirs)


def test_streams_stepped_together_give_what_they_give_alone(streamer):
    audios = [fixture_audio(name) for name in ("anna_bread.wav", "red_car.mp3", "doctor_letter.ogg")]
    alone = [run_stream(streamer, audio, [1600]) for audio in audios]

    async def together():
        streams = [CacheAwareStream(streamer, pause_for_final=1000.0) for _ in audios]
        # Start the streams at different times so that their chunks are at different positions.
        offsets = [0, 5 * 1600, 11 * 1600]
        longest = max(len(a) + o for a, o in zip(audios, offsets, strict=True))
        for position in range(0, longest, 1600):
            steps = []
            for stream, audio, offset in zip(streams, audios, offsets, strict=True):
                start = position - offset
                if 0 <= start < len(audio):
                    stream.push(audio[start : start + 1600])
                    if stream.ready():
                        steps.append(stream._run(flush=False))
            await asyncio.gather(*steps)
        await asyncio.gather(*(stream._run(flush=True) for stream in streams))
        return [[(token, frame) for token, frame, _ in stream._tokens] for stream in streams]

    steps_before, chunks_before = streamer.encoder_steps, streamer.chunks_encoded
    assert asyncio.run(together()) == alone
    # The streams shared encoder steps: more chunks were encoded than steps were run.
    assert streamer.chunks_encoded - chunks_before > streamer.encoder_steps - steps_before


def test_cache_aware_streaming_of_a_full_context_model_stops_start_up(model_paths):
    env = {**os.environ, "SERVICE_MODE": "websocket", "STREAMING_ENGINE": "cache_aware", "DEVICE": "cpu",
           "MODEL": str(model_paths["hybrid"]), "STREAMING_PORT": "1"}
    completed = subprocess.run([sys.executable, "-m", "nemo_stt", "serve"], env=env, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 2
    assert "cannot stream with caches" in completed.stderr


def test_a_step_whose_caller_is_cancelled_loses_no_tokens(streamer):
    # A client's eof cancels its decode loop while a step may be running: the step's tokens must survive.
    audio = fixture_audio("pilot_train.wav")
    expected = run_stream(streamer, audio, [len(audio)])

    async def go():
        stream = CacheAwareStream(streamer, pause_for_final=1000.0)
        stream.push(audio)
        step = asyncio.create_task(stream._run(flush=False))
        await asyncio.sleep(0)  # the step is submitted
        step.cancel()
        await asyncio.gather(step, return_exceptions=True)
        await stream._run(flush=True)
        return [(token, frame) for token, frame, _ in stream._tokens]

    assert asyncio.run(go()) == expected


def test_a_final_comes_once_the_pause_has_been_received_without_waiting_for_its_decoding(demo_streamer,
                                                                                          fixture_texts):
    # 0.1-s packets at a sample-exact pace; the final must come when `pause` seconds of quiet audio have
    # arrived after the last word, not up to a chunk later when that audio has been decoded.
    pause = 1.0
    speech = fixture_audio("red_car.mp3")
    audio = np.concatenate([speech, np.zeros(3 * 16000, np.float32), speech, np.zeros(8000, np.float32)])

    async def go():
        stream = CacheAwareStream(demo_streamer, pause_for_final=pause)
        finals = []
        for start in range(0, len(audio), 1600):
            stream.push(audio[start : start + 1600])
            while stream.ready():
                finals += [(segment, (start + 1600) / 16000) for segment in await stream.step()]
            finals += [(segment, (start + 1600) / 16000) for segment in stream.pause_finals()]
        (last,) = await stream.finish()
        return finals, last

    finals, last = asyncio.run(go())
    assert len(finals) == 1
    segment, received_at = finals[0]
    speech_end = len(speech) / 16000
    # The same sentence twice, cut at the pause.
    assert wer(fixture_texts["red_car.mp3"], segment.text) <= OWN_TEXT_MAX_WER
    assert wer(fixture_texts["red_car.mp3"], last.text) <= OWN_TEXT_MAX_WER
    assert segment.end <= speech_end + 0.2
    assert received_at - speech_end <= pause + 0.2
    assert received_at - segment.end >= pause
