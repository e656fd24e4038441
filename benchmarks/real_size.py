"""The service at real model sizes against NeMo's own `transcribe()`: speed, memory and time to ready, in one run.

    python benchmarks/make_replicas.py parakeet-tdt-0.6b-v2 --emission-rate 0.3
    python benchmarks/real_size.py --model build/replicas/parakeet-tdt-0.6b-v2-emitting.nemo
    python benchmarks/make_replicas.py parakeet-ctc-1.1b
    python benchmarks/real_size.py --model build/replicas/parakeet-ctc-1.1b.nemo
    python benchmarks/real_size.py --model M --device cuda --clients 1,64 --no-long     # on a GPU

In order, on the same device and threads for both:
1. Time to ready. A bare process that imports NeMo and restores the model (`ASRModel.restore_from`,
   moved to the device), timed from its start; then `nemo-stt serve` (HTTP mode, VAD off) from its
   start to its first 200 on /ready, which includes its warm-up; in alternation, `--ready-repeats`
   times. RSS and peak RSS of each once loaded.
2. RTFx on the same 3 to 6-s files (VAD off: NeMo's transcribe has none), round after round in
   alternation: NeMo's `transcribe(files, batch_size=1)` against one client posting them one after
   another to `POST /transcribe`, and `transcribe(files, batch_size=C)` against C concurrent clients.
   Each round also times one transcribe() call per file, as a server that wraps transcribe() makes
   one per request (its clients' requests then run one after another, each paying the call's set-up).
   Each round's ratios, their median, and how many texts are the same on both are printed.
3. Memory for a long file: the NeMo process is stopped, then one 10-min file goes to the server,
   whose RSS is sampled while it transcribes.
Both processes run on the allocator the service picks (this script starts itself again on it, as
`nemo-stt` does), so that the ratios are the service's design, not the allocator's.
"""

