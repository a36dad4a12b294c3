"""XKDVideoProcessor (issue 3): inputs, 8 fps sampling, resize/crop/normalise, clips, padding, bad inputs."""

import json
import logging

import numpy as np
import pytest
import torch

from media_utils import moving_square_frame, write_media
from transformers_xkd.decoding_xkd import MediaDecodingError
from transformers_xkd.video_processing_xkd import IMAGENET_MEAN, IMAGENET_STD, XKDVideoProcessor


@pytest.fixture(scope="module")
def vp():
    return XKDVideoProcessor()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vp")
    return {
        "long": write_media(d / "long.avi", duration=5.0, fps=10, audio=False),
        "short": write_media(d / "short.mp4", duration=0.3),
        "odd": write_media(d / "odd.mkv", size=(175, 143), duration=0.5, audio=False),
        "gray": write_media(d / "gray.mkv", pix_fmt="gray", duration=0.5, audio=False),
        "wav": write_media(d / "tone.wav", video=False, duration=0.5),
        "dir": d,
    }


def test_path_gives_32_frames_at_112(vp, files):
    out = vp(str(files["long"]), return_metadata=True)
    assert out["pixel_values"].shape == (1, 32, 3, 112, 112) and out["pixel_values"].dtype == torch.float32
    meta = out["video_metadata"][0]
    assert meta["padded"] is False and meta["clip_starts"] == [0.0]


def test_normalisation_of_a_constant_frame(vp):
    frames = np.full((32, 50, 60, 3), 128, np.uint8)
    out = vp(frames)["pixel_values"]
    for c in range(3):
        expected = (128 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(out[0, :, c], torch.full_like(out[0, :, c], expected), atol=1e-5, rtol=0)


def test_raw_frames_numpy_torch_pil_agree(vp):
    pil = pytest.importorskip("PIL.Image")
    frames = np.stack([moving_square_frame(i, 32, 80, 60) for i in range(32)])
    a = vp(frames)["pixel_values"]
    b = vp(torch.from_numpy(frames))["pixel_values"]
    c = vp([pil.fromarray(f) for f in frames])["pixel_values"]
    d = vp(frames.astype(np.float32) / 255.0)["pixel_values"]
    assert a.shape == (1, 32, 3, 112, 112)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(a, d, atol=1e-4, rtol=0)
    batch = vp([frames, frames[:, :50, :70]])["pixel_values"]
    assert batch.shape == (2, 32, 3, 112, 112)
    assert vp(frames[None].repeat(2, 0))["pixel_values"].shape == (2, 32, 3, 112, 112)


def test_resize_follows_pil_bilinear(vp):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (143, 175, 3), dtype=np.uint8)
    frame = np.array(pil.fromarray(frame).resize((70, 57), pil.BILINEAR).resize((175, 143), pil.BILINEAR))
    ours = vp.transform(torch.from_numpy(frame).permute(2, 0, 1)[None].float(), do_center_crop=False,
                        do_rescale=False, do_normalize=False)[0].permute(1, 2, 0).numpy()
    ref = np.asarray(pil.fromarray(frame).resize((156, 128), pil.BILINEAR)).astype(np.float32)  # short side 128
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).mean() < 1.0 and np.abs(ours - ref).max() <= 8


def test_raw_frames_are_resampled_to_8fps(vp):
    # 25 fps frames whose value is their index: the clip must hold native indices int(k / 8 * 25)
    frames = np.repeat(np.arange(100, dtype=np.uint8)[:, None, None, None], 3, axis=-1) * np.ones((1, 8, 8, 3), np.uint8)
    out = vp(frames, video_fps=25, do_resize=False, do_center_crop=False, do_normalize=False, return_metadata=True)
    picked = torch.round(out["pixel_values"][0, :, 0, 0, 0] * 255).int().tolist()
    assert picked == [int(k / 8 * 25) for k in range(32)]


def test_num_clips_and_sizes(files):
    vp = XKDVideoProcessor(num_clips=3)
    out = vp(str(files["long"]), return_metadata=True)
    assert out["pixel_values"].shape == (1, 3, 32, 3, 112, 112)
    assert out["video_metadata"][0]["clip_starts"] == pytest.approx([0.0, 0.5, 1.0])
    big = XKDVideoProcessor(size={"shortest_edge": 224}, crop_size=224)(str(files["odd"]))
    assert big["pixel_values"].shape == (1, 32, 3, 224, 224)
    assert XKDVideoProcessor()(str(files["gray"]))["pixel_values"].shape == (1, 32, 3, 112, 112)
    assert vp([str(files["long"]), str(files["odd"])])["pixel_values"].shape == (2, 3, 32, 3, 112, 112)


def test_short_video_is_padded_and_reported(vp, files, caplog):
    with caplog.at_level(logging.WARNING):
        out = vp(str(files["short"]), return_metadata=True)
    meta = out["video_metadata"][0]
    assert meta["padded"] and meta["num_padded_frames"][0] >= 29
    assert out.video_metadata is out["video_metadata"]
    assert out["pixel_values"].shape == (1, 32, 3, 112, 112)
    torch.testing.assert_close(out["pixel_values"][0, -1], out["pixel_values"][0, 5])
    assert vp(np.zeros((3, 20, 20, 3), np.uint8)).video_metadata[0]["num_padded_frames"] == [29]


def test_bad_inputs_name_the_input(vp, files):
    d = files["dir"]
    (d / "zero.mp4").write_bytes(b"")
    (d / "readme.mp4").write_text("plain text")
    data = write_media(d / "whole.mp4", duration=0.5).read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 3])
    cases = [
        (d / "zero.mp4", "empty"),
        (d / "readme.mp4", "not a readable media file"),
        (d / "cut.mp4", "not a readable media file"),
        (d / "absent.mp4", "no such file"),
        (files["wav"], "no video stream"),
    ]
    for path, reason in cases:
        with pytest.raises(MediaDecodingError, match=reason) as info:
            vp(str(path))
        assert path.name in str(info.value)
    with pytest.raises(ValueError, match="video.*NaN"):
        vp(np.full((4, 8, 8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="video.*empty"):
        vp(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="video.*dtype complex64"):
        vp(np.zeros((4, 8, 8, 3), np.complex64))
    with pytest.raises(ValueError, match="video.*shape"):
        vp(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="video 1.*dtype"):
        vp([np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 8, 8, 3), np.complex64)])


def test_save_load_round_trip(tmp_path):
    vp = XKDVideoProcessor(num_frames=16, crop_size=224, size={"shortest_edge": 256}, num_clips=3)
    vp.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["crop_size"] == {"height": 224, "width": 224} and saved["num_frames"] == 16
    loaded = XKDVideoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == vp.to_dict() and loaded.clip_duration == 2.0


def test_real_clips(vp, real_media):
    out = vp([str(real_media / "video" / "b.mp4"), str(real_media / "video" / "Megamind.avi")], return_metadata=True)
    assert out["pixel_values"].shape == (2, 32, 3, 112, 112)
    assert not any(m["padded"] for m in out["video_metadata"])
    with pytest.raises(MediaDecodingError, match="cantina.wav.*no video stream"):
        vp(str(real_media / "audio" / "cantina.wav"))
