"""Voice activity detection: where the speech is, in seconds of the audio given.

`auditok` (energy based) and `silero` (the silero-vad package, whose model ships inside it and
loads offline). Segments are widened by `dilatation` on each side and merged where they touch.
"""

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VadConfig:
    method: str  # "auditok" or "silero"
    dilatation: float = 0.5
    min_speech: float = 0.1
    min_silence: float = 0.1
    max_segment: float | None = 60.0
    """Longest segment in seconds (None: no limit); longer ones are cut at their quietest moment."""


class SpeechDetector:
    def __init__(self, config: VadConfig, sample_rate: int):
        if config.method not in ("auditok", "silero"):
            raise ValueError(f"unknown VAD method {config.method!r}")
        self.config = config
        self.sample_rate = sample_rate
        self._silero = None
        self._silero_lock = threading.Lock()  # the silero model keeps state between calls
        if config.method == "silero":
            from silero_vad import load_silero_vad

            self._silero = load_silero_vad()

    def segments(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """Speech spans (start, end) in seconds, dilated, merged, within [0, duration]."""
        duration = len(audio) / self.sample_rate
        if duration == 0:
            return []
        raw = self._silero_segments(audio) if self._silero is not None else self._auditok_segments(audio)
        widened = [(max(0.0, s - self.config.dilatation), min(duration, e + self.config.dilatation)) for s, e in raw]
        merged: list[tuple[float, float]] = []
        for start, end in sorted(widened):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        if self.config.max_segment is None:
            return merged
        return [piece for span in merged for piece in self._cut_long(audio, span, self.config.max_segment)]

    def _cut_long(self, audio: np.ndarray, span: tuple[float, float], longest: float) -> list[tuple[float, float]]:
        """A span cut into pieces of at most `longest` seconds, each cut in the middle of the quietest 50 ms
        of the second half of the piece it ends (between words, where speech allows): a forward's memory
        and time then stay bounded however long the speech runs without a pause."""
        rate, frame = self.sample_rate, max(1, int(0.05 * self.sample_rate))
        start, end = span
        pieces = []
        while end - start > longest:
            low, high = int((start + longest / 2) * rate), int((start + longest) * rate)
            frames = (high - low) // frame
            if frames < 1:
                break
            energy = np.square(audio[low : low + frames * frame].reshape(frames, frame)).mean(axis=1)
            cut = (low + int(np.argmin(energy)) * frame + frame // 2) / rate
            pieces.append((start, cut))
            start = cut
        pieces.append((start, end))
        return pieces

    def _auditok_segments(self, audio: np.ndarray) -> list[tuple[float, float]]:
        import auditok

        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        regions = auditok.split(
            pcm, sampling_rate=self.sample_rate, sample_width=2, channels=1,
            min_dur=max(self.config.min_speech, 0.01), max_dur=None, max_silence=max(self.config.min_silence, 0.01),
            drop_trailing_silence=True,
        )
        return [(float(region.start), float(region.end)) for region in regions]

    def _silero_segments(self, audio: np.ndarray) -> list[tuple[float, float]]:
        import torch
        from silero_vad import get_speech_timestamps

        rate = self.sample_rate
        with self._silero_lock:
            stamps = get_speech_timestamps(
                torch.from_numpy(np.ascontiguousarray(audio)), self._silero, sampling_rate=rate,
                min_speech_duration_ms=int(self.config.min_speech * 1000),
                min_silence_duration_ms=int(self.config.min_silence * 1000),
            )
        return [(stamp["start"] / rate, stamp["end"] / rate) for stamp in stamps]
