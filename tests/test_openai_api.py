"""OpenAI's speech-to-text API (/v1) end to end: the official `openai` SDK against `nemo-stt serve` on the
demo model."""

import io
import itertools
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import av
import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt

from nemo_stt.audio import AudioStream, decode_audio
from nemo_stt.results import SEGMENT_MAX_PAUSE, SEGMENT_MAX_WORDS

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, ServerProcess, wer
from .recordings import as_wav

DEMO_MODEL_ID = "demo-en-fastconformer"
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def server():
    # One place in the engine, so that concurrent requests meet a full queue; a 2-s body timeout, so that a
    # stalled body is answered quickly; without VAD, so that every request is one forward.
    process = ServerProcess({"VAD": "false", "NUM_THREADS": "2", "MAX_UPLOAD_MB": "2", "QUEUE_MAX_SIZE": "1",
                             "HTTP_BODY_TIMEOUT": "2"})
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    # No retries: the SDK would retry 408 and 503, which the tests want to see.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="any key", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def recording() -> bytes:
    """Four sentences: the first two 0.3 s apart (15 words, more than a segment holds), then pauses of 1.6 s."""
    sentences = [decode_audio(FIXTURES / name, 16000) for name in
                 ("anna_bread.wav", "pilot_train.wav", "old_house.flac", "red_car.mp3")]

    def silence(seconds):
        return np.zeros(int(16000 * seconds), dtype=np.float32)

    return as_wav(np.concatenate([sentences[0], silence(0.3), sentences[1], silence(1.6), sentences[2], silence(1.6),
                                  sentences[3], silence(0.5)]))


def transcribe(client, data: bytes, name: str = "recording.wav", **options):
    return client.audio.transcriptions.create(file=(name, data), model="whisper-1", **options)


