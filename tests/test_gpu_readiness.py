"""The engine's CUDA paths, checked on the CPU: the autocast choice, the device path's parts (no-ops on the
CPU), the encoder under autocast with decoding in fp32, and NeMo's CUDA-graph greedy decoders kept on."""

import logging
from contextlib import nullcontext

import pytest
import torch

from nemo_stt.audio import decode_audio
from nemo_stt.engine import Engine, EngineConfig, demo_model_path
from nemo_stt.engine.gpu import DevicePath, autocast_dtype, bf16_supported
from nemo_stt.engine.transcriber import Transcriber

from . import tiny_models
from .conftest import FIXTURES, OWN_TEXT_MAX_WER, wer


@pytest.mark.parametrize(("device", "setting", "bf16_supported", "expected"), [
    ("cuda", "bf16", True, torch.bfloat16),
    ("cuda:1", "bf16", True, torch.bfloat16),
    ("cuda", "bf16", False, None),  # pre-Ampere GPUs: fp32, not fp16
    ("cuda", "off", True, None),
    ("cpu", "bf16", True, None),  # GPU_AUTOCAST has no effect on the CPU
    ("cpu", "off", False, None),
])
def test_the_encoder_autocasts_to_bf16_only_on_a_cuda_device_that_supports_it(device, setting, bf16_supported,
                                                                               expected):
    assert autocast_dtype(device, setting, bf16_supported) == expected


@pytest.mark.parametrize(("device", "cpu_setting", "bf16_supported", "expected"), [
    ("cpu", "bf16", True, torch.bfloat16),
    ("cpu", "bf16", False, None),  # no bf16 kernels: fp32
    ("cpu", "off", True, None),  # the default: NeMo's fp32
    ("cuda", "off", True, torch.bfloat16),  # CPU_AUTOCAST leaves the GPU to GPU_AUTOCAST
])
def test_on_the_cpu_the_encoder_autocasts_to_bf16_only_when_asked(device, cpu_setting, bf16_supported, expected):
    assert autocast_dtype(device, "bf16", bf16_supported, cpu_setting) == expected


def test_an_unknown_autocast_setting_is_refused():
    with pytest.raises(ValueError, match="GPU_AUTOCAST must be one of bf16, off, not 'fp16'"):
        autocast_dtype("cuda", "fp16", True)
    with pytest.raises(ValueError, match="CPU_AUTOCAST must be one of bf16, off, not 'on'"):
        autocast_dtype("cpu", "off", True, "on")


def test_on_the_cpu_the_device_path_copies_nothing_and_changes_no_context():
    path = DevicePath.for_device("cpu", "bf16")
    assert (path.autocast, path.pinned, path.cuda) == (None, False, False)
    tensor = torch.zeros(2, 3)
    assert path.to_device(tensor) is tensor
    assert isinstance(path.loop_stream(), nullcontext) and isinstance(path.encoder_autocast(), nullcontext)
    path.synchronize()
    assert path.describe() == "fp32"


def test_with_cpu_autocast_bf16_the_cpu_path_autocasts_where_onednn_has_bf16_kernels():
    path = DevicePath.for_device("cpu", "off", "bf16")
    expected = torch.bfloat16 if bf16_supported(torch.device("cpu")) else None
    assert (path.autocast, path.pinned) == (expected, False)
    if expected is not None:
        assert path.describe() == "encoder bfloat16 autocast"
        assert isinstance(path.encoder_autocast(), torch.autocast)


def test_on_cuda_the_device_path_pins_batches_and_gives_each_loop_a_stream():
    path = DevicePath("cuda:0", torch.bfloat16)  # built without touching CUDA, which this machine lacks
    assert path.cuda and path.pinned and path.autocast == torch.bfloat16
    assert path.describe() == "encoder bfloat16 autocast, pinned host memory, one CUDA stream per inference loop"
    assert "fp32" in DevicePath("cuda:0", None).describe()
    assert DevicePath.for_device("cuda", "off").autocast is None


