"""Build random-weight `.nemo` replicas of real NeMo ASR models: their architecture, none of their training.

    python benchmarks/make_replicas.py parakeet-tdt-0.6b-v2            # into build/replicas/
    python benchmarks/make_replicas.py --all --small                   # every structure, at tiny sizes
    python benchmarks/make_replicas.py parakeet-tdt-0.6b-v2 --emission-rate 0.3    # for speed benchmarks

`--emission-rate R` raises the blank logit of the transducer joint until greedy decoding emits about R
tokens per encoder frame on synthetic speech, as a trained model does (a trained English model emits
about one token per three 80-ms frames). Untouched, a random joint emits up to max_symbols tokens on
every frame, and the decoding loop, not the encoder, would be what a speed benchmark measures. The
file is then named NAME-emitting.nemo. The equality tests use untouched replicas.

A replica has its model's encoder sizes, subsampling, mel features and normalisation, decoder type,
TDT durations, vocabulary size and attention context, so that it costs what the model costs and takes
the engine's code paths the model takes; nothing is downloaded. Its tokenizer is a SentencePiece BPE
model trained here on the demo corpus (tools/demo_model/sentences.py); when that corpus cannot give
the model's vocabulary size, the largest size it gives is used and printed. `--small` keeps each
structure (family, decoder, durations, features, normalisation, context) at d_model 64 and 2 layers.

Where the figures come from:
- parakeet-tdt-0.6b-v2 / -v3: the Hugging Face model cards (FastConformer XL, 24 layers, d_model 1024,
  128 mels, 8x subsampling, TDT durations [0, 1, 2, 3, 4], full attention; vocabulary 1024 for v2,
  8192 for v3) and the published module layout of the model (8 heads, feed-forward 4096, depthwise
  kernel 9, 256 subsampling channels, no biases in the Conformer layers, 2-layer LSTM prediction
  network of 640, joint 640). Normalisation per_feature and 25 ms / 10 ms windows: NeMo's FastConformer
  configs.
- parakeet-ctc-1.1b: the model card (FastConformer XXL, 42 layers, d_model 1024, 80 mels, vocabulary
  1024, CTC); the other sizes as the XL models.
- stt_fr_fastconformer_hybrid_large_pc and linto_stt_fr_fastconformer: the model cards (FastConformer
  large hybrid RNNT + CTC, d_model 512, 17 layers, 80 mels) and NeMo's
  fastconformer_hybrid_transducer_ctc_bpe.yaml (8 heads, feed-forward x4, kernel 9, 256 subsampling
  channels, prediction network and joint 640, 1 LSTM layer, per_feature); vocabulary 1024 is that
  config's tokenizer size, not read from the models.
- stt_en_fastconformer_hybrid_medium_streaming_80ms_pc: the model card (cache-aware hybrid, 80 ms
  look-ahead: att_context_size [70, 1]) and NeMo's fastconformer_hybrid_transducer_ctc_bpe_streaming.yaml
  for the medium size (d_model 256, 16 layers, 4 heads, causal convolutions and downsampling, chunked
  limited attention, layer_norm in the convolutions, no feature normalisation, vocabulary 1024).
"""

import argparse
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "demo_model"))
from sentences import make_corpus
from train import model_config, train_tokenizer

TDT_DURATIONS = [0, 1, 2, 3, 4]
_XL = {"d_model": 1024, "n_layers": 24, "n_heads": 8, "features": 128, "pred_hidden": 640, "pred_layers": 2,
       "joint_hidden": 640, "use_bias": False, "normalize": "per_feature", "context": "full"}
_LARGE_HYBRID = {"family": "hybrid", "d_model": 512, "n_layers": 17, "n_heads": 8, "features": 80,
                 "pred_hidden": 640, "pred_layers": 1, "joint_hidden": 640, "use_bias": True,
                 "normalize": "per_feature", "context": "full", "vocabulary": 1024}
REPLICAS = {
    "parakeet-tdt-0.6b-v2": {**_XL, "family": "tdt", "vocabulary": 1024},
    "parakeet-tdt-0.6b-v3": {**_XL, "family": "tdt", "vocabulary": 8192},
    "parakeet-ctc-1.1b": {**_XL, "family": "ctc", "n_layers": 42, "features": 80, "vocabulary": 1024},
    "stt_fr_fastconformer_hybrid_large_pc": _LARGE_HYBRID,
    "linto_stt_fr_fastconformer": _LARGE_HYBRID,
    "stt_en_fastconformer_hybrid_medium_streaming_80ms_pc": {
        "family": "hybrid", "d_model": 256, "n_layers": 16, "n_heads": 4, "features": 80, "pred_hidden": 640,
        "pred_layers": 1, "joint_hidden": 640, "use_bias": True, "normalize": "NA", "context": [70, 1],
        "vocabulary": 1024},
}
SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "pred_hidden": 64, "joint_hidden": 64, "subsampling_channels": 32}


def tokenizer(directory: Path, vocabulary: int) -> int:
    """Train the tokenizer, at `vocabulary` pieces or the most the demo corpus gives; return its size."""
    corpus = make_corpus(20000, seed=1)
    try:
        train_tokenizer(corpus, directory, vocabulary)
        return vocabulary
    except RuntimeError as error:
        largest = re.search(r"<= (\d+)", str(error))
        if not largest:
            raise
        train_tokenizer(corpus, directory, int(largest.group(1)))
        return int(largest.group(1))


