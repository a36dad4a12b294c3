"""XKDProcessor (issue 3): one call on a file with sound gives both inputs from the same window."""

import json

import numpy as np
import pytest
import torch

from media_utils import write_media
from transformers_xkd.decoding_xkd import MediaDecodingError
from transformers_xkd.feature_extraction_xkd import XKDFeatureExtractor
from transformers_xkd.processing_xkd import XKDProcessor
from transformers_xkd.video_processing_xkd import XKDVideoProcessor


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("proc")
    return {"av": write_media(d / "av.mp4", duration=5.0, fps=10), "mute": write_media(d / "mute.mp4", audio=False, duration=1.0)}


def test_one_call_gives_both_inputs_from_the_same_window(clip):
    proc = XKDProcessor()
    out = proc(str(clip["av"]), return_metadata=True)
    assert out["pixel_values"].shape == (1, 32, 3, 112, 112) and out["input_values"].shape == (1, 448, 80)
    # identical to the two processors run separately on the same 4 s window
    torch.testing.assert_close(out["pixel_values"], XKDVideoProcessor()(str(clip["av"]))["pixel_values"])
    torch.testing.assert_close(out["input_values"], XKDFeatureExtractor()(str(clip["av"]), return_tensors="pt")["input_values"])
    clips = proc([str(clip["av"])] * 2, num_clips=2, return_metadata=True)
    assert clips["pixel_values"].shape == (2, 2, 32, 3, 112, 112) and clips["input_values"].shape == (2, 2, 448, 80)
    start = clips["video_metadata"][0]["clip_starts"][1]
    assert start == pytest.approx(1.0, abs=0.05)  # 5 s file, 4 s clips: the second clip ends at the end
    # the second clip's audio is the waveform of [start, start + 4 s)
    from transformers_xkd.decoding_xkd import load_audio

    wave = load_audio(clip["av"], start=start, duration=4.0)
    ref = XKDFeatureExtractor()(wave, sampling_rate=16000, return_tensors="pt")["input_values"][0]
    torch.testing.assert_close(clips["input_values"][0, 1], ref, atol=1e-4, rtol=0)


def test_separate_inputs_and_numpy(clip):
    proc = XKDProcessor()
    frames = np.zeros((32, 40, 40, 3), np.uint8)
    out = proc(videos=frames, audio=np.zeros(64000, np.float32), sampling_rate=16000, return_tensors="np")
    assert out["pixel_values"].shape == (1, 32, 3, 112, 112) and isinstance(out["input_values"], np.ndarray)
    with pytest.raises(ValueError, match="videos=.*audio="):
        proc()


def test_video_without_audio_is_named(clip):
    with pytest.raises(MediaDecodingError, match="mute.mp4.*no audio stream"):
        XKDProcessor()(str(clip["mute"]))


def test_save_load(tmp_path):
    proc = XKDProcessor(XKDVideoProcessor(num_clips=3), XKDFeatureExtractor(num_clips=3))
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["video_processor"]["num_clips"] == 3 and "mel_filters" not in saved["feature_extractor"]
    loaded = XKDProcessor.from_pretrained(tmp_path)
    assert loaded.video_processor.to_dict() == proc.video_processor.to_dict()
    assert loaded.feature_extractor.to_dict() == proc.feature_extractor.to_dict()
    with pytest.raises(TypeError, match="feature_extractor must be an XKDFeatureExtractor"):
        XKDProcessor(XKDVideoProcessor(), XKDVideoProcessor())


def test_real_av_files(real_media):
    out = XKDProcessor()([str(real_media / "video" / "b.mp4"), str(real_media / "video" / "Megamind.avi")])
    assert out["pixel_values"].shape == (2, 32, 3, 112, 112) and out["input_values"].shape == (2, 448, 80)
    with pytest.raises(MediaDecodingError, match="muted_b.mp4.*no audio"):
        XKDProcessor()(str(real_media / "video" / "muted_b.mp4"))


