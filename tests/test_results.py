from nemo_stt import results
from nemo_stt.results import Transcript, Word

TRANSCRIPT = Transcript(
    text="hello there general kenobi",
    words=(Word("hello", 0.0, 0.4, 0.9), Word("there", 0.5, 0.8, 0.7),
           Word("general", 3.0, 3.5, 0.8), Word("kenobi", 3.6, 4.25, 0.6)),
    language="en",
)


def test_json_has_the_linto_shape():
    body = results.to_json(TRANSCRIPT)
    assert body["text"] == "hello there general kenobi"
    assert body["words"][1] == {"word": "there", "start": 0.5, "end": 0.8, "conf": 0.7}
    assert body["confidence-score"] == 0.75
    assert body["language"] == "en"


def test_json_without_metadata_has_no_words_and_zero_confidence():
    body = results.to_json(TRANSCRIPT, with_metadata=False)
    assert body["words"] == [] and body["confidence-score"] == 0.0 and body["text"] == TRANSCRIPT.text


def test_subtitles_break_at_pauses():
    srt = results.to_srt(TRANSCRIPT)
    assert srt == ("1\n00:00:00,000 --> 00:00:00,800\nhello there\n\n"
                   "2\n00:00:03,000 --> 00:00:04,250\ngeneral kenobi\n")
    vtt = results.to_vtt(TRANSCRIPT)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.800\nhello there\n")


def test_an_empty_transcript():
    empty = Transcript(text="")
    assert results.to_json(empty)["confidence-score"] == 0.0
    assert results.to_srt(empty) == ""
