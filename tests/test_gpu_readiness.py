"""The engine's CUDA paths, checked on the CPU: the autocast choice (CPU_AUTOCAST's too), the device path's
parts (no-ops on the CPU), the encoder under autocast with its matrix weights in bf16 and decoding in fp32,
and NeMo's CUDA-graph greedy decoders kept on."""

import asyncio
import logging
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from nemo_stt.audio import decode_audio
from nemo_stt.engine import Engine, EngineConfig, demo_model_path
from nemo_stt.engine.gpu import (
    CPU_AUTO_BF16_MIN_PARAMETERS,
    DevicePath,
    autocast_dtype,
    bf16_supported,
    cast_matrix_weights,
    cpu_autocast,
    native_bf16_cpu,
)
from nemo_stt.engine.stream import StreamingParams
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


@pytest.mark.parametrize(("setting", "native_bf16", "parameters", "expected"), [
    ("auto", True, 608_000_000, "bf16"),
    ("auto", True, CPU_AUTO_BF16_MIN_PARAMETERS, "bf16"),
    ("auto", True, 26_000_000, "off"),  # a forward this small is not matrix work: the casts cost what bf16 saves
    ("auto", False, 608_000_000, "off"),  # AVX-512 without bf16 arithmetic converts to fp32 to compute
    ("bf16", False, 1_400_000, "bf16"),  # asked for: whenever oneDNN has bf16 kernels (see autocast_dtype)
    ("off", True, 608_000_000, "off"),
])
def test_cpu_autocast_auto_chooses_bf16_for_large_encoders_on_cpus_with_bf16_arithmetic(setting, native_bf16,
                                                                                         parameters, expected):
    assert cpu_autocast(setting, native_bf16, parameters) == expected


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse avx512f avx512_bf16 avx512_vnni", True), ("avx512f amx_bf16 amx_tile amx_int8", True),
    ("fpu sse avx512f avx512bw avx512_vnni", False), ("fpu sse avx2", False),
])
def test_native_bf16_arithmetic_is_read_from_the_cpu_flags(flags, expected):
    cpuinfo = f"processor\t: 0\nmodel name\t: a CPU with avx512_bf16 in its name\nflags\t\t: {flags}\n\n"
    assert native_bf16_cpu(cpuinfo) is expected


def test_an_unknown_autocast_setting_is_refused():
    with pytest.raises(ValueError, match="GPU_AUTOCAST must be one of bf16, off, not 'fp16'"):
        autocast_dtype("cuda", "fp16", True)
    with pytest.raises(ValueError, match="CPU_AUTOCAST must be one of auto, bf16, off, not 'on'"):
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


def test_auto_keeps_the_demo_models_small_encoder_in_fp32_and_says_why(caplog):
    caplog.set_level(logging.INFO)
    engine = Engine(EngineConfig(device="cpu", num_threads=1))
    try:
        assert engine.config.cpu_autocast == "auto" and engine.transcriber.device_path.autocast is None
        assert "CPU_AUTOCAST=auto: the encoder in fp32 (1.4 M parameters" in caplog.text
    finally:
        engine.close()


def test_cast_matrix_weights_keeps_linear_and_convolution_layers_in_bf16_and_the_rest_in_fp32(demo_engine):
    import copy

    encoder = copy.deepcopy(demo_engine.model.encoder)
    cast_matrix_weights(encoder, torch.bfloat16)
    dtypes = {}
    for module in encoder.modules():
        for parameter in module.parameters(recurse=False):
            dtypes.setdefault(type(module).__name__, set()).add(parameter.dtype)
    matrix = {kind for kind, module in {type(m).__name__: m for m in encoder.modules()}.items()
              if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))}
    assert {"Linear", "Conv2d"} <= matrix  # the demo encoder's feed-forward, attention and subsampling layers
    assert all(dtypes[kind] == {torch.bfloat16} for kind in matrix if kind in dtypes)
    assert all(kinds == {torch.float32} for kind, kinds in dtypes.items() if kind not in matrix)
    assert "LayerNorm" in dtypes and "RelPositionMultiHeadAttention" in dtypes  # its pos_bias_u and _v


