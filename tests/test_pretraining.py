"""Pretraining (issue 5): data, views, schedules, checkpoints, and the loop end to end through accelerate on a CPU.

Everything runs the tiny configuration (training/configs/tiny.yaml) on small clips that the tests write with PyAV.
The end-to-end runs are subprocesses (``accelerate launch`` or ``python training/pretrain.py``): that is how users
run it, and it keeps accelerate's process-wide state out of the test process.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from transformers_xkd import XKDConfig, XKDForPretraining, XKDModel
from transformers_xkd.pretraining import (
    DEFAULT_CONFIG,
    ClipSettings,
    FailureTracker,
    ShardedEpochSampler,
    XKDPretrainingDataset,
    XKDViewMaker,
    VideoViewSettings,
    clip_gradients_per_parameter,
    collate_clips,
    commit_checkpoint,
    ema_momentum,
    latest_checkpoint,
    learning_rate,
    list_checkpoints,
    load_config,
    released_local_video_settings,
    resolve_source,
    scan_clips,
    teacher_temperature,
    weight_decay_groups,
)
from transformers_xkd.pretraining.augment import audio_random_resize_crop, sample_resized_crop_boxes
from transformers_xkd.pretraining.trainer import DecodeFailureError, clip_settings

from media_utils import write_media

av = pytest.importorskip("av")
pytest.importorskip("kornia")
pytest.importorskip("accelerate")

REPO = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ACCELERATE = str(pathlib.Path(sys.executable).parent / "accelerate")
TINY = str(REPO / "training" / "configs" / "tiny.yaml")
STEPS = 4  # the straight run; the resumed run crashes after step 2's checkpoint and continues to 4


# ----------------------------------------------------------------------------------------------------------------
# Media written by the tests
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> pathlib.Path:
    """6 good clips (one in a sub-folder, one portrait), one corrupt file, one without audio, one too short."""
    root = tmp_path_factory.mktemp("xkd_media")
    (root / "sub").mkdir()
    for i in range(5):  # 2 s, 64x48, 25 fps mpeg4 + AAC; a different tone per clip
        write_media(root / f"clip{i}.mp4", duration=2.0, freq=220.0 + 50 * i)
    write_media(root / "sub" / "portrait.mp4", size=(48, 64), freq=600.0)
    (root / "corrupt.mp4").write_bytes(b"this is not a video file" * 20)
    write_media(root / "silent.mp4", audio=False)
    write_media(root / "short.mp4", duration=0.75)
    return root


def tiny_settings(config=None) -> tuple[dict, XKDConfig, ClipSettings]:
    config = config or load_config(TINY)
    from transformers_xkd.pretraining import build_model_config

    model_config = build_model_config(config)
    return config, model_config, clip_settings(config, model_config)


# ----------------------------------------------------------------------------------------------------------------
# Schedules (formulas at chosen steps)
# ----------------------------------------------------------------------------------------------------------------


def test_learning_rate_warmup_then_cosine():
    base, warm, total = 1e-4, 30, 800
    assert learning_rate(0, base, warm, total) == 0.0
    assert learning_rate(15, base, warm, total) == pytest.approx(base * 15 / 29)  # linspace(0, base, 30)[15]
    assert learning_rate(29, base, warm, total) == pytest.approx(base)
    assert learning_rate(30, base, warm, total) == pytest.approx(base)  # cosine starts at the peak
    k, big_k = 415 - 30, total - 30
    assert learning_rate(415, base, warm, total) == pytest.approx(0.5 * base * (1 + math.cos(math.pi * k / big_k)))
    assert learning_rate(total, base, warm, total, final_lr=1e-6) == pytest.approx(1e-6)
    assert learning_rate(total + 50, base, warm, total) == pytest.approx(0.0, abs=1e-12)


def test_ema_momentum_cosine_0997_to_1():
    total = 1000
    assert ema_momentum(0, total) == pytest.approx(0.997)
    assert ema_momentum(total, total) == pytest.approx(1.0)
    for step in (1, 250, 500, 999):
        expected = 1 + 0.5 * (0.997 - 1) * (1 + math.cos(math.pi * step / total))  # released: per iteration, 0.997 -> 1
        assert ema_momentum(step, total) == pytest.approx(expected, abs=1e-12)
    assert ema_momentum(500, total) == pytest.approx(0.9985)


def test_teacher_temperature_linspace_then_constant():
    # MAS audio: 0.04 -> 0.06 over 30 epochs, per epoch, np.linspace
    expected = np.concatenate([np.linspace(0.04, 0.06, 30), np.full(770, 0.06)])
    for epoch in (0, 1, 14, 29, 30, 799):
        assert teacher_temperature(epoch, 0.04, 0.06, 30) == pytest.approx(expected[epoch])
    assert teacher_temperature(5, 0.07, 0.07, 30) == pytest.approx(0.07)


def test_weight_decay_groups_exclude_teachers_and_frozen_weight_g(tiny_xkd_config):
    model = XKDForPretraining(tiny_xkd_config("xkd"))
    no_decay, decay = weight_decay_groups(model, 0.3)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.3
    ids = {id(p) for g in (no_decay, decay) for p in g["params"]}
    teacher_ids = {id(p) for m in (model.video_model, model.audio_model, model.video_teacher_head,
                                   model.audio_teacher_head) for p in m.parameters()}
    assert not ids & teacher_ids
    assert id(model.video_student_head.last_layer.weight_g) not in ids
    assert all(p.ndim <= 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith(".bias") and p.ndim > 1 for p in decay["params"])
    assert id(model.video_student.embeddings.cls_token) in {id(p) for p in decay["params"]}
    assert id(model.video_student_head.last_layer.weight_v) in {id(p) for p in decay["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids == trainable


def test_per_parameter_clipping():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2, 2))
    a.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5 -> clipped to 0.3
    b.grad = torch.full((2, 2), 0.05)  # norm 0.1 -> untouched
    norms = clip_gradients_per_parameter([a, b], 0.3)
    assert norms.tolist() == pytest.approx([5.0, 0.1])
    assert a.grad.norm().item() == pytest.approx(0.3, rel=1e-5)
    assert torch.equal(b.grad, torch.full((2, 2), 0.05))


def test_collapse_warning_after_patience():
    from transformers_xkd.pretraining.trainer import CollapseMonitor

    monitor = CollapseMonitor(output_size=8192, patience=3, entropy_fraction=0.02, kl_threshold=1e-4)
    healthy = {"video_teacher_entropy": 5.0, "audio_teacher_entropy": 5.0, "video_teacher_batch_entropy": 8.0,
               "audio_teacher_batch_entropy": 8.0, "video_teacher_spread": 0.5, "audio_teacher_spread": 0.5}
    collapsed = dict(healthy, video_teacher_batch_entropy=1e-3)
    assert [monitor.check(v) for v in (collapsed, collapsed, healthy, collapsed, collapsed)] == [None] * 5
    warning = monitor.check(collapsed)  # third in a row
    assert warning and "dominant collapse" in warning and "video_teacher_batch_entropy" in warning
    assert monitor.check(collapsed) is None  # warned once
    # the KL is no longer a collapse sign (it cannot reach 0 with the affine-free LayerNorm)
    monitor = CollapseMonitor(output_size=8192, patience=1, entropy_fraction=0.02, kl_threshold=1e-4)
    assert monitor.check(dict(healthy, audio_teacher_student_kl=0.0)) is None
    assert "audio_teacher_spread" in monitor.check(dict(healthy, audio_teacher_spread=0.01))


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def test_scan_keeps_only_clips_with_both_streams_long_enough(media):
    source = resolve_source(str(media))
    assert len(source.items) == 9  # recursive
    report = scan_clips(source, min_duration=1.1, num_workers=2)
    kept = sorted(os.path.basename(p) for p in report.kept)
    assert kept == ["clip0.mp4", "clip1.mp4", "clip2.mp4", "clip3.mp4", "clip4.mp4", "portrait.mp4"]
    reasons = report.dropped
    assert sum(reasons.values()) == 3
    assert any(r.startswith("unreadable") for r in reasons)
    assert reasons.get("no audio stream") == 1
    assert any("not longer than 1.1 s" in r for r in reasons)
    assert "kept 6 of 9" in report.summary() and "corrupt.mp4" in report.summary()


def test_list_and_datasets_sources(media, tmp_path):
    txt = tmp_path / "list.txt"
    txt.write_text(f"{media}/clip0.mp4 label\n# comment\n{media}/clip1.mp4\n")
    assert resolve_source(str(txt)).items == [f"{media}/clip0.mp4", f"{media}/clip1.mp4"]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(f"label,path\na,{media}/clip2.mp4\n")
    assert resolve_source(str(csv_path)).items == [f"{media}/clip2.mp4"]

    import datasets

    ds = datasets.Dataset.from_dict({"video": [f"{media}/clip0.mp4", f"{media}/corrupt.mp4"]})
    ds = ds.cast_column("video", datasets.Video())  # decoding would need torchcodec: the source must undo it
    ds.save_to_disk(str(tmp_path / "ds"))
    source = resolve_source(str(tmp_path / "ds"))
    assert source.column == "video" and source.items == [0, 1]
    # save_to_disk embeds the files' bytes in the Video column: the source hands those to the decoder
    assert source.media(0) == pathlib.Path(f"{media}/clip0.mp4").read_bytes()
    report = scan_clips(source, num_workers=1)
    assert report.kept == [0] and sum(report.dropped.values()) == 1

    raw = datasets.Dataset.from_dict({"bytes": [pathlib.Path(f"{media}/clip3.mp4").read_bytes()]})
    raw.save_to_disk(str(tmp_path / "ds_bytes"))
    assert scan_clips(resolve_source(str(tmp_path / "ds_bytes")), num_workers=1).kept == [0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        resolve_source(str(tmp_path / "empty"))


def test_dataset_sample_shapes_and_determinism(media):
    _, model_config, settings = tiny_settings()
    source = resolve_source(str(media))
    report = scan_clips(source, num_workers=2)
    dataset = XKDPretrainingDataset(source, report.kept, settings, seed=3)
    sample = dataset[(0, 0)]
    assert sample["video"].dtype == torch.uint8 and sample["video"].shape[:2] == (8, 3)
    assert min(sample["video"].shape[-2:]) == settings.short_side
    assert sample["input_values"].shape == (64, 16)
    assert sample["local_input_values"].shape == (1, 32, 16)
    assert 0 <= int(sample["local_video_starts"][0]) <= 8 - 4
    again = dataset[(0, 0)]
    assert torch.equal(sample["video"], again["video"]) and torch.equal(sample["input_values"], again["input_values"])
    other_epoch = dataset[(1, 0)]
    assert not torch.equal(sample["input_values"], other_epoch["input_values"])  # new volume jitter / window


def _test_frames(t, h, w, seed=0):
    """Smooth gradients + moving edges + noise: every kind of content the resize filter sees."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        base = np.stack([xx * 255 / w, yy * 255 / h, ((xx + 3 * i) % 40 < 20) * 255.0], axis=-1)
        frames[i] = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    return frames


