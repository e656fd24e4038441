"""`nemo-stt transcribe`: formats, output files, flags, failures and the progress bar.

Most tests call `main(argv)` in this process; each distinct engine configuration is loaded once for the
module (loading the demo model takes ~10 s, as long as the transcriptions of the whole module). A few run
the installed command, for what only a new process shows (its restart on jemalloc)."""

import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import srt
import webvtt

from nemo_stt import cli, openai_api, results, service
from nemo_stt.engine import demo_model_path

from .conftest import FIXTURES, wer


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_stt", *args], env={**os.environ, "DEVICE": "cpu", **env},
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def engines():
    loaded = {}
    yield loaded
    for engine in loaded.values():
        engine.close()


@pytest.fixture
def transcribe(engines, monkeypatch, capsys):
    """`nemo-stt transcribe ARGS` in this process, with `env` set: (exit code, stdout, stderr)."""
    real_load = service.load_engine

    def load_once(settings, warm_up=True):  # the real engine, one per configuration the settings map to
        key = service.engine_config(settings)
        if key not in engines:
            engines[key] = real_load(settings, warm_up=False)
        return engines[key]

    monkeypatch.setattr(cli, "load_engine", load_once)
    monkeypatch.setenv("NEMO_REDIRECT_LOGS_TO_STDERR", "1")  # main() sets it; restored after the test

    def run(*args: str, **env: str) -> tuple[int, str, str]:
        for name in ("MODEL", "LANGUAGE", "MAX_AUDIO_SECONDS", "LONG_FILE_THRESHOLD"):
            monkeypatch.delenv(name, raising=False)
        for name, value in {"DEVICE": "cpu", "NUM_THREADS": "1", **env}.items():
            monkeypatch.setenv(name, value)
        code = cli.main(["transcribe", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def test_text_of_one_file_is_its_transcript_alone(transcribe, fixture_texts):
    code, out, err = transcribe(fixture("anna_bread.wav"))
    assert code == 0, err
    assert len(out.splitlines()) == 1 and wer(fixture_texts["anna_bread.wav"], out) < 0.3
    assert "%" not in err  # stderr is not a terminal here: no progress bar


def test_json_and_verbose_json_are_what_the_routes_answer(transcribe, engines):
    path = fixture("old_house.flac")
    code, out, err = transcribe("--json", path)
    assert code == 0, err
    (engine,) = engines.values()
    transcript = engine.transcribe_source(path)
    assert json.loads(out) == results.to_json(transcript)  # POST /transcribe's JSON
    code, out, err = transcribe("--format", "verbose_json", path)
    assert code == 0, err
    verbose = json.loads(out)
    assert verbose == openai_api.verbose_json(transcript, frozenset({"word", "segment"}))
    assert verbose["words"] and verbose["segments"] and verbose["duration"] == pytest.approx(3.058, abs=0.01)


def test_srt_and_vtt_cues_are_the_segments_of_the_words(transcribe):
    path = fixture("red_car.mp3")
    code, out, err = transcribe("--format", "verbose_json", path)
    verbose = json.loads(out)
    code, out, err = transcribe("--format", "srt", path)
    assert code == 0, err
    cues = list(srt.parse(out))
    code, out, err = transcribe("--format", "vtt", path)
    assert code == 0, err
    captions = webvtt.from_buffer(io.StringIO(out)).captions
    segments = verbose["segments"]
    assert len(cues) == len(captions) == len(segments) >= 1
    for cue, caption, segment in zip(cues, captions, segments, strict=True):
        assert cue.content == caption.text == segment["text"]
        assert cue.start.total_seconds() == pytest.approx(segment["start"], abs=1e-3)
        assert srt.srt_timestamp_to_timedelta(caption.end).total_seconds() == pytest.approx(segment["end"], abs=1e-3)
    assert cues[0].start.total_seconds() == pytest.approx(verbose["words"][0]["start"], abs=1e-3)


def test_subtitles_of_several_files_are_printed_each_under_its_name(transcribe):
    paths = [fixture("anna_bread.wav"), fixture("red_car.mp3")]
    code, out, err = transcribe("--format", "srt", *paths)
    assert code == 0, err
    parts = out.split("==> ")[1:]
    assert [part.split(" <==")[0] for part in parts] == paths
    assert all(list(srt.parse(part.split("\n", 1)[1])) for part in parts)


def test_output_dir_is_created_and_gets_one_file_per_input_named_after_it(transcribe, tmp_path, fixture_texts):
    directory = tmp_path / "subtitles" / "today"
    code, out, err = transcribe("--format", "vtt", "--output-dir", str(directory), fixture("anna_bread.wav"),
                                fixture("red_car.mp3"))
    assert code == 0, err
    assert out == ""  # the transcripts are in the files
    assert sorted(p.name for p in directory.iterdir()) == ["anna_bread.vtt", "red_car.vtt"]
    captions = webvtt.read(str(directory / "red_car.vtt")).captions
    assert wer(fixture_texts["red_car.mp3"], " ".join(c.text for c in captions)) < 0.3
    assert f"red_car.mp3 -> {directory / 'red_car.vtt'}" in err


def test_inputs_with_the_same_stem_get_numbered_names_in_command_line_order(transcribe, tmp_path, fixture_texts):
    sources = {"a/meeting.wav": "anna_bread.wav", "b/meeting.mp3": "red_car.mp3", "meeting-2.flac": "old_house.flac"}
    for target, source in sources.items():
        (tmp_path / target).parent.mkdir(exist_ok=True)
        shutil.copy(FIXTURES / source, tmp_path / target)
    out_dir = tmp_path / "out"
    code, _, err = transcribe("--output-dir", str(out_dir), *(str(tmp_path / t) for t in sources))
    assert code == 0, err
    # b/meeting.mp3 is the second "meeting": meeting-2 is another input's, so it gets meeting-3.
    expected = {"meeting.txt": "anna_bread.wav", "meeting-3.txt": "red_car.mp3", "meeting-2.txt": "old_house.flac"}
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(expected)
    for name, source in expected.items():
        assert wer(fixture_texts[source], (out_dir / name).read_text()) < 0.3


def test_a_failing_file_gets_one_line_and_the_others_are_still_written(transcribe, tmp_path, fixture_texts):
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "folder.wav").mkdir()
    failing = {
        str(tmp_path / "missing.wav"): "no such file or directory",
        str(tmp_path / "notes.txt"): "not a readable audio file",
        str(tmp_path / "folder.wav"): "is a directory",
        fixture("old_house.flac"): "the audio lasts 3.1 s, longer than the limit of 2.9 s",
    }
    good = [fixture("anna_bread.wav"), fixture("red_car.mp3")]
    arguments = [good[0], *failing, good[1]]
    code, _, err = transcribe("--format", "json", "--output-dir", str(tmp_path / "out"), *arguments,
                                MAX_AUDIO_SECONDS="2.9")
    assert code == 1
    lines = [line for line in err.splitlines() if " -> " not in line]
    assert len(lines) == len(failing)
    for line, (path, reason) in zip(lines, failing.items(), strict=True):
        assert line.startswith(f"{path}: ") and reason in line
    assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["anna_bread.json", "red_car.json"]
    text = json.loads((tmp_path / "out" / "red_car.json").read_text())["text"]
    assert wer(fixture_texts["red_car.mp3"], text) < 0.3


def test_model_and_language_flags_override_the_environment(transcribe, fixture_texts):
    code, out, err = transcribe("--model", str(demo_model_path()), "--language", "de", "--format", "verbose_json",
                                fixture("anna_bread.wav"), MODEL="/no/such.nemo", LANGUAGE="fr")
    assert code == 0, err
    body = json.loads(out)
    assert body["language"] == "de"
    assert wer(fixture_texts["anna_bread.wav"], body["text"]) < 0.3


def test_a_model_flag_naming_no_file_stops_with_a_clear_message(transcribe):
    code, out, err = transcribe("--model", "/no/such.nemo", fixture("anna_bread.wav"), ARCHITECTURE="ctc_bpe")
    assert code == 2 and out == ""
    assert "error: MODEL=/no/such.nemo: no such file" in err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_long_file_shows_a_progress_bar_on_a_terminals_stderr_only(transcribe, monkeypatch):
    # Files over 1 s are long here: old_house.flac (3.1 s) is read in three windows, like a long recording.
    long_files = {"LONG_FILE_THRESHOLD": "1", "LONG_FILE_CHUNK_LEN": "1", "LONG_FILE_CHUNK_CONTEXT_LEN": "0.25"}
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code, out, _ = transcribe(fixture("old_house.flac"), **long_files)
    bar = terminal.getvalue()
    assert code == 0
    steps = [part.split("] ")[1].strip() for part in bar.split("\r")[1:]]
    assert steps[0] == "0%" and steps[-1] == "100%" and len(steps) >= 4  # drawn at the start, after each window
    assert bar.endswith("100%\n") and bar.count("100%") == 1 and "[" not in out
    terminal.seek(0)
    terminal.truncate()
    code, _, _ = transcribe(fixture("anna_bread.wav"))  # a short file: done in one go, no bar
    assert code == 0 and "%" not in terminal.getvalue()


def test_the_command_restarts_on_jemalloc_and_prints_each_file_on_its_line(fixture_texts):
    names = ["anna_bread.wav", "red_car.mp3"]
    completed = run_cli("transcribe", *(str(FIXTURES / n) for n in names))
    assert completed.returncode == 0, completed.stderr
    assert "memory allocator: jemalloc" in completed.stderr  # restarted itself with it preloaded
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 2
    for name, line in zip(names, lines, strict=True):
        path, text = line.split("\t")
        assert path.endswith(name) and wer(fixture_texts[name], text) < 0.3


def test_memory_allocator_system_keeps_the_c_library_malloc(fixture_texts):
    completed = run_cli("transcribe", str(FIXTURES / "anna_bread.wav"), MEMORY_ALLOCATOR="system")
    assert completed.returncode == 0, completed.stderr
    assert "memory allocator: the C library's malloc" in completed.stderr
    assert wer(fixture_texts["anna_bread.wav"], completed.stdout) < 0.3
