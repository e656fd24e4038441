"""Held-out WER of the embedded demo model with its encoder in PyTorch, in ONNX Runtime (fp32) and in int8.

    python benchmarks/onnx_accuracy.py                   # the 300 held-out utterances
    python benchmarks/onnx_accuracy.py --utterances 20   # a quick look

The held-out set is the demo model's own (`tools/demo_model/held_out.py`, as `train.py` builds it),
so the PyTorch offline figures are comparable to the published ones in the model's `metrics.json`.
For each decoder (RNNT and CTC of the hybrid) and each encoder (torch, onnx fp32, onnx int8):

- offline: `transcribe_batch` in batches of 16, VAD off;
- streaming: every utterance through the cache-aware engine at the model's default look-ahead, pushed
  in 0.2-s pieces, a step whenever a chunk is whole, finished at the end; the text is its finals.
  Many streams run at once, as on a server: their steps are batched.

Prints WER (%) on lowercased texts (jiwer) per decoder x mode x encoder, and the int8 delta against
fp32 in absolute points, against the goal of int8 within +0.5 of fp32.
"""

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import jiwer
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools" / "demo_model"))

DECODERS = {"rnnt": "hybrid_bpe_rnnt", "ctc": "hybrid_bpe_ctc"}
ENCODERS = {"torch": ("torch", "none"), "onnx-fp32": ("onnx", "none"), "onnx-int8": ("onnx", "int8")}
MODES = ("offline", "streaming")
INT8_GOAL = 0.5  # absolute WER points int8 may lose against fp32
PIECE_SECONDS = 0.2


def wer(references: list[str], hypotheses: list[str]) -> float:
    return 100 * jiwer.wer([r.lower().strip() for r in references], [h.lower().strip() for h in hypotheses])


def offline_texts(engine, audios: list[np.ndarray], batch_size: int) -> list[str]:
    texts = []
    for start in range(0, len(audios), batch_size):
        texts += [t.text for t in engine.transcriber.transcribe_batch(audios[start : start + batch_size])]
    return texts


def streamed_texts(engine, audios: list[np.ndarray], concurrent: int) -> list[str]:
    piece = round(PIECE_SECONDS * engine.sample_rate)

    async def one(audio: np.ndarray, slots: asyncio.Semaphore) -> str:
        async with slots:
            stream = engine.open_stream()
            finals = []
            for start in range(0, len(audio), piece):
                stream.push(audio[start : start + piece])
                while stream.ready():
                    finals += await stream.step()
            finals += await stream.finish()
            return " ".join(f.text for f in finals if f.text)

    async def every() -> list[str]:
        slots = asyncio.Semaphore(concurrent)
        return list(await asyncio.gather(*(one(audio, slots) for audio in audios)))

    return asyncio.run(every())


def measure(decoder: str, encoder: str, audios: list[np.ndarray], texts: list[str], args) -> dict[str, dict]:
    from nemo_stt.engine import Engine, EngineConfig
    from nemo_stt.engine.stream import StreamingParams

    backend, quantize = ENCODERS[encoder]
    engine = Engine(EngineConfig(device="cpu", num_threads=args.threads, architecture=DECODERS[decoder],
                                 backend=backend, onnx_quantize=quantize, onnx_cache_dir=str(args.cache_dir)))
    results = {}
    try:
        for mode in MODES:
            started = time.perf_counter()
            if mode == "offline":
                hypotheses = offline_texts(engine, audios, args.batch_size)
            else:
                name = engine.start_streaming(StreamingParams(engine="cache_aware", max_batch=args.streams))
                assert name == "cache-aware", name
                hypotheses = streamed_texts(engine, audios, args.streams)
            seconds = time.perf_counter() - started
            results[mode] = {"wer": wer(texts, hypotheses), "hypotheses": hypotheses}
            print(f"  {decoder:4} {mode:9} {encoder:9}  WER {results[mode]['wer']:6.2f} %  ({seconds:.0f} s)",
                  file=sys.stderr, flush=True)
    finally:
        engine.close()
    return results


def differing(texts: list[str], a: list[str], b: list[str], limit: int = 3) -> list[tuple[str, str, str]]:
    return [(t, x, y) for t, x, y in zip(texts, a, b, strict=True) if x.lower() != y.lower()][:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=300, help="the first N held-out utterances (at most 300 "
                        "are the published set)")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "build" / "onnx-cache",
                        help="where the exported ONNX graphs are kept between runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="offline batch size")
    parser.add_argument("--streams", type=int, default=64, help="streams open at once (and encoded per step)")
    parser.add_argument("--json", type=Path, help="also write every figure and hypothesis here")
    args = parser.parse_args()

    from held_out import held_out_set
    from nemo.utils import logging as nemo_logging

    # NeMo logs to stdout, where the table goes.
    nemo_logging.setLevel(logging.ERROR)
    started = time.perf_counter()
    audios, texts = held_out_set(args.utterances)
    hours = sum(len(a) for a in audios) / 16000 / 3600
    words = sum(len(t.split()) for t in texts)
    print(f"held-out: {len(texts)} utterances, {words} words, {hours * 60:.1f} min of speech "
          f"(synthesized in {time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    results = {d: {} for d in DECODERS}
    for decoder in DECODERS:
        for encoder in ENCODERS:
            results[decoder][encoder] = measure(decoder, encoder, audios, texts, args)

    published = json.loads((REPO / "src/nemo_stt/assets/demo-en-fastconformer.metrics.json").read_text())
    print(f"\nDemo model, held-out WER (%) on {len(texts)} utterances ({words} words); "
          f"published torch offline: rnnt {published['wer_rnnt']}, ctc {published['wer_ctc']} "
          f"(on {published['test_utterances']})\n")
    header = (f"{'decoder':8} {'mode':10} {'torch':>7} {'onnx-fp32':>10} {'onnx-int8':>10} "
              f"{'int8-fp32':>10}  int8 within +{INT8_GOAL} of fp32")
    print(header)
    print("-" * len(header))
    for decoder in DECODERS:
        for mode in MODES:
            figures = {e: results[decoder][e][mode]["wer"] for e in ENCODERS}
            delta = figures["onnx-int8"] - figures["onnx-fp32"]
            verdict = "yes" if delta <= INT8_GOAL else "NO"
            print(f"{decoder:8} {mode:10} {figures['torch']:7.2f} {figures['onnx-fp32']:10.2f} "
                  f"{figures['onnx-int8']:10.2f} {delta:+10.2f}  {verdict}")

    # Where the encoders disagree, a few examples: what the differences look like.
    print()
    for decoder in DECODERS:
        for mode in MODES:
            by = {e: results[decoder][e][mode]["hypotheses"] for e in ENCODERS}
            same_torch = sum(x.lower() == y.lower() for x, y in zip(by["torch"], by["onnx-fp32"], strict=True))
            same_int8 = sum(x.lower() == y.lower() for x, y in zip(by["onnx-fp32"], by["onnx-int8"], strict=True))
            print(f"{decoder} {mode}: onnx-fp32 text = torch text on {same_torch}/{len(texts)}, "
                  f"onnx-int8 = onnx-fp32 on {same_int8}/{len(texts)}")
            for reference, fp32, int8 in differing(texts, by["onnx-fp32"], by["onnx-int8"]):
                print(f"    ref  {reference}\n    fp32 {fp32}\n    int8 {int8}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"references": texts, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