@pytest.mark.parametrize("size", [(270, 480), (528, 720), (480, 854), (143, 175), (200, 96), (64, 48), (112, 150)])
def test_resize_short_side_uint8_path_is_within_one_grey_level_of_float(size):
    from transformers_xkd.pretraining.data import resize_short_side

    h, w = size
    frames = _test_frames(4, h, w, seed=h)
    fast = resize_short_side(frames, 112)
    reference = resize_short_side(frames, 112, exact_float=True)
    assert fast.dtype == torch.uint8 and fast.shape == reference.shape and fast.is_contiguous()
    assert min(fast.shape[-2:]) == 112 and fast.shape[:2] == (4, 3)
    assert (fast.int() - reference.int()).abs().max().item() <= 1
    # the float reference is a plain torch computation: bilinear, antialiased, rounded once
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=tuple(reference.shape[-2:]), mode="bilinear",
        align_corners=False, antialias=True,
    ).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(reference, expected)


def test_resize_short_side_matches_pil_bilinear_like_the_released_code():
    pil = pytest.importorskip("PIL.Image")
    from transformers_xkd.pretraining.data import resize_short_side

    frames = _test_frames(2, 270, 480, seed=7)
    fast = resize_short_side(frames, 112)
    h, w = fast.shape[-2:]
    released = np.stack([np.asarray(pil.fromarray(f).resize((w, h), pil.BILINEAR)) for f in frames])
    diff = np.abs(fast.permute(0, 2, 3, 1).numpy().astype(int) - released.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_released_audio_sizes():
    config = load_config(str(REPO / "training" / "configs" / "xkd.yaml"))
    _, model_config, settings = tiny_settings(config)
    assert (settings.num_frames, settings.num_samples, settings.local_num_samples) == (32, 64000, 16000)
    assert 1 + settings.num_samples // settings.hop_length == 448
    assert 1 + settings.local_num_samples // settings.hop_length == 112
    mel = torch.randn(112, 80)
    out = audio_random_resize_crop(mel, np.random.default_rng(0))
    assert out.shape == (112, 80)


def test_corrupt_file_is_skipped_and_counted(media):
    _, _, settings = tiny_settings()
    source = resolve_source(str(media))
    items = [str(media / "corrupt.mp4"), str(media / "clip0.mp4"), str(media / "clip1.mp4")]
    dataset = XKDPretrainingDataset(source, items, settings, seed=0)
    sample = dataset[(0, 0)]  # item 0 is corrupt: replaced by another item, reported
    assert len(sample["failed"]) >= 1 and "corrupt.mp4" in sample["failed"][0]
    assert sample["index"] in (1, 2) or len(sample["failed"]) > 1
    batch = collate_clips([sample, dataset[(0, 1)]])
    assert len(batch["failed"]) == len(sample["failed"])
    tracker = FailureTracker(max_fraction=0.25, min_samples=4)
    tracker.update(clips=2, failures=1)  # 1 of 3: below min_samples, no stop
    with pytest.raises(DecodeFailureError, match="failed to decode"):
        tracker.update(clips=2, failures=1)  # 2 of 6 > 25%


def test_sampler_shards_and_resumes_mid_epoch():
    full = [list(ShardedEpochSampler(10, 2, num_replicas=2, rank=r, seed=5)) for r in (0, 1)]
    assert len(full[0]) == len(full[1]) == 4  # 10 // 4 = 2 global batches of 2 x 2
    assert not {i for _, i in full[0]} & {i for _, i in full[1]}
    sampler = ShardedEpochSampler(10, 2, num_replicas=2, rank=0, seed=5)
    sampler.set_position(0, 1)
    assert list(sampler) == full[0][2:]
    sampler.set_position(1, 0)
    assert [e for e, _ in sampler] == [1] * 4


def test_real_media_scan_and_released_sample(real_media):
    """The shared real clips: the scan drops the file without audio; a released-size sample (4 s at 8 fps + 16 kHz)
    decodes from Megamind.avi (mpeg4 + AC3 whose first packet is broken) and from b.mp4 (index at the end)."""
    config = load_config(str(REPO / "training" / "configs" / "xkd.yaml"))
    _, _, settings = tiny_settings(config)
    source = resolve_source(str(real_media / "video"))
    report = scan_clips(source, num_workers=2)
    kept = sorted(os.path.basename(p) for p in report.kept)
    assert kept == ["Megamind.avi", "b.avi", "b.mp4", "world.mp4"]
    assert report.dropped == {"no audio stream": 1}
    dataset = XKDPretrainingDataset(source, [str(real_media / "video" / "Megamind.avi"),
                                             str(real_media / "video" / "b.mp4")], settings, seed=0)
    for index in (0, 1):
        sample = dataset[(0, index)]
        assert not sample["failed"]
        assert sample["video"].shape[:2] == (32, 3) and min(sample["video"].shape[-2:]) == 112
        assert sample["input_values"].shape == (448, 80) and sample["local_input_values"].shape == (1, 112, 80)
        assert torch.isfinite(sample["input_values"]).all()


# ----------------------------------------------------------------------------------------------------------------
# Views on the device
# ----------------------------------------------------------------------------------------------------------------


def test_views_shapes_and_same_parameters_on_every_frame():
    torch.manual_seed(0)
    b, t = 3, 8
    still = torch.randint(0, 256, (b, 1, 3, 40, 60), dtype=torch.uint8).expand(b, t, 3, 40, 60).contiguous()
    still[1, :, :, 36:] = 0  # clip 1 is padding below row 36
    sizes = torch.tensor([[40, 60], [36, 60], [40, 60]])
    maker = XKDViewMaker(VideoViewSettings(size=32), released_local_video_settings(16), local_num_frames=4)
    batch = {
        "video": still, "video_sizes": sizes, "local_video_starts": torch.tensor([[0, 4], [2, 1], [4, 0]]),
        "input_values": torch.zeros(b, 64, 16), "local_input_values": torch.zeros(b, 1, 32, 16),
    }
    out = maker(batch)
    assert out["pixel_values"].shape == (b, t, 3, 32, 32)
    assert out["local_pixel_values"].shape == (b, 2, 4, 3, 16, 16)
    # a still clip stays still: one crop / flip / jitter / blur per view, applied to every frame
    for views in (out["pixel_values"], out["local_pixel_values"].flatten(0, 1)):
        assert torch.allclose(views, views[:, :1].expand_as(views), atol=1e-5)
    # the crop boxes stay inside each clip's real size
    boxes = sample_resized_crop_boxes(sizes.repeat(100, 1), (0.08, 1.0), (3 / 4, 4 / 3))
    assert (boxes[:, 0] + boxes[:, 2] <= sizes.repeat(100, 1)[:, 0]).all()
    assert (boxes[:, 1] + boxes[:, 3] <= sizes.repeat(100, 1)[:, 1]).all()


# ----------------------------------------------------------------------------------------------------------------
# Configuration and checkpoints
# ----------------------------------------------------------------------------------------------------------------


def test_configs_hold_the_released_hyperparameters():
    xkd = load_config(str(REPO / "training" / "configs" / "xkd.yaml"))
    assert xkd["seed"] == 99999 and xkd["train"]["per_device_batch_size"] == 32
    assert xkd["train"]["lr"] == 1e-4 and xkd["train"]["warmup_epochs"] == 30 and xkd["train"]["epochs"] == 800
    assert xkd["train"]["weight_decay"] == 0.3 and xkd["train"]["clip_grad"] == 0.3
    assert xkd["train"]["betas"] == [0.9, 0.95]
    mas = load_config(str(REPO / "training" / "configs" / "xkd-mas.yaml"))
    assert mas["model"]["variant"] == "xkd-mas" and mas["model"]["num_local_video_views"] == 3
    assert (mas["model"]["video_warmup_teacher_temperature"], mas["model"]["video_teacher_temperature"]) == (0.09, 0.11)
    assert (mas["model"]["audio_warmup_teacher_temperature"], mas["model"]["audio_teacher_temperature"]) == (0.04, 0.06)
    mats = load_config(str(REPO / "training" / "configs" / "xkd-mats.yaml"), ["train.lr=2e-4", "model.variant=xkd"])
    assert mats["model"]["num_local_video_views"] == 3 and mats["train"]["lr"] == 2e-4
    assert mats["model"]["variant"] == "xkd"
    with pytest.raises(ValueError, match="Unknown configuration key 'train.learning_rate'"):
        load_config(TINY, ["train.learning_rate=1"])
    with pytest.raises(ValueError, match="XKDConfig fields"):
        load_config(TINY, ["model.not_a_field=1"])
    assert DEFAULT_CONFIG["augment"]["video_local"]["blur_sigma"] == [0.1, 2.0]


def test_a_killed_checkpoint_write_never_becomes_the_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        tmp = root / f".tmp-step-{step:08d}"
        tmp.mkdir(parents=True)
        (tmp / "model.safetensors").write_text("x")
        commit_checkpoint(str(tmp), str(root), step, keep_last=5)
    # a write of step 6 killed half-way: the temporary folder stays behind, without the completion marker
    half = root / ".tmp-step-00000006"
    half.mkdir()
    (half / "model.safetensors").write_text("partial")
    # a folder with the final name but no marker (e.g. copied by hand, half-way) does not count either
    (root / "step-00000008").mkdir()
    assert latest_checkpoint(str(root)).endswith("step-00000004")
    tmp = root / ".tmp-step-00000010"
    tmp.mkdir()
    commit_checkpoint(str(tmp), str(root), 10, keep_last=2)
    assert [s for s, _ in list_checkpoints(str(root))] == [4, 10]
    assert not half.exists()  # stale temporary folders are cleaned up by the next commit


# ----------------------------------------------------------------------------------------------------------------
# End to end (subprocesses)
# ----------------------------------------------------------------------------------------------------------------


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="true",
               PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _run(args, timeout=300):
    result = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    return result


def _pretrain_args(data, out, *extra):
    return ["training/pretrain.py", "--config", TINY, "--train-data", str(data), "--output-dir", str(out), *extra]


def _log(out) -> list[dict]:
    with open(pathlib.Path(out) / "logs" / "train_log.jsonl") as f:
        return [json.loads(line) for line in f]


def _tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def straight_run(media, tmp_path_factory):
    """STEPS steps through `accelerate launch` (one process), checkpoint every 2 steps."""
    out = tmp_path_factory.mktemp("straight")
    result = _run([ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", *_pretrain_args(media, out, "--max-steps", str(STEPS),
                                                              "--set", "checkpoint.every_steps=2")])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out, result