def encoder_matrix_dtypes(model) -> set[torch.dtype]:
    return {module.weight.dtype for module in model.encoder.modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))}


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no bf16 kernels")
def test_with_bf16_a_full_context_encoder_keeps_bf16_weights_across_attention_switches(tmp_path, caplog):
    # Autocast converts fp32 weights at every forward; the engine converts them once. NeMo rebuilds the
    # attention layers in fp32 when a long input switches them to local attention, and back.
    from nemo.collections.asr.models import ASRModel

    from nemo_stt.engine.engine import LOCAL_ATTENTION_ABOVE

    path = tiny_models.build("hybrid", tiny_models.train_tokenizer(tmp_path / "tokenizer"), tmp_path / "hybrid.nemo")
    caplog.set_level(logging.INFO)
    engine = Engine(EngineConfig(model=str(path), device="cpu", num_threads=1, cpu_autocast="bf16"))
    try:
        assert engine.transcriber.device_path.autocast == torch.bfloat16
        assert "on cpu: encoder bfloat16 autocast, linear and convolution weights in bf16" in caplog.text
        assert encoder_matrix_dtypes(engine.model) == {torch.bfloat16}
        rng = np.random.default_rng(0)
        short = 0.1 * rng.standard_normal(16000 * 4).astype(np.float32)
        long = 0.1 * rng.standard_normal(int(16000 * (LOCAL_ATTENTION_ABOVE + 5))).astype(np.float32)
        for audio, attention in ((long, "rel_pos_local_attn"), (short, "rel_pos")):
            engine.transcribe(audio)
            assert engine.encoder_attention() == attention
            assert encoder_matrix_dtypes(engine.model) == {torch.bfloat16}
            assert {layer.self_attn.pos_bias_u.dtype for layer in engine.model.encoder.layers} == {torch.float32}
        # The encoder's output stays as close to fp32's as autocast alone keeps it.
        reference = ASRModel.restore_from(str(path), map_location="cpu").eval()
        signal = torch.from_numpy(short)[None]
        with torch.inference_mode():
            features, lengths = reference.preprocessor(input_signal=signal, length=torch.tensor([signal.shape[1]]))
            fp32, _ = reference.encoder(audio_signal=features, length=lengths)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autocast, _ = reference.encoder(audio_signal=features, length=lengths)
                cast, _ = engine.model.encoder(audio_signal=features, length=lengths)
        distance = {name: ((out.float() - fp32).norm() / fp32.norm()).item()
                    for name, out in (("autocast", autocast), ("cast", cast))}
        assert 0 < distance["cast"] < 1.5 * distance["autocast"] + 1e-3, distance
    finally:
        engine.close()


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no bf16 kernels")
def test_with_bf16_a_cache_aware_model_keeps_fp32_weights_and_streams_as_in_fp32(tmp_path):
    torch.manual_seed(0)
    path = tiny_models.build("streaming_hybrid", tiny_models.train_tokenizer(tmp_path / "tokenizer"),
                             tmp_path / "streaming.nemo")
    audio = 0.1 * np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32)

    async def stream(engine: Engine) -> list[str]:
        assert engine.start_streaming(StreamingParams(pause_for_final=1000.0)) == "cache-aware"
        stream = engine.open_stream()
        for start in range(0, len(audio), 1600):
            stream.push(audio[start : start + 1600])
            if stream.ready():
                await stream.step()
        return [segment.text for segment in await stream.finish()]

    streamed = {}
    for setting in ("bf16", "off"):
        engine = Engine(EngineConfig(model=str(path), device="cpu", num_threads=1, cpu_autocast=setting))
        try:
            assert engine.transcriber.device_path.autocast == (torch.bfloat16 if setting == "bf16" else None)
            assert encoder_matrix_dtypes(engine.model) == {torch.float32}
            streamed[setting] = asyncio.run(stream(engine))
        finally:
            engine.close()
    assert streamed["bf16"] == streamed["off"] and "".join(streamed["off"])  # the streaming step runs in fp32