def linto_json(server, name: str, data: bytes) -> dict:
    response = httpx.post(f"{server.url}/transcribe", files={"file": (name, data)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def post_v1(server, files=None, data=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/audio/transcriptions", files=files, data=data, timeout=60, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert body["error"]["param"] == param
    assert body["error"]["message"]
    return body["error"]


def vtt_seconds(timestamp) -> float:
    return ((timestamp.hours * 60 + timestamp.minutes) * 60 + timestamp.seconds) + timestamp.milliseconds / 1000


# Formats ---------------------------------------------------------------------------------------------------

def test_json_and_text_give_the_transcript_of_transcribe_whatever_the_model_named(server, client, fixture_texts):
    for name in ("anna_bread.wav", "red_car.mp3", "teacher_book.webm"):
        data = (FIXTURES / name).read_bytes()
        expected = linto_json(server, name, data)["text"]
        assert wer(fixture_texts[name], expected) <= OWN_TEXT_MAX_WER
        assert transcribe(client, data, name).text == expected
        assert transcribe(client, data, name, response_format="text") == expected
    other_model = client.audio.transcriptions.create(file=("a.wav", data), model="gpt-4o-transcribe")
    assert other_model.text == expected


def test_verbose_json_carries_whispers_fields_and_segments_by_default(client, recording):
    verbose = transcribe(client, recording, response_format="verbose_json")
    assert verbose.task == "transcribe" and verbose.language == "en"
    assert verbose.duration == pytest.approx(len(decode_audio(recording, 16000)) / 16000, abs=0.001)
    assert verbose.words is None  # OpenAI's default granularity is the segment
    assert len(verbose.segments) >= 3
    assert " ".join(s.text for s in verbose.segments) == verbose.text
    for index, segment in enumerate(verbose.segments):
        assert segment.id == index and segment.seek == 0 and segment.tokens == []
        assert segment.temperature == 0.0 and segment.no_speech_prob == 0.0
        assert -1 < segment.avg_logprob <= 0  # the demo model is confident on its own fixtures
        assert 0 < segment.compression_ratio < 2.4  # no repetition loop
        assert 0 <= segment.start < segment.end <= verbose.duration
    assert [s.start for s in verbose.segments] == sorted(s.start for s in verbose.segments)


def test_verbose_json_duration_is_the_audio_length_in_every_container(client):
    for name in ("pilot_train.wav", "old_house.flac", "red_car.mp3", "doctor_letter.ogg", "teacher_book.webm",
                 "children_park.m4a"):
        verbose = transcribe(client, (FIXTURES / name).read_bytes(), name, response_format="verbose_json")
        assert verbose.duration == pytest.approx(len(decode_audio(FIXTURES / name, 16000)) / 16000, abs=0.001), name


def test_verbose_json_duration_of_a_recording_whose_container_gives_none_is_counted(client):
    # WebM written as a browser's MediaRecorder writes it, to a stream it cannot seek back in: no duration.
    class Unseekable(io.RawIOBase):
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, chunk):
            self.data += chunk
            return len(chunk)

    audio = decode_audio(FIXTURES / "anna_bread.wav", 48000)
    out = Unseekable()
    with av.open(out, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    recorded = bytes(out.data)
    with AudioStream(recorded, 16000) as header_only:
        assert header_only.duration is None
    verbose = transcribe(client, recorded, "recorded.webm", response_format="verbose_json")
    assert verbose.duration == pytest.approx(len(decode_audio(recorded, 16000)) / 16000, abs=0.001)
    assert verbose.duration > 2


def test_word_granularity_gives_the_words_of_transcribe(server, client, recording):
    linto = linto_json(server, "recording.wav", recording)
    words_only = transcribe(client, recording, response_format="verbose_json", timestamp_granularities=["word"])
    assert words_only.segments is None
    assert [(w.word, w.start, w.end) for w in words_only.words] == [(w["word"], w["start"], w["end"])
                                                                     for w in linto["words"]]
    both = transcribe(client, recording, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert both.words == words_only.words and both.segments


def test_segments_break_at_pauses_and_after_the_most_words(client, recording):
    verbose = transcribe(client, recording, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    words = iter(verbose.words)
    groups = [[next(words) for _ in segment.text.split()] for segment in verbose.segments]
    assert next(words, None) is None
    for segment, group in zip(verbose.segments, groups, strict=True):
        assert (segment.start, segment.end) == (group[0].start, group[-1].end)
        assert len(group) <= SEGMENT_MAX_WORDS
        assert all(b.start - a.end <= SEGMENT_MAX_PAUSE for a, b in itertools.pairwise(group))
    breaks = [("words" if len(before) == SEGMENT_MAX_WORDS else "pause", after[0].start - before[-1].end)
              for before, after in itertools.pairwise(groups)]
    assert all(kind == "words" or gap > SEGMENT_MAX_PAUSE for kind, gap in breaks)
    assert {kind for kind, _ in breaks} == {"words", "pause"}, breaks  # the recording has both kinds


def test_srt_and_vtt_cues_are_the_segments_at_the_words_times_on_both_routes(server, client, recording):
    verbose = transcribe(client, recording, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    expected = [(s.start, s.end, s.text) for s in verbose.segments]
    words = {round(w.start, 3) for w in verbose.words}, {round(w.end, 3) for w in verbose.words}

    subrip = transcribe(client, recording, response_format="srt")
    cues = [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(subrip)]
    vtt = transcribe(client, recording, response_format="vtt")
    vtt_cues = [(vtt_seconds(c.start_time), vtt_seconds(c.end_time), c.text) for c in webvtt.from_string(vtt)]
    for parsed in (cues, vtt_cues):
        assert len(parsed) == len(expected)
        for (start, end, text), (segment_start, segment_end, segment_text) in zip(parsed, expected, strict=True):
            assert text == segment_text
            assert start == pytest.approx(segment_start, abs=0.001) and end == pytest.approx(segment_end, abs=0.001)
            assert round(start, 3) in words[0] and round(end, 3) in words[1]

    for accept, body in (("application/x-subrip", subrip), ("text/vtt", vtt)):
        linto = httpx.post(f"{server.url}/transcribe", files={"file": ("recording.wav", recording)},
                           headers={"accept": accept}, timeout=60)
        assert linto.status_code == 200 and linto.text == body


def test_stream_sends_a_delta_per_segment_then_done(client, recording):
    segments = transcribe(client, recording, response_format="verbose_json").segments
    events = list(transcribe(client, recording, stream=True))
    assert [e.type for e in events] == ["transcript.text.delta"] * len(segments) + ["transcript.text.done"]
    assert [e.delta.strip() for e in events[:-1]] == [s.text for s in segments]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == transcribe(client, recording).text
    text_events = list(transcribe(client, recording, response_format="text", stream=True))
    assert [e.model_dump() for e in text_events] == [e.model_dump() for e in events]


def test_prompt_temperature_and_language_are_accepted(client):
    data = (FIXTURES / "old_house.flac").read_bytes()
    plain = transcribe(client, data, "old_house.flac", response_format="verbose_json")
    guided = transcribe(client, data, "old_house.flac", response_format="verbose_json", prompt="Quiet evenings.",
                        temperature=0.7, language="fr")
    assert guided.text == plain.text and guided.language == "fr"


def test_silence_gives_an_empty_transcript_and_no_segments(client):
    silence = as_wav(np.zeros(16000, dtype=np.float32))
    verbose = transcribe(client, silence, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert (verbose.text, verbose.segments, verbose.words, verbose.duration) == ("", [], [], 1.0)
    assert [e.type for e in transcribe(client, silence, stream=True)] == ["transcript.text.done"]


# Models ----------------------------------------------------------------------------------------------------

def test_models_lists_and_retrieves_the_loaded_model(client):
    models = client.models.list().data
    assert [(m.id, m.object, m.owned_by) for m in models] == [(DEMO_MODEL_ID, "model", "nemo-stt")]
    assert 0 < time.time() - models[0].created < 3600
    assert client.models.retrieve(DEMO_MODEL_ID) == models[0]


def test_an_unknown_model_id_is_404(server, client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("whisper-1")
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    assert_openai_error(httpx.get(f"{server.url}/v1/models/nvidia/parakeet-tdt-0.6b-v2"), 404, "model")


def test_the_routes_and_the_form_are_in_the_openapi_schema(server):
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/audio/transcriptions", "/v1/models", "/v1/models/{model}", "/transcribe"} <= set(paths)
    form = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"] and form["properties"]["file"]["format"] == "binary"
    assert form["properties"]["response_format"]["enum"] == ["json", "text", "srt", "verbose_json", "vtt"]


# Errors ----------------------------------------------------------------------------------------------------

def test_a_missing_file_is_422(server):
    error = assert_openai_error(post_v1(server, data={"model": "whisper-1"}), 422, "file")
    assert "file" in error["message"]
    assert_openai_error(post_v1(server, data={"file": "anna_bread.wav"}), 422, "file")  # a text field, not a file


@pytest.mark.parametrize(("name", "data"), [
    ("notes.txt", b"hello, this is plainly text and not audio\n" * 10),
    ("empty.wav", b""),
])
def test_non_audio_is_415_with_the_reason(client, name, data):
    with pytest.raises(openai.APIStatusError) as raised:
        transcribe(client, data, name)
    assert raised.value.status_code == 415
    error = assert_openai_error(raised.value.response, 415)
    assert name in error["message"] and ("audio" in error["message"] or "empty" in error["message"])


def test_an_upload_over_the_limit_is_413_in_openais_shape_and_linto_keeps_its_own(server, client):
    big = b"\0" * 2_500_000  # the server runs with MAX_UPLOAD_MB=2
    with pytest.raises(openai.APIStatusError) as raised:  # declared by its Content-Length
        transcribe(client, big, "big.wav")
    assert "2 MB" in assert_openai_error(raised.value.response, 413)["message"]

    def chunks():  # no Content-Length: the limit is met while the body is read
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for _ in range(25):
            yield b"\0" * 100_000
        yield b"\r\n--xyz--\r\n"

    streamed = post_v1(server, content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert "2 MB" in assert_openai_error(streamed, 413)["message"]
    linto = httpx.post(f"{server.url}/transcribe", files={"file": ("big.wav", big)}, timeout=60)
    assert linto.status_code == 413 and set(linto.json()) == {"detail"}


def test_a_stalled_body_is_408_in_openais_shape(server):
    body = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            + (FIXTURES / "anna_bread.wav").read_bytes() + b"\r\n--xyz--\r\n")
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(head + body[:1000])  # and no more: the server runs with HTTP_BODY_TIMEOUT=2
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408 ") and b"connection: close" in rest.lower()
    assert b'{"error":{"message":"the request body stopped: no data for 2 s","type":"invalid_request_error",' \
           b'"param":null,"code":null}}' in rest


def test_a_full_queue_is_503_with_retry_after(server):
    # 24 s of audio per request against one place in the engine: requests that arrive meanwhile are refused.
    long_request = as_wav(np.tile(decode_audio(FIXTURES / "old_house.flac", 16000), 8))
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: post_v1(server, files={"file": (f"f{i}.wav", long_request)}), range(12)))
    assert {a.status_code for a in answers} == {200, 503}, [a.status_code for a in answers]
    for answer in answers:
        if answer.status_code == 503:
            assert "busy" in assert_openai_error(answer, 503)["message"]
            assert int(answer.headers["retry-after"]) >= 1


@pytest.mark.parametrize(("field", "value", "extra"), [
    ("response_format", "diarized_json", {}),
    ("response_format", "xml", {}),
    ("temperature", "hot", {}),
    ("temperature", "1.5", {}),
    ("timestamp_granularities[]", "phoneme", {"response_format": "verbose_json"}),
    ("stream", "maybe", {}),
    ("stream", "true", {"response_format": "srt"}),
])
def test_a_parameter_value_this_api_does_not_take_is_400_naming_it(server, field, value, extra):
    response = post_v1(server, files={"file": ("a.wav", as_wav(np.zeros(1600, np.float32)))},
                       data={"model": "whisper-1", field: value, **extra})
    param = "timestamp_granularities[]" if field.startswith("timestamp") else field
    assert_openai_error(response, 400, param)


def test_unknown_paths_and_methods_under_v1_answer_openais_shape(server):
    assert_openai_error(httpx.get(f"{server.url}/v1/audio/translations"), 404)
    assert_openai_error(httpx.delete(f"{server.url}/v1/models"), 405)
    assert set(httpx.get(f"{server.url}/nothing").json()) == {"detail"}


def test_a_client_leaving_before_its_transcript_has_it_cancelled(server):
    # Two minutes of 8-kHz speech (1.9 MB): the model takes long enough for the client to be gone first.
    audio = np.tile(decode_audio(FIXTURES / "pilot_train.wav", 8000), 40)
    body = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="long.wav"\r\n\r\n'
            + as_wav(audio, 8000) + b"\r\n--xyz--\r\n")
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    start = len(server.output())
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(head + body)
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while "client left before its transcription finished: cancelled" not in server.output()[start:]:
        assert time.monotonic() < deadline, server.output()[start:]
        time.sleep(0.1)
    assert "Traceback" not in server.output()
    # The forward already running finishes and gives its place back: the next request is served.
    deadline = time.monotonic() + 30
    while post_v1(server, files={"file": ("a.wav", (FIXTURES / "anna_bread.wav").read_bytes())}).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