def test_end_to_end_writes_checkpoints_and_exports_that_load(straight_run):
    out, result = straight_run
    assert [s for s, _ in list_checkpoints(str(out / "checkpoints"))] == [2, 4]
    records = _log(out)
    scan = next(r for r in records if r.get("event") == "scan")
    assert scan["kept"] == 6 and sum(scan["dropped"].values()) == 3
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("loss", "reconstruction_loss", "distillation_loss", "alignment_loss", "lr", "ema_momentum",
                "video_teacher_temperature", "audio_teacher_entropy", "video_teacher_student_kl", "clips_per_second"):
        assert key in steps[-1] and math.isfinite(steps[-1][key])
    assert steps[0]["lr"] == 0.0  # warm-up starts at 0
    # tiny.yaml: 6 clips / batch 2 = 3 steps per epoch; temperature warm-up over 2 epochs from 0.04 to 0.10/0.07
    assert [r["video_teacher_temperature"] for r in steps] == pytest.approx([0.04, 0.04, 0.04, 0.10])
    assert steps[-1]["ema_momentum"] == pytest.approx(ema_momentum(3, 24))

    teachers = XKDModel.from_pretrained(out / "teachers")
    full = XKDForPretraining.from_pretrained(out / "pretraining")
    for name, tensor in teachers.video_model.state_dict().items():
        assert torch.equal(tensor, full.video_model.state_dict()[name])
    assert not full.video_model.embeddings.cls_token.requires_grad  # teachers re-frozen on load
    assert not torch.equal(full.video_model.embeddings.cls_token, full.video_student.embeddings.cls_token)
    assert full.video_teacher_center.abs().sum() > 0
    from transformers_xkd.feature_extraction_xkd import XKDFeatureExtractor

    assert XKDFeatureExtractor.from_pretrained(out / "teachers").feature_size == 16


