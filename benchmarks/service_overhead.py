"""What the service costs over the bare model: RTFx of `POST /transcribe` and of the raw forward on one 60-s file.

    python benchmarks/service_overhead.py                                  # demo model
    python benchmarks/service_overhead.py --model build/bench-medium.nemo --architecture hybrid_bpe_ctc

In one run: the raw model (preprocessor, encoder and decoding called directly, 2 threads) and
`nemo-stt serve` (HTTP, one request at a time, same threads) on the same file, in alternation,
several times; prints the median real-time factor of each (audio seconds per second) and their ratio.
Both run on the memory allocator the service picks (jemalloc when installed): this script starts
itself again on it, as `nemo-stt` does, so that the ratio is the service's overhead, not the allocator's.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools" / "demo_model"))
sys.path.insert(0, str(REPO / "tests"))


def make_speech_file(path: Path, seconds: float = 60.0) -> float:
    """A WAV of espeak sentences with short pauses, `seconds` long; returns its duration."""
    from sentences import make_corpus
    from synthesize import SAMPLE_RATE, speak

    pieces, total = [], 0
    for sentence in make_corpus(max(100, int(seconds)), seed=60):
        audio = np.concatenate([speak(sentence), np.zeros(SAMPLE_RATE // 3, dtype=np.float32)])
        pieces.append(audio)
        total += len(audio)
        if total >= seconds * SAMPLE_RATE:
            break
    audio = np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return len(audio) / SAMPLE_RATE


def measure(model: str | None, architecture: str | None, path: Path, repeats: int) -> dict:
    """Median seconds of the raw forward and of `POST /transcribe`, measured in alternation.

    Alternating the two (raw, service, raw, service...) keeps this machine's drifts in speed out of
    their ratio. The raw model runs in this process; the server in its own, idle while the raw runs.
    """
    import httpx
    import torch
    from conftest import ServerProcess

    from nemo_stt.audio import decode_audio
    from nemo_stt.engine.decoding import configure_decoding, select_decoder
    from nemo_stt.engine.model_loading import load_asr_model
    from nemo_stt.engine.transcriber import Transcriber

    torch.set_num_threads(2)
    loaded = load_asr_model(model, torch.device("cpu"))
    decoder = select_decoder(loaded, architecture)
    configure_decoding(loaded, decoder)
    transcriber = Transcriber(loaded, decoder)
    audio = decode_audio(path, transcriber.sample_rate)
    raw_text = transcriber.transcribe_batch([audio])[0].text  # warm-up

    env = {"VAD": "false", "CONCURRENCY": "0", "NUM_THREADS": "2", "DEVICE": "cpu"}
    if model:
        env["MODEL"] = model
    if architecture:
        env["ARCHITECTURE"] = architecture
    server = ServerProcess(env)
    data = path.read_bytes()
    raw_times, service_times = [], []
    try:
        with httpx.Client(timeout=600) as http:
            def post():
                response = http.post(f"{server.url}/transcribe", files={"file": (path.name, data)})
                response.raise_for_status()
                return response.json()["text"]

            service_text = post()  # warm-up
            for _ in range(repeats):
                started = time.perf_counter()
                transcriber.transcribe_batch([audio])
                raw_times.append(time.perf_counter() - started)
                # OpenMP threads spin for a while after their work: let this process's go quiet before
                # the server runs, and the server's before the next raw run.
                time.sleep(1.0)
                started = time.perf_counter()
                post()
                service_times.append(time.perf_counter() - started)
                time.sleep(1.0)
    finally:
        server.stop()
    return {"raw": statistics.median(raw_times), "service": statistics.median(service_times),
            "same_text": raw_text == service_text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".nemo path (default: the demo model)")
    parser.add_argument("--repeats", type=int, default=5)
    # A random-weight RNNT head emits up to max_symbols tokens on every frame, which no trained model
    # does: benchmark random models with their CTC head (hybrid_bpe_ctc).
    parser.add_argument("--architecture", help="ARCHITECTURE for both the raw model and the service")
    args = parser.parse_args()
    from nemo_stt.allocator import jemalloc_loaded, relaunch_on_jemalloc
    from nemo_stt.settings import load_settings

    relaunch_on_jemalloc([sys.executable, *sys.argv], load_settings())
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "minute.wav"
        duration = make_speech_file(path)
        result = measure(args.model, args.architecture, path, args.repeats)
    raw, service = duration / result["raw"], duration / result["service"]
    print(f"model: {args.model or 'demo'} ({args.architecture or 'default decoder'}); "
          f"{duration:.0f}-s file; {os.cpu_count()} cores, 2 threads; "
          f"{'jemalloc' if jemalloc_loaded() else 'system malloc'}")
    print(f"raw model forward:  RTFx {raw:7.1f}")
    print(f"POST /transcribe:   RTFx {service:7.1f}")
    print(f"service / raw:      {service / raw:.3f}  (same text: {result['same_text']})")


if __name__ == "__main__":
    main()
