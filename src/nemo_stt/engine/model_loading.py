"""Loading a NeMo ASR model from a `.nemo` file, a Hugging Face id, or the embedded demo model."""

import contextlib
import gc
import logging
import os
from importlib import resources
from pathlib import Path

import torch

from .gpu import cast_matrix_weights
from .memory import release_free_memory

log = logging.getLogger(__name__)

DEMO_MODEL_NAME = "demo-en-fastconformer.nemo"


class ModelLoadError(RuntimeError):
    """The model could not be loaded or does not fit the requested architecture."""


def demo_model_path() -> Path:
    return Path(str(resources.files("nemo_stt") / "assets" / DEMO_MODEL_NAME))


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"DEVICE={device} but CUDA is not available on this machine")
    return torch.device(device)


def load_asr_model(source: str | None, device: torch.device):
    """Restore the model in eval mode on `device`, with deterministic feature extraction.

    `source` is a path to a `.nemo` file, a Hugging Face id (the HF cache is used when it holds the
    model), or None for the embedded demo model.
    """
    from nemo.collections.asr.models import ASRModel

    if source is None:
        path = demo_model_path()
        log.info("MODEL is not set: using the embedded small demo model (%s), an English model trained on "
                 "synthetic speech for demonstration and tests; set MODEL for real transcription", path.name)
        model = _restore(ASRModel, str(path), device, "the embedded demo model")
    elif os.path.exists(source):
        if not (os.path.isfile(source) and source.endswith(".nemo")):
            raise ModelLoadError(f"MODEL={source} exists but is not a .nemo file")
        model = _restore(ASRModel, source, device, source)
    else:
        if source.endswith(".nemo") or source.startswith(("/", "./", "../")):
            raise ModelLoadError(f"MODEL={source}: no such file")
        try:
            with _without_random_init():
                model = ASRModel.from_pretrained(model_name=source, map_location=device,
                                                 save_restore_connector=_mapped_weights_connector())
        except Exception as error:
            raise ModelLoadError(
                f"could not load model '{source}' from Hugging Face ({type(error).__name__}: "
                f"{_first_line(error)}). Without network access, mount the .nemo file and set MODEL to its path, "
                "or mount a Hugging Face cache that holds the model (HF_HOME)"
            ) from error
    model.eval()
    model.to(device)
    _make_features_deterministic(model)
    # NeMo's restore leaves the mapped checkpoint's tensors in reference cycles: collect them now, or the
    # file's pages stay mapped (and counted in RSS) until some later collection runs.
    gc.collect()
    release_free_memory()  # what restoring freed (the checkpoint's tensors): as much as the model again
    return model


def has_full_context(model) -> bool:
    """Whether the encoder attends over the whole input (offline models) rather than a limited context."""
    context = getattr(model.encoder, "att_context_size", None)
    return context is not None and list(context)[:2] == [-1, -1]


def use_local_attention(model, frames_each_side: int = 128) -> None:
    """Switch a full-context encoder to local attention: cost linear in the input's length.

    With 128 frames (10 s at 80 ms) on each side, inputs up to about 10 s are transcribed exactly as
    with full attention; longer ones see 20 s of context around each frame.
    """
    from omegaconf import open_dict

    # NeMo rebuilds the attention layers from the encoder's config; older or minimal configs may lack
    # the keys it reads (their values only matter in training).
    with open_dict(model.encoder._cfg):
        for key, default in (("dropout", 0.0), ("dropout_emb", 0.0), ("dropout_att", 0.0), ("pos_emb_max_len", 5000)):
            if model.encoder._cfg.get(key) is None:
                model.encoder._cfg[key] = default
    device = next(model.parameters()).device
    dtype = _attention_weights_dtype(model)
    model.encoder.change_attention_model("rel_pos_local_attn", [frames_each_side, frames_each_side], device=device)
    _match_new_attention_layers(model, dtype)
    if hasattr(model.encoder, "change_subsampling_conv_chunking_factor"):
        # The convolutional subsampling then processes long inputs in pieces instead of one large tensor.
        model.encoder.change_subsampling_conv_chunking_factor(1)


def use_full_attention(model) -> None:
    """Switch back to attention over the whole input (after `use_local_attention`)."""
    device = next(model.parameters()).device
    dtype = _attention_weights_dtype(model)
    model.encoder.change_attention_model("rel_pos", [-1, -1], device=device)
    _match_new_attention_layers(model, dtype)


def _attention_weights_dtype(model) -> torch.dtype:
    return model.encoder.layers[0].self_attn.linear_q.weight.dtype


def _match_new_attention_layers(model, dtype: torch.dtype) -> None:
    """Make the attention layers NeMo just rebuilt compute what the old ones did.

    `change_attention_model` builds them in training mode (dropout on), in fp32 and always with biases:
    for an encoder without biases (`use_bias: false`, as in the Parakeet models) the loaded weights
    leave those biases at their random initial values; weights kept in bf16 (see `gpu`) stay in bf16.
    """
    for layer in model.encoder.layers:
        if not model.encoder._cfg.get("use_bias", True):
            for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
                getattr(layer.self_attn, name).bias = None
        if dtype != torch.float32:
            cast_matrix_weights(layer.self_attn, dtype)
    model.eval()


def _restore(model_class, path: str, device: torch.device, label: str):
    try:
        with _without_random_init():
            return model_class.restore_from(restore_path=path, map_location=device,
                                            save_restore_connector=_mapped_weights_connector())
    except Exception as error:
        raise ModelLoadError(f"could not load {label}: {type(error).__name__}: {_first_line(error)}") from error


# The initialisers that fill a new module's parameters with random values (what Linear, Conv1d, LSTM
# and Embedding call from their reset_parameters, and NeMo's own weight init).
_RANDOM_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_",
                        "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def _without_random_init():
    """Build modules without filling their parameters with random values.

    Restoring builds the model from its config, initialised at random, then loads the checkpoint into
    it with strict checking (every parameter is overwritten, or restoring fails); the random values
    only cost time (a large share of the load for a 0.6 B model) and touch every page once more.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _RANDOM_INITIALISERS}
    try:
        for name in _RANDOM_INITIALISERS:
            setattr(torch.nn.init, name, _leave_as_is)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def _leave_as_is(tensor, *args, **kwargs):
    return tensor


def _mapped_weights_connector():
    """NeMo's restore connector, reading the checkpoint's tensors from a memory map.

    NeMo reads the whole checkpoint into memory and copies it into the model: two copies of the
    weights at once. Mapped, the checkpoint stays in the page cache and only the model's copy is the
    process's own memory.
    """
    from nemo.core.connectors.save_restore_connector import SaveRestoreConnector

    class MappedWeights(SaveRestoreConnector):
        @staticmethod
        def _load_state_dict_from_disk(model_weights, map_location="cpu"):
            try:
                return torch.load(model_weights, map_location=map_location, mmap=True)
            except RuntimeError:  # a checkpoint in torch's legacy format cannot be mapped
                return SaveRestoreConnector._load_state_dict_from_disk(model_weights, map_location)

    return MappedWeights()


def _make_features_deterministic(model) -> None:
    # Dither adds random noise to features at inference; NeMo's own inference wrappers turn it off too.
    featurizer = getattr(model.preprocessor, "featurizer", None)
    if featurizer is not None:
        featurizer.dither = 0.0
        featurizer.pad_to = 0


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no details"