class _GatheringAccelerator:
    """Stands in for accelerate under FSDP/DeepSpeed: `get_state_dict` returns the gathered full parameters,
    which differ from what the live (sharded) module holds."""

    is_main_process = True

    def __init__(self, gathered):
        self.gathered = gathered

    def get_state_dict(self, model):
        return self.gathered

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self):
        pass


def test_export_reads_the_gathered_state_dict(tmp_path):
    """Both exported folders hold the gathered state dict's values, not the live module's (sharded) ones."""
    from safetensors.torch import load_file

    _, model_config, settings = tiny_settings()
    torch.manual_seed(0)
    model = XKDForPretraining(model_config)
    gathered = {k: v.clone() + 1.0 if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone() for k, v in gathered.items()}
    from transformers_xkd.pretraining.trainer import export_models

    paths = export_models(_GatheringAccelerator(gathered), model, str(tmp_path), settings)
    teachers = load_file(os.path.join(paths["teachers"], "model.safetensors"))
    assert set(teachers) == {k for k in expected if k.startswith(("video_model.", "audio_model."))}
    for key, value in teachers.items():
        assert torch.equal(value, expected[key]), key
    full = load_file(os.path.join(paths["pretraining"], "model.safetensors"))
    assert torch.equal(full["video_student.embeddings.cls_token"], expected["video_student.embeddings.cls_token"])
    assert XKDModel.from_pretrained(paths["teachers"]).config.architectures == ["XKDModel"]


