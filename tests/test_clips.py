"""The clip layer (issue 17.1): one ClipSpec, one start / frame-index / padding / resize rule for every consumer."""

import av
import numpy as np
import pytest
import torch

from media_utils import write_media
from transformers_xkd.clips_xkd import (
    ClipSpec,
    audio_windows,
    clip_starts,
    clips_from_frames,
    decode_clips,
    frame_indices,
    random_clip_starts,
    read_clips,
    reject_unknown_keywords,
    resize_shorter_side,
    shorter_side_size,
)
from transformers_xkd.decoding_xkd import MediaDecodingError, load_audio


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    full = write_media(d / "av.mkv", duration=3.0)
    data = full.read_bytes()
    (d / "cut.mkv").write_bytes(data[: int(len(data) * 0.4)])  # the header still says 3 s
    return {"avi": write_media(d / "av.avi", duration=6.0), "mkv": full, "cut": d / "cut.mkv", "dir": d}


def test_clip_spec_sizes_and_validation():
    spec = ClipSpec()
    assert (spec.clip_duration, spec.fps, spec.sampling_rate, spec.num_frames, spec.num_samples) == (
        4.0, 8.0, 16000, 32, 64000)
    np.testing.assert_array_equal(spec.frame_times(0.5), 0.5 + np.arange(32) / 8)
    assert ClipSpec.from_frames(8, 8.0).clip_duration == 1.0 and ClipSpec.from_frames(16, 8.0).num_frames == 16
    for kwargs, name in [({"fps": 0}, "fps"), ({"clip_duration": -1}, "clip_duration"),
                         ({"sampling_rate": 16000.5}, "sampling_rate"), ({"fps": float("nan")}, "fps"),
                         ({"clip_duration": 0.01}, "holds no frame")]:
        with pytest.raises(ValueError, match=name):
            ClipSpec(**kwargs)


