"""Long files: wall time and peak memory for 5 and 60 minutes, and WER chunked vs short pieces.

    python benchmarks/long_files.py                        # demo model
    python benchmarks/long_files.py --model build/bench-medium.nemo --architecture hybrid_bpe_ctc --no-wer

Each file is synthetic speech with pauses (espeak-ng sentences), transcribed by `nemo-stt transcribe`
in a process of its own so that its peak RSS is its own. Then, in one process, the WER of the
5-minute file transcribed in windows against the same sentences transcribed one by one.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import jiwer
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools" / "demo_model"))

RATE = 16000


def make_long_file(path: Path, minutes: float, seed: int = 11) -> list[tuple[str, np.ndarray]]:
    """Write `minutes` of sentences separated by 0.3 to 1.5 s pauses; return the sentences and their audio."""
    from sentences import make_corpus
    from synthesize import random_voice, speak

    rng = random.Random(seed)
    style = random_voice(rng)
    sentences = iter(make_corpus(int(minutes * 60), seed=seed))
    spoken: list[tuple[str, np.ndarray]] = []
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        written = 0
        while written < minutes * 60 * RATE:
            text = next(sentences)
            audio = np.concatenate([speak(text, **style), np.zeros(int(rng.uniform(0.3, 1.5) * RATE), np.float32)])
            wav.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
            written += len(audio)
            if minutes <= 10:
                spoken.append((text, audio))
    return spoken


def measure(path: Path, model: str | None, architecture: str | None, vad: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `nemo-stt transcribe` on one file."""
    env = {**os.environ, "DEVICE": "cpu", "NUM_THREADS": "2", "VAD": vad}
    if model:
        env["MODEL"] = model
    if architecture:
        env["ARCHITECTURE"] = architecture
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "nemo_stt", "transcribe", str(path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(process.stderr.read().decode()[-2000:])
    return elapsed, usage.ru_maxrss / 1024


def chunked_vs_pieces(path: Path, spoken: list[tuple[str, np.ndarray]], model: str | None,
                      vad: str | None) -> tuple[float, float]:
    from nemo_stt.engine import Engine, EngineConfig, VadConfig

    engine = Engine(EngineConfig(model=model, device="cpu", num_threads=2, long_file_threshold=60,
                                 long_file_chunk=30, long_file_context=5,
                                 vad=VadConfig(method=vad) if vad else None))
    reference = " ".join(text for text, _ in spoken)
    chunked = engine.transcribe_source(path).text
    pieces = " ".join(engine.transcribe(audio).text for _, audio in spoken)
    engine.close()
    return 100 * jiwer.wer(reference, chunked), 100 * jiwer.wer(reference, pieces)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".nemo path (default: the demo model)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 60])
    # A random-weight RNNT head emits up to max_symbols tokens on every frame, which no trained model
    # does: benchmark random models with their CTC head (hybrid_bpe_ctc), and without WER.
    parser.add_argument("--architecture", help="ARCHITECTURE for the transcriptions")
    parser.add_argument("--no-wer", action="store_true", help="skip the WER comparison (random-weight models)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        figures: dict[str, dict[float, tuple[float, float]]] = {"false": {}, "auditok": {}}
        spoken_short = None
        for minutes in args.minutes:
            path = Path(work) / f"long_{minutes:g}min.wav"
            spoken = make_long_file(path, minutes)
            if minutes <= 10 and spoken_short is None:
                spoken_short = (path, spoken)
            # Without VAD a file below LONG_FILE_THRESHOLD is one forward and a longer one is windows; with
            # VAD every forward is a speech segment (within a window, at most VAD_MAX_SEGMENT_DURATION long).
            for vad, measured in figures.items():
                elapsed, rss = measure(path, args.model, args.architecture, vad)
                measured[minutes] = (elapsed, rss)
                print(f"{minutes:g} min, VAD {vad}: {elapsed:6.1f} s wall ({minutes * 60 / elapsed:5.1f} x real "
                      f"time), peak RSS {rss:6.0f} MB", flush=True)
        for vad, measured in figures.items():
            if len(measured) >= 2:
                (m1, (t1, r1)), (m2, (t2, r2)) = sorted(measured.items())[0], sorted(measured.items())[-1]
                print(f"VAD {vad}: peak RSS ratio {m2:g} min / {m1:g} min: {r2 / r1:.2f} (goal <= 1.3); "
                      f"time ratio {t2 / t1:.1f} for {m2 / m1:.0f}x the audio")
        if spoken_short and not args.no_wer:
            # Without VAD the windows hold 30 s of continuous audio; with it (the service's default), the
            # speech segments between pauses.
            for vad in (None, "auditok"):
                chunked, pieces = chunked_vs_pieces(*spoken_short, args.model, vad)
                print(f"WER, {len(spoken_short[1])} sentences, VAD {vad or 'off'}: chunked (30 s windows, 5 s "
                      f"context) {chunked:.2f} %, short pieces {pieces:.2f} %, difference {chunked - pieces:+.2f} "
                      f"(goal <= +0.5)")


if __name__ == "__main__":
    main()
