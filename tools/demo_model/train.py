"""Train the demo model: a small causal hybrid RNNT+CTC FastConformer on espeak-ng speech.

    python tools/demo_model/train.py --out src/nemo_stt/assets/demo-en-fastconformer.nemo

Generates the corpus, trains a SentencePiece BPE tokenizer, synthesizes the speech,
trains, measures held-out WER with both decoders and writes the `.nemo` plus a
`metrics.json` beside it. `--smoke` runs the whole pipeline for a few steps.
"""

import argparse
import json
import logging
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import numpy as np
import sentencepiece as spm
import torch
from omegaconf import OmegaConf

from nemo_stt.audio import resample

sys.path.insert(0, str(Path(__file__).resolve().parent))
from held_out import held_out_texts, speak_held_out
from rnnt_loss import rnnt_loss
from sentences import make_corpus, make_short_phrases
from synthesize import SAMPLE_RATE, speak_corpus

log = logging.getLogger("train-demo-model")


def model_config(tokenizer_dir: str, d_model: int, n_layers: int, n_heads: int, subsampling: int = 8,
                 subsampling_channels: int | None = None) -> dict:
    return {
        "sample_rate": SAMPLE_RATE,
        "model_defaults": {"enc_hidden": d_model, "pred_hidden": 128, "joint_hidden": 128},
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": SAMPLE_RATE, "normalize": "NA", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 80, "n_fft": 512, "frame_splicing": 1, "dither": 1e-5, "pad_to": 0,
        },
        "spec_augment": {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 2, "time_masks": 2, "freq_width": 15, "time_width": 0.05,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 80, "feat_out": -1, "n_layers": n_layers, "d_model": d_model, "use_bias": True,
            "subsampling": "dw_striding", "subsampling_factor": subsampling,
            "subsampling_conv_channels": subsampling_channels or d_model,
            "causal_downsampling": True, "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos", "n_heads": n_heads,
            # Several look-aheads (13, 6 and 1 frames of 80 ms): the first is the default.
            "att_context_size": [[70, 13], [70, 6], [70, 1]], "att_context_style": "chunked_limited",
            "att_context_probs": None,
            "xscaling": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "layer_norm",
            "conv_context_size": "causal",
            "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
            "random_state_sampling": False, "blank_as_pad": True,
            "prednet": {"pred_hidden": 128, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.1},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None, "preserve_memory": False,
            "fuse_loss_wer": False, "fused_batch_size": 4,
            "jointnet": {"joint_hidden": 128, "activation": "relu", "dropout": 0.1},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "aux_ctc": {
            "ctc_loss_weight": 0.4, "use_cer": False, "ctc_reduction": "mean_batch",
            "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None,
                        "num_classes": -1, "vocabulary": []},
            "decoding": {"strategy": "greedy"},
        },
        "loss": {"loss_name": "default"},
        "optim": {"name": "adamw", "lr": 1e-3},
        **dataset_sections(),
    }


def add_dataset_sections(model) -> None:
    """Give a model saved without them the dataset sections (see `dataset_sections`); weights untouched."""
    from omegaconf import open_dict

    cfg = model.cfg
    with open_dict(cfg):
        for key, value in dataset_sections().items():
            if cfg.get(key) is None:
                cfg[key] = value
    model.cfg = cfg


def dataset_sections() -> dict:
    """The train_ds, validation_ds and test_ds sections every NeMo ASR model carries.

    Training here feeds batches by hand, but NeMo's `transcribe()` builds its data loader from
    `validation_ds` and fails on a model without it.
    """
    common = {"manifest_filepath": None, "sample_rate": SAMPLE_RATE, "labels": None, "batch_size": 16,
              "num_workers": 0, "pin_memory": False, "use_start_end_token": False}
    return {
        "train_ds": {**common, "shuffle": True, "max_duration": 20.0, "min_duration": 0.1, "is_tarred": False,
                     "tarred_audio_filepaths": None},
        "validation_ds": {**common, "shuffle": False},
        "test_ds": {**common, "shuffle": False},
    }


