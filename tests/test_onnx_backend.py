"""INFERENCE_BACKEND=onnx: the encoder in ONNX Runtime gives the PyTorch backend's tokens and JSON, offline
(batched with padding, local attention for long inputs) and in cache-aware streaming, with its graphs cached."""

import asyncio
import sys

import httpx
import numpy as np
import pytest
import torch

from nemo_stt.audio import decode_audio
from nemo_stt.engine import Engine, EngineConfig
from nemo_stt.engine.cache_aware_stream import CacheAwareStream
from nemo_stt.engine.stream import StreamingParams

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, REPO, wer
from .test_combined_modes import combined_server
from .test_operations import stream_file
from .test_websocket import finals_text

# Mixed lengths (2.5 to 5 s) in one batch: the shorter inputs are padded.
NAMES = ["anna_bread.wav", "red_car.mp3", "doctor_letter.ogg", "pilot_train.wav", "old_house.flac"]


def audios() -> list[np.ndarray]:
    return [decode_audio(FIXTURES / name, 16000) for name in NAMES]


def engine(tmp_path, backend: str, **config) -> Engine:
    return Engine(EngineConfig(device="cpu", num_threads=2, backend=backend, onnx_cache_dir=str(tmp_path / "onnx"),
                               **config))


def hypotheses(engine: Engine, batch: list[np.ndarray]) -> list:
    """NeMo's hypotheses for one forward of `batch` (tokens and frames, before they become words)."""
    transcriber = engine.transcriber
    with torch.inference_mode():
        signal, lengths = transcriber._pad(batch)
        return transcriber._decode(signal, lengths, transcriber.encoder)


def tokens(hypothesis) -> list[int]:
    hypothesis = hypothesis[0] if isinstance(hypothesis, list) else hypothesis
    return [int(token) for token in hypothesis.y_sequence]


def assert_same_words(ours, theirs) -> None:
    """The same words at the same times, with confidences equal to float32 rounding of the encoder output."""
    assert [(w.word, w.start, w.end) for w in ours] == [(w.word, w.start, w.end) for w in theirs]
    assert np.allclose([w.conf for w in ours], [w.conf for w in theirs], atol=1e-4)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-onnx")


@pytest.mark.parametrize("architecture", ["hybrid_bpe_rnnt", "hybrid_bpe_ctc"])
def test_the_onnx_backend_gives_the_torch_backends_tokens_and_transcripts_on_the_demo_model(architecture, onnx_cache):
    batch = audios()
    engines = {backend: engine(onnx_cache, backend, architecture=architecture) for backend in ("torch", "onnx")}
    assert engines["onnx"].transcriber.encoder is not None and engines["torch"].transcriber.encoder is None
    expected, got = (hypotheses(engines[b], batch) for b in ("torch", "onnx"))
    assert [tokens(h) for h in got] == [tokens(h) for h in expected]
    # The same JSON: text, word times and confidences (to float32 rounding of the encoder output).
    for ours, theirs in zip(*(engines[b].transcriber.transcribe_batch(batch) for b in ("onnx", "torch")),
                            strict=True):
        assert ours.text == theirs.text
        assert_same_words(ours.words, theirs.words)
    for item in engines.values():
        item.close()


def test_graphs_are_exported_once_per_model_and_reused_by_the_next_start(tmp_path, caplog):
    first = engine(tmp_path, "onnx")
    folders = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert len(folders) == 1 and folders[0].startswith("offline-model-none-")
    first.close()
    caplog.clear()
    with caplog.at_level("INFO", logger="nemo_stt.engine.onnx_backend"):
        again = engine(tmp_path, "onnx", architecture="hybrid_bpe_ctc")  # another decoder: the same encoder graph
    assert "exporting" not in caplog.text and "ONNX encoder (offline-model, none)" in caplog.text
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == folders
    again.close()


