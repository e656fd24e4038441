"""`nemo-stt serve` starts on a small replica of each family and says which family and decoder it runs."""

import re
import sys

import httpx
import pytest
import torch

from .conftest import FIXTURES, REPO, ServerProcess

# replica (benchmarks/make_replicas.py --small) -> the model class and decoder the start-up log names
FAMILIES = {
    "parakeet-ctc-1.1b": ("EncDecCTCModelBPE", "ctc"),
    "parakeet-tdt-0.6b-v2": ("EncDecRNNTBPEModel", "rnnt"),
    "stt_fr_fastconformer_hybrid_large_pc": ("EncDecHybridRNNTCTCBPEModel", "rnnt"),
}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory) -> dict[str, str]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_replicas

    directory = tmp_path_factory.mktemp("replicas")
    torch.manual_seed(0)
    return {name: str(make_replicas.build(name, directory, small=True)) for name in FAMILIES}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_http_mode_starts_on_a_replica_and_logs_its_family_and_decoder(replicas, name):
    model_class, decoder = FAMILIES[name]
    server = ServerProcess({"MODEL": replicas[name], "NUM_THREADS": "1", "VAD": "false"})
    try:
        ready = [line for line in server.output().splitlines() if "model ready" in line]
        assert ready and re.search(rf"\({model_class}, {decoder} decoding\)", ready[0]), server.output()[-2000:]
        with open(FIXTURES / "anna_bread.wav", "rb") as audio:
            response = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", audio, "audio/wav")},
                                  headers={"accept": "application/json"}, timeout=60)
        assert response.status_code == 200, response.text
        assert "text" in response.json()
    finally:
        server.stop()
