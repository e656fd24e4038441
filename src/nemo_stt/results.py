"""Transcription results and the formats they are served in (JSON, plain text, SRT, WebVTT)."""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Word:
    word: str
    start: float
    """Seconds from the start of the input audio."""
    end: float
    conf: float
    """Confidence in [0, 1]."""


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    words: tuple[Word, ...] = field(default_factory=tuple)
    language: str | None = None
    duration: float | None = None
    """Seconds of audio transcribed (all of it, speech or not), as decoded."""

    @property
    def confidence(self) -> float:
        """Mean word confidence; 0.0 when there are no words."""
        if not self.words:
            return 0.0
        return sum(w.conf for w in self.words) / len(self.words)


def to_json(transcript: Transcript, with_metadata: bool = True) -> dict:
    """The JSON of LinTO's /transcribe route and `transcribe_task` (words empty without metadata)."""
    words = [
        {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "conf": round(w.conf, 5)}
        for w in transcript.words
    ] if with_metadata else []
    return {
        "text": transcript.text,
        "words": words,
        "language": transcript.language,
        "confidence-score": round(transcript.confidence, 5) if with_metadata else 0.0,
    }


def to_text(transcript: Transcript) -> str:
    return transcript.text


# Subtitle cues and OpenAI's verbose_json segments are the same groups of words: a pause longer than
# SEGMENT_MAX_PAUSE seconds starts a new one (a new sentence, another speaker), and a segment holds at most
# SEGMENT_MAX_WORDS words (about two lines of subtitle).
SEGMENT_MAX_WORDS = 12
SEGMENT_MAX_PAUSE = 1.0


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive words shown together: one subtitle cue, one segment of OpenAI's verbose_json."""

    words: tuple[Word, ...]

    @property
    def start(self) -> float:
        return self.words[0].start

    @property
    def end(self) -> float:
        return self.words[-1].end

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)


def segments(transcript: Transcript) -> list[Segment]:
    """The transcript's words in segments: a break at each pause over SEGMENT_MAX_PAUSE s and after
    SEGMENT_MAX_WORDS words. The one place that groups words, for every format that shows groups."""
    groups: list[Segment] = []
    current: list[Word] = []
    for word in transcript.words:
        if current and (len(current) >= SEGMENT_MAX_WORDS or word.start - current[-1].end > SEGMENT_MAX_PAUSE):
            groups.append(Segment(tuple(current)))
            current = []
        current.append(word)
    if current:
        groups.append(Segment(tuple(current)))
    return groups


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(transcript: Transcript) -> str:
    blocks = [
        f"{index}\n{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}\n{cue.text}\n"
        for index, cue in enumerate(segments(transcript), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    blocks = [f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}\n{cue.text}\n"
              for cue in segments(transcript)]
    return "WEBVTT\n\n" + "\n".join(blocks)
