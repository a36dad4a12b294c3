"""The learning benchmark's parts: the objective switch (Table 1 rows), the collapse monitor, AV-digits, the
reconstruction pictures and the benchmark's smoke mode."""

import math

import pytest
import torch

from transformers_xkd import XKDForPretraining
from transformers_xkd.modeling_xkd import teacher_collapse_statistics
from xkd_testers import XKDModelTester

model_tester = XKDModelTester()


def _pair(objective: str, batch: int = 3):
    """A full-XKD model and one with ``objective``, same weights, same inputs and masking noise."""
    torch.manual_seed(0)
    full = XKDForPretraining(model_tester.get_config())
    other = XKDForPretraining(model_tester.get_config(objective=objective))
    other.load_state_dict(full.state_dict())
    inputs = model_tester.pretraining_inputs(full.config, batch_size=batch, seed=1)
    g = torch.Generator().manual_seed(2)
    inputs["video_noise"] = torch.rand(batch, full.config.video_config.num_patches, generator=g)
    inputs["audio_noise"] = torch.rand(batch, full.config.audio_config.num_patches, generator=g)
    return full, other, inputs


def _count_calls(model):
    calls = {}
    for name in ("video_teacher_head", "audio_teacher_head", "video_student_head", "audio_student_head",
                 "video_model", "audio_model"):
        calls[name] = 0

        def hook(module, args, output, name=name):
            calls[name] += 1

        getattr(model, name).register_forward_hook(hook)
    return calls


def test_objective_mae_matches_full_reconstruction_and_skips_the_rest():
    full, mae, inputs = _pair("mae")
    calls = _count_calls(mae)
    student_calls = {"n": 0}
    mae.video_student.register_forward_hook(lambda *a: student_calls.__setitem__("n", student_calls["n"] + 1))
    out_full, out_mae = full(**inputs), mae(**inputs)
    for name in ("reconstruction_loss", "video_reconstruction_loss", "audio_reconstruction_loss"):
        torch.testing.assert_close(getattr(out_mae, name), getattr(out_full, name), rtol=0, atol=0)
    torch.testing.assert_close(out_mae.video_mask, out_full.video_mask, rtol=0, atol=0)
    torch.testing.assert_close(out_mae.loss, out_mae.reconstruction_loss, rtol=0, atol=0)
    assert all(v == 0 for v in calls.values()), calls  # no head and no teacher ran
    assert student_calls["n"] == 1  # the masked global view only: no local-view pass
    for name in ("distillation_loss", "alignment_loss", "student_alignment_loss", "video_teacher_entropy",
                 "video_teacher_student_kl", "video_teacher_spread", "audio_teacher_batch_entropy"):
        assert getattr(out_mae, name) is None, name
    # the centers are untouched and the student heads take no gradient (no optimizer state for them)
    assert torch.count_nonzero(mae.video_teacher_center) == 0
    out_mae.loss.backward()
    assert not any(p.requires_grad for p in mae.video_student_head.parameters())
    assert mae.video_student.embeddings.patch_embeddings.projection.weight.grad is not None


def test_objective_mae_kd_skips_only_the_alignment():
    full, mkd, inputs = _pair("mae+kd")
    out_full, out_mkd = full(**inputs), mkd(**inputs)
    for name in ("reconstruction_loss", "distillation_loss", "video_teacher_entropy", "audio_teacher_spread"):
        torch.testing.assert_close(getattr(out_mkd, name), getattr(out_full, name), rtol=0, atol=0)
    assert out_mkd.alignment_loss is None and out_mkd.student_alignment_loss is None
    cfg = mkd.config
    w_r, w_d = cfg.reconstruction_loss_weight, cfg.distillation_loss_weight
    expected = (w_r * out_full.reconstruction_loss.double() + w_d * out_full.distillation_loss.double()) / (w_r + w_d)
    torch.testing.assert_close(out_mkd.loss.double(), expected, rtol=1e-6, atol=0)
    # the full objective still adds the alignment term (the switch changed something)
    assert not torch.allclose(out_full.loss, out_mkd.loss)


def test_objective_is_validated():
    with pytest.raises(ValueError, match="objective must be one of"):
        model_tester.get_config(objective="kd")


