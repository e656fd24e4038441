"""Tiny random-weight NeMo models of every decoder family, built from config and saved as .nemo files.

They exercise loading and the decoder paths (CTC, RNNT, TDT, hybrid); their transcripts are noise.
"""

from pathlib import Path

import sentencepiece as spm
from omegaconf import OmegaConf

TEXT = [
    "anna bought the bread at the market", "the pilot waited near the station on monday",
    "my old house was very quiet in the evening", "the red car stopped behind the big bridge",
    "the doctor sent a letter to his family", "tom and emma walked to the park yesterday",
]
TDT_DURATIONS = [0, 1, 2, 3, 4]


def train_tokenizer(directory: Path, vocab_size: int = 40, text: list[str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "text.txt"
    corpus.write_text("\n".join(text or TEXT * 5) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / "tokenizer"),
                                   vocab_size=vocab_size,
                                   model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    # NeMo packs vocab.txt into the .nemo beside the SentencePiece model.
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    (directory / "vocab.txt").write_text("\n".join(pieces) + "\n")
    return directory


def _dataset(shuffle: bool) -> dict:
    # NeMo's transcribe() builds its data loader from validation_ds.
    return {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 4, "shuffle": shuffle,
            "num_workers": 0, "pin_memory": False, "use_start_end_token": False}


def _common(tokenizer_dir: Path, features: int) -> dict:
    return {
        "sample_rate": 16000,
        "train_ds": _dataset(True), "validation_ds": _dataset(False), "test_ds": _dataset(False),
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025,
                         "window_stride": 0.01, "features": features, "n_fft": 512, "dither": 1e-5, "pad_to": 0},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": features, "n_layers": 1,
                    "d_model": 32, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": 32, "ff_expansion_factor": 2, "self_attention_model": "rel_pos",
                    "n_heads": 2, "conv_kernel_size": 9},
        "model_defaults": {"enc_hidden": 32, "pred_hidden": 32, "joint_hidden": 32},
    }


def _transducer(tdt: bool) -> dict:
    extra = {"num_extra_outputs": len(TDT_DURATIONS)} if tdt else {}
    return {
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "blank_as_pad": True,
                    "prednet": {"pred_hidden": 32, "pred_rnn_layers": 1}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
                  "fuse_loss_wer": False, "jointnet": {"joint_hidden": 32, "activation": "relu"}, **extra},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 5},
                     **({"model_type": "tdt", "durations": TDT_DURATIONS} if tdt else {})},
        "loss": {"loss_name": "tdt", "tdt_kwargs": {"durations": TDT_DURATIONS, "sigma": 0.02, "omega": 0.1}}
        if tdt else {"loss_name": "default"},
    }


def _ctc_decoder() -> dict:
    return {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 32, "num_classes": -1,
            "vocabulary": []}


def build(kind: str, tokenizer_dir: Path, out: Path, features: int = 40) -> Path:
    """Save a random-weight model of `kind` (ctc, rnnt, tdt, hybrid, streaming_hybrid) to `out`; return the path."""
    from nemo.collections.asr.models import EncDecCTCModelBPE, EncDecHybridRNNTCTCBPEModel, EncDecRNNTBPEModel

    cfg = _common(tokenizer_dir, features)
    if kind == "ctc":
        cfg.update({"decoder": _ctc_decoder(), "decoding": {"strategy": "greedy_batch"}})
        model_class = EncDecCTCModelBPE
    elif kind in ("rnnt", "tdt"):
        cfg.update(_transducer(tdt=kind == "tdt"))
        if kind == "tdt":
            cfg["model_defaults"]["tdt_durations"] = TDT_DURATIONS
        model_class = EncDecRNNTBPEModel
    elif kind in ("hybrid", "streaming_hybrid"):
        cfg.update(_transducer(tdt=False))
        if kind == "streaming_hybrid":
            # Trained-for-streaming layout: causal convolutions, chunked attention with several look-aheads.
            cfg["preprocessor"]["normalize"] = "NA"
            cfg["encoder"].update({"causal_downsampling": True, "conv_context_size": "causal",
                                   "att_context_size": [[16, 3], [16, 1]], "att_context_style": "chunked_limited",
                                   "conv_norm_type": "layer_norm"})
        cfg["aux_ctc"] = {"ctc_loss_weight": 0.3, "decoder": _ctc_decoder(), "decoding": {"strategy": "greedy"}}
        model_class = EncDecHybridRNNTCTCBPEModel
    else:
        raise ValueError(kind)
    model = model_class(cfg=OmegaConf.create(cfg))
    model.save_to(str(out))
    return out
