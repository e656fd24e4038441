"""Held-out WER of the embedded demo model with its encoder in PyTorch (fp32 and under bf16 autocast), in ONNX
Runtime (fp32) and in int8.

    python benchmarks/onnx_accuracy.py                   # the 300 held-out utterances
    python benchmarks/onnx_accuracy.py --utterances 20   # a quick look
    python benchmarks/onnx_accuracy.py --encoders torch,torch-bf16

The held-out set is the demo model's own (`tools/demo_model/held_out.py`, as `train.py` builds it),
so the PyTorch offline figures are comparable to the published ones in the model's `metrics.json`.
For each decoder (RNNT and CTC of the hybrid) and each encoder (torch, torch with CPU_AUTOCAST=bf16, onnx
fp32, onnx int8):

- offline: `transcribe_batch` in batches of 16, VAD off;
- streaming: every utterance through the cache-aware engine at the model's default look-ahead, pushed
  in 0.2-s pieces, a step whenever a chunk is whole, finished at the end; the text is its finals.
  Many streams run at once, as on a server: their steps are batched.

Prints WER (%) on lowercased texts (jiwer) per decoder x mode x encoder, and the int8 delta against
onnx fp32 and the bf16 one against torch fp32 in absolute points, against the goal of either within +0.5.
The cache-aware streaming step runs in fp32 whatever CPU_AUTOCAST says (see the engine's `gpu`).
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
ENCODERS = {"torch": ("torch", "none", "off"), "torch-bf16": ("torch", "none", "bf16"),
            "onnx-fp32": ("onnx", "none", "off"), "onnx-int8": ("onnx", "int8", "off")}
REDUCED = {"onnx-int8": "onnx-fp32", "torch-bf16": "torch"}  # each reduced precision against its fp32
MODES = ("offline", "streaming")
GOAL = 0.5  # absolute WER points a reduced precision may lose against fp32
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

    backend, quantize, autocast = ENCODERS[encoder]
    engine = Engine(EngineConfig(device="cpu", num_threads=args.threads, architecture=DECODERS[decoder],
                                 backend=backend, onnx_quantize=quantize, onnx_cache_dir=str(args.cache_dir),
                                 cpu_autocast=autocast))
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
    parser.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated, of " + ", ".join(ENCODERS))
    parser.add_argument("--json", type=Path, help="also write every figure and hypothesis here")
    args = parser.parse_args()
    encoders = [e for e in ENCODERS if e in args.encoders.split(",")]

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
        for encoder in encoders:
            results[decoder][encoder] = measure(decoder, encoder, audios, texts, args)
    pairs = [(low, full) for low, full in REDUCED.items() if low in encoders and full in encoders]

    published = json.loads((REPO / "src/nemo_stt/assets/demo-en-fastconformer.metrics.json").read_text())
    print(f"\nDemo model, held-out WER (%) on {len(texts)} utterances ({words} words); "
          f"published torch offline: rnnt {published['wer_rnnt']}, ctc {published['wer_ctc']} "
          f"(on {published['test_utterances']})\n")
    header = f"{'decoder':8} {'mode':10} " + " ".join(f"{e:>10}" for e in encoders)
    header += "".join(f"  {low + ' - ' + full:>22}" for low, full in pairs) + f"  (goal: within +{GOAL})"
    print(header)
    print("-" * len(header))
    for decoder in DECODERS:
        for mode in MODES:
            figures = {e: results[decoder][e][mode]["wer"] for e in encoders}
            line = f"{decoder:8} {mode:10} " + " ".join(f"{figures[e]:10.2f}" for e in encoders)
            for low, full in pairs:
                delta = figures[low] - figures[full]
                line += f"  {delta:+18.2f} {'yes' if delta <= GOAL else 'NO':>3}"
            print(line)

    # Where the encoders disagree, a few examples: what the differences look like.
    print()
    for decoder in DECODERS:
        for mode in MODES:
            by = {e: results[decoder][e][mode]["hypotheses"] for e in encoders}
            for other, against in [("onnx-fp32", "torch"), *pairs]:
                if other not in by or against not in by:
                    continue
                same = sum(x.lower() == y.lower() for x, y in zip(by[against], by[other], strict=True))
                print(f"{decoder} {mode}: {other} text = {against} text on {same}/{len(texts)}")
                if (other, against) in pairs:
                    for reference, full, low in differing(texts, by[against], by[other]):
                        print(f"    ref  {reference}\n    {against:10} {full}\n    {other:10} {low}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"references": texts, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