def test_start_rules():
    # evaluation: uniform, first at 0, last ending at the end (hand-computed)
    assert clip_starts(10.0, 4.0, 3) == [0.0, 3.0, 6.0]
    assert clip_starts(10.0, 4.0, 1) == [0.0] and clip_starts(3.0, 4.0, 2) == [0.0, 0.0]
    # training: U(0, total - clip) from the caller's generator, the same draws as numpy's own
    starts = random_clip_starts(10.0, 4.0, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(starts, np.random.default_rng(3).uniform(0.0, 6.0, size=5))
    assert clip_starts(10.0, 4.0, 5, np.random.default_rng(3)) == starts
    assert all(0.0 <= s <= 6.0 for s in starts)
    # one clip: the value a scalar draw gives (the pretraining dataset's former rule)
    assert random_clip_starts(7.5, 4.0, 1, np.random.default_rng(9)) == [np.random.default_rng(9).uniform(0.0, 3.5)]
    rng = np.random.default_rng(0)
    assert random_clip_starts(2.0, 4.0, 2, rng) == [0.0, 0.0]  # too short: start 0, no draw used
    assert rng.integers(0, 100) == np.random.default_rng(0).integers(0, 100)
    with pytest.raises(ValueError, match="num_clips"):
        clip_starts(10.0, 4.0, 0)


def test_frame_index_rule_is_the_frame_shown_at_each_time():
    # 25 fps: the released int(t * 25) for t = k / 8 (exact multiples of 1/8 frame, no rounding question)
    idx, padded = frame_indices(np.arange(32) / 8, 25.0, 100)
    assert idx.tolist() == [int(k / 8 * 25) for k in range(32)] and padded == 0
    # 29.97 fps against an independent float64 reference: the last frame i with i / fps <= t + 1e-4
    fps = 30000 / 1001
    times = 0.37 + np.arange(32) / 8
    idx, _ = frame_indices(times, fps, 200)
    reference = [max(i for i in range(200) if i / fps <= t + 1e-4) for t in times]
    assert idx.tolist() == reference
    # past the end: the last frame, counted as padding (3 frames at 25 fps last 0.12 s: 1 time inside)
    idx, padded = frame_indices(np.arange(4) / 8, 25.0, 3)
    assert idx.tolist() == [0, 2, 2, 2] and padded == 3


def test_shorter_side_resize_truncates_the_longer_side():
    assert shorter_side_size(240, 320, 112) == (112, 149)  # 149.33
    assert shorter_side_size(90, 163, 112) == (112, 202)  # 202.84: truncated, not rounded (the released rule)
    assert shorter_side_size(163, 90, 112) == (202, 112) and shorter_side_size(50, 50, 112) == (112, 112)
    frames = torch.randint(0, 256, (2, 3, 90, 163), dtype=torch.uint8)
    out = resize_shorter_side(frames, 112)
    assert out.shape == (2, 3, 112, 202) and out.dtype == torch.uint8
    as_float = resize_shorter_side(frames.float(), 112)
    assert as_float.dtype == torch.float32 and torch.equal(as_float, as_float.round())
    assert (as_float - out.float()).abs().max() <= 1
    already = torch.zeros(1, 3, 112, 150, dtype=torch.uint8)
    assert resize_shorter_side(already, 112) is already  # already at the size: unchanged


def test_a_file_and_its_decoded_frames_give_the_same_clips(files):
    with av.open(str(files["avi"])) as container:
        native = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    from_file = read_clips(files["avi"], num_clips=3, audio=False)
    from_frames = clips_from_frames(native, num_clips=3, video_fps=25)
    assert from_file.frames.shape == (3, 32, 48, 64, 3)
    assert from_file.starts == from_frames.starts == [0.0, 1.0, 2.0]
    np.testing.assert_array_equal(from_file.frames, from_frames.frames)
    meta = from_frames.video_metadata
    assert meta.total_num_frames == len(native) and meta.fps == 25 and meta["video_backend"] == "frames"
    assert meta.frames_indices[:4] == [0, 3, 6, 9]
    assert from_file.video_metadata.fps == pytest.approx(25) and from_file.video_metadata.width == 64


def test_random_clips_are_synchronised_and_reproducible(files):
    spec = ClipSpec(1.0)
    clips = read_clips(files["avi"], spec, 3, rng=np.random.default_rng(5))
    expected = random_clip_starts(6.0, 1.0, 3, np.random.default_rng(5))
    np.testing.assert_allclose(clips.starts, expected, atol=0.05)  # header duration ~6 s
    assert clips.frames.shape == (3, 8, 48, 64, 3) and clips.waveforms.shape == (3, 16000)
    again = read_clips(files["avi"], spec, 3, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(clips.frames, again.frames)
    for k, s in enumerate(clips.starts):  # audio of clip k is the waveform of [s_k, s_k + 1 s)
        np.testing.assert_allclose(clips.waveforms[k], load_audio(files["avi"], start=s, duration=1.0), atol=1e-4)
    # decode_clips is the clip layer too
    decoded, starts = decode_clips(files["avi"], num_clips=2, clip_duration=1.0)
    layer = read_clips(files["avi"], spec, 2)
    assert starts == layer.starts
    np.testing.assert_array_equal(np.stack([c.frames for c in decoded]), layer.frames)


def test_padding_is_reported(files):
    clips = read_clips(files["mkv"], num_clips=1)  # 3 s file, 4 s clip
    assert clips.num_padded_frames == [8] and clips.num_padded_samples == [16000] and clips.padded
    wave = np.ones(24000, np.float32)
    win = audio_windows(wave, ClipSpec(2.0), 1, padding_value=0.5)
    assert win.waveforms.shape == (1, 32000) and win.num_padded_samples == [8000]
    np.testing.assert_array_equal(win.waveforms[0, 24000:], 0.5)
    two = audio_windows(np.arange(48000, dtype=np.float32), ClipSpec(1.0), 3)
    assert two.starts == [0.0, 1.0, 2.0] and two.waveforms[2, 0] == 32000 and two.num_padded_samples == [0, 0, 0]
    assert clips.metadata()["num_padded_frames"] == [8] and clips.metadata()["padded"] is True


def test_a_truncated_file_is_reported_as_truncated(files):
    with pytest.raises(MediaDecodingError, match="cut.mkv.*truncated.*video lasts 3.00 s") as info:
        read_clips(files["cut"])
    assert "stop before" in str(info.value)
    with pytest.raises(MediaDecodingError, match="cut.mkv.*truncated.*audio lasts 3.00 s"):
        read_clips(files["cut"], video=False)
    # the processors and the pretraining dataset read through the same layer
    from transformers_xkd import XKDFeatureExtractor, XKDVideoProcessor

    with pytest.raises(MediaDecodingError, match="cut.mkv.*truncated"):
        XKDVideoProcessor()(str(files["cut"]))
    with pytest.raises(MediaDecodingError, match="cut.mkv.*truncated"):
        XKDFeatureExtractor()(str(files["cut"]))


def test_unknown_keywords_name_the_close_field():
    with pytest.raises(TypeError, match=r"'hop_lenght' \(did you mean 'hop_length'\?\)"):
        reject_unknown_keywords("X", {"hop_lenght": 1}, ["hop_length", "n_fft"])
    with pytest.raises(TypeError, match=r"'num_mel_bins' \(did you mean 'feature_size'\?\)"):
        reject_unknown_keywords("X", {"num_mel_bins": 1}, ["feature_size"], {"num_mel_bins": "feature_size"})
    with pytest.raises(TypeError, match=r"'zzz'; valid ones"):
        reject_unknown_keywords("X", {"zzz": 1}, ["feature_size"])
    reject_unknown_keywords("X", {"n_fft": 1}, ["n_fft"])  # known: no error


def test_every_consumer_cuts_clips_through_the_layer(files):
    from transformers_xkd import XKDFeatureExtractor, XKDVideoProcessor
    from transformers_xkd.downstream.features import ClipProtocol, sample_clips
    from transformers_xkd.pretraining.data import ClipSettings, XKDPretrainingDataset, resolve_source

    vp = XKDVideoProcessor(num_frames=8, size=36, crop_size=32)
    fe = XKDFeatureExtractor(feature_size=16, clip_duration=1.0, hop_length=253, n_fft=512)
    protocol = ClipProtocol("t", "audio_visual", train_clips=3, test_clips=2, train_augment=False)
    assert protocol.clip_spec(vp, fe) == ClipSpec(1.0, 8.0, 16000)
    # frozen-feature training clips: random starts from the caller's rng, the frame shown at each time
    pv, iv = sample_clips(str(files["avi"]), protocol, True, vp, fe, np.random.default_rng(4))
    clips = read_clips(files["avi"], ClipSpec(1.0), 3, rng=np.random.default_rng(4))
    torch.testing.assert_close(pv, vp(clips)["pixel_values"][0], rtol=0, atol=0)
    torch.testing.assert_close(iv, fe.log_mel(clips.waveforms), rtol=0, atol=0)
    # test clips: uniform starts, as the processors take them
    pv, _ = sample_clips(str(files["avi"]), protocol, False, vp, fe)
    torch.testing.assert_close(pv, vp(str(files["avi"]), num_clips=2)["pixel_values"][0], rtol=0, atol=0)
    # clips of different lengths: the longer one is the window, each modality keeps its own length from one start
    fe4 = XKDFeatureExtractor()
    assert protocol.clip_spec(vp, fe4) == ClipSpec(4.0, 8.0, 16000)
    pv4, iv4 = sample_clips(str(files["avi"]), protocol, False, vp, fe4)
    assert pv4.shape[1] == vp.num_frames and iv4.shape[1] == fe4.num_frames
    # pretraining: one random synchronised window, the same as the layer's with the sample's generator
    settings = ClipSettings(clip_duration=1.0)
    assert settings.clip_spec == ClipSpec(1.0, 8.0, 16000) and settings.num_frames == 8
    dataset = XKDPretrainingDataset(resolve_source(str(files["dir"])), [str(files["avi"])], settings, seed=0)
    frames, audio = dataset.decode(0, np.random.default_rng(11))
    layer = read_clips(files["avi"], settings.clip_spec, 1, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(frames, layer.frames[0])
    np.testing.assert_array_equal(audio, layer.waveforms[0])
