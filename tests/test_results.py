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


def test_segments_break_at_pauses_over_a_second_and_after_twelve_words():
    # 14 words 0.25 s apart, a 1.25-s pause, 2 words, a pause of exactly 1 s, 1 word (times exact in binary).
    times = [0.5 * i for i in range(14)] + [8.0, 8.5, 9.75]
    words = tuple(Word(f"w{i}", t, t + 0.25, 0.9) for i, t in enumerate(times))
    groups = results.segments(Transcript(text=" ".join(w.word for w in words), words=words))
    assert [len(g.words) for g in groups] == [12, 2, 3]
    assert (groups[1].start, groups[1].end, groups[1].text) == (6.0, 6.75, "w12 w13")
    assert groups[2].text == "w14 w15 w16"  # a pause of 1 s is not longer than SEGMENT_MAX_PAUSE


def test_subtitle_cues_are_the_segments():
    groups = results.segments(TRANSCRIPT)
    assert [(g.start, g.end, g.text) for g in groups] == [(0.0, 0.8, "hello there"), (3.0, 4.25, "general kenobi")]
    assert results.segments(Transcript(text="")) == []
