"""The CPU greedy transducer decoder gives NeMo's own greedy hypotheses, field for field."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from nemo_stt.audio import decode_audio
from nemo_stt.engine.decoding import configure_decoding
from nemo_stt.engine.model_loading import demo_model_path
from nemo_stt.engine.transcriber import Transcriber
from nemo_stt.engine.transducer_greedy import GreedyTransducer

from . import tiny_models
from .conftest import FIXTURES


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("transducers")
    tokenizer = tiny_models.train_tokenizer(directory / "tokenizer")
    torch.manual_seed(1)
    paths = {kind: tiny_models.build(kind, tokenizer, directory / f"{kind}.nemo") for kind in ("rnnt", "tdt", "hybrid")}
    original = tiny_models._transducer

    def two_layers(tdt: bool) -> dict:
        cfg = original(tdt)
        cfg["decoder"]["prednet"]["pred_rnn_layers"] = 2
        return cfg

    tiny_models._transducer = two_layers
    try:
        paths["tdt-2-layers"] = tiny_models.build("tdt", tokenizer, directory / "tdt-2-layers.nemo")
    finally:
        tiny_models._transducer = original
    paths["demo"] = demo_model_path()
    return paths


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    anna = decode_audio(FIXTURES / "anna_bread.wav", 16000)
    pilot = decode_audio(FIXTURES / "pilot_train.wav", 16000)
    audios = [anna[:8000], anna, pilot, np.concatenate([pilot, anna])]
    lengths = torch.tensor([len(audio) for audio in audios])
    signal = torch.zeros(len(audios), int(lengths.max()))
    for row, audio in enumerate(audios):
        signal[row, : len(audio)] = torch.from_numpy(audio)
    return signal, lengths


def load(path: Path):
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(path), map_location="cpu")
    model.eval()
    configure_decoding(model, "rnnt")
    return model


def decode_both(model, batch) -> tuple[list, list]:
    """NeMo's hypotheses and the NumPy decoder's for the batch, from the same encoder outputs."""
    greedy = GreedyTransducer.for_decoding(model.decoding)
    assert greedy is not None
    with torch.inference_mode():
        encoded, lengths = model.forward(input_signal=batch[0], input_signal_length=batch[1])
        expected = model.decoding.rnnt_decoder_predictions_tensor(encoded, lengths, return_hypotheses=True)
        return expected, greedy.predictions(encoded, lengths)


@pytest.mark.parametrize("name", ["rnnt", "tdt", "tdt-2-layers", "hybrid", "demo"])
def test_the_greedy_decoder_gives_nemos_tokens_frames_durations_words_and_confidences(model_paths, batch, name):
    expected, got = decode_both(load(model_paths[name]), batch)
    emitted = 0
    for reference, hypothesis in zip(expected, got, strict=True):
        assert hypothesis.y_sequence.tolist() == reference.y_sequence.tolist()
        assert hypothesis.text == reference.text
        assert hypothesis.timestamp["timestep"] == reference.timestamp["timestep"]
        assert hypothesis.timestamp["word"] == reference.timestamp["word"]
        assert list(hypothesis.token_duration) == list(reference.token_duration)
        assert np.allclose(hypothesis.word_confidence, reference.word_confidence, atol=1e-5)
        assert np.allclose(hypothesis.token_confidence, reference.token_confidence, atol=1e-5)
        assert hypothesis.score == pytest.approx(reference.score, rel=1e-4, abs=1e-3)
        emitted += len(reference.y_sequence)
    assert emitted > 0


def test_the_random_rnnt_model_hits_max_symbols_on_frames_and_still_matches(model_paths, batch):
    # The random joint emits on every frame until NeMo's max_symbols moves decoding to the next frame.
    model = load(model_paths["rnnt"])
    max_symbols = model.decoding.decoding.max_symbols
    with torch.inference_mode():
        encoded, lengths = model.forward(input_signal=batch[0][:1], input_signal_length=batch[1][:1])
        (hypothesis,) = GreedyTransducer.for_decoding(model.decoding)(encoded, lengths)
    frames = hypothesis.timestamp.tolist()
    assert max(frames.count(frame) for frame in set(frames)) == max_symbols


def test_nemos_decoder_is_kept_where_the_greedy_decoder_would_not_give_its_results(model_paths):
    model = load(model_paths["rnnt"])
    cfg = OmegaConf.create(OmegaConf.to_container(model.cfg.decoding, resolve=True))
    with open_dict(cfg):
        cfg.strategy = "greedy"  # NeMo's frame-by-frame decoder, not label looping
    model.change_decoding_strategy(decoding_cfg=cfg, verbose=False)
    assert GreedyTransducer.for_decoding(model.decoding) is None
    assert Transcriber(model, "rnnt").greedy_transducer() is None

    model = load(model_paths["rnnt"])
    model.joint.temperature = 2.0
    assert GreedyTransducer.for_decoding(model.decoding) is None


def test_the_transcriber_decodes_transducers_with_it_on_the_cpu(model_paths):
    transcriber = Transcriber(load(model_paths["demo"]), "rnnt")
    assert transcriber.greedy_transducer() is not None
    anna = decode_audio(FIXTURES / "anna_bread.wav", 16000)
    (transcript,) = transcriber.transcribe_batch([anna])
    assert transcript.text == "anna bought the bread at the market"


def as_list(values) -> list:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def nemo_chunks(model, encoded: torch.Tensor, lengths: torch.Tensor, cuts: list[int]) -> list[list[tuple]]:
    """NeMo's decoding of encoder outputs cut into chunks, each carrying on from the state of the last."""
    from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

    states, tokens = [None] * len(lengths), [[] for _ in lengths]
    for start, end in itertools.pairwise(cuts):
        chunk_lengths = (lengths - start).clamp(0, end - start)
        partial = [None if state is None else Hypothesis(score=0.0, y_sequence=None, dec_state=state)
                   for state in states]
        (hypotheses,) = model.decoding.decoding(encoder_output=encoded[:, :, start:end],
                                                encoded_lengths=chunk_lengths, partial_hypotheses=partial)
        for row, hypothesis in enumerate(hypotheses):
            confidences = hypothesis.non_blank_step_confidence_precomputed or []
            tokens[row] += list(zip(as_list(hypothesis.y_sequence), as_list(hypothesis.timestamp), confidences,
                                    strict=True))
            states[row] = hypothesis.dec_state
    return tokens


