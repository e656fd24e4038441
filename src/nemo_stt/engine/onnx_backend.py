"""ONNX Runtime execution of the encoder (INFERENCE_BACKEND=onnx).

The encoder is the cost of a request on a CPU; ONNX Runtime runs the same graph with less overhead per
operator. NeMo's own export writes the graphs (`Exportable.export`, with cache inputs and outputs for
cache-aware streaming); everything around the encoder stays NeMo's and PyTorch's: the preprocessor
(features), the CTC head and every decoding (greedy CTC, RNNT/TDT label looping, timestamps,
confidences), so the two backends give the same JSON for the same encoder output.

Exported graphs are kept in a cache folder under a key made of the model (its config and weights), the
graph's variant and the versions of what made it; a second start with the same model only opens them.
With ONNX_QUANTIZE=int8, the MatMul weights are quantised to 8 bits (ONNX Runtime's dynamic quantisation);
the convolutions, whose int8 kernels are slower than fp32 on CPUs without VNNI, stay fp32.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

Quantize = Literal["none", "int8"]
# Bump when the way graphs are exported changes, so that old cache entries are not reused.
_EXPORT_FORMAT = 1


@dataclass(frozen=True)
class OnnxOptions:
    cache_dir: Path
    quantize: Quantize = "none"
    threads: int = 1
    """Intra-op threads of each session."""


class OnnxEncoder:
    """One exported encoder graph in an ONNX Runtime session (its `run` may be called from several threads)."""

    def __init__(self, path: Path, threads: int, spinning: bool = True):
        """`spinning`: whether the session's threads wait for work by spinning (fastest when the session has the
        cores to itself) or sleep between runs (when other work needs the cores between runs)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Inputs change length from call to call: a memory pattern planned for one shape does not fit the next.
        options.enable_mem_pattern = False
        # The arena keeps what the largest batch needed (bounded by the batching limits) until `release_memory`:
        # without it every operator allocates from the system, at half the speed or less.
        options.enable_cpu_mem_arena = True
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, *inputs: np.ndarray, shrink: bool = False) -> list[np.ndarray]:
        """The graph's outputs; with `shrink`, its arena gives back what this run did not need."""
        return self.session.run(self.output_names, dict(zip(self.input_names, inputs, strict=True)),
                                self._shrink if shrink else None)

    def release_memory(self) -> None:
        """Give the arena's free memory back to the system (a run of a few frames that ends with a shrink)."""
        features = np.zeros((1, self.session.get_inputs()[0].shape[1], 16), dtype=np.float32)
        self.run(features, np.array([16], dtype=np.int64), shrink=True)

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's (encoded, encoded_lengths) for mel features (B, D, T) and their lengths."""
        encoded, encoded_lengths = self.run(_numpy(features, np.float32), _numpy(lengths, np.int64))
        return torch.from_numpy(encoded), torch.from_numpy(encoded_lengths)


class OnnxStreamingEncoder:
    """The cache-aware encoder step as two graphs: the first chunk of a stream, and every later one (they
    differ in the pre-encoded frames dropped, a constant of the exported graph)."""

    def __init__(self, first: OnnxEncoder, next_: OnnxEncoder):
        self.first = first
        self.next = next_

    def step(self, signal: torch.Tensor, lengths: torch.Tensor, cache_channel: torch.Tensor,
             cache_time: torch.Tensor, cache_len: torch.Tensor, first: bool):
        """As `cache_aware_stream_step(..., keep_all_outputs=False)`, with the caches batch first (the exported
        graph's layout, so that a stream's caches are a row of the batch's without copies)."""
        graph = self.first if first else self.next
        outputs = graph.run(_numpy(signal, np.float32), _numpy(lengths, np.int64), _numpy(cache_channel, np.float32),
                            _numpy(cache_time, np.float32), _numpy(cache_len, np.int64))
        return tuple(torch.from_numpy(output) for output in outputs)


