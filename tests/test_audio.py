import io
import json
import wave

import numpy as np
import pytest

from nemo_stt import audio as audio_module
from nemo_stt.audio import AudioDecodeError, decode_audio, pcm16_to_float, resample

from .conftest import FIXTURES

FIXTURE_INFO = json.loads((FIXTURES / "texts.json").read_text())


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(FIXTURE_INFO))
def test_every_fixture_format_decodes_to_mono_float32_at_the_requested_rate(name):
    audio = decode_audio(FIXTURES / name, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # All fixtures are 2.2 to 3.5 s of speech.
    assert 2.2 < len(audio) / 16000 < 3.5
    assert 0.1 < np.abs(audio).max() <= 1.1


def test_fixtures_cover_the_formats_rates_and_layouts_that_matter():
    suffixes = {name.rsplit(".", 1)[1] for name in FIXTURE_INFO}
    assert {"wav", "flac", "mp3", "ogg", "m4a", "webm"} <= suffixes
    assert any(info["channels"] == 2 for info in FIXTURE_INFO.values())
    assert any(info["sample_rate"] == 8000 for info in FIXTURE_INFO.values())


def test_a_tone_keeps_its_frequency_and_duration_through_resampling_and_downmix():
    rate = 44100
    t = np.arange(rate * 2) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left], axis=1).reshape(-1)
    audio = decode_audio(wav_bytes(stereo, rate, channels=2), 16000)
    assert abs(len(audio) - 32000) < 50
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 2
    assert 0.4 < np.abs(audio).max() < 0.6  # a downmix of two equal channels keeps the level


def test_decoding_accepts_bytes_paths_and_file_objects():
    path = FIXTURES / "anna_bread.wav"
    from_path = decode_audio(path, 16000)
    from_bytes = decode_audio(path.read_bytes(), 16000)
    with open(path, "rb") as handle:
        from_file = decode_audio(handle, 16000)
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(from_path, from_file)


def test_zero_length_audio_is_an_empty_array_not_an_error():
    audio = decode_audio(wav_bytes(np.zeros(0), 16000), 16000)
    assert audio.shape == (0,) and audio.dtype == np.float32


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"this is a text file, not audio\n" * 20, "not a readable audio file"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "not a readable audio file"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a readable audio file"),
])
def test_non_audio_or_corrupt_input_raises_a_clear_error(data, reason):
    with pytest.raises(AudioDecodeError, match=reason):
        decode_audio(data, 16000)


def test_a_missing_file_raises_a_clear_error(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such file"):
        decode_audio(tmp_path / "missing.wav", 16000)


def test_pcm16_and_resample_helpers():
    pcm = np.array([0, 16384, -32768], dtype="<i2").tobytes()
    np.testing.assert_allclose(pcm16_to_float(pcm), [0.0, 0.5, -1.0])
    assert len(resample(np.zeros(8000, dtype=np.float32), 8000, 16000)) == 16000


@pytest.mark.parametrize("name", ["anna_bread.wav", "pilot_train.wav", "old_house.flac"])
def test_wav_and_flac_read_without_ffmpeg_give_the_samples_ffmpeg_gives(name, monkeypatch):
    data = (FIXTURES / name).read_bytes()
    first_choice = decode_audio(io.BytesIO(data), 16000)
    monkeypatch.setattr(audio_module._WaveReader, "open", classmethod(lambda cls, source: None))
    libsndfile = decode_audio(io.BytesIO(data), 16000)
    monkeypatch.setattr(audio_module, "_open_lossless", lambda source: None)
    ffmpeg = decode_audio(io.BytesIO(data), 16000)
    np.testing.assert_allclose(first_choice, ffmpeg, atol=1e-6)
    np.testing.assert_allclose(libsndfile, ffmpeg, atol=1e-6)


def test_16_bit_wav_is_read_by_the_standard_library_and_other_sample_formats_by_libsndfile():
    import soundfile

    tone = 0.3 * np.sin(np.arange(8000) / 10)
    stereo = wav_bytes(np.repeat(tone, 2), 16000, channels=2)  # the same tone on both channels
    assert isinstance(audio_module._open_lossless(io.BytesIO(stereo)), audio_module._WaveReader)
    np.testing.assert_allclose(decode_audio(stereo, 16000), tone, atol=1e-4)
    buffer = io.BytesIO()
    soundfile.write(buffer, tone, 16000, format="WAV", subtype="FLOAT")
    assert isinstance(audio_module._open_lossless(io.BytesIO(buffer.getvalue())), audio_module._SoundFileReader)
    np.testing.assert_allclose(decode_audio(buffer.getvalue(), 16000), tone, atol=1e-6)


def wav_with_codec(codec: str, samples: np.ndarray, rate: int) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="wav") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for converted in av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                           rate=rate).resample(frame):
            container.mux(stream.encode(converted))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def test_a_wav_whose_codec_libsndfile_does_not_read_is_decoded_by_ffmpeg():
    t = np.arange(16000) / 16000
    data = wav_with_codec("adpcm_yamaha", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    assert audio_module._open_lossless(io.BytesIO(data)) is None
    audio = decode_audio(data, 16000)
    assert abs(len(audio) - 16000) < 1024
    assert abs(np.argmax(np.abs(np.fft.rfft(audio))) * 16000 / len(audio) - 440) < 2


def test_a_wav_header_followed_by_junk_is_refused_with_a_clear_error():
    data = (FIXTURES / "anna_bread.wav").read_bytes()[:40] + b"\x13" * 100  # the data chunk's size is junk
    with pytest.raises(AudioDecodeError, match=r"could not be decoded|not a readable audio file"):
        decode_audio(data, 16000)


def test_a_truncated_wav_gives_the_audio_it_holds():
    data = wav_bytes(0.3 * np.sin(np.arange(32000) / 10), 16000)
    audio = decode_audio(data[: 44 + 48000], 16000)  # 1.5 s of the 2 s the header announces
    assert len(audio) == 24000


def test_only_small_wav_and_flac_count_as_quick_to_decode_and_the_check_reads_nothing_away():
    small = wav_bytes(np.zeros(16000, dtype=np.float32), 16000)
    large = wav_bytes(np.zeros(10 * 16000, dtype=np.float32), 16000)  # 320 kB
    assert audio_module.decodes_quickly(small)
    assert not audio_module.decodes_quickly(large)
    assert audio_module.decodes_quickly((FIXTURES / "old_house.flac").read_bytes())
    assert not audio_module.decodes_quickly((FIXTURES / "red_car.mp3").read_bytes())  # FFmpeg's probe costs more
    assert not audio_module.decodes_quickly(FIXTURES / "anna_bread.wav")  # a path: reading it may block
    upload = io.BytesIO(b"form preamble" + small)
    upload.seek(len(b"form preamble"))
    assert audio_module.decodes_quickly(upload)
    assert upload.tell() == len(b"form preamble")
    assert len(decode_audio(upload, 16000)) == 16000
