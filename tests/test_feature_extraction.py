"""XKDFeatureExtractor (issue 3): released log-mel parity with librosa (real media and adversarial audio, every
compute_dtype), shapes, clips, inputs, bad inputs, threads and devices, save/load."""

import json
import pickle

import numpy as np
import pytest
import torch

from media_utils import write_media
from transformers_xkd.decoding_xkd import load_audio
from transformers_xkd.feature_extraction_xkd import XKDFeatureExtractor

librosa = pytest.importorskip("librosa", reason="librosa (dev extra) is the reference for the log-mel parity test")


def released_log_mel(wave: np.ndarray, n_fft: int = 1024, hop_length: int = 143, n_mels: int = 80) -> np.ndarray:
    """The released MelSpectrogramLibrosa recipe with librosa 0.8.1 semantics (spec 6.4); `(frames, 80)`."""
    wave = wave.astype(np.float64)  # released audio was int16 / 32767 in numpy, i.e. float64
    power = np.abs(librosa.stft(wave, n_fft=n_fft, hop_length=hop_length, center=True, pad_mode="reflect")) ** 2
    power = power + 2.2e-16
    mel = librosa.filters.mel(sr=16000, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=None, htk=False, norm="slaney")
    log_mel = np.log(mel @ power + np.finfo(np.float32).eps)
    return ((log_mel - (-5.3688107)) / 4.410007).T


def adversarial_waves() -> dict[str, np.ndarray]:
    """4 s clips where float32 STFT round-off meets the log's floor: loud tones next to quiet bands, clipping, DC,
    silence and near-silence (the log amplifies absolute error where a band's power is near 1.19e-7)."""
    rng = np.random.default_rng(7)
    t = np.arange(64000) / 16000
    staged = np.zeros(64000)
    staged[:20000] = np.sin(2 * np.pi * 1000 * t[:20000])
    staged[40000:] = 1e-4 * rng.standard_normal(24000)
    waves = {
        "silence": np.zeros(64000),
        "quiet noise (1e-4)": 1e-4 * rng.standard_normal(64000),
        "full-scale 7.9 kHz tone": np.sin(2 * np.pi * 7900 * t),
        "full-scale 50 Hz tone": np.sin(2 * np.pi * 50 * t),
        "clipped 220 Hz tone": np.clip(3 * np.sin(2 * np.pi * 220 * t), -1, 1),
        "DC 0.5 + noise 1e-3": 0.5 + 1e-3 * rng.standard_normal(64000),
        "loud 3 kHz tone + noise 1e-4": 0.99 * np.sin(2 * np.pi * 3000 * t) + 1e-4 * rng.standard_normal(64000),
        "loud, silent, then quiet": staged,
        "full-scale square wave": np.sign(np.sin(2 * np.pi * 125 * t)),
    }
    return {name: wave.astype(np.float32) for name, wave in waves.items()}


