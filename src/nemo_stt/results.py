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


def _cues(transcript: Transcript, max_words: int = 12, max_gap: float = 1.0) -> list[tuple[float, float, str]]:
    """Group words into subtitle cues: break on long pauses or after max_words."""
    cues: list[tuple[float, float, str]] = []
    current: list[Word] = []
    for word in transcript.words:
        if current and (len(current) >= max_words or word.start - current[-1].end > max_gap):
            cues.append((current[0].start, current[-1].end, " ".join(w.word for w in current)))
            current = []
        current.append(word)
    if current:
        cues.append((current[0].start, current[-1].end, " ".join(w.word for w in current)))
    return cues


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(transcript: Transcript) -> str:
    blocks = [
        f"{index}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n"
        for index, (start, end, text) in enumerate(_cues(transcript), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    blocks = [f"{_timestamp(s, '.')} --> {_timestamp(e, '.')}\n{text}\n" for s, e, text in _cues(transcript)]
    return "WEBVTT\n\n" + "\n".join(blocks)
