"""HTTP throughput with and without batching, against the raw model's best throughput on the same files.

    python benchmarks/throughput.py                          # demo model
    python benchmarks/throughput.py --model build/bench-medium.nemo --architecture hybrid_bpe_ctc

In one run: the raw model (preprocessor, encoder and decoding called directly, in a process of its
own) on the files at several batch sizes and thread layouts, keeping the best as the ceiling; then
`nemo-stt serve` under 16 concurrent clients sending 3 to 6-s files, with batching off and on.
Prints audio seconds per second, p50/p95 latency, and each service figure as a ratio of the ceiling.

The ceiling counts the raw layouts that hold at most as many requests at once as there are clients
(workers x batch <= clients): 16 clients never have more than 16 requests in the server. Raw
layouts beyond that are printed for reference. The speed of this shared machine drifts by tens of
per cent over minutes, so the ceiling's layout is measured again right after each service figure,
and each ratio is against the higher of that measurement and the first.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools" / "demo_model"))
sys.path.insert(0, str(REPO / "tests"))


def make_files(directory: Path, count: int, seed: int = 5) -> list[Path]:
    """3 to 6-s WAV files of synthetic speech."""
    import random
    import wave

    from sentences import make_corpus
    from synthesize import random_voice, speak

    rng = random.Random(seed)
    sentences = iter(make_corpus(count * 4, seed=seed + 99))
    paths = []
    while len(paths) < count:
        audio = np.zeros(0, dtype=np.float32)
        style = random_voice(rng)
        while len(audio) < 3 * 16000:
            audio = np.concatenate([audio, speak(next(sentences), **style), np.zeros(3200, np.float32)])
        if len(audio) > 6 * 16000:
            continue
        path = directory / f"utt{len(paths):02d}.wav"
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(16000)
            wav.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        paths.append(path)
    return paths


def raw_layouts(clients: int) -> list[tuple[int, int, int, bool]]:
    """(threads, workers, batch, within the clients' reach) for the raw model on 2 cores."""
    layouts = [(2, 1, 1), (2, 1, 4), (2, 1, 8), (2, 1, 16), (1, 2, 1), (1, 2, 4), (1, 2, 8), (1, 2, 12)]
    return [(threads, workers, batch, workers * batch <= clients) for threads, workers, batch in layouts]


def raw_throughput(model: str | None, architecture: str | None, paths: list[Path], threads: int, workers: int,
                   batch: int) -> float:
    """Audio-s/s of the bare forward in one layout (in a fresh process)."""
    command = [sys.executable, __file__, "--raw-worker", json.dumps(
        {"model": model, "architecture": architecture, "threads": threads, "workers": workers, "batch": batch,
         "files": [str(p) for p in paths]}
    )]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def raw_worker(spec: dict) -> None:
    import torch

    from nemo_stt.audio import decode_audio
    from nemo_stt.engine.decoding import configure_decoding, select_decoder
    from nemo_stt.engine.engine import on_passing_thread
    from nemo_stt.engine.model_loading import load_asr_model
    from nemo_stt.engine.transcriber import Transcriber

    def load() -> Transcriber:
        model = load_asr_model(spec["model"], torch.device("cpu"))
        decoder = select_decoder(model, spec["architecture"])
        configure_decoding(model, decoder)
        return Transcriber(model, decoder)

    torch.set_num_threads(spec["threads"])
    # As in the engine, only the threads that run the model keep an OpenMP pool: loading on a thread
    # that ends, warm-up on the workers' threads.
    transcriber = on_passing_thread(load)
    audios = sorted((decode_audio(path, 16000) for path in spec["files"]), key=len)
    batch = spec["batch"]
    groups = [audios[i:i + batch] for i in range(0, len(audios), batch)]
    shares = [groups[i::spec["workers"]] for i in range(spec["workers"])]
    repeats = 8
    warm = threading.Barrier(spec["workers"] + 1)

    def work(share: list) -> None:
        transcriber.transcribe_batch(groups[0])  # warm-up
        warm.wait()
        for _ in range(repeats):
            for group in share:
                transcriber.transcribe_batch(group)

    with ThreadPoolExecutor(spec["workers"]) as pool:
        running = [pool.submit(work, share) for share in shares]
        warm.wait()
        started = time.perf_counter()
        for future in running:
            future.result()
    elapsed = time.perf_counter() - started
    print(repeats * sum(len(a) for a in audios) / 16000 / elapsed)


def run_service(model: str | None, architecture: str | None, paths: list[Path], env: dict, clients: int,
                rounds: int) -> dict:
    """16 clients (coroutines of one asyncio loop: a load generator that leaves the cores to the server)."""
    from conftest import ServerProcess

    full_env = {"VAD": "false", **env}
    if model:
        full_env["MODEL"] = model
    if architecture:
        full_env["ARCHITECTURE"] = architecture
    server = ServerProcess(full_env)
    try:
        return asyncio.run(_load(server.url, paths, clients, rounds))
    finally:
        server.stop()


async def _load(url: str, paths: list[Path], clients: int, rounds: int) -> dict:
    import aiohttp

    payloads = [(p.name, p.read_bytes()) for p in paths]
    durations = {p.name: (len(p.read_bytes()) - 44) / 32000 for p in paths}
    latencies: list[float] = []

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def client(index: int, requests: int) -> float:
            audio = 0.0
            for round_index in range(requests):
                name, data = payloads[(index + round_index * clients) % len(payloads)]
                form = aiohttp.FormData()
                form.add_field("file", data, filename=name)
                started = time.perf_counter()
                async with session.post(f"{url}/transcribe", data=form) as response:
                    response.raise_for_status()
                    await response.read()
                latencies.append(time.perf_counter() - started)
                audio += durations[name]
            return audio

        await client(0, 2)  # warm-up
        latencies.clear()
        cpu_before, started = time.process_time(), time.perf_counter()
        audio = sum(await asyncio.gather(*(client(index, rounds) for index in range(clients))))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_before
    latencies.sort()
    return {
        "audio_s_per_s": audio / elapsed,
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "requests": len(latencies),
        "client_cores": client_cpu / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".nemo path (default: the demo model)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=32, help="requests per client")
    # A random-weight RNNT head emits up to max_symbols tokens on every frame, which no trained model
    # does: benchmark random models with their CTC head (hybrid_bpe_ctc).
    parser.add_argument("--architecture", help="ARCHITECTURE for the raw model and the service")
    parser.add_argument("--raw-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_worker:
        raw_worker(json.loads(args.raw_worker))
        return
    from nemo_stt.allocator import jemalloc_loaded, relaunch_on_jemalloc
    from nemo_stt.settings import load_settings

    # The raw workers and the server inherit the allocator the service picks.
    relaunch_on_jemalloc([sys.executable, *sys.argv], load_settings())
    with tempfile.TemporaryDirectory() as work:
        paths = make_files(Path(work), 24)
        total = sum((len(p.read_bytes()) - 44) / 32000 for p in paths)
        print(f"model: {args.model or 'demo'}; {len(paths)} files, {total:.0f} s of audio; {os.cpu_count()} cores; "
              f"{'jemalloc' if jemalloc_loaded() else 'system malloc'}")
        best_layout, ceiling = None, 0.0
        for threads, workers, batch, reachable in raw_layouts(args.clients):
            value = raw_throughput(args.model, args.architecture, paths, threads, workers, batch)
            note = "" if reachable else f" (holds {workers * batch} requests: beyond {args.clients} clients)"
            print(f"raw model, {workers} x {threads} threads, batch {batch}: {value:7.1f} audio-s/s{note}", flush=True)
            if reachable and value > ceiling:
                best_layout, ceiling = (threads, workers, batch), value
        threads, workers, batch = best_layout
        print(f"ceiling (best raw layout within {args.clients} requests): {ceiling:.1f} audio-s/s "
              f"({workers} x {threads} threads, batch {batch})")
        configs = {
            "batching off (1 loop x 2 threads, batch 1)": {"CONCURRENCY": "0", "NUM_THREADS": "2",
                                                          "BATCH_MAX_SIZE": "1"},
            "batching off (2 loops x 1 thread, batch 1)": {"CONCURRENCY": "1", "NUM_THREADS": "1",
                                                          "BATCH_MAX_SIZE": "1"},
            "batching on (1 loop x 2 threads, batch <= 4)": {"CONCURRENCY": "0", "BATCH_MAX_SIZE": "4"},
            "batching on (1 loop x 2 threads, batch <= 8)": {"CONCURRENCY": "0", "BATCH_MAX_SIZE": "8"},
            "batching on, defaults (1 loop x 2 threads, batch <= 16)": {},
            "batching on (2 loops x 1 thread, batch <= 4)": {"CONCURRENCY": "1", "BATCH_MAX_SIZE": "4"},
            "batching on (2 loops x 1 thread, batch <= 8)": {"CONCURRENCY": "1", "BATCH_MAX_SIZE": "8"},
        }
        for label, env in configs.items():
            figures = run_service(args.model, args.architecture, paths, env, args.clients, args.rounds)
            again = raw_throughput(args.model, args.architecture, paths, *best_layout)
            reference = max(ceiling, again)
            print(f"service, {label}: {figures['audio_s_per_s']:7.1f} audio-s/s "
                  f"({figures['audio_s_per_s'] / reference:.2f} x ceiling; ceiling layout right after: "
                  f"{again:.1f}), p50 {figures['p50']:.2f} s, p95 {figures['p95']:.2f} s, "
                  f"{figures['requests']} requests; the clients used {figures['client_cores']:.2f} cores", flush=True)


if __name__ == "__main__":
    main()
