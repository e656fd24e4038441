"""Local attention on a full-context encoder: what it changes, and what it must not."""

import sys

import numpy as np
import pytest
import torch

from nemo_stt.audio import decode_audio
from nemo_stt.engine import Engine, EngineConfig

from .conftest import FIXTURES, REPO


@pytest.fixture(scope="module")
def parakeet_like(tmp_path_factory) -> str:
    """A small full-context TDT model without biases in its Conformer layers, as the Parakeet models."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_replicas

    torch.manual_seed(0)
    return str(make_replicas.build("parakeet-tdt-0.6b-v2", tmp_path_factory.mktemp("replica"), small=True))


def encoded(engine: Engine, audio: np.ndarray) -> torch.Tensor:
    model = engine.model
    with torch.inference_mode():
        features, lengths = model.preprocessor(input_signal=torch.from_numpy(audio)[None],
                                               length=torch.tensor([len(audio)]))
        return model.encoder(audio_signal=features, length=lengths)[0]


def test_local_attention_leaves_inputs_within_its_context_unchanged_on_a_bias_free_encoder(parakeet_like):
    audio = decode_audio(FIXTURES / "pilot_train.wav", 16000)
    full = Engine(EngineConfig(model=parakeet_like, device="cpu", num_threads=2, local_attention="off"))
    local = Engine(EngineConfig(model=parakeet_like, device="cpu", num_threads=2, local_attention="on"))
    assert local.encoder_attention() == "rel_pos_local_attn"
    # NeMo rebuilds the attention layers in training mode: dropout would make every output random.
    assert not [name for name, module in local.model.encoder.named_modules() if module.training]
    assert all(layer.self_attn.linear_q.bias is None for layer in local.model.encoder.layers)
    torch.testing.assert_close(encoded(local, audio), encoded(full, audio), rtol=1e-5, atol=1e-5)
    assert local.transcribe(audio).text == full.transcribe(audio).text
    full.close()
    local.close()


def test_auto_gives_short_inputs_full_attention_and_long_ones_local_attention(parakeet_like):
    speech = decode_audio(FIXTURES / "pilot_train.wav", 16000)
    long = np.tile(speech, 1 + int(65 * 16000 / len(speech)))  # over 60 s
    short = long[: 16000 * 12]
    engines = {mode: Engine(EngineConfig(model=parakeet_like, device="cpu", num_threads=2, local_attention=mode))
               for mode in ("off", "on", "auto")}
    # Beyond the local context (128 frames, 10.24 s) local attention changes the encoder's output.
    assert not torch.allclose(encoded(engines["on"], short), encoded(engines["off"], short), atol=1e-4)
    auto = engines["auto"]
    assert auto.transcribe(long).words == engines["on"].transcribe(long).words
    assert auto.transcribe(short).words == engines["off"].transcribe(short).words
    for engine in engines.values():
        engine.close()
