"""Where a stream was last loud: lets a final be sent on audio received but not yet decoded.

A decoder sees a stream a chunk at a time, so "no new words for PAUSE seconds" known from decoded
audio alone comes up to a chunk late. The received audio's energy says sooner whether the
not-yet-decoded tail may hold speech: when it holds none, the words decoded so far are followed by
a pause and can be sent as a final at once.

A 20-ms window is loud when its RMS passes both an absolute floor (-50 dBFS) and a few times the
stream's noise level, which follows the quiet windows quickly and the loud ones slowly. Every window's
verdict is kept (a byte per 20 ms), so that a stream whose audio arrives faster than it is decoded can
ask whether a stretch behind the newest audio was quiet.
"""

import numpy as np

WINDOW_SECONDS = 0.02
ABSOLUTE_FLOOR = 10 ** (-50 / 20)
ABOVE_NOISE = 3.0  # about 10 dB
NOISE_RISE = 0.002  # per window: the noise level takes about ten seconds to climb to a loud level


class SpeechEnergy:
    def __init__(self, sample_rate: int):
        self.window = max(1, round(WINDOW_SECONDS * sample_rate))
        self.sample_rate = sample_rate
        self.noise: float | None = None
        self.received = 0  # samples
        self.last_loud_end = 0  # sample index just after the last loud window
        self._loud = bytearray()  # one verdict per whole window since the start
        self._partial = np.zeros(0, dtype=np.float32)

    def push(self, audio: np.ndarray) -> None:
        audio = np.concatenate([self._partial, audio]) if self._partial.size else audio
        whole = len(audio) // self.window * self.window
        self._partial = audio[whole:].astype(np.float32, copy=True)
        if whole:
            windows = audio[:whole].reshape(-1, self.window).astype(np.float64)
            for index, rms in enumerate(np.sqrt(np.mean(windows**2, axis=1))):
                loud = bool(self._is_loud(rms))
                self._loud.append(loud)
                if loud:
                    self.last_loud_end = self.received + (index + 1) * self.window
            self.received += whole

    @property
    def last_loud_seconds(self) -> float:
        return self.last_loud_end / self.sample_rate

    def loud_between(self, start: float, end: float) -> bool:
        """Whether a window overlapping (start, end] seconds was loud (audio not yet received counts as loud)."""
        if end * self.sample_rate > self.received:
            return True
        first = max(0, int(start * self.sample_rate) // self.window)
        last = int(np.ceil(end * self.sample_rate / self.window))
        return any(self._loud[first:last])

    def _is_loud(self, rms: float) -> bool:
        if self.noise is None or rms < self.noise:
            self.noise = rms
        else:
            self.noise += NOISE_RISE * (rms - self.noise)
        return rms > max(ABSOLUTE_FLOOR, ABOVE_NOISE * self.noise)
