"""Build a random-weight model with a real FastConformer's layer sizes, for measuring speed and memory.

    python benchmarks/make_benchmark_model.py --out build/bench-medium.nemo            # causal, multi-look-ahead
    python benchmarks/make_benchmark_model.py --out build/bench-full.nemo --full-context

The demo model is too small for compute to show; this one costs what a production model costs
(its transcripts are noise). Sizes follow NeMo's FastConformer hybrid configs: `medium` (d_model 256,
16 layers, about 32 M parameters) and `large` (d_model 512, 17 layers, about 115 M).
"""

import argparse
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "demo_model"))
from sentences import make_corpus
from train import model_config, train_tokenizer

SIZES = {
    "medium": {"d_model": 256, "n_layers": 16, "n_heads": 4, "pred_hidden": 640, "joint_hidden": 640},
    "large": {"d_model": 512, "n_layers": 17, "n_heads": 8, "pred_hidden": 640, "joint_hidden": 640},
}


def build(out: Path, size: str, full_context: bool, vocab_size: int) -> Path:
    from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel

    dims = SIZES[size]
    with tempfile.TemporaryDirectory() as work:
        tokenizer_dir = Path(work) / "tokenizer"
        train_tokenizer(make_corpus(3000, seed=1), tokenizer_dir, vocab_size)
        cfg = model_config(str(tokenizer_dir), dims["d_model"], dims["n_layers"], dims["n_heads"])
        cfg["encoder"]["subsampling_conv_channels"] = 256
        cfg["model_defaults"].update(pred_hidden=dims["pred_hidden"], joint_hidden=dims["joint_hidden"])
        cfg["decoder"]["prednet"]["pred_hidden"] = dims["pred_hidden"]
        cfg["joint"]["jointnet"]["joint_hidden"] = dims["joint_hidden"]
        if full_context:
            cfg["encoder"].update(att_context_size=[-1, -1], att_context_style="regular", conv_context_size=None,
                                  causal_downsampling=False)
        else:
            cfg["encoder"]["att_context_size"] = [[70, 13], [70, 6], [70, 1], [70, 0]]
        model = EncDecHybridRNNTCTCBPEModel(cfg=OmegaConf.create(cfg))
        model.eval()
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save_to(str(out))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"wrote {out}: {size}, {'full context' if full_context else 'causal'}, {params:.1f} M parameters")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--full-context", action="store_true", help="offline model: unlimited attention")
    parser.add_argument("--vocab-size", type=int, default=256)
    args = parser.parse_args()
    build(args.out, args.size, args.full_context, args.vocab_size)


if __name__ == "__main__":
    main()
