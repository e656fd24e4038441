"""Choosing the decoder (CTC or RNNT/TDT) and configuring NeMo's decoding for timestamps and confidence."""

from typing import Literal

from omegaconf import OmegaConf, open_dict

from .model_loading import ModelLoadError

DecoderKind = Literal["ctc", "rnnt"]
ModelFamily = Literal["ctc", "rnnt", "hybrid"]

# ARCHITECTURE values of LinTO-STT-NeMo -> the model families they fit and the decoder they select.
_ARCHITECTURES: dict[str, tuple[tuple[ModelFamily, ...], DecoderKind | None]] = {
    "ctc_bpe": (("ctc", "hybrid"), "ctc"),
    "rnnt_bpe": (("rnnt", "hybrid"), "rnnt"),
    "hybrid_bpe": (("hybrid",), None),
    "hybrid_bpe_ctc": (("hybrid",), "ctc"),
    "hybrid_bpe_rnnt": (("hybrid",), "rnnt"),
}


def model_family(model) -> ModelFamily:
    from nemo.collections.asr.models import EncDecCTCModel, EncDecHybridRNNTCTCModel, EncDecRNNTModel

    if isinstance(model, EncDecHybridRNNTCTCModel):
        return "hybrid"
    if isinstance(model, EncDecRNNTModel):
        return "rnnt"
    if isinstance(model, EncDecCTCModel):
        return "ctc"
    raise ModelLoadError(f"{type(model).__name__} is not a CTC, RNNT/TDT or hybrid ASR model")


def family_name(model) -> str:
    """The model family as people name it, for the start-up log: CTC, RNNT, TDT, hybrid RNNT+CTC or TDT+CTC."""
    family = model_family(model)
    if family == "ctc":
        return "CTC"
    # TDT models are RNNT-class models whose decoding config carries durations.
    transducer = "TDT" if model.cfg.decoding.get("model_type") == "tdt" else "RNNT"
    return f"hybrid {transducer}+CTC" if family == "hybrid" else transducer


def select_decoder(model, architecture: str | None) -> DecoderKind:
    """The decoder that ARCHITECTURE asks for; unset means the model's own default (RNNT for hybrids)."""
    family = model_family(model)
    if architecture is None:
        return "ctc" if family == "ctc" else "rnnt"
    families, decoder = _ARCHITECTURES[architecture]
    if family not in families:
        raise ModelLoadError(
            f"ARCHITECTURE={architecture} does not fit this model, which is a {family} model "
            f"({type(model).__name__}); use one of: {', '.join(_fitting(family))}, or leave ARCHITECTURE unset"
        )
    return decoder or "rnnt"


def _fitting(family: ModelFamily) -> list[str]:
    return [name for name, (families, _) in _ARCHITECTURES.items() if family in families]


def configure_decoding(model, decoder: DecoderKind) -> None:
    """Greedy batched decoding with word timestamps and NeMo's word confidence estimation (for RNNT/TDT,
    label looping with CUDA graphs)."""
    family = model_family(model)
    base = model.cfg.aux_ctc.decoding if family == "hybrid" and decoder == "ctc" else model.cfg.decoding
    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    with open_dict(cfg):
        cfg.strategy = "greedy_batch"
        cfg.compute_timestamps = True
        cfg.preserve_alignments = False
        cfg.confidence_cfg = {
            "preserve_frame_confidence": True,
            "preserve_token_confidence": True,
            "preserve_word_confidence": True,
            "exclude_blank": True,
            "aggregation": "mean",
            "method_cfg": {"name": "max_prob"},
        }
        if "greedy" not in cfg or cfg.greedy is None:
            cfg.greedy = {}
        if decoder == "rnnt":
            cfg.greedy.max_symbols = cfg.greedy.get("max_symbols", None) or 10
            # NeMo 3.0's defaults, kept even where a model's saved config turns them off: the label-looping
            # algorithm, with CUDA graphs on a CUDA device (NeMo falls back to plain PyTorch elsewhere; it
            # keeps word confidences and disables autocast around the graphs itself).
            cfg.greedy.loop_labels = True
            cfg.greedy.use_cuda_graph_decoder = True
            # TDT models carry their durations in the decoding config; keep them.
    if family == "hybrid":
        model.change_decoding_strategy(decoding_cfg=cfg, decoder_type=decoder, verbose=False)
    else:
        model.change_decoding_strategy(decoding_cfg=cfg, verbose=False)
