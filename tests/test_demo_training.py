"""The demo model's training pipeline runs end to end (a few steps on a handful of utterances)."""

import json
import subprocess
import sys

import numpy as np
import torch

from nemo_stt.engine import Engine, EngineConfig

from .conftest import REPO


def test_the_training_script_produces_a_loadable_streaming_hybrid_model(tmp_path):
    out = tmp_path / "demo.nemo"
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools/demo_model/train.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["steps"] == 3
    assert 0 <= metrics["wer_rnnt"] <= 100 and 0 <= metrics["wer_ctc"] <= 100
    engine = Engine(EngineConfig(model=str(out), device="cpu", num_threads=1))
    assert engine.family == "hybrid"
    assert len(engine.model.encoder.att_context_size_all) == 3
    # The later stages of the recipe: continue from a model, with voice variants, narrowband audio and
    # utterances joined into longer recordings.
    later = tmp_path / "later.nemo"
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools/demo_model/train.py"), "--smoke", "--out", str(later), "--init", str(out),
         "--voice-variants", "--narrowband", "0.5", "--ctc-weight", "0.3", "--joined", "0.5"],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    later_metrics = json.loads(later.with_suffix(".metrics.json").read_text())
    assert later_metrics["steps"] == 3
    assert 0 <= later_metrics["wer_rnnt_joined"] <= 100  # held-out utterances joined into a long recording


def test_narrowband_augmentation_removes_what_lies_above_4_khz():
    sys.path.insert(0, str(REPO / "tools/demo_model"))
    from train import augment

    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, 16000).astype(np.float32)  # white noise: energy at every frequency
    wide, narrow = augment(audio, np.random.default_rng(1)), augment(audio, np.random.default_rng(1), narrowband=1.0)

    def high_band_share(signal: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(signal)) ** 2
        return power[len(power) // 2 + len(power) // 20 :].sum() / power.sum()  # above 4.4 kHz

    assert high_band_share(wide) > 0.3 and high_band_share(narrow) < 0.05


def test_the_vectorised_rnnt_loss_matches_nemos_reference():
    sys.path.insert(0, str(REPO / "tools/demo_model"))
    from nemo.collections.asr.losses.rnnt_pytorch import RNNTLossPytorch
    from rnnt_loss import rnnt_loss

    torch.manual_seed(0)
    logits = torch.randn(3, 9, 5, 7, requires_grad=True)
    targets = torch.randint(0, 6, (3, 4))
    frames, labels = torch.tensor([9, 6, 7]), torch.tensor([4, 2, 3])
    ours = rnnt_loss(logits.log_softmax(-1), targets, frames, labels, blank=6)
    reference = RNNTLossPytorch(blank=6, reduction="none")(
        acts=logits.log_softmax(-1), labels=targets, act_lens=frames, label_lens=labels).mean()
    assert torch.allclose(ours, reference, atol=1e-4)
    ours_grad, = torch.autograd.grad(ours, logits)
    reference_grad, = torch.autograd.grad(reference, logits)
    assert torch.allclose(ours_grad, reference_grad, atol=1e-5)