def test_nonfinite_loss_stops_then_resume_gives_the_same_parameters(straight_run, media, tmp_path):
    """N/2 steps, a crash (non-finite loss at step 3, after the step-2 checkpoint), --resume to N: the final
    parameters equal the straight run's exactly."""
    straight, _ = straight_run
    out = tmp_path / "resumed"
    crash = _run([PYTHON, *_pretrain_args(media, out, "--max-steps", str(STEPS), "--set",
                                          "checkpoint.every_steps=2", "debug.nonfinite_loss_at_step=3")])
    assert crash.returncode == 3, crash.stderr[-3000:]
    assert "not finite at step 3" in crash.stderr
    assert [s for s, _ in list_checkpoints(str(out / "checkpoints"))] == [2]  # nothing saved over it
    assert not (out / "pretraining").exists()

    resumed = _run([PYTHON, *_pretrain_args(media, out, "--max-steps", str(STEPS), "--resume",
                                            "--set", "checkpoint.every_steps=2")])
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert any(r.get("event") == "resume" and r["step"] == 2 for r in _log(out))
    a = _tensors(straight / "pretraining" / "model.safetensors")
    b = _tensors(out / "pretraining" / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:5]}"
    opt_a = torch.load(straight / "checkpoints" / "step-00000004" / "optimizer.bin", weights_only=True)
    opt_b = torch.load(out / "checkpoints" / "step-00000004" / "optimizer.bin", weights_only=True)
    for key, value in opt_a["state"].items():
        assert torch.equal(value["exp_avg"], opt_b["state"][key]["exp_avg"])


