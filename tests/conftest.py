import json
import os
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest

from nemo_stt.testing import ServerProcess, free_port  # noqa: F401  (the tests' names for them)

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


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
