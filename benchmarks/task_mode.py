"""Task mode against HTTP mode: 20 queued 10-s files, tasks per second and audio seconds per second.

    python benchmarks/task_mode.py                         # demo model, Redis on 127.0.0.1:6379
    python benchmarks/task_mode.py --model build/bench-medium.nemo --architecture hybrid_bpe_ctc

In one run, on the same files and with the same threads: one `nemo-stt serve` task worker (Celery,
real Redis broker) fed by a client that queues every task at once with `send_task` and waits for
all results, as linto-transcription-service does; then `nemo-stt serve` in HTTP mode with as many
concurrent clients as files.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools" / "demo_model"))

RATE = 16000


def make_files(folder: Path, count: int, seconds: float) -> list[Path]:
    """`count` WAV files of espeak sentences with short pauses, each `seconds` long."""
    from sentences import make_corpus
    from synthesize import speak

    sentences = iter(make_corpus(count * 10, seed=90))
    paths = []
    for index in range(count):
        pieces, total = [], 0
        while total < seconds * RATE:
            audio = np.concatenate([speak(next(sentences)), np.zeros(RATE // 4, dtype=np.float32)])
            pieces.append(audio)
            total += len(audio)
        audio = np.concatenate(pieces)[: int(seconds * RATE)]
        path = folder / f"file{index:02d}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        paths.append(path)
    return paths


def model_env(args) -> dict[str, str]:
    env = {"DEVICE": "cpu", "NUM_THREADS": str(args.threads), "CONCURRENCY": str(args.concurrency), "VAD": "false"}
    if args.model:
        env["MODEL"] = args.model
    if args.architecture:
        env["ARCHITECTURE"] = args.architecture
    return env


def run_tasks(args, folder: Path, paths: list[Path]) -> tuple[float, list[str]]:
    from celery import Celery

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    log_path = folder.parent / "worker.log"
    env = {**os.environ, **model_env(args), "SERVICE_MODE": "task", "SERVICES_BROKER": args.broker,
           "SERVICE_NAME": queue, "SHARED_FOLDER": str(folder)}
    with open(log_path, "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "nemo_stt", "serve"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while "ready." not in log_path.read_text():
            if worker.poll() is not None or time.time() > deadline:
                raise RuntimeError(log_path.read_text())
            time.sleep(0.3)
        broker = args.broker.rstrip("/") + "/0"
        client = Celery("bench", broker=broker, backend=args.broker.rstrip("/") + "/1")
        # One task first, so that the measured run starts on a warm worker.
        client.send_task("transcribe_task", queue=queue, args=[str(paths[0]), True, None]).get(timeout=300)
        started = time.perf_counter()
        pending = [client.send_task("transcribe_task", queue=queue, args=[str(path), True, None]) for path in paths]
        texts = [result.get(timeout=600)["text"] for result in pending]
        return time.perf_counter() - started, texts
    finally:
        worker.terminate()
        worker.wait(60)


def run_http(args, paths: list[Path]) -> tuple[float, list[str]]:
    import httpx

    from nemo_stt.testing import ServerProcess

    server = ServerProcess(model_env(args))
    try:
        with httpx.Client(timeout=600) as http:
            def post(path: Path) -> str:
                response = http.post(f"{server.url}/transcribe", files={"file": (path.name, path.read_bytes())})
                response.raise_for_status()
                return response.json()["text"]

            post(paths[0])
            started = time.perf_counter()
            with ThreadPoolExecutor(len(paths)) as pool:
                texts = list(pool.map(post, paths))
            return time.perf_counter() - started, texts
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".nemo path (default: the demo model)")
    parser.add_argument("--architecture", help="ARCHITECTURE for both modes")
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2, help="NUM_THREADS of both modes")
    parser.add_argument("--concurrency", type=int, default=1, help="CONCURRENCY of both modes")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    if not shutil.which("redis-cli"):
        sys.exit("redis-cli not found: this benchmark needs a Redis server")
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "shared"
        folder.mkdir()
        paths = make_files(folder, args.files, args.seconds)
        task_seconds, task_texts = run_tasks(args, folder, paths)
        http_seconds, http_texts = run_http(args, paths)
    audio = args.files * args.seconds
    print(f"model: {args.model or 'demo'} ({args.architecture or 'default decoder'}); {args.files} files of "
          f"{args.seconds:g} s; NUM_THREADS={args.threads} CONCURRENCY={args.concurrency}; {os.cpu_count()} cores")
    print(f"task mode (1 worker, Redis): {task_seconds:6.2f} s  {args.files / task_seconds:6.2f} tasks/s  "
          f"{audio / task_seconds:7.1f} audio-s/s")
    print(f"HTTP mode ({args.files} clients):  {http_seconds:6.2f} s  {args.files / http_seconds:6.2f} requests/s  "
          f"{audio / http_seconds:7.1f} audio-s/s")
    print(f"task / HTTP: {http_seconds / task_seconds:.2f}  (same texts: {task_texts == http_texts})")


if __name__ == "__main__":
    main()