# --- issue 16.3 / 11.6 / 12.6 / 17.3: keywords, model configs, validation, conventions, one read --------------------
TINY_VIDEO_TOWER = dict(image_size=32, num_frames=8, tubelet_size=4, patch_size=16, hidden_size=32,
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
TINY_AUDIO_TOWER = dict(num_mel_bins=16, max_length=64, frequency_patch_size=4, time_patch_size=16, hidden_size=32,
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)

# what XKDProcessor().save_pretrained wrote before the clip layer (package version 0.1.0, commit ad70307)
OLD_VIDEO_CONFIG = {
    "auto_map": {"AutoVideoProcessor": "video_processing_xkd.XKDVideoProcessor"}, "crop_size": {"height": 112,
    "width": 112}, "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True, "fps": 8.0,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "num_clips": 1, "num_frames": 32,
    "resample": 2, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 128},
    "video_processor_type": "XKDVideoProcessor",
}
OLD_AUDIO_CONFIG = {
    "auto_map": {"AutoFeatureExtractor": "feature_extraction_xkd.XKDFeatureExtractor"}, "clip_duration": 4.0,
    "compute_dtype": "mixed", "do_normalize": True, "feature_extractor_type": "XKDFeatureExtractor",
    "feature_size": 80, "hop_length": 143, "max_frequency": 8000.0, "mean": -5.3688107, "min_frequency": 0.0,
    "n_fft": 1024, "num_clips": 1, "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False,
    "sampling_rate": 16000, "std": 4.410007,
}


def test_unknown_keywords_raise_naming_the_close_field():
    with pytest.raises(TypeError, match=r"'num_mel_bins' \(did you mean 'feature_size'\?\)") as info:
        XKDFeatureExtractor(num_mel_bins=16, max_length=64)
    assert "'max_length' (did you mean 'clip_duration" in str(info.value)
    with pytest.raises(TypeError, match=r"'hop_lenght' \(did you mean 'hop_length'\?\)"):
        XKDFeatureExtractor(hop_lenght=100)
    with pytest.raises(TypeError, match=r"'image_size' \(did you mean 'crop_size'\?\)"):
        XKDVideoProcessor(image_size=32)
    with pytest.raises(TypeError, match=r"'num_frame' \(did you mean 'num_frames'\?\)"):
        XKDVideoProcessor(num_frame=8)
    with pytest.raises(TypeError, match=r"'crop_sise' \(did you mean 'crop_size'\?\)"):
        XKDVideoProcessor()(np.zeros((4, 8, 8, 3), np.uint8), crop_sise=8)
    with pytest.raises(TypeError, match=r"'sample_rate' \(did you mean 'sampling_rate'\?\)"):
        XKDFeatureExtractor()(np.zeros(2000, np.float32), sample_rate=8000)
    with pytest.raises(TypeError, match="video_kwarg"):
        XKDProcessor.from_model_config(None, video_kwarg={})


