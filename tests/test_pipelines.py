"""pipeline("video-classification") and pipeline("audio-classification") on XKD folders (issue 3), tiny models.

No torchvision, torchaudio, torchcodec or ffmpeg program is needed: the video pipeline uses XKDVideoProcessor
(registered with AutoVideoProcessor) and the audio pipeline's file reader is PyAV (install_pyav_audio_reader).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from media_utils import moov_at_end, write_media
from transformers import pipeline
from transformers_xkd import (
    XKDAudioConfig,
    XKDFeatureExtractor,
    XKDForAudioClassification,
    XKDForVideoClassification,
    XKDVideoConfig,
    XKDVideoProcessor,
)
from xkd_testers import XKDAudioModelTester, XKDVideoModelTester

VIDEO_LABELS = {0: "juggling", 1: "surfing", 2: "typing"}
AUDIO_LABELS = {0: "dog", 1: "rain", 2: "siren"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipes")
    vcfg = XKDVideoConfig(**XKDVideoModelTester().config_kwargs(), id2label=VIDEO_LABELS,
                          label2id={v: k for k, v in VIDEO_LABELS.items()})
    XKDForVideoClassification(vcfg).save_pretrained(d / "video")
    # the tiny model takes 8 frames of 32 x 32 (the pipeline asks for config.num_frames frames)
    XKDVideoProcessor(num_frames=8, size={"shortest_edge": 36}, crop_size=32).save_pretrained(d / "video")
    acfg = XKDAudioConfig(**XKDAudioModelTester().config_kwargs(), id2label=AUDIO_LABELS,
                          label2id={v: k for k, v in AUDIO_LABELS.items()})
    XKDForAudioClassification(acfg).save_pretrained(d / "audio")
    # the tiny model takes 64 frames of 16 mels: 1 + S // 143 = 64 -> S = 63 * 143 samples
    XKDFeatureExtractor(feature_size=16, clip_duration=63 * 143 / 16000).save_pretrained(d / "audio")
    media = {
        "mp4": write_media(d / "clip.mp4", duration=1.5),
        "avi": write_media(d / "clip.avi", duration=1.0),
        "wav": write_media(d / "tone.wav", video=False, sampling_rate=8000, duration=1.0),
    }
    assert moov_at_end(media["mp4"])
    return d, media


def check_labels(result, labels, k):
    assert len(result) == k
    assert all(r["label"] in labels.values() for r in result)
    assert all(0.0 <= r["score"] <= 1.0 for r in result)


def test_video_pipeline_on_paths_arrays_and_lists(folders):
    d, media = folders
    pipe = pipeline("video-classification", model=str(d / "video"))
    assert isinstance(pipe.video_processor, XKDVideoProcessor)
    check_labels(pipe(str(media["mp4"])), VIDEO_LABELS, 3)
    check_labels(pipe(np.zeros((20, 40, 50, 3), np.uint8), top_k=2), VIDEO_LABELS, 2)
    results = pipe([str(media["mp4"]), str(media["avi"])], top_k=1)
    assert len(results) == 2 and all(len(r) == 1 for r in results)


def test_audio_pipeline_on_paths_arrays_and_lists(folders):
    d, media = folders
    pipe = pipeline("audio-classification", model=str(d / "audio"))
    assert isinstance(pipe.feature_extractor, XKDFeatureExtractor)
    check_labels(pipe(str(media["mp4"])), AUDIO_LABELS, 3)  # mp4 with the index at the end
    check_labels(pipe(str(media["avi"]), top_k=1), AUDIO_LABELS, 1)
    check_labels(pipe(np.zeros(16000, np.float32)), AUDIO_LABELS, 3)
    assert len(pipe([str(media["wav"]), str(media["avi"])])) == 2


def test_pipelines_on_real_files(folders, real_media):
    d, _ = folders
    video = pipeline("video-classification", model=str(d / "video"))
    for name in ("b.mp4", "b.avi", "Megamind.avi", "muted_b.mp4"):
        check_labels(video(str(real_media / "video" / name), top_k=1), VIDEO_LABELS, 1)
    audio = pipeline("audio-classification", model=str(d / "audio"))
    for name in ("video/b.mp4", "video/Megamind.avi", "audio/cate_blanch.mp3", "audio/cantina.wav", "audio/digits/7.wav"):
        check_labels(audio(str(real_media / name), top_k=1), AUDIO_LABELS, 1)


def test_trust_remote_code_in_a_fresh_process_without_the_package(folders, tmp_path):
    d, media = folders
    saved = json.loads((d / "video" / "video_preprocessor_config.json").read_text())
    assert saved["auto_map"]["AutoVideoProcessor"] == "video_processing_xkd.XKDVideoProcessor"
    assert (d / "video" / "decoding_xkd.py").exists() and (d / "audio" / "feature_extraction_xkd.py").exists()
    # the clip layer and the log-mel kernel travel with the code that imports them
    for name in ("clips_xkd.py", "decoding_xkd.py"):
        assert (d / "video" / name).exists() and (d / "audio" / name).exists()
    assert (d / "audio" / "log_mel_xkd.py").exists()
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["transformers_xkd"] = None  # the package cannot be imported in this process
        from transformers import pipeline
        v = pipeline("video-classification", model={str(d / "video")!r}, trust_remote_code=True)
        assert type(v.video_processor).__module__.startswith("transformers_modules"), type(v.video_processor)
        print("VIDEO", v({str(media["mp4"])!r}, top_k=1)[0]["label"])
        a = pipeline("audio-classification", model={str(d / "audio")!r}, trust_remote_code=True)
        print("AUDIO", a({str(media["mp4"])!r}, top_k=1)[0]["label"])
        """
    )
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("VIDEO", "AUDIO")))
    assert lines["VIDEO"] in VIDEO_LABELS.values() and lines["AUDIO"] in AUDIO_LABELS.values()