import argparse
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

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools" / "demo_model"))
sys.path.insert(0, str(REPO / "benchmarks"))


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NemoProcess:
    """NeMo's own API in a process of its own: restore the model, then `transcribe()` on request."""

    def __init__(self, model: str, device: str, threads: int, files: list[Path]):
        spec = {"model": model, "device": device, "threads": threads, "files": [str(p) for p in files]}
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, __file__, "--nemo-worker", json.dumps(spec)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "NEMO_REDIRECT_LOGS_TO_STDERR": "1"})
        self._answer("loaded")
        self.load_seconds = time.perf_counter() - started
        self.memory = memory_mb(self.process.pid)
        self._answer("warm")  # before anything else is timed

    def _answer(self, tag: str) -> str:
        while line := self.process.stdout.readline():
            if line.startswith(tag + " "):
                return line[len(tag) + 1:]
        raise RuntimeError(f"the NeMo process ended with {self.process.wait()}")

    def transcribe(self, batch_size: int | str) -> tuple[float, list[str]]:
        """Seconds for `transcribe(files, batch_size)` and the texts; batch size "each": one call per file."""
        self.process.stdin.write(f"{batch_size}\n")
        self.process.stdin.flush()
        answer = json.loads(self._answer("result"))
        return answer["seconds"], answer["texts"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def nemo_worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(spec["model"], map_location=torch.device(spec["device"]))
    model.eval()
    print("loaded 1", flush=True)

    def texts(output) -> list[str]:
        output = output[0] if isinstance(output, tuple) else output  # hybrid/RNNT models of older NeMo
        return [item.text if hasattr(item, "text") else item for item in output]

    model.transcribe(spec["files"][:2], batch_size=2, verbose=False)
    print("warm 1", flush=True)
    for line in sys.stdin:
        started = time.perf_counter()
        if line.strip() == "each":  # as a server that calls transcribe() for each request does
            output = [texts(model.transcribe([path], batch_size=1, verbose=False, num_workers=0))[0]
                      for path in spec["files"]]
        else:
            output = texts(model.transcribe(spec["files"], batch_size=int(line), verbose=False, num_workers=0))
        seconds = time.perf_counter() - started
        print("result " + json.dumps({"seconds": seconds, "texts": output}), flush=True)


class Server:
    """`nemo-stt serve` in HTTP mode, timed from its start to its first 200 on /ready."""

    def __init__(self, model: str, device: str, threads: int, extra_env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SERVICE_MODE": "http", "HTTP_PORT": str(self.port), "MODEL": model, "DEVICE": device,
               "NUM_THREADS": str(threads), "VAD": "false", **extra_env}
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "nemo_stt", "serve"], env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        while True:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log.read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.ready_seconds = time.perf_counter() - started
        self.memory = memory_mb(self.process.pid)

    def transcribe(self, files: list[Path], clients: int) -> tuple[float, list[str]]:
        """Seconds for `clients` concurrent clients to have every file transcribed, and the texts in order."""
        texts: list[str] = [""] * len(files)

        def client(first: int) -> None:
            with httpx.Client(timeout=3600) as http:
                for index in range(first, len(files), clients):
                    with open(files[index], "rb") as audio:
                        response = http.post(f"{self.url}/transcribe", files={"file": (files[index].name, audio)},
                                             headers={"accept": "application/json"})
                    response.raise_for_status()
                    texts[index] = response.json()["text"]

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        return time.perf_counter() - started, texts

    def peak_during(self, path: Path) -> tuple[float, float]:
        """Seconds to transcribe `path` and the largest RSS (MB) sampled meanwhile."""
        peak, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                peak[0] = max(peak[0], memory_mb(self.process.pid)[0])

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            seconds, _ = self.transcribe([path], 1)
        finally:
            done.set()
            sampler.join()
        return seconds, peak[0]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=False, help=".nemo path (a replica from make_replicas.py)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of both processes")
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts (= NeMo batch sizes)")
    parser.add_argument("--files", type=int, default=16, help="3 to 6-s files per pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ready-repeats", type=int, default=2, help="loads of each, in alternation")
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--no-long", action="store_true", help="skip the long file")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="more server settings")
    parser.add_argument("--nemo-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nemo_worker:
        nemo_worker(json.loads(args.nemo_worker))
        return
    if not args.model:
        parser.error("--model is required")
    from nemo_stt.allocator import jemalloc_loaded, relaunch_on_jemalloc
    from nemo_stt.settings import load_settings

    relaunch_on_jemalloc([sys.executable, *sys.argv], load_settings())
    from service_overhead import make_speech_file
    from throughput import make_files, wav_seconds

    clients = [int(count) for count in args.clients.split(",")]
    extra_env = dict(item.split("=", 1) for item in args.env)
    print(f"model {args.model} on {args.device}, {args.threads} threads ({os.cpu_count()} cores), "
          f"{'jemalloc' if jemalloc_loaded() else 'system malloc'}; server settings {extra_env or 'defaults'}",
          flush=True)
    with tempfile.TemporaryDirectory() as work:
        files = make_files(Path(work), args.files)
        audio = sum(wav_seconds(path) for path in files)
        # Loading is timed in alternation too: the page cache and this machine's speed change between loads.
        loads, readies = [], []
        for repeat in range(args.ready_repeats):
            nemo = NemoProcess(args.model, args.device, args.threads, files)
            loads.append(nemo.load_seconds)
            if repeat < args.ready_repeats - 1:
                nemo.close()
            server = Server(args.model, args.device, args.threads, extra_env)
            readies.append(server.ready_seconds)
            if repeat < args.ready_repeats - 1:
                server.stop()
        load, ready = statistics.median(loads), statistics.median(readies)
        print(f"bare NeMo load: {load:.1f} s (median of {loads_text(loads)}); RSS {nemo.memory[0]:.0f} MB, "
              f"peak {nemo.memory[1]:.0f} MB")
        print(f"nemo-stt serve to /ready: {ready:.1f} s (median of {loads_text(readies)}), {ready / load:.2f}x the "
              f"bare load; RSS {server.memory[0]:.0f} MB, peak {server.memory[1]:.0f} MB", flush=True)
        try:
            server.transcribe(files[:2], 2)  # the first requests pay for lazy initialisations
            times: dict[tuple[str, int | str], list[float]] = {}
            same: dict[int, int] = {}
            for round_ in range(args.rounds):
                nemo_seconds, _ = nemo.transcribe("each")
                times.setdefault(("nemo", "each"), []).append(nemo_seconds)
                time.sleep(1.0)
                for count in clients:
                    nemo_seconds, nemo_texts = nemo.transcribe(count)
                    time.sleep(1.0)  # let the other process's OpenMP threads go quiet
                    service_seconds, service_texts = server.transcribe(files, count)
                    time.sleep(1.0)
                    times.setdefault(("nemo", count), []).append(nemo_seconds)
                    times.setdefault(("service", count), []).append(service_seconds)
                    same[count] = sum(a == b for a, b in zip(nemo_texts, service_texts, strict=True))
                    print(f"round {round_ + 1}, {count} client(s): NeMo RTFx {audio / nemo_seconds:.2f}, "
                          f"service {audio / service_seconds:.2f}", flush=True)
            nemo.close()
            print(f"{len(files)} files, {audio:.0f} s of audio; RTFx medians of {args.rounds} rounds, ratios the "
                  "median of each round's:")
            for count in clients:
                nemo_rtfx = audio / statistics.median(times["nemo", count])
                service_rtfx = audio / statistics.median(times["service", count])
                ratio = statistics.median(n / s for n, s in zip(times["nemo", count], times["service", count],
                                                                strict=True))
                line = (f"  {count:3d} client(s): POST /transcribe RTFx {service_rtfx:6.2f}; NeMo "
                        f"transcribe(batch_size={count}) {nemo_rtfx:6.2f}, ratio {ratio:.2f}")
                # What a server that calls transcribe() once per request gives its clients: their requests one
                # after another, each call paying transcribe()'s own set-up.
                each = statistics.median(n / s for n, s in zip(times["nemo", "each"], times["service", count],
                                                               strict=True))
                line += (f"; NeMo one call per file {audio / statistics.median(times['nemo', 'each']):6.2f}, "
                         f"ratio {each:.2f}")
                print(f"{line}; same text {same[count]}/{len(files)}")
            if not args.no_long:
                path = Path(work) / "long.wav"
                seconds = make_speech_file(path, args.long_minutes * 60)
                elapsed, peak = server.peak_during(path)
                print(f"{seconds / 60:.0f}-min file: RTFx {seconds / elapsed:.2f}; server RSS peak {peak:.0f} MB "
                      f"(at load: {server.memory[0]:.0f} MB)")
        finally:
            server.stop()


def loads_text(seconds: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in seconds)


if __name__ == "__main__":
    main()
