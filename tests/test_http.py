"""HTTP mode end to end, against `nemo-stt serve` in its own process on the demo model."""

import io
import wave
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from nemo_stt.audio import decode_audio
from nemo_stt.engine import demo_model_path

from .conftest import FIXTURES, wer


def post(server, name: str, data: bytes | None = None, accept: str | None = "application/json", **form):
    headers = {"accept": accept} if accept is not None else {}
    content = data if data is not None else (FIXTURES / name).read_bytes()
    return httpx.post(f"{server.url}/transcribe", files={"file": (name, content)}, data=form, headers=headers,
                      timeout=120)


def silent_wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0\0" * int(16000 * seconds))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def raw_model_texts(fixture_texts) -> dict[str, str]:
    """What NeMo's own `transcribe()` gives on the same decoded audio, on a separate copy of the model."""
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(demo_model_path()), map_location="cpu")
    audios = [decode_audio(FIXTURES / name, 16000) for name in fixture_texts]
    hypotheses = model.transcribe(audios, batch_size=1, verbose=False)
    return {name: hypothesis.text for name, hypothesis in zip(fixture_texts, hypotheses, strict=True)}


def test_healthcheck_and_swagger(http_server):
    response = httpx.get(f"{http_server.url}/healthcheck")
    assert (response.status_code, response.text) == (200, "1")
    docs = httpx.get(f"{http_server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = httpx.get(f"{http_server.url}/openapi.json").json()
    body = schema["paths"]["/transcribe"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"]
    assert body["properties"]["file"]["format"] == "binary"  # Swagger UI offers a file picker
    assert body["properties"]["language"]["type"] == "string"


def test_json_transcripts_of_every_format(http_server, fixture_texts):
    errors = []
    for name, text in fixture_texts.items():
        response = post(http_server, name)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"text", "words", "language", "confidence-score"}
        assert body["language"] == "en"
        duration = len(decode_audio(FIXTURES / name, 16000)) / 16000
        words = body["words"]
        assert [w["word"] for w in words] == body["text"].split()
        assert all(set(w) == {"word", "start", "end", "conf"} for w in words)
        assert [w["start"] for w in words] == sorted(w["start"] for w in words)
        assert all(0 <= w["start"] <= w["end"] <= duration + 0.001 for w in words)
        assert all(0 <= w["conf"] <= 1 for w in words)
        assert 0 < body["confidence-score"] <= 1
        errors.append(wer(text, body["text"]))
    assert np.mean(errors) <= 0.15, errors


def test_the_service_text_is_the_raw_model_text(http_server, raw_model_texts):
    for name, raw_text in raw_model_texts.items():
        assert post(http_server, name).json()["text"] == raw_text, name


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "text/html, */*;q=0.8", "application/*"])
def test_json_is_the_default_answer(http_server, accept):
    response = post(http_server, "anna_bread.wav", accept=accept)
    assert response.status_code == 200
    assert response.json()["text"]


def test_text_plain_answers_the_text(http_server):
    as_json = post(http_server, "red_car.mp3").json()
    response = post(http_server, "red_car.mp3", accept="text/plain")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert response.text == as_json["text"]


def test_subtitle_formats(http_server):
    vtt = post(http_server, "red_car.mp3", accept="text/vtt")
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT\n\n00:00:0")
    srt = post(http_server, "red_car.mp3", accept="application/x-subrip")
    assert srt.status_code == 200 and srt.text.startswith("1\n00:00:0") and " --> " in srt.text


def test_an_unsupported_accept_is_406(http_server):
    response = post(http_server, "red_car.mp3", accept="image/png")
    assert response.status_code == 406 and "application/json" in response.json()["detail"]


def test_the_language_field_overrides_the_default(http_server):
    assert post(http_server, "anna_bread.wav", language="fr").json()["language"] == "fr"


def test_silence_and_zero_length_audio_give_empty_transcripts(http_server):
    for seconds in (0, 1.0):
        response = post(http_server, "silence.wav", data=silent_wav(seconds))
        assert response.status_code == 200
        assert response.json() == {"text": "", "words": [], "language": "en", "confidence-score": 0.0}


def test_a_missing_file_is_422(http_server):
    response = httpx.post(f"{http_server.url}/transcribe", data={"language": "en"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_form_fields_of_the_wrong_kind_are_422(http_server):
    # `file` as a text field, then `language` as a file.
    response = httpx.post(f"{http_server.url}/transcribe", data={"file": "anna_bread.wav"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "file"]
    response = httpx.post(f"{http_server.url}/transcribe",
                          files={"file": ("a.wav", silent_wav(0.5)), "language": ("fr.txt", b"fr")})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "language"]


def test_a_malformed_multipart_body_is_400(http_server):
    response = httpx.post(f"{http_server.url}/transcribe", content=b"--x\r\nnot a part",
                          headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400 and "boundary" in response.json()["detail"]


@pytest.mark.parametrize(("name", "data"), [
    ("notes.txt", b"hello, this is plainly text and not audio\n" * 10),
    ("noise.wav", bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8))),
    ("empty.wav", b""),
    ("truncated.wav", (FIXTURES / "anna_bread.wav").read_bytes()[:30]),
])
def test_non_audio_is_415_with_a_reason(http_server, name, data):
    response = post(http_server, name, data=data)
    assert response.status_code == 415
    detail = response.json()["detail"]
    assert name in detail and ("audio" in detail or "empty" in detail)


def test_an_upload_over_the_limit_is_413(http_server):
    # The server under test runs with MAX_UPLOAD_MB=2.
    response = post(http_server, "big.wav", data=b"\0" * 2_500_000)
    assert response.status_code == 413 and "2 MB" in response.json()["detail"]


def test_bad_requests_do_not_hurt_the_others(http_server, fixture_texts):
    names = list(fixture_texts)
    bad = [("bad.txt", b"not audio at all" * 50)] * 3

    def send(item):
        name, data = item
        return name, post(http_server, name, data=data)

    jobs = [(name, None) for name in names] + bad
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs))
    for name, response in answers:
        if name == "bad.txt":
            assert response.status_code == 415
        else:
            assert response.status_code == 200 and wer(fixture_texts[name], response.json()["text"]) < 0.5
    assert httpx.get(f"{http_server.url}/healthcheck").text == "1"
    assert http_server.process.poll() is None
    assert "Traceback" not in http_server.output()
