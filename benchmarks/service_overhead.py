"""What the service costs over the bare model: RTFx of `POST /transcribe` and of the raw forward on one file.

    python benchmarks/service_overhead.py                                  # demo model, 60-s file
    python benchmarks/service_overhead.py --model build/bench-medium.nemo --architecture hybrid_bpe_ctc
    python benchmarks/service_overhead.py --backend torch --backend onnx --seconds 5    # both backends

In one run: the raw model (preprocessor, encoder and decoding called directly, 2 threads) and
`nemo-stt serve` (HTTP, one request at a time, same threads) on the same file, in alternation,
several times; prints the median real-time factor of each (audio seconds per second) and their ratio.
With several `--backend`s, the raw model and a server of each backend take their turns in one run.
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


def measure(model: str | None, architecture: str | None, path: Path, repeats: int, backends: list[str],
            cache_dir: Path) -> dict:
    """Median seconds of the raw forward and of `POST /transcribe` for each backend, measured in alternation.

    Alternating them (raw, service, raw, service... for each backend in turn) keeps this machine's drifts
    in speed out of their ratios. The raw models run in this process; each server in its own, idle while
    the others run.
    """
    import httpx
    import torch

    from nemo_stt.audio import decode_audio
    from nemo_stt.engine.decoding import configure_decoding, select_decoder
    from nemo_stt.engine.model_loading import load_asr_model
    from nemo_stt.engine.onnx_backend import OnnxGraphs, OnnxOptions
    from nemo_stt.engine.transcriber import Transcriber
    from nemo_stt.testing import ServerProcess

    torch.set_num_threads(2)
    loaded = load_asr_model(model, torch.device("cpu"))
    decoder = select_decoder(loaded, architecture)
    configure_decoding(loaded, decoder)
    graphs = OnnxGraphs(loaded, OnnxOptions(cache_dir, threads=2)) if "onnx" in backends else None
    raws = {backend: Transcriber(loaded, decoder, encoder=graphs.offline() if backend == "onnx" else None)
            for backend in backends}
    audio = decode_audio(path, 16000)
    raw_texts = {backend: raw.transcribe_batch([audio])[0].text for backend, raw in raws.items()}  # warm-up

    env = {"VAD": "false", "CONCURRENCY": "0", "NUM_THREADS": "2", "DEVICE": "cpu", "ONNX_CACHE_DIR": str(cache_dir)}
    if model:
        env["MODEL"] = model
    if architecture:
        env["ARCHITECTURE"] = architecture
    servers = {}
    data = path.read_bytes()
    times = {(backend, side): [] for backend in backends for side in ("raw", "service")}
    service_texts = {}
    try:
        for backend in backends:
            servers[backend] = ServerProcess({**env, "INFERENCE_BACKEND": backend})
        with httpx.Client(timeout=600) as http:
            def post(backend: str) -> str:
                response = http.post(f"{servers[backend].url}/transcribe", files={"file": (path.name, data)})
                response.raise_for_status()
                return response.json()["text"]

            for backend in backends:
                service_texts[backend] = post(backend)  # warm-up
            loaded_rss = {backend: rss_mb(server.process.pid) for backend, server in servers.items()}
            for _ in range(repeats):
                for backend in backends:
                    torch.set_num_threads(1 if backend == "onnx" else 2)  # as the engine sets them
                    started = time.perf_counter()
                    raws[backend].transcribe_batch([audio])
                    times[backend, "raw"].append(time.perf_counter() - started)
                    # Threads spin for a while after their work: let this process's go quiet before a
                    # server runs, and the server's before the next run.
                    time.sleep(1.0)
                    started = time.perf_counter()
                    post(backend)
                    times[backend, "service"].append(time.perf_counter() - started)
                    time.sleep(1.0)
            final_rss = {backend: rss_mb(server.process.pid) for backend, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    return {"seconds": {key: statistics.median(values) for key, values in times.items()},
            "rss": {backend: (loaded_rss[backend], final_rss[backend]) for backend in backends},
            "same_text": {backend: raw_texts[backend] == service_texts[backend] == raw_texts[backends[0]]
                          for backend in backends}}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".nemo path (default: the demo model)")
    parser.add_argument("--repeats", type=int, default=5)
    # A random-weight RNNT head emits up to max_symbols tokens on every frame, which no trained model
    # does: benchmark random models with their CTC head (hybrid_bpe_ctc).
    parser.add_argument("--architecture", help="ARCHITECTURE for both the raw model and the service")
    parser.add_argument("--backend", action="append", choices=["torch", "onnx"],
                        help="INFERENCE_BACKEND to measure (repeat for both, measured in alternation; default torch)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the file")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "build" / "onnx-cache",
                        help="ONNX_CACHE_DIR of the onnx backend")
    args = parser.parse_args()
    backends = args.backend or ["torch"]
    from nemo_stt.allocator import jemalloc_loaded, relaunch_on_jemalloc
    from nemo_stt.settings import load_settings

    relaunch_on_jemalloc([sys.executable, *sys.argv], load_settings())
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "speech.wav"
        duration = make_speech_file(path, args.seconds)
        result = measure(args.model, args.architecture, path, args.repeats, backends, args.cache_dir)
    print(f"model: {args.model or 'demo'} ({args.architecture or 'default decoder'}); "
          f"{duration:.0f}-s file; {os.cpu_count()} cores, 2 threads; "
          f"{'jemalloc' if jemalloc_loaded() else 'system malloc'}")
    rtfx = {key: duration / seconds for key, seconds in result["seconds"].items()}
    for backend in backends:
        raw, service = rtfx[backend, "raw"], rtfx[backend, "service"]
        print(f"{backend:5s} raw model forward: RTFx {raw:7.1f}")
        print(f"{backend:5s} POST /transcribe:  RTFx {service:7.1f}   service / raw {service / raw:.3f}  "
              f"(same text as {backends[0]} raw: {result['same_text'][backend]})")
        loaded, final = result["rss"][backend]
        print(f"{backend:5s} server RSS: {loaded:.0f} MB after its first request, {final:.0f} MB after the last")
    if "torch" in backends and "onnx" in backends:
        print(f"onnx / torch: raw {rtfx['onnx', 'raw'] / rtfx['torch', 'raw']:.2f}x, "
              f"service {rtfx['onnx', 'service'] / rtfx['torch', 'service']:.2f}x")


if __name__ == "__main__":
    main()