def test_compiled_model_trains_to_the_same_parameters(straight_run, media, tmp_path):
    """train.compile traces the model with TorchDynamo ("eager" backend: the captured graph runs the same kernels;
    inductor would take minutes to compile here). Same trajectory up to float round-off: one run in several
    differed in the last bits, so the check is a tight tolerance, far below what a skipped EMA or center update
    would change."""
    straight, _ = straight_run
    out = tmp_path / "compiled"
    result = _run([PYTHON, *_pretrain_args(media, out, "--max-steps", str(STEPS),
                                           "--set", "checkpoint.every_steps=2", "train.compile=eager")])
    assert result.returncode == 0, result.stderr[-5000:]
    a = _tensors(straight / "pretraining" / "model.safetensors")
    b = _tensors(out / "pretraining" / "model.safetensors")
    assert a.keys() == b.keys()  # in-place compile: no "_orig_mod." prefixes in what is saved
    different = [k for k in a if not torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6)]
    assert not different, f"{len(different)} tensors differ with train.compile, e.g. {different[:5]}"

    bad = _run([PYTHON, *_pretrain_args(media, tmp_path / "bad", "--max-steps", "1", "--set",
                                        "train.compile=no_such_backend")])
    assert bad.returncode != 0 and "train.compile" in bad.stderr and "no_such_backend" in bad.stderr


