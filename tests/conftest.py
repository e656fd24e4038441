import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jiwer
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A transcript is "this file's text" below this WER against the file's known text: the demo model's
# worst fixture (children_park.m4a, a Caribbean voice in AAC) is at 0.375; another file's text is near 1.
OWN_TEXT_MAX_WER = 0.4


def run_in_fresh_process(code: str, env: dict[str, str] | None = None) -> list[str]:
    """The words `code` prints, run by a new interpreter (torch's threads and the allocator are per process)."""
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, **(env or {})}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(reference, hypothesis) if hypothesis.strip() else 1.0


@pytest.fixture(scope="session")
def fixture_texts() -> dict[str, str]:
    return {name: entry["text"] for name, entry in json.loads((FIXTURES / "texts.json").read_text()).items()}


@pytest.fixture(scope="session")
def demo_engine():
    from nemo_stt.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(device="cpu", num_threads=2))
    yield engine
    engine.close()


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


def module_server(env: dict[str, str]):
    """A module-scoped fixture: one `nemo-stt serve` with `env` for the tests of a module."""

    @pytest.fixture(scope="module")
    def server():
        process = ServerProcess(env)
        yield process
        process.stop()

    return server


@pytest.fixture(scope="session")
def http_server():
    # Without VAD the service sees exactly the audio the raw model is given in the comparison tests.
    server = ServerProcess({"MAX_UPLOAD_MB": "2", "CONCURRENCY": "1", "NUM_THREADS": "1", "VAD": "false"})
    yield server
    server.stop()
