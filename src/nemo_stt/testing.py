"""`nemo-stt serve` in a child process on a free port, as users run it: for the tests and the benchmarks."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`nemo-stt serve` in its own process, as users run it."""

    def __init__(self, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "SERVICE_MODE": "http", "HTTP_PORT": str(self.port), "DEVICE": "cpu", **env}
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"nemo-stt-{self.port}.log", "w+")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "nemo_stt", "serve"], env=full_env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.process.kill()  # a server that is not handed to a fixture would outlive the tests
            raise

    def _wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthcheck", timeout=1).text == "1":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