def test_two_processes_end_with_identical_teachers_and_centers(media, tmp_path):
    """Two real processes (gloo), with gradient accumulation, and without the scan so that the corrupt and the
    audio-less files reach the DataLoader workers: they are skipped, counted and logged with their paths."""
    out = tmp_path / "ddp"
    result = _run([ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no",
                   *_pretrain_args(media, out, "--max-steps", "2", "--set", "debug.dump_rank_state=true",
                                   "train.gradient_accumulation_steps=2", "data.scan=false")])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    steps = [r for r in _log(out) if "loss" in r]
    assert steps[-1]["clips"] == 2 * 2 * 2 * 2  # 2 steps x 2 micro-batches x 2 processes x batch 2
    assert steps[-1]["decode_failures"] > 0
    with open(out / "logs" / "decode_failures.jsonl") as f:
        failures = [json.loads(line) for line in f]
    assert len(failures) == steps[-1]["decode_failures"]
    assert {r["rank"] for r in failures} <= {0, 1}
    assert all("corrupt.mp4" in r["file"] or "silent.mp4" in r["file"] for r in failures)
    rank0 = _tensors(out / "rank_state" / "rank0.safetensors")
    rank1 = _tensors(out / "rank_state" / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and "video_teacher_center" in rank0 and "audio_teacher_center" in rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert rank0["video_teacher_center"].abs().sum() > 0


class _SystemPayload:
    """A pickle whose loading runs a shell command (creates ``marker``): what a planted checkpoint would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_reads_no_pickle_a_planted_checkpoint_runs_nothing(straight_run, media, tmp_path):
    """Issue 11.2: a payload in every file of the latest checkpoint; --resume creates nothing (no marker file, no
    new or changed file in the run folder) and stops with exit 2 naming the file."""
    import hashlib
    import pickle
    import shutil

    straight, _ = straight_run
    out = tmp_path / "planted"
    shutil.copytree(straight, out)
    latest = out / "checkpoints" / "step-00000004"
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_SystemPayload(marker))
    planted = sorted(p.name for p in latest.iterdir())
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state.json"} <= set(planted)
    assert "custom_checkpoint_0.pkl" not in planted  # the trainer's own state is JSON now
    for path in latest.iterdir():
        path.write_bytes(payload)

    def tree():
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*")) if p.is_file()}

    before = tree()
    result = _run([PYTHON, *_pretrain_args(media, out, "--max-steps", str(STEPS + 2), "--resume")])
    assert result.returncode == 2, result.stderr[-3000:]
    assert not marker.exists()
    assert tree() == before
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("training/pretrain.py: exit status 2") and "step-00000004" in last
    assert "holds pickled objects that are not tensors" in last and "Nothing was loaded" in last
