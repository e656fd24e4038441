"""Concurrent real-time streams: how many one machine holds, with what latency and CPU cost.

    python benchmarks/streaming.py                                        # demo model, both engines
    python benchmarks/streaming.py --model build/bench-medium.nemo --architecture hybrid_bpe_ctc
    python benchmarks/streaming.py --engines cache_aware --backend torch --backend onnx   # both backends

For each engine (cache-aware, buffered) a `nemo-stt serve` websocket process is started; then N
clients stream espeak speech with pauses at real-time pace (0.1-s packets), for N = 1, 2, 4, ...
until the p95 partial latency passes the limit. A partial's latency is its arrival time minus the
time the last audio it accounts for (its "decoded" key) was sent. Final latency is measured from the
end of each sentence's speech to the next final. CPU cost is the server process's CPU seconds per
streamed audio second.
"""

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

RATE = 16000
PACKET = 0.1


def stream_audio(pause: float) -> tuple[np.ndarray, list[float]]:
    """Four fixture sentences, each followed by `pause` seconds of silence; also where each one's speech ends
    (its last sample above -40 dBFS: the files end with some silence of their own)."""
    from nemo_stt.audio import decode_audio

    pieces, ends, total = [], [], 0
    for name in ("anna_bread.wav", "red_car.mp3", "doctor_letter.ogg", "teacher_book.webm"):
        speech = decode_audio(REPO / "tests" / "fixtures" / name, RATE)
        pieces += [speech, np.zeros(int(pause * RATE), dtype=np.float32)]
        ends.append((total + np.flatnonzero(np.abs(speech) > 0.01)[-1] + 1) / RATE)
        total += len(speech) + int(pause * RATE)
    return np.concatenate(pieces), ends


class Server:
    def __init__(self, model: str | None, engine: str, pause: float, architecture: str | None,
                 backend: str = "torch", cache_dir: str | None = None):
        from nemo_stt.testing import free_port

        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/streaming"
        env = {**os.environ, "SERVICE_MODE": "websocket", "STREAMING_PORT": str(self.port), "DEVICE": "cpu",
               "NUM_THREADS": "2", "STREAMING_ENGINE": engine, "STREAMING_MAX_CONNECTIONS": "512",
               "STREAMING_IDLE_TIMEOUT": "120", "STREAMING_PAUSE_FOR_FINAL": str(pause),
               "INFERENCE_BACKEND": backend.removesuffix("-int8"),
               "ONNX_QUANTIZE": "int8" if backend.endswith("-int8") else "none"}
        if cache_dir:
            env["ONNX_CACHE_DIR"] = cache_dir
        if model:
            env["MODEL"] = model
        if architecture:
            env["ARCHITECTURE"] = architecture
        self.process = subprocess.Popen([sys.executable, "-m", "nemo_stt", "serve"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        asyncio.run(self._wait())

    async def _wait(self) -> None:
        from websockets.asyncio.client import connect

        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                async with connect(self.url) as ws:
                    await ws.close()
                return
            except OSError:
                await asyncio.sleep(0.5)
        raise RuntimeError("the streaming server did not start")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def client(url: str, audio: np.ndarray, delay: float) -> dict:
    from websockets.asyncio.client import connect

    await asyncio.sleep(delay)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(PACKET * RATE) * 2
    partials, finals = [], []
    async with connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"config": {"sample_rate": RATE}}))
        started = time.monotonic()

        async def read():
            async for message in ws:
                payload = json.loads(message)
                now = time.monotonic() - started
                if "partial" in payload:
                    partials.append((now, payload["decoded"]))
                elif "text" in payload:
                    finals.append(now)

        reader = asyncio.create_task(read())
        for index, offset in enumerate(range(0, len(pcm), step)):
            # A packet leaves once the audio it holds has been "spoken".
            await asyncio.sleep(max(0.0, started + (index + 1) * PACKET - time.monotonic()))
            await ws.send(pcm[offset:offset + step])
        await ws.send(json.dumps({"eof": 1}))
        await asyncio.wait_for(reader, 120)
    return {"partials": partials, "finals": finals}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_level(server: Server, audio: np.ndarray, ends: list[float], streams: int) -> dict:
    rng = random.Random(streams)

    async def all_clients():
        return await asyncio.gather(*(client(server.url, audio, rng.uniform(0, 1.0)) for _ in range(streams)))

    cpu_before = server.cpu_seconds()
    results = asyncio.run(all_clients())
    cpu = server.cpu_seconds() - cpu_before
    lags = [arrival - decoded for result in results for arrival, decoded in result["partials"]]
    final_lags = []
    for result in results:
        for end in ends:
            later = [arrival for arrival in result["finals"] if arrival >= end]
            if later:
                final_lags.append(min(later) - end)
    return {
        "p50": percentile(lags, 50), "p95": percentile(lags, 95), "partials": len(lags),
        "final_p50": percentile(final_lags, 50), "final_p95": percentile(final_lags, 95),
        "cpu_per_audio_s": cpu / (streams * len(audio) / RATE),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=".nemo path (default: the demo model)")
    parser.add_argument("--engines", nargs="+", default=["cache_aware", "buffered"])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128])
    parser.add_argument("--max-p95", type=float, default=1.0, help="partial latency limit (s)")
    parser.add_argument("--pause-for-final", type=float, default=1.5)
    # A random-weight RNNT head emits up to max_symbols tokens on every frame, which no trained model
    # does: benchmark random models with their CTC head (hybrid_bpe_ctc).
    parser.add_argument("--architecture", help="ARCHITECTURE for the server")
    parser.add_argument("--backend", action="append", choices=["torch", "onnx", "onnx-int8"],
                        help="INFERENCE_BACKEND (onnx-int8: with ONNX_QUANTIZE=int8); repeat it for several; "
                             "default torch")
    parser.add_argument("--cache-dir", default=str(REPO / "build" / "onnx-cache"), help="ONNX_CACHE_DIR")
    args = parser.parse_args()
    audio, ends = stream_audio(pause=args.pause_for_final + 1.0)
    print(f"model: {args.model or 'demo'} ({args.architecture or 'default decoder'}); "
          f"{len(audio) / RATE:.1f} s streams at real-time pace; "
          f"{os.cpu_count()} cores; STREAMING_PAUSE_FOR_FINAL={args.pause_for_final}")
    for engine, backend in [(e, b) for e in args.engines for b in dict.fromkeys(args.backend or ["torch"])]:
        server = Server(args.model, engine, args.pause_for_final, args.architecture, backend, args.cache_dir)
        held = 0
        name = f"{engine} ({backend})"
        try:
            for streams in args.levels:
                figures = run_level(server, audio, ends, streams)
                print(f"{name:19s} {streams:4d} streams: partial latency p50 {figures['p50']:.2f} s, "
                      f"p95 {figures['p95']:.2f} s ({figures['partials']} partials); final after speech "
                      f"p50 {figures['final_p50']:.2f} s, p95 {figures['final_p95']:.2f} s; "
                      f"{figures['cpu_per_audio_s']:.3f} CPU-s per audio-s", flush=True)
                if not figures["p95"] <= args.max_p95:
                    break
                held = streams
        finally:
            server.stop()
        print(f"{name}: held {held} concurrent real-time streams with p95 partial latency <= {args.max_p95:g} s",
              flush=True)


if __name__ == "__main__":
    main()