def test_from_model_config_matches_the_model(clip):
    from transformers_xkd import XKDAudioConfig, XKDAudioModel, XKDConfig, XKDVideoConfig, XKDVideoModel

    # the released configs give exactly the released processors (4 s, 448 x 80, 32 x 112 x 112 from 128)
    assert XKDFeatureExtractor.from_model_config(XKDAudioConfig()).to_dict() == XKDFeatureExtractor().to_dict()
    assert XKDVideoProcessor.from_model_config(XKDVideoConfig()).to_dict() == XKDVideoProcessor().to_dict()
    config = XKDConfig(video_config=dict(TINY_VIDEO_TOWER), audio_config=dict(TINY_AUDIO_TOWER))
    proc = XKDProcessor.from_model_config(config)
    fe, vp = proc.feature_extractor, proc.video_processor
    # paired windows: the audio clip is the video clip (1 s), with the hop that gives 64 frames over it
    assert (fe.feature_size, fe.num_frames, fe.clip_duration, fe.hop_length) == (16, 64, 1.0, 253)
    alone = XKDFeatureExtractor.from_model_config(config)  # on its own: the shortest clip at the released hop
    assert (alone.num_frames, alone.clip_duration, alone.hop_length) == (64, 63 * 143 / 16000, 143)
    assert (vp.num_frames, vp.crop_size, vp.size) == (8, {"height": 32, "width": 32}, {"shortest_edge": 36})
    out = proc(str(clip["av"]))
    assert out["pixel_values"].shape == (1, 8, 3, 32, 32) and out["input_values"].shape == (1, 64, 16)
    with torch.no_grad():  # the towers take them as they are
        video = XKDVideoModel(XKDVideoConfig(**TINY_VIDEO_TOWER)).eval()(out["pixel_values"])
        audio = XKDAudioModel(XKDAudioConfig(**TINY_AUDIO_TOWER)).eval()(out["input_values"])
    assert video.pooler_output.shape == (1, 32) and audio.pooler_output.shape == (1, 32)
    with pytest.raises(ValueError, match="gives 17 frames.*max_length=64"):
        XKDFeatureExtractor.from_model_config(config, clip_duration=0.15)
    with pytest.raises(ValueError, match="XKDAudioConfig or XKDConfig"):
        XKDFeatureExtractor.from_model_config(XKDVideoConfig())


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: XKDVideoProcessor(fps=0), "fps must be a positive"),
        (lambda: XKDVideoProcessor(num_frames=-1), "num_frames must be a positive integer"),
        (lambda: XKDVideoProcessor(num_clips=0), "num_clips must be an integer >= 1"),
        (lambda: XKDVideoProcessor(size={"longest": 3}), "size: expected the keys"),
        (lambda: XKDVideoProcessor(crop_size={"height": 0, "width": 3}), r"crop_size\['height'\]"),
        (lambda: XKDVideoProcessor(image_mean=[0.5, 0.5]), "image_mean: expected 3 values"),
        (lambda: XKDVideoProcessor(image_std=[0.2, 0.0, 0.2]), "image_std: every value must be positive"),
        (lambda: XKDVideoProcessor(rescale_factor=-1), "rescale_factor must be a positive"),
        (lambda: XKDFeatureExtractor(hop_length=0), "hop_length must be positive"),
        (lambda: XKDFeatureExtractor(n_fft=512.5), "n_fft must be a whole number"),
        (lambda: XKDFeatureExtractor(sampling_rate="16k"), "sampling_rate must be a number"),
        (lambda: XKDFeatureExtractor(max_frequency=9000), "max_frequency"),
        (lambda: XKDFeatureExtractor(std=0.0), "std must be non-zero"),
        (lambda: XKDFeatureExtractor(clip_duration=float("inf")), "clip_duration must be finite"),
        (lambda: XKDFeatureExtractor()(np.zeros(4000, np.float32), sampling_rate=-8000), "sampling_rate must be"),
        (lambda: XKDVideoProcessor()(np.zeros((4, 8, 8, 3), np.uint8), fps=0), "fps must be a positive"),
        (lambda: XKDVideoProcessor()(np.zeros((4, 8, 8, 3), np.uint8), video_fps=-3), "video_fps must be a pos"),
        (lambda: XKDVideoProcessor()(np.zeros((4, 8, 8, 3), np.uint8), return_tensors="tf"), "return_tensors"),
    ],
)
def test_arguments_are_validated_naming_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_ambiguous_media_inputs_are_refused_explicitly():
    vp, fe = XKDVideoProcessor(), XKDFeatureExtractor()
    with pytest.raises(ValueError, match="video: integer frames must be uint8.*int16"):
        vp(np.zeros((4, 8, 8, 3), np.int16))
    with pytest.raises(ValueError, match="video: integer frames must be uint8.*int64"):
        vp(torch.zeros(4, 8, 8, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"video: float frames must be in \[0, 1\] or \[0, 255\]"):
        vp(np.full((4, 8, 8, 3), -0.5, np.float32))  # already normalised
    stereo = np.zeros((64000, 2), np.float32)
    with pytest.raises(ValueError, match=r"raw_audio: got shape \(64000, 2\).*channels-last"):
        fe(stereo, sampling_rate=16000)
    with pytest.raises(ValueError, match=r"waveform 0: got shape \(64000, 2\).*channels-last"):
        fe([stereo], sampling_rate=16000)
    with pytest.raises(ValueError, match="waveform: the waveform peaks at 12000.*int16"):
        fe(np.full(4000, 12000.0, np.float32), sampling_rate=16000)
    # a (batch, samples) array is still a batch, and a waveform slightly over full scale is still audio
    assert fe(np.zeros((2, 64000), np.float32), sampling_rate=16000, return_tensors="pt")["input_values"].shape == (
        2, 448, 80)
    assert fe(np.full(4000, 1.5, np.float32), sampling_rate=16000, return_tensors="pt")["input_values"].isfinite().all()


def test_the_processor_reads_once_and_calls_the_public_entry_points(clip, monkeypatch):
    from transformers_xkd import clips_xkd
    from transformers_xkd.clips_xkd import ClipSpec, read_clips

    clips = read_clips(str(clip["av"]), ClipSpec(), 2)
    vp, fe = XKDVideoProcessor(), XKDFeatureExtractor()
    # clips read once go through each processor's own __call__, identical to giving it the file
    torch.testing.assert_close(vp(clips)["pixel_values"], vp(str(clip["av"]), num_clips=2)["pixel_values"], rtol=0,
                               atol=0)
    torch.testing.assert_close(fe(clips, return_tensors="pt")["input_values"],
                               fe(str(clip["av"]), num_clips=2, return_tensors="pt")["input_values"], rtol=0, atol=0)
    opened = []
    real_reader = clips_xkd.MediaReader

    class CountingReader(real_reader):
        def __init__(self, source, *args, **kwargs):
            opened.append(source)
            super().__init__(source, *args, **kwargs)

    monkeypatch.setattr(clips_xkd, "MediaReader", CountingReader)
    for private in ("transform", "_clips_from_source", "_clips_from_frames"):
        monkeypatch.setattr(XKDVideoProcessor, private, lambda *a, **k: pytest.fail("reached into the processor"))
    monkeypatch.setattr(XKDFeatureExtractor, "_load", lambda *a, **k: pytest.fail("reached into the extractor"))
    out = XKDProcessor()(str(clip["av"]), num_clips=2)
    assert opened == [str(clip["av"])]  # one open for both streams
    assert out["pixel_values"].shape == (1, 2, 32, 3, 112, 112) and out["input_values"].shape == (1, 2, 448, 80)


def test_transformers_conventions_auto_classes_dicts_batches_and_tensor_types(tmp_path):
    from transformers import AutoFeatureExtractor, AutoProcessor
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    proc = XKDProcessor(XKDVideoProcessor(num_frames=16, crop_size=96), XKDFeatureExtractor(feature_size=40))
    proc.save_pretrained(tmp_path)
    proc.video_processor.save_pretrained(tmp_path)
    proc.feature_extractor.save_pretrained(tmp_path)
    vp = AutoVideoProcessor.from_pretrained(tmp_path)
    fe = AutoFeatureExtractor.from_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(vp) is XKDVideoProcessor and type(fe) is XKDFeatureExtractor and type(loaded) is XKDProcessor
    assert vp.to_dict() == proc.video_processor.to_dict() and fe.to_dict() == proc.feature_extractor.to_dict()
    assert loaded.video_processor.to_dict() == vp.to_dict()
    assert XKDVideoProcessor.from_dict(vp.to_dict()).to_dict() == vp.to_dict()
    assert XKDFeatureExtractor.from_dict(fe.to_dict()).to_dict() == fe.to_dict()
    # batched tensors in, batched tensors out, as torch or numpy
    frames = torch.randint(0, 256, (2, 16, 40, 50, 3), dtype=torch.uint8)
    pt = vp(frames, return_tensors="pt")["pixel_values"]
    np_out = vp(frames.numpy(), return_tensors="np")["pixel_values"]
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 16, 3, 96, 96)
    assert isinstance(np_out, np.ndarray) and np_out.dtype == np.float32
    np.testing.assert_array_equal(np_out, pt.numpy())
    torch.testing.assert_close(pt[1], vp(frames[1])["pixel_values"][0], rtol=0, atol=0)
    waves = torch.randn(3, 64000) * 0.1
    a_pt = fe(waves, sampling_rate=16000, return_tensors="pt")["input_values"]
    a_np = fe(waves.numpy(), sampling_rate=16000, return_tensors="np")["input_values"]
    assert isinstance(a_pt, torch.Tensor) and a_pt.shape == (3, 448, 40) and isinstance(a_np, np.ndarray)
    np.testing.assert_array_equal(a_np, a_pt.numpy())
    both = loaded(videos=frames, audio=list(waves.numpy()), sampling_rate=16000, return_tensors="np")
    assert both["pixel_values"].shape == (2, 16, 3, 96, 96) and both["input_values"].shape == (3, 448, 40)


def test_folders_saved_before_the_clip_layer_still_load(tmp_path):
    from transformers import AutoFeatureExtractor, AutoProcessor
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(OLD_VIDEO_CONFIG))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(OLD_AUDIO_CONFIG))
    (tmp_path / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "processing_xkd.XKDProcessor"}, "processor_class": "XKDProcessor",
        "video_processor": dict(OLD_VIDEO_CONFIG), "feature_extractor": dict(OLD_AUDIO_CONFIG),
    }))
    vp = XKDVideoProcessor.from_pretrained(tmp_path)
    fe = XKDFeatureExtractor.from_pretrained(tmp_path)
    fresh_vp, fresh_fe = XKDVideoProcessor().to_dict(), XKDFeatureExtractor().to_dict()
    for loaded, fresh in ((vp.to_dict(), fresh_vp), (fe.to_dict(), fresh_fe)):
        assert {k: v for k, v in loaded.items() if k != "auto_map"} == fresh
    assert AutoVideoProcessor.from_pretrained(tmp_path).to_dict() == vp.to_dict()
    assert AutoFeatureExtractor.from_pretrained(tmp_path).to_dict() == fe.to_dict()
    proc = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(proc, XKDProcessor) and proc.feature_extractor.feature_size == 80