@torch.no_grad()
def center_first_convolution(model, audios: list[np.ndarray]) -> tuple[float, float]:
    """Fold the mean and deviation of the training log-mels into the subsampling's first convolution.

    Un-normalised log-mels (normalize "NA", the streaming-safe choice) sit around -10 with a deviation
    of a few units: the first convolution's outputs are then dominated by that offset, and at a learning
    rate of 1e-3 it takes thousands of steps for the biases to catch up. Scaling the weights by 1/std and
    shifting the biases gives, at the start, the same layer as on centred and scaled inputs, with no
    change to the model's structure or to how it streams.
    """
    model.preprocessor.eval()
    frames = []
    for audio in audios:
        features, length = model.preprocessor(input_signal=torch.from_numpy(audio)[None],
                                              length=torch.tensor([len(audio)]))
        frames.append(features[0, :, : int(length[0])])
    stacked = torch.cat(frames, dim=1)
    mean, std = float(stacked.mean()), float(stacked.std())
    conv = model.encoder.pre_encode.conv[0]
    conv.weight /= std
    conv.bias -= mean * conv.weight.sum(dim=(1, 2, 3))
    model.preprocessor.train()
    return mean, std


def train_tokenizer(sentences: list[str], out_dir: Path, vocab_size: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    text_file = out_dir / "corpus.txt"
    text_file.write_text("\n".join(sentences) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1, minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    vocab = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")


def augment(audio: np.ndarray, rng: np.random.Generator, narrowband: float = 0.0) -> np.ndarray:
    """Random gain, a little noise and a random lead-in, so that the model is not tied to espeak's clean output.

    With probability `narrowband` the audio first goes through 8 kHz and back, as telephone audio does.
    """
    if rng.random() < narrowband:
        audio = resample(resample(audio, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)
    audio = audio * rng.uniform(0.25, 1.0)
    if rng.random() < 0.6:
        rms = float(np.sqrt(np.mean(audio**2)) + 1e-8)
        snr_db = rng.uniform(15, 40)
        audio = audio + rng.normal(0, rms / (10 ** (snr_db / 20)), size=audio.shape).astype(np.float32)
    lead = np.zeros(int(rng.uniform(0, 0.3) * SAMPLE_RATE), dtype=np.float32)
    tail = np.zeros(int(rng.uniform(0, 0.3) * SAMPLE_RATE), dtype=np.float32)
    return np.concatenate([lead, audio, tail]).astype(np.float32)


def make_batches(lengths: list[int], max_batch_seconds: float, rng: random.Random,
                 shortest_first: bool = False) -> list[list[int]]:
    """Length-sorted batches capped in total padded audio, shuffled (or shortest first: SortaGrad)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i] + rng.randint(0, SAMPLE_RATE // 4))
    batches, current = [], []
    for index in order:
        longest = max([lengths[i] for i in current] + [lengths[index]])
        if current and longest * (len(current) + 1) > max_batch_seconds * SAMPLE_RATE:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    if not shortest_first:
        rng.shuffle(batches)
    return batches


def pad(audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(a) for a in audios])
    signal = torch.zeros(len(audios), int(lengths.max()))
    for row, audio in enumerate(audios):
        signal[row, : len(audio)] = torch.from_numpy(audio)
    return signal, lengths


def training_loss(model, signal, signal_len, tokens: list[list[int]], ctc_weight: float) -> torch.Tensor:
    encoded, encoded_len = model.forward(input_signal=signal, input_signal_length=signal_len)
    target_len = torch.tensor([len(t) for t in tokens])
    targets = torch.zeros(len(tokens), int(target_len.max()), dtype=torch.long)
    for row, ids in enumerate(tokens):
        targets[row, : len(ids)] = torch.tensor(ids)
    blank = model.decoder.blank_idx
    decoder_out, _, _ = model.decoder(targets=targets, target_length=target_len)
    joint = model.joint(encoder_outputs=encoded, decoder_outputs=decoder_out).log_softmax(-1)
    loss_rnnt = rnnt_loss(joint, targets, encoded_len, target_len, blank=blank)
    ctc_log_probs = model.ctc_decoder(encoder_output=encoded)
    # Summed over each utterance like the RNNT loss (NeMo's "mean_batch"): a per-token mean would make the
    # CTC term negligible, and the encoder then learns far more slowly.
    loss_ctc = torch.nn.functional.ctc_loss(
        ctc_log_probs.transpose(0, 1), targets, encoded_len, target_len, blank=blank,
        reduction="sum", zero_infinity=True,
    ) / len(tokens)
    return (1 - ctc_weight) * loss_rnnt + ctc_weight * loss_ctc


def join_with_pauses(audios: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One recording of several utterances, with a 0.1 to 1.5-s pause between each two."""
    parts = []
    for index, audio in enumerate(audios):
        if index:
            parts.append(np.zeros(int(rng.uniform(0.1, 1.5) * SAMPLE_RATE), dtype=np.float32))
        parts.append(audio)
    return np.concatenate(parts)


def long_test_set(audios: list[np.ndarray], texts: list[str], per_recording: int = 6
                  ) -> tuple[list[np.ndarray], list[str]]:
    """Held-out utterances joined six at a time (about 20 to 30 s): how the model copes with long audio."""
    rng = np.random.default_rng(0)
    groups = range(0, len(audios) - per_recording + 1, per_recording)
    return ([join_with_pauses(audios[i : i + per_recording], rng) for i in groups],
            [" ".join(texts[i : i + per_recording]) for i in groups])


@torch.inference_mode()
def evaluate(model, audios: list[np.ndarray], texts: list[str], batch_size: int = 32) -> dict:
    model.eval()
    rnnt_out, ctc_out = [], []
    for start in range(0, len(audios), batch_size):
        signal, signal_len = pad(audios[start : start + batch_size])
        encoded, encoded_len = model.forward(input_signal=signal, input_signal_length=signal_len)
        hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=encoded, encoded_lengths=encoded_len)
        rnnt_out += [h.text for h in hyps]
        log_probs = model.ctc_decoder(encoder_output=encoded)
        hyps = model.ctc_decoding.ctc_decoder_predictions_tensor(log_probs, decoder_lengths=encoded_len)
        ctc_out += [h.text for h in hyps]
    model.train()
    return {
        "wer_rnnt": round(100 * jiwer.wer(texts, rnnt_out), 2),
        "wer_ctc": round(100 * jiwer.wer(texts, ctc_out), 2),
        "examples": list(zip(texts[:3], rnnt_out[:3], ctc_out[:3], strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where to write the .nemo")
    parser.add_argument("--train-utterances", type=int, default=10000)
    parser.add_argument("--test-utterances", type=int, default=300)
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch-seconds", type=float, default=20.0, help="padded audio per batch")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--d-model", type=int, default=96)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=128)
    parser.add_argument("--subsampling", type=int, default=8)
    # On CPU the subsampling's full-resolution convolutions cost more than the whole Conformer: with 96
    # channels they take 2/3 of a training step, with 32 about a third of that.
    parser.add_argument("--subsampling-channels", type=int, default=32)
    parser.add_argument("--ctc-weight", type=float, default=None)
    parser.add_argument("--short-phrases", type=int, default=3000, help="1-3 word utterances added to training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--normalize", default="NA", help="feature normalization: NA (streaming-safe) or per_feature")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--no-specaug", action="store_true")
    parser.add_argument("--voice-variants", action="store_true",
                        help="also espeak's +f/+m voice variants, in training and held-out speech")
    parser.add_argument("--narrowband", type=float, default=0.0,
                        help="share of augmented utterances passed through 8 kHz")
    parser.add_argument("--joined", type=float, default=0.0,
                        help="training examples made of 2 to 5 utterances joined by pauses, as a share of the "
                             "utterances (long audio then looks like training audio)")
    parser.add_argument("--init", type=Path, help="continue training this .nemo (its tokenizer is kept)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a handful of utterances")
    args = parser.parse_args()
    if args.smoke:
        args.train_utterances, args.test_utterances, args.steps, args.short_phrases = 48, 8, 3, 8
        args.warmup, args.eval_every, args.batch_seconds = 1, 0, 30.0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rng = random.Random(args.seed)
    np_rng = np.random.default_rng(args.seed)

    test_texts = held_out_texts(args.test_utterances, seed=args.seed)
    train_texts = make_corpus(args.train_utterances, seed=args.seed, exclude=set(test_texts))
    # Short phrases come first in the length-sorted first epoch: a curriculum from words to sentences.
    train_texts += make_short_phrases(args.short_phrases, seed=args.seed + 1)
    assert not set(test_texts) & set(train_texts)

    from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel

    with tempfile.TemporaryDirectory() as work:
        tokenizer_dir = Path(work) / "tokenizer"
        if not args.init:
            train_tokenizer(train_texts, tokenizer_dir, args.vocab_size)
        started = time.time()
        train_audio, _ = speak_corpus(train_texts, seed=args.seed, variants=args.voice_variants)
        test_audio = speak_held_out(test_texts, seed=args.seed, variants=args.voice_variants)
        hours = sum(len(a) for a in train_audio) / SAMPLE_RATE / 3600
        log.info("synthesized %d + %d utterances (%.2f h) in %.0f s", len(train_audio), len(test_audio), hours,
                 time.time() - started)

        if args.init:
            model = EncDecHybridRNNTCTCBPEModel.restore_from(str(args.init), map_location="cpu")
            add_dataset_sections(model)
            cfg = model.cfg
        else:
            config = model_config(str(tokenizer_dir), args.d_model, args.layers, args.heads, args.subsampling,
                                  args.subsampling_channels)
            config["preprocessor"]["normalize"] = args.normalize
            if args.no_specaug:
                config["spec_augment"] = None
            cfg = OmegaConf.create(config)
            model = EncDecHybridRNNTCTCBPEModel(cfg=cfg)
            if args.normalize == "NA":
                mean, std = center_first_convolution(model, train_audio[:: max(1, len(train_audio) // 300)])
                log.info("log-mel mean %.2f, deviation %.2f: folded into the first convolution", mean, std)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model: %.2f M parameters", n_params / 1e6)
        tokens = [model.tokenizer.text_to_ids(t) for t in train_texts]
        ctc_weight = args.ctc_weight if args.ctc_weight is not None else float(cfg.aux_ctc.ctc_loss_weight)

        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=1e-3)

        def lr_at(step: int) -> float:
            if step < args.warmup:
                return args.lr * (step + 1) / args.warmup
            progress = (step - args.warmup) / max(1, args.steps - args.warmup)
            return 1e-5 + 0.5 * (args.lr - 1e-5) * (1 + math.cos(math.pi * min(1.0, progress)))

        model.train()
        step, started = 0, time.time()
        # An example is a list of utterances, heard one after the other.
        examples = [[i] for i in range(len(train_audio))]
        examples += [rng.sample(range(len(train_audio)), rng.randint(2, 5))
                     for _ in range(int(args.joined * len(train_audio)))]
        lengths = [sum(len(train_audio[i]) for i in example) + (len(example) - 1) * int(0.8 * SAMPLE_RATE)
                   for example in examples]
        epoch = 0
        while step < args.steps:
            # The first epoch goes from the shortest utterances to the longest (SortaGrad): short ones are
            # easy to align, which gets CTC and RNNT past the stage where they only emit blanks.
            for batch in make_batches(lengths, args.batch_seconds, rng, shortest_first=epoch == 0):
                if step >= args.steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step)
                audios = [join_with_pauses([train_audio[i] if args.no_augment
                                            else augment(train_audio[i], np_rng, args.narrowband)
                                            for i in examples[e]], np_rng) for e in batch]
                targets = [[token for i in examples[e] for token in tokens[i]] for e in batch]
                signal, signal_len = pad(audios)
                loss = training_loss(model, signal, signal_len, targets, ctc_weight)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                step += 1
                if step % 50 == 0 or args.smoke:
                    log.info("step %d/%d loss %.3f lr %.2e (%.0f s)", step, args.steps, loss.item(), lr_at(step),
                             time.time() - started)
                if args.eval_every and step % args.eval_every == 0:
                    log.info("held-out: %s", evaluate(model, test_audio, test_texts))
                    model.save_to(str(args.out.with_suffix(".checkpoint.nemo")))
            epoch += 1

        metrics = evaluate(model, test_audio, test_texts)
        long_audio, long_texts = long_test_set(test_audio, test_texts)
        if long_audio:
            long_metrics = evaluate(model, long_audio, long_texts, batch_size=8)
            metrics.update({"wer_rnnt_joined": long_metrics["wer_rnnt"], "wer_ctc_joined": long_metrics["wer_ctc"]})
        metrics.update({
            "test_utterances": len(test_texts), "train_utterances": len(train_texts),
            "train_hours": round(hours, 2), "steps": args.steps, "parameters": n_params,
            "train_seconds": round(time.time() - started),
        })
        log.info("final held-out: %s", metrics)
        model.eval()
        model.save_to(str(args.out))
        args.out.with_suffix(".metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("wrote %s (%.1f MB)", args.out, args.out.stat().st_size / 1e6)


if __name__ == "__main__":
    main()
