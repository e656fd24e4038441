"""HTTP throughput with and without batching, against the raw model's best throughput on the same files.

    python benchmarks/throughput.py                          # demo model
    python benchmarks/throughput.py --model build/bench-medium.nemo --architecture hybrid_bpe_ctc
    python benchmarks/throughput.py --route transcribe --route openai    # both routes, slice by slice
    python benchmarks/throughput.py --backend torch --backend onnx       # both backends (INFERENCE_BACKEND)

In one run: the raw model (preprocessor, encoder and decoding called directly, on length-sorted
batches, in processes of their own) on the files at several batch sizes and thread layouts, keeping
the best as the ceiling; then `nemo-stt serve` under 16 concurrent clients sending 3 to 6-s files,
with batching off and on. Prints audio seconds per second, p50/p95 latency, and each service figure
as a ratio of the ceiling.

The ceiling counts the raw layouts that hold at most as many requests at once as there are clients
(workers x batch <= clients): 16 clients never have more than 16 requests in the server. Raw
layouts beyond that are printed for reference. The speed of this shared machine drifts by tens of
per cent within a minute, so nothing is compared across minutes: the raw layouts are measured in
turn (five times each, keeping the median), and each service configuration runs in slices of a few
seconds, each between two measurements of the ceiling: the better of the two best layouts, each
kept loaded in its process. A slice's ratio is against the mean of the ceilings around it, and a
configuration's ratio is the median over its slices. With several `--route`s, each configuration's
server takes slices of each route in turn, so that the routes are compared minute by minute too.
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

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools" / "demo_model"))

# The routes the clients can send their files to: path and form fields besides the file. Both answer JSON
# (/transcribe with its words, OpenAI's `json` with the text alone).
ROUTES = {
    "transcribe": ("/transcribe", {}),
    "openai": ("/v1/audio/transcriptions", {"model": "whisper-1"}),
}


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


def wav_seconds(path: Path) -> float:
    """Duration of a file written by `make_files` (16-kHz 16-bit mono, 44-byte header)."""
    return (path.stat().st_size - 44) / 32000


def raw_layouts(clients: int) -> list[tuple[int, int, int, bool]]:
    """(threads, workers, batch, within the clients' reach) for the raw model on 2 cores; (2, 1, 1) and
    (1, 1, 1) give the time of a request alone on two threads and on one."""
    layouts = [(2, 1, 1), (2, 1, 4), (2, 1, 8), (2, 1, 16), (1, 2, 1), (1, 2, 4), (1, 2, 8), (1, 2, 12), (1, 1, 1)]
    return [(threads, workers, batch, workers * batch <= clients) for threads, workers, batch in layouts]


class RawModel:
    """The bare model in one layout, loaded in a process of its own and kept there between measurements."""

    def __init__(self, model: str | None, architecture: str | None, paths: list[Path], threads: int, workers: int,
                 batch: int, backend: str = "torch", cache_dir: str | None = None):
        spec = {"model": model, "architecture": architecture, "threads": threads, "workers": workers, "batch": batch,
                "files": [str(p) for p in paths], "backend": backend, "cache_dir": cache_dir}
        self.process = subprocess.Popen([sys.executable, __file__, "--raw-worker", json.dumps(spec)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "NEMO_REDIRECT_LOGS_TO_STDERR": "1"})

    def measure(self, repeats: int) -> float:
        """Audio-s/s over `repeats` passes on the files."""
        self.process.stdin.write(f"{repeats}\n")
        self.process.stdin.flush()
        while line := self.process.stdout.readline():
            if line.startswith("audio-s/s "):
                return float(line.split()[1])
        raise RuntimeError(f"the raw worker ended with {self.process.wait()}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def raw_worker(spec: dict) -> None:
    """Measure on request: each line of stdin names a number of passes; each answer is a line of stdout."""
    import torch

    from nemo_stt.audio import decode_audio
    from nemo_stt.engine.decoding import configure_decoding, select_decoder
    from nemo_stt.engine.engine import on_passing_thread
    from nemo_stt.engine.model_loading import load_asr_model
    from nemo_stt.engine.onnx_backend import OnnxGraphs, OnnxOptions
    from nemo_stt.engine.transcriber import Transcriber

    def load() -> Transcriber:
        model = load_asr_model(spec["model"], torch.device("cpu"))
        decoder = select_decoder(model, spec["architecture"])
        configure_decoding(model, decoder)
        encoder = None
        if spec["backend"] == "onnx":  # one session for the workers, as in the engine
            encoder = OnnxGraphs(model, OnnxOptions(Path(spec["cache_dir"]), threads=spec["threads"])).offline()
        return Transcriber(model, decoder, encoder=encoder)

    # With the onnx backend, as in the engine: the threads are ONNX Runtime's, torch keeps one.
    torch.set_num_threads(1 if spec["backend"] == "onnx" else spec["threads"])
    # As in the engine, only the threads that run the model keep an OpenMP pool: loading on a thread
    # that ends, the work on the pool's threads, the same ones for every measurement.
    transcriber = on_passing_thread(load)
    audios = sorted((decode_audio(path, 16000) for path in spec["files"]), key=len)
    batch = spec["batch"]
    groups = [audios[i:i + batch] for i in range(0, len(audios), batch)]
    shares = [groups[i::spec["workers"]] for i in range(spec["workers"])]
    together = threading.Barrier(spec["workers"] + 1)

    def work(share: list, repeats: int) -> None:
        together.wait()
        for _ in range(repeats):
            for group in share:
                transcriber.transcribe_batch(group)

    def run(repeats: int) -> float:
        running = [pool.submit(work, share, repeats) for share in shares]
        together.wait()  # every worker on its own thread
        started = time.perf_counter()
        for future in running:
            future.result()
        return repeats * sum(len(a) for a in audios) / 16000 / (time.perf_counter() - started)

    with ThreadPoolExecutor(spec["workers"]) as pool:
        run(1)  # warm-up
        for line in sys.stdin:
            print(f"audio-s/s {run(int(line))}", flush=True)


class Service:
    """`nemo-stt serve` with closed-loop clients (coroutines of one asyncio loop: a load generator that
    leaves the cores to the server), driven in slices."""

    def __init__(self, model: str | None, architecture: str | None, paths: list[Path], env: dict, clients: int):
        from nemo_stt.testing import ServerProcess

        full_env = {"VAD": "false", **env}
        if model:
            full_env["MODEL"] = model
        if architecture:
            full_env["ARCHITECTURE"] = architecture
        self.server = ServerProcess(full_env)
        self.clients = clients
        self.payloads = [(p.name, p.read_bytes()) for p in paths]
        self.durations = {p.name: wav_seconds(p) for p in paths}
        self.sent = 0

    async def slice(self, rounds: int, route: str = "transcribe") -> tuple[float, float, list[float]]:
        """Each client sends `rounds` requests to `route` (a key of ROUTES), one after the other: (audio
        seconds, elapsed, latencies)."""
        latencies: list[float] = []
        path, fields = ROUTES[route]

        async def client(index: int) -> float:
            audio = 0.0
            for round_index in range(rounds):
                name, data = self.payloads[(index + (self.sent + round_index) * self.clients) % len(self.payloads)]
                form = aiohttp.FormData()
                form.add_field("file", data, filename=name)
                for field, value in fields.items():
                    form.add_field(field, value)
                started = time.perf_counter()
                async with session.post(f"{self.server.url}{path}", data=form) as response:
                    response.raise_for_status()
                    await response.read()
                latencies.append(time.perf_counter() - started)
                audio += self.durations[name]
            return audio

        # A session per slice: the server closes connections left idle (while the raw model runs) after
        # 5 s, and a request reusing one as it closes fails.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            started = time.perf_counter()
            audio = sum(await asyncio.gather(*(client(index) for index in range(self.clients))))
            elapsed = time.perf_counter() - started
        self.sent += rounds
        return audio, elapsed, latencies

    def stop(self) -> None:
        self.server.stop()


def measure_service(service: Service, ceiling: list[RawModel], slices: int, rounds: int, raw_repeats: int,
                    routes: list[str]) -> dict[str, dict]:
    """Service slices alternating with slices of the raw model (the best of the `ceiling` layouts), so that
    each service figure has a ceiling measured seconds before and after it; each of `slices` rounds has a
    slice of each route. The figures of each route."""

    def measure_ceiling() -> float:
        return max(raw.measure(raw_repeats) for raw in ceiling)

    async def run() -> dict[str, dict]:
        for route in routes:
            await service.slice(2, route)  # warm-up: every client, every batch size
        ceilings = [measure_ceiling()]
        totals = {route: {"audio": 0.0, "elapsed": 0.0, "ratios": [], "latencies": [], "ceilings": []}
                  for route in routes}
        for _ in range(slices):
            for route in routes:
                slice_audio, slice_elapsed, slice_latencies = await service.slice(rounds, route)
                ceilings.append(measure_ceiling())
                total = totals[route]
                total["ratios"].append(slice_audio / slice_elapsed / ((ceilings[-2] + ceilings[-1]) / 2))
                total["ceilings"] += ceilings[-2:]
                total["audio"] += slice_audio
                total["elapsed"] += slice_elapsed
                total["latencies"] += slice_latencies
        figures = {}
        for route, total in totals.items():
            latencies = sorted(total["latencies"])
            figures[route] = {
                "audio_s_per_s": total["audio"] / total["elapsed"],
                "ratio": statistics.median(total["ratios"]),
                "ratios": total["ratios"],
                "ceiling": statistics.median(total["ceilings"]),
                "p50": statistics.median(latencies),
                "p95": latencies[int(0.95 * (len(latencies) - 1))],
                "requests": len(latencies),
            }
        return figures

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".nemo path (default: the demo model)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--slices", type=int, default=8, help="service slices per configuration")
    parser.add_argument("--rounds", type=int, default=6, help="requests per client in a slice")
    # A random-weight RNNT head emits up to max_symbols tokens on every frame, which no trained model
    # does: benchmark random models with their CTC head (hybrid_bpe_ctc).
    parser.add_argument("--architecture", help="ARCHITECTURE for the raw model and the service")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="run only the service configurations whose label contains TEXT (repeatable)")
    parser.add_argument("--route", action="append", choices=list(ROUTES),
                        help="where the clients send their files: transcribe (POST /transcribe, the default) or "
                             "openai (POST /v1/audio/transcriptions); repeat it to compare routes")
    parser.add_argument("--backend", action="append", choices=["torch", "onnx"],
                        help="INFERENCE_BACKEND of the raw model and the service (repeat for both: each service "
                             "configuration runs on each, every slice against the first backend's ceiling)")
    parser.add_argument("--cache-dir", default=str(REPO / "build" / "onnx-cache"), help="ONNX_CACHE_DIR")
    parser.add_argument("--raw-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    backends = list(dict.fromkeys(args.backend or ["torch"]))
    routes = list(dict.fromkeys(args.route or ["transcribe"]))
    if args.raw_worker:
        raw_worker(json.loads(args.raw_worker))
        return
    from nemo_stt.allocator import jemalloc_loaded, relaunch_on_jemalloc
    from nemo_stt.settings import load_settings

    # The raw workers and the server inherit the allocator the service picks.
    relaunch_on_jemalloc([sys.executable, *sys.argv], load_settings())
    with tempfile.TemporaryDirectory() as work:
        paths = make_files(Path(work), 24)
        total = sum(wav_seconds(p) for p in paths)
        # A raw slice holds as much audio as a service slice, so that both last about as long.
        raw_repeats = max(1, round(args.clients * args.rounds / len(paths)))
        print(f"model: {args.model or 'demo'}; {len(paths)} files, {total:.0f} s of audio; {os.cpu_count()} cores; "
              f"{'jemalloc' if jemalloc_loaded() else 'system malloc'}; {args.clients} clients; "
              f"{args.slices} slices of {args.rounds} requests per client per configuration")
        layouts = raw_layouts(args.clients)
        ceilings = {}  # each backend's two best raw layouts, whose processes stay
        try:
            for backend in backends:
                ceilings[backend] = measure_raw(args, backend, layouts, paths, total, raw_repeats)
                if backend != backends[0]:  # its figures are printed; only the first's ceiling is measured again
                    for raw in ceilings.pop(backend):
                        raw.close()
        except BaseException:
            for raws in ceilings.values():
                for raw in raws:
                    raw.close()
            raise
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
        if args.only:
            configs = {label: env for label, env in configs.items() if any(text in label for text in args.only)}
        # With several backends, every slice is measured against the first backend's ceiling: the services'
        # ratios to one reference, taken minute by minute, compare the backends.
        ceiling = ceilings[backends[0]]
        try:
            for label, env in configs.items():
                for backend in backends:
                    service = Service(args.model, args.architecture, paths,
                                      {**env, "INFERENCE_BACKEND": backend, "ONNX_CACHE_DIR": args.cache_dir},
                                      args.clients)
                    try:
                        by_route = measure_service(service, ceiling, args.slices, args.rounds, raw_repeats, routes)
                    finally:
                        service.stop()
                    print_service(f"{backend}: {label}" if len(backends) > 1 else label, by_route, routes)
        finally:
            for raws in ceilings.values():
                for raw in raws:
                    raw.close()


def measure_raw(args, backend: str, layouts, paths: list[Path], total: float, raw_repeats: int) -> list[RawModel]:
    """Every raw layout of `backend` measured in turn; the processes of its two best layouts, kept loaded."""
    raws = [RawModel(args.model, args.architecture, paths, *layout[:3], backend=backend, cache_dir=args.cache_dir)
            for layout in layouts]
    best: list[int] = []
    try:
        # Layouts in turn, five times, each keeping its median: drift touches them all alike.
        measured = [[] for _ in raws]
        for _ in range(5):
            for raw, values in zip(raws, measured, strict=True):
                values.append(raw.measure(raw_repeats))
        medians = [statistics.median(values) for values in measured]
        for (threads, workers, batch, reachable), value in zip(layouts, medians, strict=True):
            note = "" if reachable else f" (holds {workers * batch} requests: beyond {args.clients} clients)"
            print(f"raw model ({backend}), {workers} x {threads} threads, batch {batch}: {value:7.1f} audio-s/s{note}",
                  flush=True)
        mean_seconds = total / len(paths)
        alone = {threads: mean_seconds / medians[layouts.index((threads, 1, 1, True))] * 1000 for threads in (2, 1)}
        print(f"a request alone ({backend}, {mean_seconds:.1f} s of audio on average): {alone[2]:.0f} ms on 2 threads, "
              f"{alone[1]:.0f} ms on 1 (what one loop of all the cores gives a request that arrives alone)", flush=True)
        # The two best within reach: when they are close, noise alone would pick one of them.
        best = sorted((i for i, layout in enumerate(layouts) if layout[3]), key=lambda i: -medians[i])[:2]
    finally:
        for index, raw in enumerate(raws):
            if index not in best:
                raw.close()
    names = [f"{layouts[i][1]} x {layouts[i][0]} threads, batch {layouts[i][2]}" for i in best]
    print(f"ceiling ({backend}): the better of {' and '.join(names)} (the best raw layouts within {args.clients} "
          "requests), measured between the service's slices", flush=True)
    return [raws[i] for i in best]


def print_service(label: str, by_route: dict, routes: list[str]) -> None:
    for route, figures in by_route.items():
        where = "" if routes == ["transcribe"] else f", POST {ROUTES[route][0]}"
        print(f"service, {label}{where}: {figures['audio_s_per_s']:7.1f} audio-s/s, "
              f"{figures['ratio']:.2f} x ceiling (median of "
              f"{', '.join(f'{r:.2f}' for r in figures['ratios'])}; ceiling {figures['ceiling']:.1f}), "
              f"p50 {figures['p50']:.2f} s, p95 {figures['p95']:.2f} s, {figures['requests']} requests", flush=True)


if __name__ == "__main__":
    main()