def test_int8_quantises_the_matmuls_and_keeps_the_demo_models_transcripts_close(tmp_path, fixture_texts):
    import onnx

    int8 = engine(tmp_path, "onnx", onnx_quantize="int8")
    graph = onnx.load(str(int8.transcriber.encoder.path))
    ops = {node.op_type for node in graph.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    fp32 = engine(tmp_path, "onnx")
    assert int8.transcriber.encoder.path.stat().st_size < 0.8 * fp32.transcriber.encoder.path.stat().st_size
    for name, transcript in zip(NAMES, int8.transcriber.transcribe_batch(audios()), strict=True):
        assert wer(fixture_texts[name], transcript.text) <= OWN_TEXT_MAX_WER, name
    int8.close()
    fp32.close()


@pytest.fixture(scope="module")
def benchmark_model(tmp_path_factory) -> str:
    """The benchmark-size model (30 M parameters, causal hybrid with several look-aheads), random weights."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_benchmark_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bench") / "bench-medium.nemo"
    return str(make_benchmark_model.build(path, "medium", full_context=False, vocab_size=256))


@pytest.mark.parametrize("architecture", ["hybrid_bpe_ctc", "hybrid_bpe_rnnt"])
def test_the_onnx_backend_gives_the_torch_backends_tokens_on_the_benchmark_size_model(architecture, benchmark_model,
                                                                                       tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "bench-onnx"
    engines = {b: Engine(EngineConfig(model=benchmark_model, device="cpu", num_threads=2, backend=b,
                                      architecture=architecture, onnx_cache_dir=str(cache)))
               for b in ("torch", "onnx")}
    batch = audios()[:3]
    expected, got = (hypotheses(engines[b], batch) for b in ("torch", "onnx"))
    assert all(tokens(h) for h in expected)  # random weights still emit: the comparison is not of empty lists
    assert [tokens(h) for h in got] == [tokens(h) for h in expected]
    # Cache-aware streaming, step by step: the same tokens at the same frames.
    streams = {}
    for backend, item in engines.items():
        assert item.start_streaming(StreamingParams(engine="cache_aware", pause_for_final=1000.0)) == "cache-aware"
        streams[backend] = streamed_tokens(item, np.concatenate(batch))
    assert streams["onnx"] == streams["torch"] and streams["torch"]
    # The streaming sessions' threads sleep between steps (the event loop needs a core then); the offline
    # session's spin, having the cores to themselves.
    streaming = engines["onnx"]._streamer._onnx
    assert [spinning(graph) for graph in (streaming.first, streaming.next)] == ["0", "0"]
    assert spinning(engines["onnx"].transcriber.encoder) == ""
    for item in engines.values():
        item.close()


def spinning(graph) -> str:
    """The session's allow_spinning entry ("" when left at ONNX Runtime's default, which spins)."""
    try:
        return graph.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set
        return ""


def streamed_tokens(engine: Engine, audio: np.ndarray) -> list[tuple[int, int]]:
    async def go():
        stream = engine.open_stream()
        assert isinstance(stream, CacheAwareStream)
        for start in range(0, len(audio), 3200):  # 0.2-s frames, each step decoding what is whole
            stream.push(audio[start : start + 3200])
            if stream.ready():
                await stream._run(flush=False)
        await stream._run(flush=True)
        return [(token, frame) for token, frame, _ in stream._tokens]

    return asyncio.run(go())


@pytest.fixture(scope="module")
def parakeet_like(tmp_path_factory) -> str:
    """A small full-context TDT model without biases, as the Parakeet models (see test_local_attention)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_replicas

    torch.manual_seed(0)
    return str(make_replicas.build("parakeet-tdt-0.6b-v2", tmp_path_factory.mktemp("replica"), small=True))


def test_with_local_attention_by_length_long_inputs_run_in_torch_and_short_ones_take_the_onnx_graph(
        parakeet_like, tmp_path):
    speech = decode_audio(FIXTURES / "pilot_train.wav", 16000)
    long = np.tile(speech, 1 + int(65 * 16000 / len(speech)))  # over 60 s
    short = long[: 16000 * 12]
    onnx = Engine(EngineConfig(model=parakeet_like, device="cpu", num_threads=2, backend="onnx",
                               onnx_cache_dir=str(tmp_path / "onnx"), local_attention="auto"))
    assert [p.name.rsplit("-", 2)[0] for p in (tmp_path / "onnx").iterdir()] == ["offline-model"]
    torch_engines = {mode: Engine(EngineConfig(model=parakeet_like, device="cpu", num_threads=2, local_attention=mode))
                     for mode in ("off", "on")}
    assert onnx.transcribe(long).words == torch_engines["on"].transcribe(long).words  # the same computation
    assert_same_words(onnx.transcribe(short).words, torch_engines["off"].transcribe(short).words)
    assert onnx.encoder_attention() == "rel_pos_local_attn"  # left so by the long input: not used by short ones
    assert_same_words(onnx.transcribe(short).words, torch_engines["off"].transcribe(short).words)
    for item in (onnx, *torch_engines.values()):
        item.close()


def test_every_front_end_serves_from_the_onnx_backend(tmp_path, fixture_texts):
    server = combined_server(INFERENCE_BACKEND="onnx", ONNX_CACHE_DIR=str(tmp_path / "onnx"), NUM_THREADS="2",
                             STREAMING_PAUSE_FOR_FINAL="1.0")
    try:
        assert "ONNX Runtime" in server.output()
        upload = httpx.post(f"{server.url}/transcribe", timeout=60,
                            files={"file": ("anna_bread.wav", (FIXTURES / "anna_bread.wav").read_bytes())})
        assert upload.status_code == 200, upload.text
        assert wer(fixture_texts["anna_bread.wav"], upload.json()["text"]) <= OWN_TEXT_MAX_WER
        speech = np.concatenate([decode_audio(FIXTURES / "red_car.mp3", 16000), np.zeros(16000, np.float32)])
        messages, code = asyncio.run(stream_file(server.ws_url, speech, speed=4))
        assert code == 1000
        assert wer(fixture_texts["red_car.mp3"], finals_text(messages)) <= OWN_TEXT_MAX_WER
        # The offline graph, and the cache-aware step's two (first chunk, later chunks) at the model's context.
        variants = sorted(p.name.rsplit("-", 2)[0] for p in (tmp_path / "onnx").iterdir())
        assert variants == ["offline-model", "stream-first-70x13", "stream-next-70x13"], variants
    finally:
        server.stop()


def test_an_unwritable_cache_folder_stops_start_up_with_one_line_naming_it(tmp_path):
    from nemo_stt.engine import ModelLoadError

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(ModelLoadError, match=f"ONNX_CACHE_DIR={blocked}/onnx: .*writable"):
        Engine(EngineConfig(device="cpu", num_threads=2, backend="onnx", onnx_cache_dir=str(blocked / "onnx")))
