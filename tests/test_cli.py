import json
import os
import subprocess
import sys

from .conftest import FIXTURES, wer


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_stt", *args], env={**os.environ, "DEVICE": "cpu", **env},
                          capture_output=True, text=True, timeout=300)


def test_transcribe_prints_the_text_of_each_file(fixture_texts):
    names = ["anna_bread.wav", "red_car.mp3"]
    completed = run_cli("transcribe", *(str(FIXTURES / n) for n in names))
    assert completed.returncode == 0, completed.stderr
    assert "memory allocator: jemalloc" in completed.stderr  # restarted itself with it preloaded
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 2
    for name, line in zip(names, lines, strict=True):
        path, text = line.split("\t")
        assert path.endswith(name) and wer(fixture_texts[name], text) < 0.3


def test_transcribe_json_prints_the_http_json(fixture_texts):
    completed = run_cli("transcribe", "--json", str(FIXTURES / "old_house.flac"))
    assert completed.returncode == 0, completed.stderr
    body = json.loads(completed.stdout)
    assert set(body) == {"text", "words", "language", "confidence-score"}
    assert wer(fixture_texts["old_house.flac"], body["text"]) < 0.3
    assert body["words"] and body["words"][0]["start"] >= 0


def test_transcribe_reports_a_non_audio_file_and_fails(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not audio")
    completed = run_cli("transcribe", str(text_file))
    assert completed.returncode == 1
    assert "notes.txt: not a readable audio file" in completed.stderr


def test_an_architecture_mismatch_stops_start_up_with_a_clear_message():
    completed = run_cli("transcribe", str(FIXTURES / "anna_bread.wav"), ARCHITECTURE="ctc_bpe", MODEL="/no/such.nemo")
    assert completed.returncode == 2
    assert "error: MODEL=/no/such.nemo: no such file" in completed.stderr


def test_memory_allocator_system_keeps_the_c_library_malloc(fixture_texts):
    completed = run_cli("transcribe", str(FIXTURES / "anna_bread.wav"), MEMORY_ALLOCATOR="system")
    assert completed.returncode == 0, completed.stderr
    assert "memory allocator: the C library's malloc" in completed.stderr
    assert wer(fixture_texts["anna_bread.wav"], completed.stdout) < 0.3
