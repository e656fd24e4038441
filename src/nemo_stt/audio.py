"""Audio decoding and resampling: any container or codec FFmpeg reads, to mono float32 at the model's rate."""

import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soxr

AudioSource = bytes | str | Path | BinaryIO


class AudioDecodeError(ValueError):
    """The input is not audio that can be decoded."""


# Containers round their stated duration (MP3 frames, codec delay): a file at the limit is not refused.
DURATION_TOLERANCE = 0.05


def too_long(seconds: float | None, limit: float | None) -> str | None:
    """Why audio of `seconds` breaks MAX_AUDIO_SECONDS=`limit`, or None when it does not (or either is unknown)."""
    if seconds is None or limit is None or seconds <= limit + DURATION_TOLERANCE:
        return None
    return f"the audio lasts {seconds:.1f} s, longer than the limit of {limit:g} s"


def decode_audio(source: AudioSource, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream of `source` to mono float32 at `sample_rate`.

    Zero-length audio gives an empty array; anything that is not decodable audio raises AudioDecodeError.
    """
    with AudioStream(source, sample_rate) as stream:
        pieces = list(stream)
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32, copy=False)


class AudioStream:
    """Incremental decoding: iterating gives mono float32 blocks at `sample_rate`.

    WAV and FLAC are read by libsndfile (soundfile), which opens them in a tenth of the time FFmpeg
    takes to probe a WAV; everything else, and anything libsndfile refuses, by FFmpeg (PyAV).
    Opening raises AudioDecodeError for anything that is not audio; memory stays bounded by one block
    whatever the file's length. `duration` is the container's own estimate (None when it has none).
    """

    def __init__(self, source: AudioSource, sample_rate: int):
        if isinstance(source, bytes):
            if not source:
                raise AudioDecodeError("the file is empty")
            source = io.BytesIO(source)
        self.sample_rate = sample_rate
        self._reader = _open_lossless(source) or _FFmpegReader(source)
        self.duration: float | None = self._reader.duration

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        rate_converter = None
        for mono, rate in self._reader.blocks():
            if rate != self.sample_rate:
                if rate_converter is None:
                    rate_converter = soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32")
                mono = rate_converter.resample_chunk(mono)
            if mono.size:
                yield mono
        if rate_converter is not None:
            tail = rate_converter.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                yield tail


# A WAV or FLAC file up to this size decodes in a few milliseconds (2.6 ms for 1 MB of 16-kHz PCM;
# a 256-kB 48-kHz stereo WAV, resampled, in about 3 ms).
QUICK_DECODE_BYTES = 256 * 1024


def decodes_quickly(source: AudioSource) -> bool:
    """Whether `source` is in-memory or seekable WAV/FLAC of at most QUICK_DECODE_BYTES.

    Such a file costs less to decode on the caller's thread than the hand-off to another thread,
    whose reads of the upload (Python file calls, from libsndfile's callbacks too) each wait for the
    interpreter lock while the caller's thread runs.
    """
    if isinstance(source, bytes):
        return len(source) <= QUICK_DECODE_BYTES and source[:4] in _LOSSLESS_HEADERS
    if isinstance(source, str | Path) or not source.seekable():
        return False
    position = source.tell()
    try:
        header = source.read(4)
        size = source.seek(0, io.SEEK_END) - position
    finally:
        source.seek(position)
    return size <= QUICK_DECODE_BYTES and header in _LOSSLESS_HEADERS


def _mono(planes: np.ndarray) -> np.ndarray:
    """Average the channels (rows): keeps the level of a centred voice and never clips."""
    return planes[0].copy() if len(planes) == 1 else planes.mean(axis=0, dtype=np.float32)


_LOSSLESS_HEADERS = (b"RIFF", b"RF64", b"fLaC")


def _open_lossless(source) -> "_WaveReader | _SoundFileReader | None":
    """A reader for WAV and FLAC sources (16-bit PCM WAV by `wave`, the rest by libsndfile), None for other
    formats or when libsndfile refuses."""
    import soundfile

    if isinstance(source, str | Path):
        try:
            with open(source, "rb") as handle:
                header = handle.read(4)
        except OSError:
            return None  # FFmpeg reports it
        position = None
    elif source.seekable():
        position = source.tell()
        header = source.read(4)
        source.seek(position)
    else:
        return None
    if header not in _LOSSLESS_HEADERS:
        return None
    if header == b"RIFF" and (reader := _WaveReader.open(source)) is not None:
        return reader
    if position is not None:
        source.seek(position)
    try:
        return _SoundFileReader(soundfile.SoundFile(source))
    except RuntimeError:  # LibsndfileError: a codec or variant libsndfile does not read, which FFmpeg may
        if position is not None:
            source.seek(position)
        return None


class _WaveReader:
    """16-bit PCM WAV, the usual upload, by the standard library: 0.06 ms for a 5-s file where libsndfile,
    reading through Python callbacks, takes 0.5 ms, on the event loop that small uploads are decoded on."""

    BLOCK_SECONDS = 10

    def __init__(self, wav: wave.Wave_read):
        self._wav = wav
        frames, rate = wav.getnframes(), wav.getframerate()
        self.duration = frames / rate if frames > 0 else None

    @classmethod
    def open(cls, source) -> "_WaveReader | None":
        """None for what `wave` does not read (other sample formats, WAVE_FORMAT_EXTENSIBLE, damage)."""
        try:
            wav = wave.open(str(source) if isinstance(source, Path) else source, "rb")  # noqa: SIM115 (closed by close())
        except (wave.Error, EOFError, ValueError, RuntimeError):  # RuntimeError: a chunk runs past the end
            return None
        if wav.getsampwidth() != 2 or wav.getframerate() <= 0 or wav.getnchannels() <= 0:
            wav.close()
            return None
        return cls(wav)

    def close(self) -> None:
        self._wav.close()

    def blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        rate, channels = self._wav.getframerate(), self._wav.getnchannels()
        produced = False
        while True:
            try:
                data = self._wav.readframes(self.BLOCK_SECONDS * rate)
            except (wave.Error, EOFError, RuntimeError) as error:
                if not produced:
                    raise AudioDecodeError(f"the audio could not be decoded ({_reason(error)})") from None
                return  # a truncated file: keep what decoded, as players do
            whole = len(data) - len(data) % (2 * channels)  # a truncated file may end inside a frame
            if whole == 0:
                return
            produced = True
            audio = pcm16_to_float(data[:whole])  # a fresh array: mono needs no copy (uploads decode on the event loop)
            yield (audio if channels == 1 else _mono(audio.reshape(-1, channels).T)), rate


class _SoundFileReader:
    BLOCK_SECONDS = 10

    def __init__(self, sound_file):
        self._file = sound_file
        frames, rate = sound_file.frames, sound_file.samplerate
        self.duration = frames / rate if frames > 0 and rate > 0 else None

    def close(self) -> None:
        self._file.close()

    def blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        rate = self._file.samplerate
        produced = False
        try:
            for block in self._file.blocks(blocksize=self.BLOCK_SECONDS * rate, dtype="float32", always_2d=True):
                produced = True
                yield _mono(block.T), rate
        except RuntimeError as error:  # LibsndfileError
            if not produced:
                raise AudioDecodeError(f"the audio could not be decoded ({_reason(error)})") from None
            # A truncated file: keep what decoded, as players do.


class _FFmpegReader:
    def __init__(self, source):
        try:
            self._container = av.open(str(source) if isinstance(source, Path) else source, mode="r")
        except FileNotFoundError:
            raise AudioDecodeError(f"no such file: {source}") from None
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as error:
            raise AudioDecodeError(f"not a readable audio file ({_reason(error)})") from None
        if not self._container.streams.audio:
            self._container.close()
            raise AudioDecodeError("the file has no audio stream")
        self._stream = self._container.streams.audio[0]
        duration = self._container.duration
        self.duration = duration / 1_000_000 if duration and duration > 0 else None

    def close(self) -> None:
        self._container.close()

    def blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        converter = av.AudioResampler(format="fltp")  # any sample format to planar float, same layout and rate
        produced = False
        try:
            for frame in self._container.decode(self._stream):
                for converted in converter.resample(frame):
                    produced = True
                    yield _mono(converted.to_ndarray()), converted.sample_rate
        except av.FFmpegError as error:
            if not produced:
                raise AudioDecodeError(f"the audio could not be decoded ({_reason(error)})") from None
            # A truncated file: keep what decoded, as players do.


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes to float32 in [-1, 1)."""
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    audio *= 1 / 32768  # in place, and a product: dividing took ten times as long
    return audio


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, from_rate, to_rate).astype(np.float32, copy=False)


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.split(":")[-1].strip() if text else type(error).__name__