def max_errors(features, waves: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs difference of each clip's features from the released recipe, by name."""
    return {
        name: float(np.abs(np.asarray(features[i]) - released_log_mel(wave)).max())
        for i, (name, wave) in enumerate(waves.items())
    }


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


def test_default_path_parity_on_adversarial_audio(fe):
    assert fe.compute_dtype == "mixed"
    waves = adversarial_waves()
    errors = max_errors(fe.log_mel(np.stack(list(waves.values()))), waves)
    assert max(errors.values()) <= 1e-4, errors
    # margin: the guard redoes in float64 any frame whose float32 error bound exceeds 2.5e-5
    assert max(errors.values()) <= 3e-5, errors


def test_float32_alone_misses_parity_on_loud_tones_and_float64_is_tight():
    waves = adversarial_waves()
    batch = np.stack(list(waves.values()))
    f32 = max_errors(XKDFeatureExtractor(compute_dtype="float32").log_mel(batch), waves)
    f64 = max_errors(XKDFeatureExtractor(compute_dtype="float64").log_mel(batch), waves)
    assert f32["full-scale 7.9 kHz tone"] > 1e-4, f32  # why "mixed" checks frames: plain float32 misses the budget
    assert f32["silence"] <= 1e-6 and f32["quiet noise (1e-4)"] <= 1e-5, f32  # quiet audio is not the problem
    assert max(f64.values()) <= 1e-6, f64


def test_threads_devices_and_the_batched_kernel_agree(fe):
    waves = adversarial_waves()
    names = ("full-scale 7.9 kHz tone", "quiet noise (1e-4)", "clipped 220 Hz tone")
    batch = np.stack([waves[name] for name in names])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fe.log_mel(batch)
        torch.set_num_threads(2)
        two = fe.log_mel(batch)  # clips shared out to 2 worker threads
        assert torch.get_num_threads() == 2  # the caller's setting survives the workers' own
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert torch.equal(fe.log_mel(torch.from_numpy(batch), device="cpu"), one)
    # the whole-batch kernel (what an accelerator runs), here on the CPU, including its float64 redo of frames
    whole = fe._log_mel_batched(torch.from_numpy(batch), None, "mixed")
    assert whole.shape == one.shape and float((whole - one).abs().max()) <= 1e-5
    via_call = fe(list(batch), sampling_rate=16000, return_tensors="pt", device="cpu")["input_values"]
    assert torch.equal(via_call, one)
    if torch.cuda.is_available():
        gpu = fe.log_mel(batch, device="cuda")
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        errors = max_errors(gpu.cpu(), {name: waves[name] for name in names})
        assert max(errors.values()) <= 1e-4, errors
        on_gpu = fe(list(batch), sampling_rate=16000, return_tensors="np", device="cuda")["input_values"]
        assert isinstance(on_gpu, np.ndarray) and on_gpu.shape == (3, 448, 80)


def test_float64_input_other_sizes_and_bad_inputs():
    t = np.arange(64000) / 16000
    wave64 = 0.9 * np.sin(2 * np.pi * 4321.123 * t) + 1e-5 * np.cos(2 * np.pi * 123 * t)  # not exact in float32
    for mode in ("mixed", "float64"):
        out = XKDFeatureExtractor(compute_dtype=mode).log_mel(wave64)
        assert out.shape == (1, 448, 80) and out.dtype == torch.float32
        assert np.abs(out[0].numpy() - released_log_mel(wave64)).max() <= 1e-4
    # another geometry (the downstream tests' tiny extractor): 16 mels, n_fft 512, hop 253
    small = XKDFeatureExtractor(feature_size=16, n_fft=512, hop_length=253, clip_duration=1.0)
    wave = (0.5 * np.sin(2 * np.pi * 440 * t[:16000]) + 0.01 * np.random.default_rng(3).standard_normal(16000))
    out = small.log_mel(wave.astype(np.float32))
    assert out.shape == (1, 64, 16)
    assert np.abs(out[0].numpy() - released_log_mel(wave.astype(np.float32), 512, 253, 16)).max() <= 1e-4
    fe = XKDFeatureExtractor()
    with pytest.raises(ValueError, match="more than n_fft // 2 = 512 samples"):
        fe.log_mel(np.zeros(512, np.float32))
    with pytest.raises(ValueError, match=r"waveforms: expected a real .*shape \(2, 3, 1000\)"):
        fe.log_mel(np.zeros((2, 3, 1000), np.float32))
    with pytest.raises(ValueError, match="waveforms: expected a real"):
        fe.log_mel(np.zeros((1, 1000), np.complex64))


def test_compute_dtype_round_trips_and_is_validated(tmp_path):
    assert XKDFeatureExtractor().compute_dtype == "mixed"
    for mode in ("float64", "float32"):
        custom = XKDFeatureExtractor(compute_dtype=mode)
        custom.log_mel(np.zeros(4000, np.float32))  # fills the kernel-constant cache, which must not be saved
        custom.save_pretrained(tmp_path / mode)
        saved = json.loads((tmp_path / mode / "preprocessor_config.json").read_text())
        assert saved["compute_dtype"] == mode and "_mel_plans" not in saved
        loaded = XKDFeatureExtractor.from_pretrained(tmp_path / mode)
        assert loaded.compute_dtype == mode and loaded.to_dict() == custom.to_dict()
    with pytest.raises(ValueError, match="compute_dtype must be one of .*'float16'"):
        XKDFeatureExtractor(compute_dtype="float16")
    # DataLoader workers get a pickled copy: settings kept, the kernel-constant cache dropped and rebuilt
    copy = pickle.loads(pickle.dumps(custom))
    assert copy.compute_dtype == "float32" and "_mel_plans" not in copy.__dict__
    torch.testing.assert_close(copy.log_mel(np.ones(4000, np.float32)), custom.log_mel(np.ones(4000, np.float32)))
