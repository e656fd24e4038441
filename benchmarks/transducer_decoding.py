"""Greedy RNNT/TDT decoding on the CPU: NeMo's label-looping decoder against the engine's NumPy decoder.

    python benchmarks/transducer_decoding.py                       # the demo model (trained weights)
    python benchmarks/transducer_decoding.py --models demo build/sherpa/bench-emitting.nemo \\
        build/replicas/parakeet-tdt-0.6b-v2-emitting.nemo

For each model: the encoder outputs of 24 synthetic sentences of 3 to 6 s and of a 60-s file (those of
`sherpa_onnx.py`) are computed once; then, in alternated rounds, each decoder decodes them: the short
files one at a time (batch 1), in batches of 4 and of 16, and the long file. Both are timed as the engine
calls them (NeMo's `rnnt_decoder_predictions_tensor` with the engine's decoding config;
`GreedyTransducer.predictions`), with their post-processing into words, timestamps and confidences, on
one thread. Printed: milliseconds of decoding per second of audio (median over rounds), the ratio, the
tokens emitted per encoder frame, and whether both gave the same tokens and frames.

Random-weight models emit max_symbols tokens on every frame: use the `-emitting` files of
`make_replicas.py --emission-rate` and of `sherpa_onnx.py` (whose joints emit about as a trained model
does), or the demo model.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools" / "demo_model"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
SAMPLE_RATE = 16000


def make_audio(files: int, long_seconds: float) -> tuple[list[np.ndarray], np.ndarray]:
    """The audio of `sherpa_onnx.py` (this folder's benchmark, not the package): the same files for both."""
    from sherpa_onnx import make_audio as sherpa_audio

    short, long = sherpa_audio(files, long_seconds)
    return [np.load(path) for path in short], np.load(long)


def encode(model, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(a) for a in audios])
    signal = torch.zeros(len(audios), int(lengths.max()))
    for row, audio in enumerate(audios):
        signal[row, : len(audio)] = torch.from_numpy(audio)
    with torch.inference_mode():
        return model.forward(input_signal=signal, input_signal_length=lengths)


def bench(path: str, short: list[np.ndarray], long: np.ndarray, rounds: int) -> None:
    from nemo.collections.asr.models import ASRModel

    from nemo_stt.engine.decoding import configure_decoding, family_name
    from nemo_stt.engine.model_loading import demo_model_path
    from nemo_stt.engine.transducer_greedy import GreedyTransducer

    path = str(demo_model_path()) if path == "demo" else path
    model = ASRModel.restore_from(path, map_location="cpu")
    model.eval()
    configure_decoding(model, "rnnt")
    greedy = GreedyTransducer.for_decoding(model.decoding)
    if greedy is None:
        raise SystemExit(f"{path}: the NumPy decoder does not serve this model")
    workloads = {
        "3-6-s files, batch 1": ([encode(model, [audio]) for audio in short], sum(map(len, short))),
        **{f"3-6-s files, batch {size}": ([encode(model, short[i: i + size]) for i in range(0, len(short), size)],
                                          sum(map(len, short))) for size in (4, 16)},
        f"{len(long) / SAMPLE_RATE:.0f}-s file": ([encode(model, [long])], len(long)),
    }
    decoders = {
        "nemo": lambda e, n: model.decoding.rnnt_decoder_predictions_tensor(e, n, return_hypotheses=True),
        "numpy": greedy.predictions,
    }
    print(f"\n{Path(path).name}: {family_name(model)}, prediction network "
          f"{model.decoder.pred_rnn_layers} x {model.decoder.pred_hidden}, vocabulary {model.decoder.vocab_size}",
          flush=True)
    for name, (batches, samples) in workloads.items():
        seconds = {decoder: [] for decoder in decoders}
        outputs = {}
        for _ in range(rounds):
            for decoder, decode in decoders.items():
                with torch.inference_mode():
                    started = time.perf_counter()
                    outputs[decoder] = [h for encoded, lengths in batches for h in decode(encoded, lengths)]
                    seconds[decoder].append(time.perf_counter() - started)
        same = all(a.y_sequence.tolist() == b.y_sequence.tolist() and a.timestamp["timestep"] == b.timestamp["timestep"]
                   for a, b in zip(outputs["nemo"], outputs["numpy"], strict=True))
        frames = sum(int(lengths.sum()) for _, lengths in batches)
        tokens = sum(len(h.y_sequence) for h in outputs["nemo"])
        audio_seconds = samples / SAMPLE_RATE
        nemo, ours = (statistics.median(seconds[d]) * 1000 / audio_seconds for d in decoders)
        print(f"  {name:22s} NeMo {nemo:7.2f} ms/audio-s   NumPy {ours:6.2f} ms/audio-s   {nemo / ours:5.1f}x   "
              f"{tokens / frames:.2f} tokens/frame   same tokens and frames: {same}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo"], help="'demo' or .nemo files")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--long-seconds", type=float, default=60.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    short, long = make_audio(args.files, args.long_seconds)
    for path in args.models:
        bench(path, short, long, args.rounds)


if __name__ == "__main__":
    main()