def config(spec: dict, tokenizer_dir: Path, small: bool) -> dict:
    dims = {**spec, **(SMALL if small else {})}
    cfg = model_config(str(tokenizer_dir), dims["d_model"], dims["n_layers"], dims["n_heads"], 8,
                       dims.get("subsampling_channels", 256))
    for section in ("preprocessor",):
        cfg[section].update(features=spec["features"], normalize=spec["normalize"])
    cfg["encoder"].update(feat_in=spec["features"], use_bias=spec["use_bias"], dropout=0.1, dropout_pre_encoder=0.1,
                          dropout_att=0.1)
    if spec["context"] == "full":
        cfg["encoder"].update(att_context_size=[-1, -1], att_context_style="regular", conv_context_size=None,
                              causal_downsampling=False, conv_norm_type="batch_norm")
    else:
        cfg["encoder"].update(att_context_size=list(spec["context"]), att_context_style="chunked_limited")
    cfg["model_defaults"].update(pred_hidden=dims["pred_hidden"], joint_hidden=dims["joint_hidden"])
    cfg["decoder"]["prednet"].update(pred_hidden=dims["pred_hidden"], pred_rnn_layers=spec["pred_layers"])
    cfg["joint"]["jointnet"]["joint_hidden"] = dims["joint_hidden"]
    if spec["family"] == "tdt":
        cfg["model_defaults"]["tdt_durations"] = TDT_DURATIONS
        cfg["joint"]["num_extra_outputs"] = len(TDT_DURATIONS)
        cfg["decoding"].update(model_type="tdt", durations=TDT_DURATIONS)
        cfg["loss"] = {"loss_name": "tdt", "tdt_kwargs": {"durations": TDT_DURATIONS, "sigma": 0.02, "omega": 0.1}}
    if spec["family"] in ("tdt", "ctc"):
        cfg.pop("aux_ctc")
    if spec["family"] == "ctc":
        for key in ("joint", "loss"):
            cfg.pop(key)
        cfg["decoder"] = {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None,
                          "num_classes": -1, "vocabulary": []}
        cfg["decoding"] = {"strategy": "greedy_batch"}
    return cfg


def calibrate_emissions(model, rate: float) -> float:
    """Add to the joint's blank logit the bias that makes greedy decoding emit about `rate` tokens per frame.

    Measured with the model's own greedy decoding on 8 s of synthetic speech (encoder run once), by
    bisection on the bias; returns the rate reached.
    """
    import torch
    from synthesize import speak

    sentences = iter(make_corpus(40, seed=3))
    audio = np.zeros(0, dtype=np.float32)
    while len(audio) < 8 * 16000:
        audio = np.concatenate([audio, speak(next(sentences)), np.zeros(3200, np.float32)])
    output = model.joint.joint_net[-1]
    blank = model.joint.num_classes_with_blank - 1
    with torch.inference_mode():
        signal = torch.from_numpy(audio).unsqueeze(0)
        encoded, lengths = model.forward(input_signal=signal, input_signal_length=torch.tensor([signal.shape[1]]))

        def emitted(bias: float) -> float:
            original = output.bias[blank].item()
            output.bias[blank] += bias
            hypothesis = model.decoding.rnnt_decoder_predictions_tensor(encoded, lengths)[0]
            output.bias[blank] = original
            return len(hypothesis.y_sequence) / int(lengths[0])

        low, high = 0.0, 64.0
        for _ in range(12):
            middle = (low + high) / 2
            low, high = (middle, high) if emitted(middle) > rate else (low, middle)
        output.bias[blank] += high
        return emitted(0.0)


def build(name: str, out_dir: Path, small: bool, emission_rate: float | None = None) -> Path:
    from nemo.collections.asr.models import EncDecCTCModelBPE, EncDecHybridRNNTCTCBPEModel, EncDecRNNTBPEModel

    spec = REPLICAS[name]
    model_class = {"ctc": EncDecCTCModelBPE, "tdt": EncDecRNNTBPEModel, "hybrid": EncDecHybridRNNTCTCBPEModel}
    if emission_rate is not None and spec["family"] == "ctc":
        raise SystemExit(f"{name}: --emission-rate is for transducer decoders (CTC greedy decoding costs the same "
                         "whatever it emits)")
    suffix = ("-small" if small else "") + ("-emitting" if emission_rate is not None else "")
    out = out_dir / f"{name}{suffix}.nemo"
    with tempfile.TemporaryDirectory() as work:
        vocabulary = tokenizer(Path(work) / "tokenizer", spec["vocabulary"])
        model = model_class[spec["family"]](cfg=OmegaConf.create(config(spec, Path(work) / "tokenizer", small)))
        model.eval()
        if emission_rate is not None:
            reached = calibrate_emissions(model, emission_rate)
            print(f"{name}: greedy decoding emits {reached:.2f} tokens per encoder frame", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save_to(str(out))
    parameters = sum(p.numel() for p in model.parameters())
    short = f" (the demo corpus gives at most {vocabulary}; the model has {spec['vocabulary']})" \
        if vocabulary != spec["vocabulary"] else ""
    print(f"{out}: {type(model).__name__}, {parameters / 1e6:.1f} M parameters, {out.stat().st_size / 1e6:.1f} MB, "
          f"vocabulary {vocabulary}{short}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[], *REPLICAS], metavar="NAME",
                        help=f"one or more of: {', '.join(REPLICAS)}")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--small", action="store_true", help="the same structures at tiny sizes")
    parser.add_argument("--emission-rate", type=float, metavar="R",
                        help="tokens per encoder frame the transducer's greedy decoding emits (see above)")
    parser.add_argument("--out-dir", type=Path, default=Path("build/replicas"))
    args = parser.parse_args()
    for name in REPLICAS if args.all else args.names:
        build(name, args.out_dir, args.small, args.emission_rate)


if __name__ == "__main__":
    main()
