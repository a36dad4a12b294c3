"""Downstream protocols on tiny models and clips written by the tests (SVM, late fusion, caching, FC probe,
fine-tuning + pipeline, layer decay, Hub push against a local stand-in, split-list reports, real spoken digits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from transformers_xkd import XKDFeatureExtractor, XKDForVideoClassification, XKDModel, XKDVideoProcessor
from transformers_xkd.downstream import (
    ClipProtocol,
    FeatureSet,
    MissingMediaError,
    extract_features,
    late_fusion,
    load_esc50,
    load_folder,
    load_hmdb51,
    load_ucf101,
    svm_sweep,
    train_linear_probe,
)
from transformers_xkd.downstream import features as features_mod
from transformers_xkd.downstream.finetune import (
    AudioSpecAugment,
    MixupCutmix,
    VideoRandAugment,
    XKDTrainer,
    finetune,
    layer_decay_parameter_groups,
    parameter_layer_id,
)
from transformers_xkd.downstream.metrics import mean_average_precision, top_k_accuracy
from xkd_testers import XKDModelTester

REPO = Path(__file__).resolve().parents[1]
model_tester = XKDModelTester()
CLASSES = {"red": ((200, 30, 30), 300.0), "blue": ((30, 30, 200), 1500.0)}


def _tiny_video_processor():
    # model: 8 frames x 32 x 32 -> 8 frames at 8 fps (1 s clips), shorter side 36, centre crop 32
    return XKDVideoProcessor(num_frames=8, fps=8, size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})


def _tiny_feature_extractor(clip_duration=1.0, hop_length=253):
    # model: 64 frames x 16 mels; 1 + 16000 // 253 = 64 frames for 1 s at 16 kHz
    return XKDFeatureExtractor(feature_size=16, clip_duration=clip_duration, hop_length=hop_length, n_fft=512)


def write_clip(path: Path, color, freq: float, seconds: float = 1.5, fps: int = 8, size=(48, 40), seed: int = 0):
    """A class-coloured clip with a moving inverse-colour bar, pixel noise, and a class-specific tone."""
    rng = np.random.default_rng(seed)
    sr = 16000
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        a = c.add_stream("aac", rate=sr, layout="mono")
        for i in range(int(seconds * fps)):
            img = np.empty((size[1], size[0], 3), np.int32)
            img[:] = color
            x = (i * 5 + int(rng.integers(0, 10))) % size[0]
            img[:, x: x + 8] = 255 - np.asarray(color)
            img = np.clip(img + rng.integers(-25, 25, img.shape), 0, 255).astype(np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        t = np.arange(int(seconds * sr)) / sr
        wave = (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
        for i in range(0, len(wave), 1024):
            fr = av.AudioFrame.from_ndarray(wave[None, i: i + 1024].copy(), format="flt", layout="mono")
            fr.sample_rate, fr.pts = sr, i
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """root/{train,test}/{red,blue}/*.mp4: 3 train and 2 test clips per class."""
    root = tmp_path_factory.mktemp("clips")
    seed = 0
    for split, n in (("train", 3), ("test", 2)):
        for name, (color, freq) in CLASSES.items():
            d = root / split / name
            d.mkdir(parents=True)
            for k in range(n):
                seed += 1
                write_clip(d / f"{name}{k}.mp4", color, freq, seed=seed)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny XKDModel folder with processors whose output sizes match it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    XKDModel(model_tester.get_config()).save_pretrained(folder)
    _tiny_video_processor().save_pretrained(folder)
    _tiny_feature_extractor().save_pretrained(folder)
    return folder


def _synthetic_features(scale: float, n_per_class=10, dim=8, classes=3, clips=2, seed=0, counts=None):
    centers = np.random.default_rng(123).standard_normal((classes, dim)) * 4  # shared by train and test
    rng = np.random.default_rng(seed)
    feats, labels, vids = [], [], []
    vid = 0
    for c in range(classes):
        for _ in range(counts[c] if counts else n_per_class):
            for _ in range(clips):
                feats.append((centers[c] + rng.standard_normal(dim)) * scale)
                labels.append(c)
                vids.append(vid)
            vid += 1
    return FeatureSet(np.asarray(feats, np.float32), np.asarray(labels), np.asarray(vids))


# ----------------------------------------------------------------------------------------------------------------
def test_svm_sweep_picks_and_reports_best_cost():
    # features at a tiny scale and an imbalanced training set: with a very small C the weights stay ~0 and the
    # (cheap) intercepts predict the majority class everywhere; a large C separates the classes
    train = _synthetic_features(0.1, seed=0, counts=[30, 5, 5])
    test = _synthetic_features(0.1, seed=1)
    result = svm_sweep(train, test, "esc50")
    assert list(result.top1_per_cost) == [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0]
    assert result.best_top1 == max(result.top1_per_cost.values())
    assert result.top1_per_cost[result.best_cost] == result.best_top1
    assert result.top1_per_cost[1e-5] < 70 and result.best_top1 == 100.0
    assert result.best_cost == 0.1  # C=0.1 and C=1 tie at 100%: the first in sweep order is reported
    assert f"best C={result.best_cost:g}" in result.summary()
    # the exported linear layer reproduces the SVM decisions (video-averaged) used for the reported accuracy
    scores = test.features @ result.weight.T + result.bias
    from transformers_xkd.downstream.metrics import average_by_video

    vs, vl, _ = average_by_video(scores, test.video_ids, test.labels)
    assert top_k_accuracy(vs, vl) == pytest.approx(result.best_top1)
    with pytest.raises(ValueError, match="unknown sweep"):
        svm_sweep(train, test, "nope")


def test_metrics_and_multilabel_probe():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert top_k_accuracy(scores, [1, 1, 2], 1) == pytest.approx(200 / 3)
    assert top_k_accuracy(scores, [1, 1, 2], 2) == 100.0
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert mean_average_precision(targets * 0.9 + 0.05, targets) == 100.0
    # multi-label probe: labels are multi-hot; the metric is mAP
    base = _synthetic_features(1.0, classes=3, n_per_class=8)
    multi = np.eye(3, dtype=np.float32)[base.labels]
    multi[::4, 0] = 1  # some clips carry two labels
    fs = FeatureSet(base.features, multi, base.video_ids)
    result = train_linear_probe(fs, fs, lr=0.05, epochs=40, dropout=0.0)
    assert set(result.metrics) == {"mAP"} and result.metrics["mAP"] > 80
    assert result.losses[-1] < result.losses[0]


def test_late_fusion_concatenates_l2_normalised_features(clips, checkpoint):
    v, a = torch.randn(4, 32) * 7, torch.randn(4, 32) * 0.1
    fused = late_fusion(v, a)
    assert fused.shape == (4, 64)
    torch.testing.assert_close(fused[:, :32], v / v.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(fused[:, 32:].norm(dim=-1), torch.ones(4))
    # same rule as the model's own audio-visual features
    model = XKDModel.from_pretrained(checkpoint).eval()
    pv, iv = torch.randn(2, 8, 3, 32, 32), torch.randn(2, 64, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            late_fusion(model.get_video_features(pv).pooler_output, model.get_audio_features(iv).pooler_output),
            model.get_audio_visual_features(pv, iv),
        )
    # and through extraction on real files: each half unit-norm, equal to the normalised single-modality features
    test = load_folder(clips / "test")
    prot = ClipProtocol("t", "audio_visual", train_clips=1, test_clips=2)
    av_feats = extract_features(str(checkpoint), test, prot, "test", progress=False)
    v_feats = extract_features(str(checkpoint), test, ClipProtocol("t", "video", 1, 2), "test", progress=False)
    assert av_feats.features.shape == (8, 64) and v_feats.features.shape == (8, 32)
    np.testing.assert_allclose(np.linalg.norm(av_feats.features[:, :32], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(av_feats.features[:, 32:], axis=1), 1.0, rtol=1e-5)
    norm_v = v_feats.features / np.linalg.norm(v_feats.features, axis=1, keepdims=True)
    np.testing.assert_allclose(av_feats.features[:, :32], norm_v, atol=1e-5)
    assert list(av_feats.video_ids) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_feature_cache_skips_extraction(clips, checkpoint, tmp_path, monkeypatch):
    train = load_folder(clips / "train")
    prot = ClipProtocol("cache", "video", train_clips=2, test_clips=1)
    first = extract_features(str(checkpoint), train, prot, "train", cache_dir=tmp_path, progress=False)
    assert first.features.shape == (12, 32) and not first.meta["from_cache"]
    # augmented training clips differ from each other (random crops / jitter), but are reproducible
    assert not np.allclose(first.features[0], first.features[1])

    def boom(*args, **kwargs):
        raise AssertionError("extraction ran although a cache exists")

    monkeypatch.setattr(features_mod, "sample_clips", boom)
    again = extract_features(str(checkpoint), train, prot, "train", cache_dir=tmp_path, progress=False)
    assert again.meta["from_cache"]
    np.testing.assert_array_equal(again.features, first.features)
    np.testing.assert_array_equal(again.video_ids, first.video_ids)
    # another protocol is another cache entry (and so would extract)
    with pytest.raises(AssertionError, match="extraction ran"):
        extract_features(str(checkpoint), train, ClipProtocol("cache", "video", 3, 1), "train", cache_dir=tmp_path,
                         progress=False)


def test_layer_decay_groups_have_the_right_learning_rates(tmp_path):
    torch.manual_seed(0)
    cfg = model_tester.get_config().video_config
    cfg.num_labels = 3
    model = XKDForVideoClassification(cfg)
    assert parameter_layer_id("video_model.embeddings.cls_token", 2) == 0
    assert parameter_layer_id("video_model.encoder.layer.1.mlp.fc1.weight", 2) == 2
    assert parameter_layer_id("classifier.weight", 2) == 3
    groups = layer_decay_parameter_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    expect = {
        "video_model.embeddings.patch_embeddings.projection.weight": (1e-3 * 0.5**3, 0.05),
        "video_model.embeddings.position_embeddings": (1e-3 * 0.5**3, 0.0),
        "video_model.embeddings.cls_token": (1e-3 * 0.5**3, 0.0),
        "video_model.encoder.layer.0.attention.qkv.weight": (1e-3 * 0.5**2, 0.05),
        "video_model.encoder.layer.1.mlp.fc2.weight": (1e-3 * 0.5, 0.05),
        "video_model.encoder.layer.1.layernorm_after.weight": (1e-3 * 0.5, 0.0),
        "video_model.layernorm.weight": (1e-3, 0.0),
        "classifier.weight": (1e-3, 0.05),
        "classifier.bias": (1e-3, 0.0),
    }
    for name, (lr, wd) in expect.items():
        g = by_param[id(named[name])]
        assert g["lr"] == pytest.approx(lr), name
        assert g["weight_decay"] == wd, name
    assert sum(len(g["params"]) for g in groups) == len(named)
    # the Trainer subclass builds its optimizer from these groups, and the scheduler keeps the ratios
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.05, report_to="none",
                             use_cpu=True)
    trainer = XKDTrainer(model=model, args=args, layer_decay=0.5)
    opt = trainer.create_optimizer()
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert lrs == pytest.approx([1e-3 * 0.5**3, 1e-3 * 0.5**2, 1e-3 * 0.5, 1e-3])


def test_batched_augmentations():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 1])
    aug = VideoRandAugment(num_ops=2, magnitude=5, random_erasing=0.25)
    out = aug(x)
    assert out.shape == x.shape and torch.isfinite(out).all() and not torch.allclose(out, x)
    mixed, targets = MixupCutmix(3, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)(x, y)
    assert mixed.shape == x.shape and targets.shape == (4, 3)
    torch.testing.assert_close(targets.sum(-1), torch.ones(4))
    smooth = MixupCutmix(3, label_smoothing=0.1).targets(y)
    assert smooth.max() == pytest.approx(0.9 + 0.1 / 3)
    spec = torch.randn(4, 64, 16)
    sa = AudioSpecAugment(volume_jitter=0.2, time_warp=8, freq_masks=2, freq_mask_param=4, time_masks=2,
                          time_mask_param=8)
    out = sa(spec)
    assert out.shape == spec.shape and torch.isfinite(out).all()
    # masks are zero bands: some whole mel columns / time rows are exactly 0 in most samples
    assert ((out == 0).all(dim=1).any(dim=-1) | (out == 0).all(dim=2).any(dim=-1)).sum() >= 2
    nowarp = AudioSpecAugment(0.0, 0, 0, 0, 0, 0)
    torch.testing.assert_close(nowarp(spec), spec)


def test_finetune_lowers_loss_and_saves_a_pipeline_folder(clips, checkpoint, tmp_path):
    from transformers import pipeline

    train, test = load_folder(clips / "train"), load_folder(clips / "test")
    recipe = dict(modality="video", lr=2e-3, layer_decay=0.75, batch_size=6, epochs=1, warmup_epochs=0,
                  mixup=0.0, cutmix=0.0, label_smoothing=0.0, rand_augment=(1, 3), random_erasing=0.0,
                  test_clips=2, test_crops=3)
    out = finetune(str(checkpoint), train, test, tmp_path / "ft", recipe, _tiny_video_processor(),
                   training_overrides=dict(max_steps=5, eval_strategy="no", save_strategy="no", use_cpu=True),
                   evaluate_before=True, seed=0)
    assert len(out.train_loss) == 5
    assert out.eval_metrics["eval_loss"] < out.initial_eval_metrics["eval_loss"]
    assert {"top1", "top5"} <= set(out.test_metrics)
    saved = {p.name for p in (tmp_path / "ft").iterdir()}
    assert {"config.json", "model.safetensors", "video_preprocessor_config.json", "modeling_xkd.py"} <= saved
    clf = pipeline("video-classification", model=str(tmp_path / "ft"))
    preds = clf(str(clips / "test" / "red" / "red0.mp4"))
    assert {p["label"] for p in preds} == {"red", "blue"}
    assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-4)


# ----------------------------------------------------------------------------------------------------------------
class FakeHfApi:
    """Local stand-in for `huggingface_hub.HfApi`: records calls and copies uploads into a folder."""

    remote_root: Path = Path("/nonexistent")
    calls: list = []

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, exist_ok))
        (self.remote_root / repo_id).mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=None, **kwargs):
        import fnmatch
        import shutil

        FakeHfApi.calls.append(("upload_folder", repo_id, commit_message))
        dest = self.remote_root / repo_id
        for f in Path(folder_path).rglob("*"):
            rel = f.relative_to(folder_path).as_posix()
            if f.is_file() and not any(fnmatch.fnmatch(rel, pat) for pat in ignore_patterns or []):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dest / rel)
        return {"commit_message": commit_message}


def test_push_checks_the_folder_first_and_leaves_caches_out(tmp_path, monkeypatch):
    import huggingface_hub

    from transformers_xkd.hub import push_folder_to_hub

    FakeHfApi.remote_root, FakeHfApi.calls = tmp_path / "hub", []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    folder = tmp_path / "classifier"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="README.md"):
        push_folder_to_hub(folder, "someone/clf")
    (folder / "README.md").write_text("card")
    with pytest.raises(ValueError, match="safetensors"):
        push_folder_to_hub(folder, "someone/clf")
    assert FakeHfApi.calls == []  # nothing reached the Hub
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "features.npz").write_bytes(b"cache")
    push_folder_to_hub(folder, "someone/clf", commit_message="msg")
    assert FakeHfApi.calls == [("create_repo", "someone/clf", True), ("upload_folder", "someone/clf", "msg")]
    pushed = sorted(p.name for p in (tmp_path / "hub" / "someone" / "clf").iterdir())
    assert pushed == ["README.md", "config.json", "model.safetensors"]


def _run_cli(script: str, argv: list[str]):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cli_{script}", REPO / "training" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_linear_eval_cli_pushes_a_loadable_classifier_with_a_card(clips, checkpoint, tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from transformers import pipeline

    FakeHfApi.remote_root, FakeHfApi.calls = tmp_path / "hub", []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    out_dir = tmp_path / "svm"
    rc = _run_cli("linear_eval", [
        "--checkpoint", str(checkpoint), "--dataset", "folder", "--data-root", str(clips), "--modality", "video",
        "--train-clips", "2", "--test-clips", "2", "--costs", "0.01", "1", "--cache-dir", str(tmp_path / "cache"),
        "--output-dir", str(out_dir), "--push-to-hub", "someone/xkd-tiny-svm", "--base-model", "someone/xkd-tiny",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "best C=" in printed
    results = json.loads((out_dir / "linear_eval_results.json").read_text())
    assert results["best_cost"] in (0.01, 1.0)
    assert ("create_repo", "someone/xkd-tiny-svm", True) in FakeHfApi.calls
    remote = tmp_path / "hub" / "someone" / "xkd-tiny-svm"
    files = {p.name for p in remote.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "modeling_xkd.py", "configuration_xkd.py",
            "video_preprocessor_config.json", "video_processing_xkd.py", "linear_eval_results.json"} <= files
    assert not any(name.endswith(".npz") for name in files)

    from huggingface_hub import ModelCard

    card = ModelCard.load(remote / "README.md")
    data = card.data
    assert data.pipeline_tag == "video-classification"
    assert data.library_name == "transformers"
    assert data.license == "cc-by-nc-4.0"
    assert data.base_model == "someone/xkd-tiny"
    [res] = data.eval_results
    assert res.task_type == "video-classification" and res.metric_type == "accuracy"
    assert res.metric_value == pytest.approx(results["best_top1"])
    assert f"C={results['best_cost']:g}" in res.metric_name

    # the pushed folder loads with pipeline(...) (package registered) ...
    clf = pipeline("video-classification", model=str(remote))
    assert clf(str(clips / "test" / "blue" / "blue0.mp4"))[0]["label"] in ("red", "blue")
    # ... and with trust_remote_code in a process that never imports transformers_xkd
    code = textwrap.dedent(f"""
        import sys
        from transformers import AutoModelForVideoClassification, AutoConfig
        model = AutoModelForVideoClassification.from_pretrained({str(remote)!r}, trust_remote_code=True)
        assert "transformers_xkd" not in sys.modules, "the package was imported"
        print(type(model).__module__, sorted(model.config.id2label.values()))
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "transformers_modules" in proc.stdout and "['blue', 'red']" in proc.stdout


# ----------------------------------------------------------------------------------------------------------------
def _touch(path: Path, content: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_official_split_lists_and_missing_file_report(tmp_path, capsys):
    # UCF101: classInd + trainlist (with labels) + testlist (without)
    ucf, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g08_c01.avi 2\n")
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\nArchery/v_Archery_g01_c02.avi\n")
    for rel in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Archery/v_Archery_g08_c01.avi",
                "Archery/v_Archery_g01_c01.avi"):
        _touch(ucf / rel)
    train = load_ucf101(ucf, lists, 1, "train")
    assert train.features["label"].names == ["ApplyEyeMakeup", "Archery"] and train["label"] == [0, 1]
    assert train.features["video"].decode is False and train[0]["video"]["path"].endswith("g08_c01.avi")
    with pytest.raises(MissingMediaError) as err:
        load_ucf101(ucf, lists, 1, "test")
    report = err.value.report
    assert len(report.missing) == 1 and report.total == 2
    text = str(err.value)
    assert "1 of 2 entries are missing" in text and "v_Archery_g01_c02.avi" in text and "testlist01.txt:2" in text
    assert len(load_ucf101(ucf, lists, 1, "test", allow_missing=True)) == 1

    # HMDB51: tags 1 train, 2 test, 0 unused
    hmdb, hl = tmp_path / "hmdb51", tmp_path / "hmdb_lists"
    hl.mkdir()
    (hl / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    (hl / "cartwheel_test_split1.txt").write_text("d.avi 1\ne.avi 2\n")
    for rel in ("brush_hair/a.avi", "brush_hair/b.avi", "cartwheel/d.avi", "cartwheel/e.avi"):
        _touch(hmdb / rel)
    tr, te = load_hmdb51(hmdb, hl, 1, "train"), load_hmdb51(hmdb, hl, 1, "test")
    assert [Path(v["path"]).name for v in tr["video"]] == ["a.avi", "d.avi"] and tr["label"] == [0, 1]
    assert [Path(v["path"]).name for v in te["video"]] == ["b.avi", "e.avi"]

    # ESC-50: fold k is the test fold
    esc = tmp_path / "ESC-50"
    (esc / "meta").mkdir(parents=True)
    (esc / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-1-A-0.wav,1,0,dog,True,1,A\n2-1-A-1.wav,2,1,rooster,False,1,A\n3-1-A-0.wav,3,0,dog,True,1,A\n")
    for f in ("1-1-A-0.wav", "2-1-A-1.wav", "3-1-A-0.wav"):
        _touch(esc / "audio" / f)
    tr, te = load_esc50(esc, 1, "train"), load_esc50(esc, 1, "test")
    assert len(tr) == 2 and len(te) == 1 and te.features["label"].names == ["dog", "rooster"]
    assert tr.features["audio"].decode is False

    # the CLI turns missing files into the report and exit status 2, with no traceback
    rc = _run_cli("linear_eval", ["--checkpoint", str(tmp_path), "--dataset", "ucf101", "--data-root", str(ucf),
                                  "--split-dir", str(lists)])
    err_text = capsys.readouterr().err
    assert rc == 2
    assert "entries are missing" in err_text and "v_Archery_g01_c02.avi" in err_text
    assert "Traceback" not in err_text
    rc = _run_cli("finetune", ["--pretrained", str(tmp_path), "--dataset", "hmdb51", "--data-root", str(hmdb),
                               "--split-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o")])
    err_text = capsys.readouterr().err
    assert rc == 2 and "_test_split1.txt" in err_text and "Traceback" not in err_text


# ----------------------------------------------------------------------------------------------------------------
def test_real_spoken_digits_end_to_end(real_media, tmp_path):
    """The whole audio path on real recordings: 10 spoken digits (one recording each, 8 kHz, ~0.7-0.9 s).

    With one recording per class, training and test clips come from the same files (random 0.5 s windows with
    volume jitter vs 2 uniformly spaced windows), and the encoder is a tiny random model: this proves the path
    (decode, resample, log-mel, encoder, cache, SVM, probe, export) on real data, not representation quality.
    """
    digits = real_media / "audio" / "digits"
    if not digits.is_dir():
        pytest.skip(f"{digits} not found")
    root = tmp_path / "digits"
    for wav in sorted(digits.glob("*.wav")):
        (root / wav.stem).mkdir(parents=True)
        os.symlink(wav, root / wav.stem / wav.name)
    ds = load_folder(root, modality="audio")
    assert len(ds) == 10 and ds.features["label"].names == [str(i) for i in range(10)]
    torch.manual_seed(0)
    model = XKDModel(model_tester.get_config())
    fe = _tiny_feature_extractor(clip_duration=0.5, hop_length=126)  # 1 + 8000 // 126 = 64 frames
    prot = ClipProtocol("digits", "audio", train_clips=8, test_clips=2, seed=0)
    train = extract_features(model, ds, prot, "train", feature_extractor=fe, cache_dir=tmp_path / "c", progress=False)
    test = extract_features(model, ds, prot, "test", feature_extractor=fe, cache_dir=tmp_path / "c", progress=False)
    assert train.features.shape == (80, 32) and test.features.shape == (20, 32)
    assert np.isfinite(train.features).all()
    sweep = svm_sweep(train, test, "esc50", num_classes=10)
    probe = train_linear_probe(train, test, num_classes=10, lr=0.01, epochs=100)
    summary = {"svm_top1_per_cost": sweep.top1_per_cost, "svm_best_cost": sweep.best_cost,
               "svm_best_top1": sweep.best_top1, "probe": probe.metrics, "chance": 10.0}
    print("\nspoken digits (tiny random XKD audio encoder):", json.dumps(summary))
    out = os.environ.get("XKD_DOWNSTREAM_REPORT")
    if out:
        Path(out).write_text(json.dumps(summary, indent=2))
    # random tiny encoder, 10 classes: the features must still carry the digit identity above chance
    assert sweep.best_top1 > 10.0
    assert sweep.top1_per_cost[sweep.best_cost] == max(sweep.top1_per_cost.values())


# ----------------------------------------------------------------------------------------------------------------
def test_finetune_cli_lora_saves_adapter_and_a_merged_pipeline_folder(clips, checkpoint, tmp_path):
    pytest.importorskip("peft", reason="LoRA needs the optional `peft` extra (scripts/setup.sh installs it)")
    from transformers import pipeline

    from transformers_xkd.downstream.lora import load_adapter

    out_dir = tmp_path / "lora"
    rc = _run_cli("finetune", [
        "--pretrained", str(checkpoint), "--dataset", "folder", "--data-root", str(clips), "--modality", "video",
        "--output-dir", str(out_dir), "--lora", "--lora-rank", "2", "--lora-alpha", "4",
        "--set", "batch_size=6", "epochs=1", "warmup_epochs=0", "mixup=0.0", "cutmix=0.0", "test_clips=1",
        "test_crops=1",
        "--train-arg", "max_steps=2", "eval_strategy=no", "save_strategy=no", "use_cpu=true",
    ])
    assert rc == 0
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out_dir / "adapter").iterdir()}
    assert {"config.json", "model.safetensors", "video_preprocessor_config.json", "README.md"} <= {
        p.name for p in out_dir.iterdir()}
    merged = XKDForVideoClassification.from_pretrained(out_dir).eval()
    assert not any("lora" in k for k in merged.state_dict())
    adapter = load_adapter(out_dir / "adapter")
    x = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, adapter(pixel_values=x).logits, atol=1e-5, rtol=1e-5)
    clf = pipeline("video-classification", model=str(out_dir))
    assert {p["label"] for p in clf(str(clips / "test" / "red" / "red0.mp4"))} == {"red", "blue"}


def test_an_unknown_protocol_is_refused_by_name(tmp_path, capsys):
    """A misspelt --protocol used to fall back to the default clip counts silently."""
    from transformers_xkd.downstream.runner import run_linear_eval

    from transformers_xkd.downstream.runner import DownstreamUsageError

    with pytest.raises(DownstreamUsageError, match=r"protocol: unknown clip-count preset 'ucf-101'.*ucf101"):
        run_linear_eval(str(tmp_path), "folder", str(tmp_path), protocol="ucf-101")
    with pytest.raises(SystemExit) as exc:
        _run_cli("linear_eval", ["--checkpoint", str(tmp_path), "--dataset", "folder", "--data-root", str(tmp_path),
                                 "--protocol", "ucf-101"])
    assert exc.value.code == 2 and "invalid choice: 'ucf-101'" in capsys.readouterr().err