def test_teacher_collapse_statistics_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(5, 7, generator=g, dtype=torch.float64)
    c = torch.randn(1, 7, generator=g, dtype=torch.float64)
    batch_entropy, spread = teacher_collapse_statistics(t, c, 0.5)
    q = [[math.exp((t[b, k] - c[0, k]) / 0.5) for k in range(7)] for b in range(5)]
    q = [[v / sum(row) for v in row] for row in q]
    mean_q = [sum(q[b][k] for b in range(5)) / 5 for k in range(7)]
    expected_entropy = -sum(p * math.log(p) for p in mean_q)
    cols = [[float(t[b, k]) for b in range(5)] for k in range(7)]
    expected_spread = sum(math.sqrt(sum((x - sum(col) / 5) ** 2 for x in col) / 5) for col in cols) / 7
    assert float(batch_entropy) == pytest.approx(expected_entropy, rel=1e-6)
    assert float(spread) == pytest.approx(expected_spread, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Collapse monitor: each mode, with a model forced into it
# ----------------------------------------------------------------------------------------------------------------


def _monitor_values(output) -> dict:
    names = ("video_teacher_entropy", "audio_teacher_entropy", "video_teacher_batch_entropy",
             "audio_teacher_batch_entropy", "video_teacher_spread", "audio_teacher_spread")
    return {name: float(getattr(output, name)) for name in names}


def _run_monitor(model, steps: int = 6, patience: int = 3):
    from transformers_xkd.pretraining.trainer import CollapseMonitor

    monitor = CollapseMonitor(model.config.projector_output_size, patience=patience, entropy_fraction=0.02)
    warnings, records = [], []
    model.train()
    for step in range(steps):
        with torch.no_grad():
            out = model(**model_tester.pretraining_inputs(model.config, batch_size=4, seed=10 + step))
        records.append(_monitor_values(out))
        message = monitor.check(records[-1])
        if message:
            warnings.append((step, message))
    return warnings, records


def test_collapse_monitor_is_quiet_on_a_healthy_model():
    torch.manual_seed(0)
    warnings, records = _run_monitor(XKDForPretraining(model_tester.get_config()))
    assert warnings == [], warnings
    assert records[0]["video_teacher_spread"] > 0.2  # at init the outputs differ between clips


def test_collapse_monitor_warns_on_the_uniform_collapse():
    # Force a constant teacher output: the bottleneck layer ignores its input (zero weight, constant bias). The
    # center then converges to that constant and the centred distribution becomes uniform (learning_pilot.md).
    torch.manual_seed(0)
    # center_momentum 0: the center reaches the constant after one step (the loss modules own it, so it is set
    # through the config they are built from)
    model = XKDForPretraining(model_tester.get_config(center_momentum=0.0))
    with torch.no_grad():
        for head in (model.video_teacher_head, model.audio_teacher_head):
            head.layers[-1].weight.zero_()
            head.layers[-1].bias.copy_(torch.linspace(-1, 1, head.layers[-1].bias.numel()))
    warnings, records = _run_monitor(model)
    assert records[-1]["video_teacher_spread"] < 1e-5
    assert records[-1]["video_teacher_entropy"] > 0.99 * math.log(model.config.projector_output_size)
    assert len(warnings) == 1, warnings  # once, not every log
    step, message = warnings[0]
    assert step == 2 and "uniform collapse" in message
    for advice in ("teacher_temperature", "center_momentum", "ema_momentum_start"):
        assert advice in message


def test_collapse_monitor_warns_when_one_dimension_dominates():
    # Force one output dimension to dominate for every clip: the last layer maps everything onto unit 0.
    torch.manual_seed(0)
    model = XKDForPretraining(model_tester.get_config(video_teacher_temperature=0.04, audio_teacher_temperature=0.04,
                                                      center_momentum=0.999999))  # the center stays ~0, as early on
    with torch.no_grad():
        for head in (model.video_teacher_head, model.audio_teacher_head):
            head.layers[-1].weight.zero_()
            head.layers[-1].bias.fill_(1.0)
            # weight norm keeps only directions: unit 0 is aligned with the (constant) input, the others orthogonal
            signs = torch.tensor([1.0, -1.0]).repeat(head.last_layer.weight_v.shape[1] // 2)
            head.last_layer.weight_v.copy_(signs.expand_as(head.last_layer.weight_v))
            head.last_layer.weight_v[0].fill_(1.0)
    warnings, records = _run_monitor(model)
    assert records[-1]["video_teacher_batch_entropy"] < 0.01
    assert len(warnings) == 1 and "dominant collapse" in warnings[0][1], warnings
    assert "center_momentum" in warnings[0][1] and "teacher_temperature" in warnings[0][1]


# ----------------------------------------------------------------------------------------------------------------
# AV-digits
# ----------------------------------------------------------------------------------------------------------------


def _decode(path):
    from transformers_xkd.decoding_xkd import decode_media

    return decode_media(path, fps=8, sampling_rate=16000, require_video=True, require_audio=True)


@pytest.mark.parametrize("sound", ["auto", "synthetic"])
def test_avdigits_is_deterministic_per_seed_and_decodable(tmp_path, sound):
    import json

    import numpy as np

    from transformers_xkd.pretraining.avdigits import AVDigitsSpec, make_avdigits

    spec = AVDigitsSpec(num_train=10, num_test=10, seed=3, sound=sound)
    first = make_avdigits(str(tmp_path / "a"), spec)
    second = make_avdigits(str(tmp_path / "b"), spec)
    other = make_avdigits(str(tmp_path / "c"), AVDigitsSpec(num_train=10, num_test=10, seed=4, sound=sound))
    assert first["clips"] == second["clips"]
    assert first["clips"] != other["clips"]
    assert json.load(open(tmp_path / "a" / "manifest.json"))["clips"] == first["clips"]
    for clip in first["clips"][:3] + first["clips"][-2:]:
        a, b = _decode(str(tmp_path / "a" / clip["path"])), _decode(str(tmp_path / "b" / clip["path"]))
        assert a.frames.shape == (spec.num_frames, spec.frame_size, spec.frame_size, 3)
        assert abs(len(a.audio) - spec.num_samples) <= 1024 and a.num_padded_samples == 0
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
        assert float(np.abs(a.audio).max()) > 0.05  # there is sound
    c = _decode(str(tmp_path / "c" / other["clips"][0]["path"]))
    assert not np.array_equal(c.frames, _decode(str(tmp_path / "a" / first["clips"][0]["path"])).frames)
    # the split: different digit images and disjoint voices; balanced labels; the folder layout of load_folder
    train = [c for c in first["clips"] if c["split"] == "train"]
    test = [c for c in first["clips"] if c["split"] == "test"]
    assert not {c["image_index"] for c in train} & {c["image_index"] for c in test}
    assert not {c["voice"] for c in train} & {c["voice"] for c in test}
    assert sorted(c["label"] for c in train) == list(range(10))
    assert all(c["path"].startswith(f"{c['split']}/{c['label']}/") for c in first["clips"])
    assert first["sound"] in ("espeak", "synthetic") and (sound == "auto" or first["sound"] == "synthetic")


def test_avdigits_rejects_bad_specs():
    from transformers_xkd.pretraining.avdigits import AVDigitsSpec

    with pytest.raises(ValueError, match="at least 10 clips"):
        AVDigitsSpec(num_train=5)
    with pytest.raises(ValueError, match="disjoint"):
        AVDigitsSpec(train_voices=("en-us+m1",), test_voices=("en-us+m1",))


# ----------------------------------------------------------------------------------------------------------------
# The benchmark's smoke mode, the reconstruction picture and the training-log picture (one small run)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_benchmark(tmp_path_factory):
    from transformers_xkd.benchmarking.learning import run_learning_benchmark, write_results

    root = tmp_path_factory.mktemp("learning")
    results = run_learning_benchmark(str(root / "work"), "smoke", seeds=(0,), workers=1, progress=False)
    paths = write_results(results, str(root / "results" / "learning-smoke"))
    return root, results, paths


def _png_size(path):
    import struct

    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_benchmark_smoke_writes_every_field_and_both_pictures(smoke_benchmark):
    import json

    root, results, paths = smoke_benchmark
    data = json.load(open(paths["json"]))
    for key in ("benchmark", "scale", "machine", "torch", "seeds", "objectives", "data", "recipe", "config_example",
                "seconds", "arms", "summary"):
        assert key in data, key
    assert {a["objective"] for a in data["arms"]} == {"mae", "mae+kd", "xkd"}
    for arm in data["arms"]:
        for key in ("seed", "steps", "train_seconds", "probe_seconds", "seconds_per_step", "probes", "final_log",
                    "warnings", "monitors", "train_clips", "test_clips", "raw_inputs"):
            assert key in arm, key
        assert arm["steps"] == 2 and [p["step"] for p in arm["probes"]] == [0, 2]
        for probe in arm["probes"]:
            for modality in ("video", "audio", "fusion"):
                assert 0.0 <= probe[modality]["fc_top1"] <= 100.0 and "svm_top1" in probe[modality]
        logged = set(arm["final_log"])
        if arm["objective"] == "mae":  # logs only what it computes
            assert "distillation_loss" not in logged and "video_teacher_entropy" not in logged
        else:
            assert "video_teacher_spread" in logged and "distillation_loss" in logged
            assert ("alignment_loss" in logged) == (arm["objective"] == "xkd")
    assert set(data["summary"]) == {"raw", "random", "mae", "mae+kd", "xkd"}
    assert set(data["summary"]["mae"]["audio"]) == {"fc_top1", "fc_raw_top1", "svm_top1"}
    assert set(data["summary"]["xkd"]) == {"video", "audio", "fusion"}
    table = open(paths["md"]).read()
    assert "| random init |" in table and "| raw inputs" in table and "| XKD (MAE + KD + DA) |" in table and data["machine"] in table
    for key in ("steps_png", "monitors_png"):
        width, height = _png_size(paths[key])
        assert width > 300 and height > 200


def test_reconstruction_picture_has_the_expected_size_and_panels(smoke_benchmark, tmp_path):
    import numpy as np

    from transformers_xkd import XKDForPretraining
    from transformers_xkd.pretraining.visualize import reconstruction_arrays, reconstruction_figure

    root, results, _ = smoke_benchmark
    model_dir = str(root / "work" / "runs" / "xkd-seed0" / "pretraining")
    clip = str(root / "work" / "avdigits" / "test" / "3" / "test_00003.mp4")
    out = reconstruction_figure(model_dir, clip, str(tmp_path / "rec.png"))
    model = XKDForPretraining.from_pretrained(model_dir)
    frames = model.config.video_config.num_frames
    assert _png_size(out["path"]) == out["size"]
    assert out["size"] == (int(round(max(frames * 1.2, 6.0) * 100)), int(round((3 * 1.2 + 3 * 1.1 + 0.6) * 100)))
    assert out["panels"] == ([f"video_{row}_{k}" for row in ("original", "masked", "reconstruction")
                              for k in range(frames)] + ["audio_original", "audio_masked", "audio_reconstruction"])
    # the arrays behind the panels: masked patches are exactly the model's mask ratio, the visible ones are the
    # original, and the reconstruction differs from the original only where patches were masked
    torch.manual_seed(0)
    v, a = model.config.video_config, model.config.audio_config
    pv = torch.rand(1, v.num_frames, 3, v.image_size, v.image_size)
    iv = torch.randn(1, a.max_length, a.num_mel_bins)
    arrays = reconstruction_arrays(model, pv, iv, seed=1, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    assert np.allclose(arrays["video_original"], pv[0].permute(0, 2, 3, 1).numpy(), atol=1e-6)
    masked_fraction = np.isnan(arrays["video_masked"]).mean()
    assert masked_fraction == pytest.approx(arrays["video_mask"].mean()) and 0 < masked_fraction < 1
    visible = ~np.isnan(arrays["audio_masked"])
    assert np.allclose(arrays["audio_reconstruction"][visible], arrays["audio_original"][visible])
    assert not np.allclose(arrays["audio_reconstruction"][~visible], arrays["audio_original"][~visible])


def test_training_log_picture(smoke_benchmark, tmp_path):
    from transformers_xkd.pretraining.visualize import plot_training_log

    root, _, _ = smoke_benchmark
    out = plot_training_log(str(root / "work" / "runs" / "xkd-seed0"), str(tmp_path / "log.png"))
    assert out["panels"] == ["losses", "teacher_entropy", "teacher_batch_entropy", "teacher_spread",
                             "teacher_student_kl"] and out["steps"] == 2
    assert _png_size(out["path"]) == (2000, 340)
    with pytest.raises(FileNotFoundError, match="train_log.jsonl"):
        plot_training_log(str(tmp_path), str(tmp_path / "none.png"))


def test_benchmark_reprobe_gives_the_same_numbers(smoke_benchmark):
    from transformers_xkd.benchmarking.learning import reprobe_results

    root, results, _ = smoke_benchmark
    again = reprobe_results(results, str(root / "work"), str(root / "work" / "avdigits"))
    assert again["summary"] == results["summary"]  # deterministic features and probes