def test_audio_pipeline_resamples_dicts_with_pyav_and_names_bad_files(folders):
    from transformers.pipelines.audio_classification import AudioClassificationPipeline

    from transformers_xkd.decoding_xkd import MediaDecodingError, resample_audio
    from transformers_xkd.feature_extraction_xkd import install_pyav_audio_reader, uninstall_pyav_audio_reader

    d, media = folders
    pipe = pipeline("audio-classification", model=str(d / "audio"))
    t = np.arange(8000) / 8000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    # an 8 kHz dict (transformers would ask for torchaudio) is resampled with PyAV, the same as resampling first
    from_dict = pipe({"raw": wave, "sampling_rate": 8000}, top_k=3)
    resampled = pipe(resample_audio(wave, 8000, 16000), top_k=3)
    assert [r["label"] for r in from_dict] == [r["label"] for r in resampled]
    np.testing.assert_allclose([r["score"] for r in from_dict], [r["score"] for r in resampled], rtol=1e-6)
    check_labels(pipe({"array": wave, "sampling_rate": 8000}), AUDIO_LABELS, 3)
    # a bad file is named by its path, not "<bytes: N bytes>"
    bad = d / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(MediaDecodingError, match="notes.wav.*not a readable media file") as info:
        pipe(str(bad))
    assert "<bytes" not in str(info.value)
    # narrow and restorable: transformers' own ffmpeg_read is left alone, its preprocess comes back, and the
    # wrapper goes on once
    from transformers.pipelines import audio_classification

    assert audio_classification.ffmpeg_read.__module__ == "transformers.pipelines.audio_classification"
    wrapped = AudioClassificationPipeline.preprocess
    assert uninstall_pyav_audio_reader() and not getattr(AudioClassificationPipeline.preprocess, "_xkd_pyav_wrapper",
                                                         False)
    assert AudioClassificationPipeline.preprocess is wrapped._xkd_original
    assert install_pyav_audio_reader() and install_pyav_audio_reader()
    assert AudioClassificationPipeline.preprocess._xkd_original is wrapped._xkd_original
