"""Concurrent HTTP requests through the shared batcher, on the default configuration (VAD on)."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from nemo_stt.audio import decode_audio

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, ServerProcess, wer
from .recordings import meeting
from .test_long_files import as_wav


def transcribe(server, name: str, data: bytes):
    return httpx.post(f"{server.url}/transcribe", files={"file": (name, data)},
                      headers={"accept": "application/json"}, timeout=120)


@pytest.fixture(scope="module")
def sixteen_files(fixture_texts) -> dict[str, bytes]:
    files = {name: (FIXTURES / name).read_bytes() for name in fixture_texts}
    audios = [decode_audio(FIXTURES / name, 16000) for name in fixture_texts]
    for index, audio in enumerate(audios):
        lead = np.zeros(int(16000 * (0.6 + 0.2 * index)), dtype=np.float32)
        files[f"late_{index}.wav"] = as_wav(np.concatenate([lead, audio]))
    files["pair_a.wav"] = as_wav(np.concatenate([audios[0], np.zeros(8000, np.float32), audios[3]]))
    files["pair_b.wav"] = as_wav(np.concatenate([audios[5], np.zeros(8000, np.float32), audios[2]]))
    assert len(files) == 16
    return files


@pytest.fixture(scope="module")
def batching_server():
    server = ServerProcess({"CONCURRENCY": "0", "NUM_THREADS": "2", "BATCH_MAX_SIZE": "8", "BATCH_MAX_WAIT_MS": "20"})
    yield server
    server.stop()


def test_sixteen_concurrent_requests_each_get_their_own_transcript(batching_server, sixteen_files, fixture_texts):
    alone = {name: transcribe(batching_server, name, data).json()["text"] for name, data in sixteen_files.items()}
    for name, text in fixture_texts.items():
        assert wer(text, alone[name]) <= OWN_TEXT_MAX_WER, (name, alone[name])
    jobs = [*sixteen_files.items(), ("corrupt.mp3", b"ID3" + bytes(range(256)) * 20)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = dict(zip([n for n, _ in jobs], pool.map(lambda job: transcribe(batching_server, *job), jobs),
                           strict=True))
    assert answers["corrupt.mp3"].status_code == 415
    for name in sixteen_files:
        assert answers[name].status_code == 200
        assert answers[name].json()["text"] == alone[name], name


def test_a_meeting_with_more_pauses_than_queue_places_is_transcribed_on_an_idle_server(batching_server):
    # 107 VAD segments against QUEUE_MAX_SIZE=64: a request takes one place, whatever its pauses.
    answer = transcribe(batching_server, "meeting.wav", as_wav(meeting(470)))
    assert answer.status_code == 200, answer.text
    words = answer.json()["words"]
    assert len(words) > 700 and words[-1]["end"] > 460


def test_a_full_queue_answers_503_with_retry_after(sixteen_files):
    server = ServerProcess({"CONCURRENCY": "0", "NUM_THREADS": "2", "BATCH_MAX_SIZE": "1", "QUEUE_MAX_SIZE": "1",
                            "VAD": "false"})
    try:
        audio = decode_audio(FIXTURES / "old_house.flac", 16000)
        long_request = as_wav(np.tile(audio, 8))
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: transcribe(server, f"f{i}.wav", long_request), range(12)))
        codes = [a.status_code for a in answers]
        assert set(codes) == {200, 503}, codes
        for answer in answers:
            if answer.status_code == 503:
                assert int(answer.headers["retry-after"]) >= 1
                assert "busy" in answer.json()["detail"]
        assert transcribe(server, "after.flac", (FIXTURES / "old_house.flac").read_bytes()).status_code == 200
    finally:
        server.stop()
