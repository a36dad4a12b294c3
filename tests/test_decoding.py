"""PyAV decoding (issue 3): timing, windows, rates, channels, odd inputs, bad inputs, no leaked files."""

import fractions
import io
import os

import av
import numpy as np
import pytest

from media_utils import moov_at_end, moving_square_frame, square_x, write_media
from transformers_xkd.clips_xkd import clip_starts, decode_clips
from transformers_xkd.decoding_xkd import (
    MediaDecodingError,
    MediaNotFoundError,
    MediaReader,
    _rotate,
    decode_media,
    load_audio,
    resample_audio,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Small synthetic files, written once per module."""
    d = tmp_path_factory.mktemp("media")
    files = {
        "mp4": write_media(d / "av.mp4", duration=2.0),
        "avi": write_media(d / "av.avi", duration=2.0),
        "noaudio": write_media(d / "noaudio.mp4", audio=False),
        "audio_only": write_media(d / "tone.wav", video=False),
        "wav48": write_media(d / "t48.wav", video=False, sampling_rate=48000),
        "wav8": write_media(d / "t8.wav", video=False, sampling_rate=8000),
        "six": write_media(d / "six.wav", video=False, channels=6),
        "short": write_media(d / "short.mp4", duration=0.3),
        "odd": write_media(d / "odd.mkv", size=(175, 143), duration=1.0),
        "gray": write_media(d / "gray.mkv", pix_fmt="gray", audio=False, duration=1.0),
    }
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    data = files["mp4"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    files.update(empty=d / "empty.mp4", text=d / "text.mp4", truncated=d / "truncated.mp4", dir=d)
    return files


def test_frames_are_picked_on_the_8fps_grid(media):
    out = decode_media(media["avi"])  # 2 s at 25 fps -> 16 frames at 8 fps
    assert out.frames.shape == (16, 48, 64, 3) and out.frames.dtype == np.uint8
    for k in (0, 5, 15):
        native = int(k / 8 * 25)  # released rule: native index int(t * fps)
        expected = square_x(moving_square_frame(native, 50, 64, 48))
        assert abs(square_x(out.frames[k]) - expected) < 1.5
    assert out.num_padded_frames == 0
    np.testing.assert_allclose(out.frame_times, np.arange(16) / 8)


def test_audio_and_video_cover_the_same_window(media):
    out = decode_media(media["mp4"], start=0.5, duration=1.0)
    assert out.frames.shape[0] == 8 and out.audio.shape == (16000,)
    full = decode_media(media["mp4"])
    # the window's frames are the full decode's frames 4..11 (same native frames)
    for k in range(8):
        assert abs(square_x(out.frames[k]) - square_x(full.frames[4 + k])) < 0.5
    np.testing.assert_allclose(out.audio, full.audio[8000:24000], atol=1e-4)


def test_seek_window_equals_full_decode(media):
    full = decode_media(media["avi"])
    part = decode_media(media["avi"], start=1.25, duration=0.5)
    np.testing.assert_array_equal(part.frames, full.frames[10:14])


def test_moov_at_end_bytes_and_file_objects(media):
    assert moov_at_end(media["mp4"])
    a = decode_media(media["mp4"])
    b = decode_media(media["mp4"].read_bytes())
    with open(media["mp4"], "rb") as f:
        c = decode_media(f)
        assert not f.closed  # the caller's file object stays the caller's
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.frames, c.frames)
    np.testing.assert_array_equal(a.audio, b.audio)


@pytest.mark.parametrize("key", ["wav48", "wav8"])
def test_audio_is_resampled_to_16k(media, key):
    wave = load_audio(media[key])
    assert wave.dtype == np.float32 and wave.shape == (32000,)
    assert 0.45 < np.abs(wave[1000:-1000]).max() < 0.55
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 2  # the tone keeps its pitch


def test_channels_are_averaged(media):
    wave = load_audio(media["six"])
    expected = 0.5 * sum(1 / (c + 1) for c in range(6)) / 6  # mean of the six channel amplitudes
    assert abs(np.abs(wave[1000:-1000]).max() - expected) < 0.01


def test_no_audio_gives_none_or_a_clear_error(media):
    out = decode_media(media["noaudio"])
    assert out.audio is None and out.frames is not None
    with pytest.raises(MediaDecodingError, match="noaudio.mp4.*no audio stream"):
        decode_media(media["noaudio"], require_audio=True)
    with pytest.raises(MediaDecodingError, match="tone.wav.*no video stream"):
        decode_media(media["audio_only"], require_video=True)


def test_short_clip_is_padded_and_reported(media):
    clips, starts = decode_clips(media["short"], num_clips=1, clip_duration=4.0)
    c = clips[0]
    assert c.frames.shape[0] == 32 and c.audio.shape == (64000,)
    assert c.num_padded_frames >= 29 and c.num_padded_samples > 50000
    np.testing.assert_array_equal(c.frames[-1], c.frames[3])  # padding repeats the last real frame


def test_odd_size_and_grayscale(media):
    assert decode_media(media["odd"]).frames.shape == (8, 143, 175, 3)
    gray = decode_media(media["gray"]).frames
    assert gray.shape == (8, 48, 64, 3)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])


def test_variable_frame_rate_uses_timestamps(tmp_path):
    # frames shown at irregular times; frame i has grey level 20 * i (lossless codec, so exact)
    times = [0.0, 0.05, 0.3, 0.32, 0.7, 0.95]
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=1000)
        s.width, s.height, s.pix_fmt = 32, 32, "bgr0"
        s.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, t in enumerate(times):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            f.pts, f.time_base = int(t * 1000), fractions.Fraction(1, 1000)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with MediaReader(path) as r:
        out = r.read(frame_times=np.arange(8) / 8)
    levels = out.frames[:, 0, 0, 0] // 20
    expected = [max(i for i, t in enumerate(times) if t <= k / 8 + 1e-6) for k in range(8)]
    assert levels.tolist() == expected


def test_rotation_is_applied():
    frame = np.zeros((2, 3, 3), np.uint8)
    assert _rotate(frame, 90).shape == (3, 2, 3) and _rotate(frame, -90).shape == (3, 2, 3)
    assert _rotate(frame, 180).shape == (2, 3, 3) and _rotate(frame, 0) is frame


def test_clip_starts_are_uniform():
    assert clip_starts(10.0, 4.0, 1) == [0.0]
    assert clip_starts(10.0, 4.0, 3) == [0.0, 3.0, 6.0]
    assert clip_starts(2.0, 4.0, 2) == [0.0, 0.0]


def test_resample_audio_keeps_length_and_pitch():
    t = np.arange(48000) / 48000
    out = resample_audio(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 48000, 16000)
    assert out.shape == (16000,) and out.dtype == np.float32
    assert abs(np.argmax(np.abs(np.fft.rfft(out))) - 1000) <= 1


@pytest.mark.parametrize(
    "key, reason",
    [("empty", "empty"), ("text", "not a readable media file"), ("truncated", "not a readable media file")],
)
def test_bad_files_raise_value_errors_naming_the_file(media, key, reason):
    with pytest.raises(ValueError, match=reason) as info:
        decode_media(media[key])
    assert media[key].name in str(info.value) and "Traceback" not in str(info.value)


def test_missing_path_and_bad_objects(media):
    missing = media["dir"] / "nope.mp4"
    with pytest.raises(MediaNotFoundError, match="nope.mp4.*no such file") as info:
        decode_media(missing)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(MediaDecodingError, match="bytes: 0 bytes"):
        decode_media(b"")
    with pytest.raises(MediaDecodingError, match="is a directory"):
        decode_media(media["dir"])
    with pytest.raises(MediaDecodingError, match="expected a path"):
        decode_media(12345)


def test_no_open_files_leak(media):
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("needs /proc/self/fd")
    before = len(os.listdir(fd_dir))
    for _ in range(3):
        decode_media(media["mp4"], duration=0.5)
        decode_media(io.BytesIO(media["avi"].read_bytes()), duration=0.5)
        for key in ("empty", "text", "truncated"):
            with pytest.raises(ValueError):
                decode_media(media[key])
        with pytest.raises(ValueError):
            decode_media(media["noaudio"], require_audio=True)
    assert len(os.listdir(fd_dir)) <= before


def _write_h264(path, seconds=4.0, fps=25, x264="bframes=3:b-adapt=0:keyint=25:min-keyint=25:scenecut=0",
                audio=True, size=(64, 48)):
    """An h264 (+ AAC, interleaved) clip with B-frames and an IDR frame every second; every frame differs."""
    width, height = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"x264-params": x264})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        aus = out.add_stream("aac", rate=48000, layout="stereo") if audio else None
        n, sent = int(round(seconds * fps)), 0
        for i in range(n):
            rgb = moving_square_frame(i, n, width, height)
            rgb[..., 2] = (i * 9) % 256  # a different blue level per frame: a wrong pick shows
            for p in vs.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(p)
            while aus is not None and sent < (i + 1) / fps * 48000:
                t = (np.arange(1024) + sent) / 48000
                wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(np.stack([wave, 0.5 * wave]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, sent
                frame.time_base = fractions.Fraction(1, 48000)
                for p in aus.encode(frame):
                    out.mux(p)
                sent += 1024
        for stream in (vs, aus):
            for p in (stream.encode() if stream is not None else []):
                out.mux(p)
    return path


def _same_decoding(a, b) -> bool:
    return (
        np.array_equal(a.frames, b.frames)
        and np.array_equal(a.source_frame_times, b.source_frame_times, equal_nan=True)
        and a.num_padded_frames == b.num_padded_frames
        and ((a.audio is None and b.audio is None) or np.array_equal(a.audio, b.audio))
        and a.num_padded_samples == b.num_padded_samples
    )


def _windows(duration):
    starts = [0.0, 0.5, 1.0, 1.01, 1.3, 2.04, duration - 4.0, duration - 1.0, duration + 0.5]
    return [(s, fps, length) for s in starts for fps, length in ((8.0, 4.0), (8.0, 1.0), (30.0, 1.5))]


def test_skipping_unneeded_h264_frames_changes_nothing(tmp_path):
    """The fast path (non-reference frames no requested time shows are not decoded; decoding starts at the last IDR
    frame before the window) returns exactly the frames, times, padding and audio of a full decode."""
    path = _write_h264(tmp_path / "bframes.mp4", seconds=6.0)
    nonref = pruned = 0
    for start, fps, length in _windows(6.0):
        times = max(start, 0.0) + np.arange(int(length * fps)) / fps
        window = (max(start, 0.0), max(start, 0.0) + length)
        with MediaReader(path) as r:
            fast = r.read(frame_times=times, audio_window=window)
        with MediaReader(path, skip_unneeded_frames=False) as r:
            full = r.read(frame_times=times, audio_window=window)
        assert _same_decoding(fast, full), (start, fps, length)
        assert not fast.extra.get("decode_restarted")
        assert full.extra["nonref_packets"] == full.extra["pruned_packets"] == 0
        nonref += fast.extra["nonref_packets"]
        pruned += fast.extra["pruned_packets"]
    assert nonref > 100 and pruned > 0  # the fast path really ran
    # the frame on the 8 fps grid is the native frame shown then (blue level 9 * index)
    with MediaReader(path) as r:
        out = r.read(frame_times=2.0 + np.arange(16) / 8)
    native = np.floor((2.0 + np.arange(16) / 8) * 25 + 1e-6).astype(int)
    assert np.abs(out.frames[:, 0, 0, 2].astype(int) - (native * 9) % 256).max() <= 3


@pytest.mark.parametrize("x264", ["bframes=8:b-adapt=2:b-pyramid=normal:keyint=40", "bframes=3:open-gop=1:keyint=30",
                                  "bframes=0:keyint=20:ref=3"])
def test_skipping_matches_full_decode_for_other_gop_layouts(tmp_path, x264):
    path = _write_h264(tmp_path / "gop.mkv", seconds=5.0, fps=30, x264=x264, audio=False)
    for start in (0.0, 0.9, 1.45, 2.2, 4.5):
        times = start + np.arange(24) / 8
        with MediaReader(path) as r:
            fast = r.read(frame_times=times)
        with MediaReader(path, skip_unneeded_frames=False) as r:
            full = r.read(frame_times=times)
        assert _same_decoding(fast, full), (x264, start)


def test_a_restart_without_skipping_and_a_second_read_decode_the_same(tmp_path, monkeypatch):
    from transformers_xkd import decoding_xkd

    path = _write_h264(tmp_path / "restart.mp4", seconds=3.0)
    times, window = 1.2 + np.arange(8) / 8, (1.2, 2.2)
    with MediaReader(path, skip_unneeded_frames=False) as r:
        full = r.read(frame_times=times, audio_window=window)
    with MediaReader(path) as r:  # the same reader twice: each read decodes as on a fresh open
        assert _same_decoding(r.read(frame_times=times, audio_window=window), full)
        assert _same_decoding(r.read(frame_times=times, audio_window=window), full)
    original = MediaReader._read_pass

    def unsafe_once(self, *args):
        if args[-1]:  # the skipping pass: pretend the stream broke an assumption after skipping
            original(self, *args)
            raise decoding_xkd._RestartWithoutSkipping()
        return original(self, *args)

    monkeypatch.setattr(MediaReader, "_read_pass", unsafe_once)
    with open(path, "rb") as f:  # a file object is opened again from where it was
        out = MediaReader(f).read(frame_times=times, audio_window=window)
    assert out.extra["decode_restarted"] and _same_decoding(out, full)


def test_no_skipping_where_time_stamps_are_made_up(media):
    with MediaReader(media["avi"]) as r:  # AVI stores no presentation times; mpeg4 is not skipped anyway
        assert r.read(frame_times=np.arange(8) / 8).extra["nonref_packets"] == 0


# ---- real clips (XKD_REAL_MEDIA) ------------------------------------------------------------------------------
def test_real_megamind_skips_its_bad_ac3_packet(real_media):
    out = decode_media(real_media / "video" / "Megamind.avi", duration=2.0)
    assert out.skipped_packets >= 1
    assert out.frames.shape == (16, 528, 720, 3) and out.audio.shape == (32000,)
    assert np.abs(out.audio).max() > 0.01


def test_real_files_decode_with_durations(real_media):
    b = decode_media(real_media / "video" / "b.mp4")  # moov at the end
    assert b.frames.shape == (40, 270, 480, 3) and abs(b.info.video_duration - 5.0) < 0.1
    assert moov_at_end(real_media / "video" / "b.mp4")
    world = MediaReader(real_media / "video" / "world.mp4")
    with world:
        assert abs(world.info.audio_duration - 30.5) < 0.1 and world.info.native_sampling_rate == 48000
    for name in ("audio/cate_blanch.mp3", "audio/cantina.wav", "audio/digits/0.wav", "video/b.avi"):
        wave = load_audio(real_media / name)
        assert wave.ndim == 1 and wave.size > 8000 and np.isfinite(wave).all()


def test_real_h264_files_decode_the_same_with_skipping(real_media):
    for name in ("b.mp4", "world.mp4"):
        path = real_media / "video" / name
        with MediaReader(path) as r:
            duration = min(r.info.video_duration, r.info.audio_duration)
        for start in np.linspace(0.0, duration - 4.0, 4):
            times, window = start + np.arange(32) / 8, (start, start + 4.0)
            with MediaReader(path) as r:
                fast = r.read(frame_times=times, audio_window=window)
            with MediaReader(path, skip_unneeded_frames=False) as r:
                full = r.read(frame_times=times, audio_window=window)
            assert _same_decoding(fast, full), (name, start)