class OnnxGraphs:
    """The encoder graphs of one loaded model: exported into the cache when missing, opened once each."""

    def __init__(self, model, options: OnnxOptions):
        self.model = model
        self.options = options
        self._model_key = model_key(model)
        self._opened: dict[str, OnnxEncoder] = {}
        self._lock = threading.Lock()

    def release_memory(self) -> None:
        """What the offline graphs' arenas hold beyond what they use (when the engine is idle)."""
        with self._lock:
            graphs = [graph for variant, graph in self._opened.items() if variant.startswith("offline-")]
        for graph in graphs:
            graph.release_memory()

    def offline(self) -> OnnxEncoder:
        """The encoder over whole inputs, with the model's own attention (NeMo's export of local attention
        gives a graph that computes something else: those forwards stay in PyTorch)."""
        return self._graph("offline-model", lambda path: _export_encoder(self.model, path))

    def streaming(self, att_context_size: list[int], pre_cache_frames: int, first_frames: int,
                  shift_frames: int, drop_pre_encoded: int, threads: int | None = None) -> OnnxStreamingEncoder:
        """The cache-aware step for the encoder's current streaming config (`set_default_att_context_size`);
        `threads`: its sessions' (the options' by default). Their threads sleep between steps: the event loop
        that receives the streams' audio needs a core between steps, which spinning threads would hold."""
        context = "x".join(str(c) for c in att_context_size)
        first = self._graph(f"stream-first-{context}", lambda path: _export_streaming(
            self.model, path, frames=first_frames, drop_pre_encoded=0), threads, spinning=False)
        later = self._graph(f"stream-next-{context}", lambda path: _export_streaming(
            self.model, path, frames=pre_cache_frames + shift_frames, drop_pre_encoded=drop_pre_encoded),
            threads, spinning=False)
        return OnnxStreamingEncoder(first, later)

    def _graph(self, variant: str, export, threads: int | None = None, spinning: bool = True) -> OnnxEncoder:
        with self._lock:
            if variant not in self._opened:
                path = self._cached(variant, export)
                self._opened[variant] = OnnxEncoder(path, threads or self.options.threads, spinning)
            return self._opened[variant]

    def _cached(self, variant: str, export) -> Path:
        # The quantisation tool's version matters only to quantised graphs.
        key = _digest([self._model_key, variant, self.options.quantize, _EXPORT_FORMAT, _versions(),
                       onnxruntime_version() if self.options.quantize != "none" else ""])
        folder = self.options.cache_dir / f"{variant}-{self.options.quantize}-{key[:16]}"
        graph = folder / "encoder.onnx"
        if graph.exists():
            log.info("ONNX encoder (%s, %s): %s", variant, self.options.quantize, folder)
            return graph
        self.options.cache_dir.mkdir(parents=True, exist_ok=True)
        # Written in a folder of its own, then renamed: a start killed half-way, or two processes exporting
        # at once, never leave a half-written graph under the key.
        work = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=self.options.cache_dir))
        try:
            log.info("exporting the encoder to ONNX (%s, %s) into %s", variant, self.options.quantize, folder)
            exported = work / "exported" / "encoder.onnx"
            exported.parent.mkdir()
            export(exported)
            result = work / "graph"
            result.mkdir()
            if self.options.quantize == "int8":
                _quantize_int8(exported, result / "encoder.onnx")
            else:
                _save_whole(exported, result / "encoder.onnx")
            (result / "made-by.json").write_text(json.dumps({"variant": variant, "quantize": self.options.quantize,
                                                             "versions": _versions()}, indent=1))
            try:
                os.rename(result, folder)
            except OSError:
                if not graph.exists():  # not another process's copy of the same graph
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return graph


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def model_key(model) -> str:
    """A digest of what the exported graphs depend on: the encoder's config and weights (not the decoding's)."""
    from omegaconf import OmegaConf

    digest = hashlib.sha256(OmegaConf.to_yaml(model.encoder._cfg, resolve=True).encode())
    for name, tensor in model.encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import nemo
    import onnx

    return {"nemo": nemo.__version__, "torch": torch.__version__, "onnx": onnx.__version__}


def _digest(parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _export_encoder(model, path: Path) -> None:
    encoder = model.encoder
    with _exporting(encoder, cache_support=False):
        encoder.export(str(path))


def _export_streaming(model, path: Path, frames: int, drop_pre_encoded: int) -> None:
    encoder = model.encoder
    device = next(encoder.parameters()).device
    caches = encoder.get_initial_cache_state(batch_size=2, device=device)
    example = (torch.zeros(2, encoder._feat_in, frames, device=device),
               torch.tensor([frames, frames], dtype=torch.int64, device=device),
               caches[0].transpose(0, 1).contiguous(), caches[1].transpose(0, 1).contiguous(), caches[2])
    saved = encoder.streaming_cfg.drop_extra_pre_encoded
    encoder.streaming_cfg.drop_extra_pre_encoded = drop_pre_encoded
    try:
        with _exporting(encoder, cache_support=True):
            encoder.export(str(path), input_example=example)
    finally:
        encoder.streaming_cfg.drop_extra_pre_encoded = saved


@contextlib.contextmanager
def _exporting(encoder, cache_support: bool):
    """NeMo's export sets the encoder's export flags and turns off gradients: give them back afterwards."""
    saved_cache_support = encoder.export_cache_support
    training = encoder.training
    encoder.export_cache_support = cache_support
    try:
        with _quiet_export():
            yield
    finally:
        encoder.export_cache_support = saved_cache_support
        encoder.train(training)


@contextlib.contextmanager
def _quiet_export():
    """The tracer warns about every Python value it records as a constant; those of NeMo's encoder are known."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _save_whole(source: Path, target: Path) -> None:
    """The graph as one file when it fits protobuf's 2 GB, else beside one file of its weights (NeMo's export
    writes a large model's weights as one file per tensor)."""
    import onnx

    graph = onnx.load(str(source), load_external_data=True)
    if not _too_large_for_one_file(source):
        onnx.save(graph, str(target))
    else:
        onnx.save(graph, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=target.name + ".weights")


def _too_large_for_one_file(graph: Path) -> bool:
    """Whether the graph with its weights (all the files of its folder) passes protobuf's 2 GB limit."""
    return sum(f.stat().st_size for f in graph.parent.iterdir()) > 2**31 - 2**24


def _quantize_int8(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = _too_large_for_one_file(source)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the tool logs a line per tensor at INFO on the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                         use_external_data_format=large)
    finally:
        root.setLevel(level)


def _numpy(tensor, dtype) -> np.ndarray:
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
    return np.ascontiguousarray(array, dtype=dtype)