def test_the_encoder_runs_under_autocast_and_the_decoding_in_fp32(demo_engine, fixture_texts):
    # CPU autocast takes the same code path as CUDA's: the encoder's output is bf16, the decoder sees fp32.
    model = demo_engine.model
    transcriber = Transcriber(model, demo_engine.decoder, DevicePath("cpu", torch.bfloat16))
    seen = {}

    def record(name: str, tensor: torch.Tensor) -> None:  # a hook returning None leaves the module's data as is
        seen.setdefault(name, tensor.dtype)

    # The joint's projection of the encoder's output is the first layer of the decoding.
    hooks = [model.encoder.register_forward_hook(lambda _m, _i, out: record("encoder", out[0])),
             model.joint.enc.register_forward_pre_hook(lambda _m, args: record("decoding", args[0]))]
    try:
        transcript = transcriber.transcribe_batch([decode_audio(FIXTURES / "anna_bread.wav", 16000)])[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {"encoder": torch.bfloat16, "decoding": torch.float32}
    assert wer(fixture_texts["anna_bread.wav"], transcript.text) <= OWN_TEXT_MAX_WER
    assert transcript.words and all(0 <= w.conf <= 1 for w in transcript.words)


@pytest.fixture(scope="module")
def models_with_cuda_graphs_off(tmp_path_factory) -> dict[str, str]:
    """The demo model (hybrid RNNT) and a tiny TDT model, saved with NeMo's label looping and CUDA graphs off."""
    from nemo.collections.asr.models import ASRModel
    from omegaconf import open_dict

    directory = tmp_path_factory.mktemp("cuda-graphs")
    tdt = tiny_models.build("tdt", tiny_models.train_tokenizer(directory / "tokenizer"), directory / "tdt.nemo")
    paths = {}
    for name, source in (("hybrid", str(demo_model_path())), ("tdt", str(tdt))):
        model = ASRModel.restore_from(source, map_location="cpu")
        with open_dict(model.cfg):
            model.cfg.decoding.greedy.loop_labels = False
            model.cfg.decoding.greedy.use_cuda_graph_decoder = False
        paths[name] = str(directory / f"{name}-off.nemo")
        model.save_to(paths[name])
    return paths


@pytest.mark.parametrize("name", ["hybrid", "tdt"])
def test_the_engine_decodes_with_nemos_cuda_graph_label_looping_decoder(models_with_cuda_graphs_off, name):
    engine = Engine(EngineConfig(model=models_with_cuda_graphs_off[name], device="cpu", num_threads=1))
    try:
        greedy = engine.model.cfg.decoding.greedy  # what the engine configured, as NeMo keeps it
        assert engine.model.cfg.decoding.strategy == "greedy_batch"
        assert greedy.loop_labels is True and greedy.use_cuda_graph_decoder is True
        decoder = engine.model.decoding.decoding  # NeMo's greedy batched decoder built from that config
        assert decoder._greedy_decode.__name__ == "_greedy_decode_blank_as_pad_loop_labels"
        assert decoder.decoding_computer.allow_cuda_graphs is True  # used on CUDA; plain PyTorch on the CPU
        assert engine.transcribe(decode_audio(FIXTURES / "anna_bread.wav", 16000)) is not None
    finally:
        engine.close()


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no bf16 kernels")
def test_an_engine_with_cpu_autocast_bf16_runs_its_encoder_in_bf16_and_keeps_the_texts(fixture_texts, caplog):
    caplog.set_level(logging.INFO)
    engine = Engine(EngineConfig(model=str(demo_model_path()), device="cpu", num_threads=1, cpu_autocast="bf16"))
    try:
        assert engine.transcriber.device_path.autocast == torch.bfloat16
        assert "on cpu: encoder bfloat16 autocast" in caplog.text
        for name in ("anna_bread.wav", "pilot_train.wav"):
            transcript = engine.transcribe(decode_audio(FIXTURES / name, 16000))
            assert wer(fixture_texts[name], transcript.text) <= OWN_TEXT_MAX_WER
    finally:
        engine.close()
