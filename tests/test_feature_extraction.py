"""XKDFeatureExtractor (issue 3): released log-mel parity with librosa, shapes, clips, inputs, bad inputs."""

import json

import numpy as np
import pytest
import torch

from media_utils import write_media
from transformers_xkd.decoding_xkd import load_audio
from transformers_xkd.feature_extraction_xkd import XKDFeatureExtractor

librosa = pytest.importorskip("librosa", reason="librosa (dev extra) is the reference for the log-mel parity test")


def released_log_mel(wave: np.ndarray) -> np.ndarray:
    """The released MelSpectrogramLibrosa recipe with librosa 0.8.1 semantics (spec 6.4); `(frames, 80)`."""
    wave = wave.astype(np.float64)  # released audio was int16 / 32767 in numpy, i.e. float64
    power = np.abs(librosa.stft(wave, n_fft=1024, hop_length=143, center=True, pad_mode="reflect")) ** 2 + 2.2e-16
    mel = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=0.0, fmax=None, htk=False, norm="slaney") @ power
    log_mel = np.log(mel + np.finfo(np.float32).eps)
    return ((log_mel - (-5.3688107)) / 4.410007).T


def four_seconds(wave: np.ndarray) -> np.ndarray:
    wave = wave[:64000]
    return np.pad(wave, (0, 64000 - len(wave)))


@pytest.fixture(scope="module")
def fe():
    return XKDFeatureExtractor()


def test_parity_with_librosa_on_synthetic_audio(fe):
    rng = np.random.default_rng(0)
    t = np.arange(64000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(64000)).astype(np.float32)
    wave[20000:30000] = 0.0  # digital silence: the epsilons decide these bins
    out = fe(wave, sampling_rate=16000, return_tensors="pt")["input_values"]
    assert out.shape == (1, 448, 80) and out.dtype == torch.float32
    assert np.abs(out[0].numpy() - released_log_mel(wave)).max() <= 1e-4


def test_parity_with_librosa_on_real_audio(fe, real_media):
    names = ["audio/cantina.wav", "audio/cate_blanch.mp3", "video/b.mp4", "video/Megamind.avi"]
    names += [f"audio/digits/{d}.wav" for d in range(10)]
    for name in names:
        wave = four_seconds(load_audio(real_media / name))
        ours = fe(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]
        err = np.abs(ours - released_log_mel(wave)).max()
        assert err <= 1e-4, f"{name}: max abs error {err}"
        # a path gives the same features as its decoded waveform
        np.testing.assert_allclose(fe(str(real_media / name), return_tensors="np")["input_values"][0], ours, atol=1e-6)


def test_shapes_padding_clipping_and_clips(fe):
    rng = np.random.default_rng(1)
    long = (0.1 * rng.standard_normal(16000 * 10)).astype(np.float32)
    short = long[:8000]
    one = fe(long, sampling_rate=16000, return_tensors="pt")["input_values"]
    first = fe(long[:64000], sampling_rate=16000, return_tensors="pt")["input_values"]
    torch.testing.assert_close(one, first)  # one clip = the first 4 s
    padded = fe(short, sampling_rate=16000, return_tensors="pt")["input_values"]
    torch.testing.assert_close(padded, fe(np.pad(short, (0, 56000)), sampling_rate=16000, return_tensors="pt")["input_values"])
    batch = fe([long, short], sampling_rate=16000, return_tensors="pt")["input_values"]
    assert batch.shape == (2, 448, 80)
    clips = fe([long, short], sampling_rate=16000, num_clips=3, return_tensors="pt")["input_values"]
    assert clips.shape == (2, 3, 448, 80)
    torch.testing.assert_close(clips[0, 0], one[0])
    last = fe(long[-64000:], sampling_rate=16000, return_tensors="pt")["input_values"][0]
    torch.testing.assert_close(clips[0, 2], last)  # clips are spread from the start to the end
    assert isinstance(fe(long, sampling_rate=16000)["input_values"], list)
    assert fe(torch.from_numpy(long), sampling_rate=16000, return_tensors="np")["input_values"].shape == (1, 448, 80)


def test_resampling_matches_a_native_16k_signal(fe, tmp_path):
    t48 = np.arange(48000 * 4) / 48000
    t16 = np.arange(16000 * 4) / 16000
    a = fe(0.3 * np.sin(2 * np.pi * 500 * t48).astype(np.float32), sampling_rate=48000, return_tensors="np")
    b = fe(0.3 * np.sin(2 * np.pi * 500 * t16).astype(np.float32), sampling_rate=16000, return_tensors="np")
    # the loud bins agree (the resampler's stop band only touches bins near the floor)
    loud = b["input_values"] > 0
    assert np.abs(a["input_values"] - b["input_values"])[loud].mean() < 0.05
    for rate in (8000, 48000):
        path = write_media(tmp_path / f"t{rate}.wav", video=False, sampling_rate=rate, duration=1.0, channels=2)
        assert fe(path, return_tensors="pt")["input_values"].shape == (1, 448, 80)


@pytest.mark.parametrize(
    "wave, message",
    [
        (np.array([0.0, np.nan, 0.1] * 100, np.float32), "waveform.*NaN or infinite"),
        (np.array([0.0, np.inf] * 100, np.float32), "waveform.*NaN or infinite"),
        (np.zeros(0, np.float32), "waveform.*empty"),
        (np.zeros(1000, np.int16), "waveform.*dtype int16"),
        (np.array(["a", "b"]), "waveform.*dtype <U1"),
        (np.zeros((3, 2, 100), np.float32), "waveform.*1-D"),
    ],
)
def test_bad_waveforms_raise_clear_errors(fe, wave, message):
    with pytest.raises(ValueError, match=message):
        fe(wave, sampling_rate=16000)


def test_bad_waveform_in_a_batch_is_named(fe):
    with pytest.raises(ValueError, match="waveform 1.*NaN"):
        fe([np.zeros(100, np.float32), np.full(100, np.nan, np.float32)], sampling_rate=16000)


def test_bad_files_name_the_file(fe, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("hello")
    video_only = write_media(tmp_path / "mute.mp4", audio=False, duration=0.5)
    for path, reason in [
        (tmp_path / "empty.wav", "empty"),
        (tmp_path / "notes.mp4", "not a readable media file"),
        (tmp_path / "missing.wav", "no such file"),
        (video_only, "no audio stream"),
    ]:
        with pytest.raises(ValueError, match=reason) as info:
            fe(str(path))
        assert path.name in str(info.value)


def test_save_load_and_to_dict(fe, tmp_path):
    custom = XKDFeatureExtractor(num_clips=2)
    custom.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert "mel_filters" not in saved and saved["hop_length"] == 143 and saved["num_clips"] == 2
    assert (tmp_path / "preprocessor_config.json").stat().st_size < 2000
    loaded = XKDFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == custom.to_dict()
    np.testing.assert_allclose(loaded.mel_filters, fe.mel_filters)
    assert fe.num_frames == 448 and fe.num_samples == 64000