@pytest.mark.parametrize("name", ["rnnt", "hybrid", "demo"])
def test_streamed_chunks_decode_to_nemos_tokens_frames_and_confidences(model_paths, batch, name):
    model = load(model_paths[name])
    greedy = GreedyTransducer.for_decoding(model.decoding)
    assert greedy.streams
    with torch.inference_mode():
        encoded, lengths = model.forward(input_signal=batch[0][1:3], input_signal_length=batch[1][1:3])
        cuts = [*range(0, encoded.shape[2], 7), encoded.shape[2]]
        expected = nemo_chunks(model, encoded, lengths, cuts)
        states, got = [None, None], [[], []]
        for start, end in itertools.pairwise(cuts):
            chunk_lengths = (lengths - start).clamp(0, end - start)
            decoded = greedy.decode_chunks(encoded[:, :, start:end], chunk_lengths, states)
            for row, (tokens, state) in enumerate(decoded):
                got[row] += tokens
                states[row] = state
    for reference, tokens in zip(expected, got, strict=True):
        assert reference
        assert [token[:2] for token in tokens] == [token[:2] for token in reference]
        assert np.allclose([token[2] for token in tokens], [token[2] for token in reference], atol=1e-5)


def test_tdt_chunks_stay_with_nemos_decoder(model_paths):
    assert not GreedyTransducer.for_decoding(load(model_paths["tdt"]).decoding).streams


@pytest.mark.parametrize("activation", [torch.nn.Tanh, torch.nn.Sigmoid])
def test_joints_with_tanh_or_sigmoid_decode_as_nemo_does(model_paths, batch, activation):
    model = load(model_paths["rnnt"])
    model.joint.joint_net[0] = activation()
    assert_same_as_nemo(model, batch)


def test_saturated_lstm_gates_decode_as_nemo_does_without_overflow_warnings(model_paths, batch):
    model = load(model_paths["tdt-2-layers"])
    with torch.no_grad():  # pre-activations of -200 and +200: exp(200) overflows float32
        lstm = model.decoder.prediction["dec_rnn"].lstm
        lstm.bias_ih_l0[: lstm.hidden_size] = -200.0
        lstm.bias_ih_l1[lstm.hidden_size: 2 * lstm.hidden_size] = 200.0
    with np.errstate(all="raise"):
        assert_same_as_nemo(model, batch)


def assert_same_as_nemo(model, batch) -> None:
    expected, got = decode_both(model, batch)
    for reference, hypothesis in zip(expected, got, strict=True):
        assert hypothesis.y_sequence.tolist() == reference.y_sequence.tolist()
        assert hypothesis.timestamp["timestep"] == reference.timestamp["timestep"]
        assert np.allclose(hypothesis.word_confidence, reference.word_confidence, atol=1e-5)
