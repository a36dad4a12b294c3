"""The learning benchmark's parts: the objective switch (Table 1 rows), the collapse monitor, AV-digits, the
reconstruction pictures and the benchmark's smoke mode."""

import math

import pytest
import torch

from conftest import make_tiny_batch, make_tiny_xkd_config
from transformers_xkd import XKDForPretraining
from transformers_xkd.modeling_xkd import teacher_collapse_statistics


def _pair(objective: str, batch: int = 3):
    """A full-XKD model and one with ``objective``, same weights, same inputs and masking noise."""
    torch.manual_seed(0)
    full = XKDForPretraining(make_tiny_xkd_config())
    other = XKDForPretraining(make_tiny_xkd_config(objective=objective))
    other.load_state_dict(full.state_dict())
    inputs = make_tiny_batch(full.config, batch=batch, seed=1)
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
        make_tiny_xkd_config(objective="kd")


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
            out = model(**make_tiny_batch(model.config, batch=4, seed=10 + step))
        records.append(_monitor_values(out))
        message = monitor.check(records[-1])
        if message:
            warnings.append((step, message))
    return warnings, records


def test_collapse_monitor_is_quiet_on_a_healthy_model():
    torch.manual_seed(0)
    warnings, records = _run_monitor(XKDForPretraining(make_tiny_xkd_config()))
    assert warnings == [], warnings
    assert records[0]["video_teacher_spread"] > 0.2  # at init the outputs differ between clips


def test_collapse_monitor_warns_on_the_uniform_collapse():
    # Force a constant teacher output: the bottleneck layer ignores its input (zero weight, constant bias). The
    # center then converges to that constant and the centred distribution becomes uniform (learning_pilot.md).
    torch.manual_seed(0)
    model = XKDForPretraining(make_tiny_xkd_config())
    with torch.no_grad():
        for head in (model.video_teacher_head, model.audio_teacher_head):
            head.layers[-1].weight.zero_()
            head.layers[-1].bias.copy_(torch.linspace(-1, 1, head.layers[-1].bias.numel()))
    model.config.center_momentum = 0.0  # the center reaches the constant after one step
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
    model = XKDForPretraining(make_tiny_xkd_config(video_teacher_temperature=0.04, audio_teacher_temperature=0.04))
    with torch.no_grad():
        for head in (model.video_teacher_head, model.audio_teacher_head):
            head.layers[-1].weight.zero_()
            head.layers[-1].bias.fill_(1.0)
            # weight norm keeps only directions: unit 0 is aligned with the (constant) input, the others orthogonal
            signs = torch.tensor([1.0, -1.0]).repeat(head.last_layer.weight_v.shape[1] // 2)
            head.last_layer.weight_v.copy_(signs.expand_as(head.last_layer.weight_v))
            head.last_layer.weight_v[0].fill_(1.0)
    model.config.center_momentum = 0.999999  # the center stays ~0, as early in a run
    warnings, records = _run_monitor(model)
    assert records[-1]["video_teacher_batch_entropy"] < 0.01
    assert len(warnings) == 1 and "dominant collapse" in warnings[0][1], warnings
    assert "center_momentum" in warnings[0][1] and "teacher_temperature" in warnings[0][1]
