from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nemo_stt.audio import decode_audio
from nemo_stt.engine import BatchPolicy, Engine, EngineConfig, ModelLoadError, demo_model_path

from . import tiny_models
from .conftest import FIXTURES, run_in_fresh_process, wer

SILENT_NOISE = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.05).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_model_paths(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("tiny-models")
    tokenizer = tiny_models.train_tokenizer(directory / "tokenizer")
    return {kind: str(tiny_models.build(kind, tokenizer, directory / f"{kind}.nemo"))
            for kind in ("ctc", "rnnt", "tdt", "hybrid")}


def tiny_engine(path: str, architecture: str | None) -> Engine:
    return Engine(EngineConfig(model=path, architecture=architecture, device="cpu", num_threads=1))


@pytest.mark.parametrize(("kind", "architecture", "family", "decoder"), [
    ("ctc", None, "ctc", "ctc"),
    ("ctc", "ctc_bpe", "ctc", "ctc"),
    ("rnnt", None, "rnnt", "rnnt"),
    ("rnnt", "rnnt_bpe", "rnnt", "rnnt"),
    ("tdt", None, "rnnt", "rnnt"),
    ("tdt", "rnnt_bpe", "rnnt", "rnnt"),
    ("hybrid", None, "hybrid", "rnnt"),
    ("hybrid", "hybrid_bpe", "hybrid", "rnnt"),
    ("hybrid", "hybrid_bpe_rnnt", "hybrid", "rnnt"),
    ("hybrid", "hybrid_bpe_ctc", "hybrid", "ctc"),
    ("hybrid", "ctc_bpe", "hybrid", "ctc"),
    ("hybrid", "rnnt_bpe", "hybrid", "rnnt"),
])
def test_each_architecture_loads_and_decodes_with_timestamps_and_confidence(
    tiny_model_paths, kind, architecture, family, decoder
):
    engine = tiny_engine(tiny_model_paths[kind], architecture)
    assert (engine.family, engine.decoder) == (family, decoder)
    transcript = engine.transcribe(SILENT_NOISE)
    assert isinstance(transcript.text, str)
    # Random weights emit something; every emitted word must carry a valid time span and confidence.
    assert transcript.words
    for word in transcript.words:
        assert 0.0 <= word.start <= word.end <= 2.0
        assert 0.0 <= word.conf <= 1.0
    if decoder == "ctc" or kind == "tdt":
        assert " ".join(w.word for w in transcript.words).split() == transcript.text.split()


def test_hybrid_decoders_give_different_outputs(tiny_model_paths):
    ctc = tiny_engine(tiny_model_paths["hybrid"], "hybrid_bpe_ctc").transcribe(SILENT_NOISE)
    rnnt = tiny_engine(tiny_model_paths["hybrid"], "hybrid_bpe_rnnt").transcribe(SILENT_NOISE)
    assert ctc.text != rnnt.text


@pytest.mark.parametrize(("kind", "architecture"), [
    ("ctc", "rnnt_bpe"), ("ctc", "hybrid_bpe"), ("rnnt", "ctc_bpe"), ("rnnt", "hybrid_bpe_ctc"), ("tdt", "ctc_bpe"),
])
def test_an_architecture_that_does_not_fit_the_model_is_a_start_up_error(tiny_model_paths, kind, architecture):
    with pytest.raises(ModelLoadError, match=f"ARCHITECTURE={architecture} does not fit"):
        tiny_engine(tiny_model_paths[kind], architecture)


def test_a_missing_nemo_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        tiny_engine(str(tmp_path / "absent.nemo"), None)


def test_a_corrupt_nemo_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.nemo"
    path.write_bytes(b"not a tar archive")
    with pytest.raises(ModelLoadError, match="could not load"):
        tiny_engine(str(path), None)


def test_an_unreachable_hugging_face_model_names_the_model_and_the_way_out(monkeypatch, tmp_path):
    # An empty HF cache: the id can only come from the network, which this machine does not reach.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as error:
        tiny_engine("nvidia/parakeet-tdt-0.6b-v2", None)
    message = str(error.value)
    assert "nvidia/parakeet-tdt-0.6b-v2" in message and ".nemo" in message and "cache" in message


def test_the_demo_model_is_a_causal_hybrid_fastconformer_with_several_lookaheads(demo_engine):
    model = demo_engine.model
    assert demo_model_path().exists()
    assert demo_engine.family == "hybrid" and demo_engine.decoder == "rnnt"
    assert type(model.encoder).__name__ == "ConformerEncoder"
    assert len(model.encoder.att_context_size_all) >= 3
    assert model.cfg.encoder.conv_context_size == "causal"
    assert model.tokenizer.vocab_size == 128


def test_the_demo_model_transcribes_the_fixtures(demo_engine, fixture_texts):
    errors = []
    for name, text in fixture_texts.items():
        transcript = demo_engine.transcribe(decode_audio(FIXTURES / name, demo_engine.sample_rate))
        errors.append(wer(text, transcript.text))
    assert np.mean(errors) <= 0.15, errors


def test_words_are_ordered_inside_the_audio_with_varying_confidences(demo_engine, fixture_texts):
    for name in fixture_texts:
        audio = decode_audio(FIXTURES / name, demo_engine.sample_rate)
        transcript = demo_engine.transcribe(audio)
        duration = len(audio) / demo_engine.sample_rate
        starts = [w.start for w in transcript.words]
        assert starts == sorted(starts)
        assert all(0 <= w.start <= w.end <= duration for w in transcript.words)
        assert all(0 <= w.conf <= 1 for w in transcript.words)
        assert [w.word for w in transcript.words] == transcript.text.split()
        assert 0 < transcript.confidence <= 1
    confidences = {round(w.conf, 4) for n in fixture_texts
                   for w in demo_engine.transcribe(decode_audio(FIXTURES / n, 16000)).words}
    assert len(confidences) > 5


def test_word_times_follow_where_the_speech_is(demo_engine):
    speech = decode_audio(FIXTURES / "anna_bread.wav", 16000)
    delayed = np.concatenate([np.zeros(3 * 16000, dtype=np.float32), speech])
    plain, shifted = demo_engine.transcribe(speech), demo_engine.transcribe(delayed)
    assert plain.text == shifted.text
    assert shifted.words[0].start >= 2.7
    assert abs((shifted.words[0].start - plain.words[0].start) - 3.0) < 0.3


def test_empty_audio_gives_an_empty_transcript(demo_engine):
    transcript = demo_engine.transcribe(np.zeros(0, dtype=np.float32))
    assert transcript.text == "" and transcript.words == () and transcript.confidence == 0.0


def test_batched_inference_equals_one_by_one(demo_engine, fixture_texts):
    audios = [decode_audio(FIXTURES / name, 16000) for name in fixture_texts]
    batched = demo_engine.transcriber.transcribe_batch(audios)
    single = [demo_engine.transcriber.transcribe_batch([audio])[0] for audio in audios]
    assert [t.text for t in batched] == [t.text for t in single]


def test_parallel_workers_give_each_caller_its_own_transcript(fixture_texts):
    engine = Engine(EngineConfig(device="cpu", num_threads=1, batching=BatchPolicy(workers=2, max_batch_items=4)))
    audios = {name: decode_audio(FIXTURES / name, 16000) for name in fixture_texts}
    expected = {name: engine.transcribe(audio).text for name, audio in audios.items()}
    keys = [(name, i) for i in range(3) for name in audios]
    with ThreadPoolExecutor(8) as callers:
        texts = list(callers.map(lambda key: engine.transcribe(audios[key[0]]).text, keys))
    assert dict(zip(keys, texts, strict=True)) == {key: expected[key[0]] for key in keys}
    engine.close()


def test_full_context_models_use_local_attention_only_for_forwards_of_long_inputs(tiny_model_paths):
    path = tiny_model_paths["hybrid"]

    def engine(**config) -> Engine:
        return Engine(EngineConfig(model=path, device="cpu", num_threads=1, **config))

    full = engine(local_attention="off")
    assert full.encoder_attention() == "rel_pos"
    auto = engine(local_attention="auto")  # inputs up to 480 s by default
    assert auto.local_attention and auto.encoder_attention() == "rel_pos"
    assert auto.transcribe(SILENT_NOISE).text == full.transcribe(SILENT_NOISE).text
    assert auto.encoder_attention() == "rel_pos"
    long_input = np.tile(SILENT_NOISE, 31)  # 62 s: above LOCAL_ATTENTION_ABOVE
    auto.transcribe(long_input)
    assert auto.encoder_attention() == "rel_pos_local_attn"
    auto.transcribe(SILENT_NOISE)
    assert auto.encoder_attention() == "rel_pos"
    short_inputs = engine(local_attention="auto", long_file_threshold=30, long_file_chunk=20, long_file_context=5)
    assert not short_inputs.local_attention
    short_inputs.transcribe(SILENT_NOISE)
    assert short_inputs.encoder_attention() == "rel_pos"
    local = engine(local_attention="on")
    assert local.encoder_attention() == "rel_pos_local_attn"
    # Within 128 frames of context on each side, local attention changes nothing.
    assert local.transcribe(SILENT_NOISE).text == full.transcribe(SILENT_NOISE).text


def test_limited_context_models_keep_their_attention(demo_engine):
    assert demo_engine.encoder_attention() == "rel_pos" and not demo_engine.local_attention


# Runs in a fresh process: the test process has run torch on its main thread already.
_THREAD_POOL_PROBE = """
import os
import numpy as np
import torch
from nemo_stt.engine import Engine, EngineConfig

def native_threads():
    return set(os.listdir("/proc/self/task"))

engine = Engine(EngineConfig(device="cpu", num_threads=2))
engine.warm_up()
before = native_threads()
engine.transcribe(np.zeros(16000 * 3, dtype=np.float32))
after_inference = native_threads()
torch.ones(4_000_000).sum()  # a parallel region on the main thread
after_main = native_threads()
print(len(after_inference - before), len(after_main - after_inference))
"""


def test_only_the_inference_loop_keeps_an_openmp_thread_pool():
    """Loading and warm-up leave the caller's thread without an OpenMP pool of its own: a second pool
    on 2 cores makes every parallel region wake sleeping helpers (twice the time of a forward)."""
    new_for_inference, new_for_main = map(int, run_in_fresh_process(_THREAD_POOL_PROBE)[-2:])
    assert new_for_inference == 0  # the warmed-up loop reuses its pool
    assert new_for_main == 1  # the main thread had none: its first parallel region starts a helper


def test_the_silero_vad_leaves_the_engine_its_threads():
    # silero_vad sets torch to one thread when imported; the inference loop must still get NUM_THREADS.
    # A new thread takes torch's process-wide setting, as the inference loop's threads do.
    threads = run_in_fresh_process(
        "import threading, torch\n"
        "from nemo_stt.engine import Engine, EngineConfig, VadConfig\n"
        "engine = Engine(EngineConfig(device='cpu', num_threads=2, vad=VadConfig(method='silero')))\n"
        "thread = threading.Thread(target=lambda: print(torch.get_num_threads()))\n"
        "thread.start()\n"
        "thread.join()\n"
    )
    assert threads[-1] == "2"
