"""The engine gives what NeMo's own `transcribe()` gives, for the demo model and for small replicas of
each model family.

NEMO_STT_TEST_DEVICE (default `cpu`) runs NeMo and the engine on another device, e.g. `cuda`
(benchmarks/gpu_check.sh). NeMo's transcribe() runs in fp32, so the engine's encoder does too here
(GPU_AUTOCAST=off, CPU_AUTOCAST=off); its bf16 autocast is checked against the demo model's known texts instead.
"""

import json
import os
import sys

import numpy as np
import pytest
import torch

from nemo_stt.audio import decode_audio
from nemo_stt.engine import Engine, EngineConfig, demo_model_path

from . import tiny_models
from .conftest import FIXTURES, OWN_TEXT_MAX_WER, REPO, wer

FILES = ["anna_bread.wav", "pilot_train.wav", "old_house.flac"]
DEVICE = os.environ.get("NEMO_STT_TEST_DEVICE", "cpu")


def engine_on_device(**options) -> Engine:
    return Engine(EngineConfig(device=DEVICE, num_threads=2, gpu_autocast="off", cpu_autocast="off", **options))


@pytest.fixture(scope="module")
def demo_on_device(request):
    if DEVICE == "cpu":
        yield request.getfixturevalue("demo_engine")
        return
    engine = engine_on_device()
    yield engine
    engine.close()


def test_the_demo_model_transcribes_with_nemos_own_api_as_the_engine_does(demo_on_device):
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(demo_model_path()), map_location=DEVICE)
    paths = [str(FIXTURES / name) for name in FILES]
    nemo_texts = [hypothesis.text for hypothesis in model.transcribe(paths, verbose=False, return_hypotheses=True)]
    engine_texts = [demo_on_device.transcribe(decode_audio(FIXTURES / name, 16000)).text for name in FILES]
    assert nemo_texts == engine_texts
    known = json.loads((FIXTURES / "texts.json").read_text())
    assert nemo_texts[0] == known[FILES[0]]["text"]


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="bf16 autocast is used on CUDA devices only")
def test_bf16_autocast_on_cuda_keeps_the_demo_models_texts(fixture_texts):
    engine = Engine(EngineConfig(device=DEVICE, gpu_autocast="bf16"))
    try:
        if engine.transcriber.device_path.autocast is None:
            pytest.skip("this GPU does not support bf16: the encoder runs in fp32")
        for name in FILES:
            text = engine.transcribe(decode_audio(FIXTURES / name, 16000)).text
            assert wer(fixture_texts[name], text) <= OWN_TEXT_MAX_WER, (name, text)
    finally:
        engine.close()


# Replicas: tiny random-weight models with the structure of each family. Their transcripts are noise,
# but noise that any difference in features, encoding or decoding would change.
CASES = {
    # name: (kind, ARCHITECTURE, mel features, vocabulary size)
    "ctc": ("ctc", None, 40, 40),
    "rnnt": ("rnnt", None, 40, 40),
    "tdt": ("tdt", None, 40, 40),
    "hybrid-rnnt": ("hybrid", None, 40, 40),
    "hybrid-ctc": ("hybrid", "hybrid_bpe_ctc", 40, 40),
    "cache-aware-hybrid": ("streaming_hybrid", None, 40, 40),
    "tdt-128-mels": ("tdt", None, 128, 40),
    "tdt-large-vocabulary": ("tdt", None, 40, 512),
    # benchmarks/make_replicas.py --small: real models' structures (bias-free Conformer layers, 128
    # per_feature mels and a 1024-piece vocabulary; the 80-ms cache-aware context), at tiny sizes.
    "parakeet-tdt-0.6b-v2-small": ("replica", None, None, None),
    "stt_en_fastconformer_hybrid_medium_streaming_80ms_pc-small": ("replica", None, None, None),
}


@pytest.fixture(scope="module")
def replica_paths(tmp_path_factory) -> dict[str, str]:
    sys.path.insert(0, str(REPO / "tools/demo_model"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_replicas
    from sentences import make_corpus

    directory = tmp_path_factory.mktemp("replicas")
    tokenizers = {40: tiny_models.train_tokenizer(directory / "tokenizer-40"),
                  512: tiny_models.train_tokenizer(directory / "tokenizer-512", 512, make_corpus(3000, seed=3))}
    torch.manual_seed(0)
    return {name: str(make_replicas.build(name.removesuffix("-small"), directory, small=True) if kind == "replica"
                      else tiny_models.build(kind, tokenizers[vocabulary], directory / f"{name}.nemo", features))
            for name, (kind, _, features, vocabulary) in CASES.items()}


@pytest.fixture(scope="module")
def audios() -> list[np.ndarray]:
    anna, pilot = (decode_audio(FIXTURES / name, 16000) for name in FILES[:2])
    return [anna[:16000], anna[: 16000 * 5 // 2], pilot]  # 1 s, 2.5 s and a whole file


def nemo_hypotheses(path: str, architecture: str | None, audios: list[np.ndarray], batch_size: int) -> list:
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(path, map_location=DEVICE)
    if architecture == "hybrid_bpe_ctc":
        model.change_decoding_strategy(decoding_cfg=model.cfg.aux_ctc.decoding, decoder_type="ctc", verbose=False)
    hypotheses = model.transcribe(audios, batch_size=batch_size, return_hypotheses=True, timestamps=True,
                                  verbose=False)
    return hypotheses[0] if isinstance(hypotheses, tuple) else hypotheses


def tokens(hypothesis, ctc: bool) -> list[int]:
    # NeMo's CTC hypotheses carry the frames' log-probabilities; the engine's, their greedy labels.
    sequence = hypothesis.y_sequence
    return (sequence.argmax(-1) if ctc and sequence.dim() == 2 else sequence).tolist()


@pytest.mark.parametrize("name", list(CASES))
def test_the_engine_gives_nemos_text_tokens_and_word_times(replica_paths, audios, name):
    architecture = CASES[name][1]
    engine = engine_on_device(model=replica_paths[name], architecture=architecture, local_attention="off")
    ctc = engine.decoder == "ctc"
    transcriber = engine.transcriber
    one_by_one = nemo_hypotheses(replica_paths[name], architecture, audios, batch_size=1)
    batched = nemo_hypotheses(replica_paths[name], architecture, audios, batch_size=len(audios))
    engine_hypotheses = transcriber._decode(*transcriber._pad(audios))  # one batch of mixed lengths
    transcripts = transcriber.transcribe_batch(audios)
    for index, (ours, alone, together) in enumerate(zip(engine_hypotheses, one_by_one, batched, strict=True)):
        assert tokens(ours, ctc) == tokens(alone, ctc) == tokens(together, ctc), f"audio {index}"
        assert transcripts[index].text == alone.text.strip() == together.text.strip()
        nemo_words = alone.timestamp["word"]
        assert [w.word for w in transcripts[index].words] == [w["word"] for w in nemo_words]
        duration = len(audios[index]) / engine.sample_rate
        for word, stamp in zip(transcripts[index].words, nemo_words, strict=True):
            assert abs(word.start - min(duration, stamp["start"])) <= transcriber.frame_seconds
            assert abs(word.end - min(duration, stamp["end"])) <= transcriber.frame_seconds
    assert any(len(tokens(h, ctc)) > 1 for h in engine_hypotheses)
    engine.close()
