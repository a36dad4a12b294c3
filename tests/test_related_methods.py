"""CCL and MNF + CSC in this package (issue 15): losses against hand-computed references, the released two-optimizer
gradient routing, the models, teachers, data path, evaluation, export, retrieval. Tiny configs, generated clips."""

import copy
import fractions
import json
import logging
import math
import pathlib

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transformers_xkd import (
    CCLCompositionHead,
    MNFModule,
    XKDAudioConfig,
    XKDAudioModel,
    XKDDistillationConfig,
    XKDForCCLDistillation,
    XKDForMNFDistillation,
    XKDR2Plus1DConfig,
    XKDR2Plus1DModel,
    XKDVideoConfig,
    XKDVideoModel,
    ccl_contrastive_loss,
    ccl_objective,
    ccl_symmetric_contrastive_loss,
    ccl_symmetric_kl_loss,
    csc_loss,
    csc_temperature,
    mnf_gate_sparsity_loss,
    mnf_triplet_loss,
)
from transformers_xkd.distillation_ccl import SingleLabelBatchError, ccl_teacher_terms
from transformers_xkd.distillation_mnf import frozen_batchnorm_statistics

TINY_R21D = dict(hidden_sizes=[8, 8, 16, 16], num_frames=8, image_size=32)
TINY_XKD_VIDEO = dict(image_size=32, num_frames=8, tubelet_size=4, patch_size=16, hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32)
TINY_AUDIO = dict(num_mel_bins=16, max_length=64, frequency_patch_size=4, time_patch_size=16, hidden_size=32,
                  num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
TINY_RECIPE = dict(num_frames=8, image_size=32, resize_shortest_edge=36)
COLORS = [(230, 40, 40), (40, 230, 40), (40, 40, 230)]


# ----------------------------------------------------------------------------------------------------------------
# generated labelled clips: the square's colour and direction and the tone's pitch depend on the class
# ----------------------------------------------------------------------------------------------------------------
def write_class_clip(path, cls, seed=0, duration=2.0, fps=8, size=(40, 32), audio=True, sampling_rate=8000):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a_stream = out.add_stream("aac", rate=sampling_rate, layout="mono") if audio else None
        n = int(round(duration * fps))
        y = int(rng.integers(0, h - 10))
        for i in range(n):
            frame = np.full((h, w, 3), 20, np.uint8)
            x = int((w - 10) * i / max(n - 1, 1))
            x = w - 10 - x if cls % 2 else x
            frame[y:y + 10, x:x + 10] = COLORS[cls % len(COLORS)]
            for p in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if a_stream is not None:
            t = np.arange(int(duration * sampling_rate)) / sampling_rate
            wave = (0.4 * np.sin(2 * np.pi * (300 + 250 * cls) * t)).astype(np.float32)[None]
            for s in range(0, wave.shape[1], 1024):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, s:s + 1024]), format="fltp",
                                                layout="mono")
                fr.sample_rate, fr.pts, fr.time_base = sampling_rate, s, fractions.Fraction(1, sampling_rate)
                for p in a_stream.encode(fr):
                    out.mux(p)
            for p in a_stream.encode():
                out.mux(p)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """train/test folders, 3 classes; train 2 videos per class, test 1."""
    from transformers_xkd.downstream.datasets import load_folder

    root = tmp_path_factory.mktemp("related")
    for split, n in (("train", 2), ("test", 1)):
        for c in range(3):
            for k in range(n):
                write_class_clip(root / split / f"class{c}" / f"v{c}_{split}{k}.mp4", c, seed=10 * c + k)
    return root, load_folder(root / "train"), load_folder(root / "test")


# ----------------------------------------------------------------------------------------------------------------
# CCL losses against hand computation
# ----------------------------------------------------------------------------------------------------------------
def _unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def nce_by_hand(x, y, labels, tau, eps=1e-10):
    """loss/nce_loss.py written out with Python floats."""
    xs, ys = [_unit(r) for r in x], [_unit(r) for r in y]
    total = 0.0
    for i, xi in enumerate(xs):
        dist = [sum((a - b) ** 2 for a, b in zip(xi, yj)) for yj in ys]
        logits = [(1 - 0.5 * d) / tau for d in dist]
        m = max(logits)
        ex = [math.exp(v - m) for v in logits]
        p = [e / sum(ex) for e in ex]
        pos = [j for j in range(len(ys)) if labels[j] == labels[i]]
        neg = [j for j in range(len(ys)) if labels[j] != labels[i]]
        total += -sum(math.log(p[j] + eps) for j in pos) / len(pos) - sum(math.log(1 - p[j] + eps) for j in neg) / len(neg)
    return total / len(xs)


def test_ccl_contrastive_loss_matches_hand_computation():
    x = [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [2.0, 2.0, 1.0], [-1.0, 0.5, 0.5]]
    y = [[0.0, 1.0, 1.0], [1.0, 1.0, -1.0], [0.3, 0.0, 2.0], [1.0, -2.0, 0.0]]
    labels = [0, 1, 0, 2]
    for tau in (0.5, 0.1):
        got = ccl_contrastive_loss(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64),
                                   torch.tensor(labels), tau)
        assert got.item() == pytest.approx(nce_by_hand(x, y, labels, tau), rel=1e-10)
    # symmetric: both directions
    sym = ccl_symmetric_contrastive_loss(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64),
                                         torch.tensor(labels), 0.5)
    assert sym.item() == pytest.approx(nce_by_hand(x, y, labels, 0.5) + nce_by_hand(y, x, labels, 0.5), rel=1e-10)


def test_ccl_positives_include_the_anchor_and_negatives_push_mass():
    # two samples of one class + one of another: the anchor's own pair is a positive
    x = torch.eye(3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # aligned pairs (y = x) versus swapped positives: the loss only sees class structure, so it is unchanged when
    # the two class-0 rows of y are swapped, and grows when a negative becomes the most similar
    base = ccl_contrastive_loss(x, x, labels, 0.5)
    swapped = ccl_contrastive_loss(x, x[[1, 0, 2]], labels, 0.5)
    assert swapped.item() == pytest.approx(base.item(), rel=1e-12)
    confused = ccl_contrastive_loss(x, x[[2, 1, 0]], labels, 0.5)
    assert confused.item() > base.item() + 0.1


def test_ccl_one_label_batch_is_dropped_with_warning_or_raises(caplog):
    x = torch.randn(4, 5, requires_grad=True)
    labels = torch.zeros(4, dtype=torch.long)
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    with caplog.at_level(logging.WARNING):
        loss = ccl_contrastive_loss(x, x.detach() + 1, labels, 0.5)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert torch.all(x.grad == 0)
    assert "share one label" in caplog.text
    with pytest.raises(SingleLabelBatchError, match="share one label"):
        ccl_contrastive_loss(x, x, labels, 0.5, on_single_label="error")
    # the full objective stays finite and keeps CE
    head = CCLCompositionHead(5, 3)
    out = ccl_objective(x, torch.randn(4, 3), labels, {"audio": torch.rand(4, 5)}, {"audio": head})
    assert torch.isfinite(out.loss) and out.terms["audio_student_teacher"].item() == 0.0
    assert out.terms["ce"].item() > 0


def test_ccl_symmetric_kl_matches_hand_computation():
    p_logits = [[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]]
    q_logits = [[0.0, 0.5, 0.5], [2.0, -1.0, 0.0]]

    def softmax(r):
        e = [math.exp(v) for v in r]
        return [v / sum(e) for v in e]

    total = 0.0
    for pr, qr in zip(p_logits, q_logits):
        p, q = softmax(pr), softmax(qr)
        total += sum(a * math.log(a / b + 1e-10) for a, b in zip(p, q)) + sum(b * math.log(b / a + 1e-10)
                                                                             for a, b in zip(p, q))
    expected = 0.5 * total / 2
    got = ccl_symmetric_kl_loss(torch.tensor(p_logits, dtype=torch.float64), torch.tensor(q_logits, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_composition_head_residual_on_the_unnormalised_teacher():
    torch.manual_seed(0)
    head = CCLCompositionHead(4, 3).double()
    t, s = torch.randn(5, 4, dtype=torch.float64) * 7, torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        head.composition.weight.zero_()
        head.composition.bias.zero_()
    logits, m = head(t, s)
    assert torch.equal(m, t)  # m = t + r with r = 0: the un-normalised teacher
    torch.testing.assert_close(logits, t @ head.classifier.weight.T + head.classifier.bias)
    # r only sees the L2-normalised inputs: rescaling teacher and student rescales only the residual's t
    head = CCLCompositionHead(4, 3).double()
    _, m1 = head(t, s)
    _, m2 = head(3 * t, 0.5 * s)
    torch.testing.assert_close(m2 - 3 * t, m1 - t)
    assert sum(p.numel() for p in CCLCompositionHead(512, 51).parameters()) == 1024 * 512 + 512 + 512 * 51 + 51


# ----------------------------------------------------------------------------------------------------------------
# MNF + CSC
# ----------------------------------------------------------------------------------------------------------------
def test_csc_loss_with_per_pair_temperature_matches_hand_computation():
    v = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
    z = [[0.8, 0.6], [1.0, 0.0], [0.0, 2.0]]
    a = [[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]
    labels = [0, 0, 1]
    theta = 0.07
    vs, zs, as_ = [_unit(r) for r in v], [_unit(r) for r in z], [_unit(r) for r in a]
    total = 0.0
    for i in range(3):
        logits = [sum(p * q for p, q in zip(vs[i], zs[j])) / (sum(p * q for p, q in zip(vs[i], as_[j])) + theta)
                  for j in range(3)]
        e = [math.exp(x) for x in logits]
        P = [x / sum(e) for x in e]
        pos = [j for j in range(3) if labels[j] == labels[i]]
        total += -sum(math.log(P[j] + 1e-10) for j in pos) / len(pos)
    expected = total / 3
    vt, zt, at = (torch.tensor(r, dtype=torch.float64) for r in (v, z, a))
    tau = csc_temperature(vt, at, theta)
    assert tau.shape == (3, 3) and not tau.requires_grad
    assert tau[0, 1].item() == pytest.approx(0.0 + theta)  # cos((1,0),(0,1)) = 0
    got = csc_loss(vt, zt, torch.tensor(labels), tau)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # constant temperature (--with_adj off)
    assert csc_temperature(vt, at, theta, adaptive=False) == theta
    const = csc_loss(vt, zt, torch.tensor(labels), theta)
    zero_cos = csc_loss(vt, zt, torch.tensor(labels), torch.full((3, 3), theta, dtype=torch.float64))
    assert const.item() == pytest.approx(zero_cos.item(), rel=1e-12)
    # the per-pair temperature is stop-gradient: gradients flow only through the similarities
    vg = vt.clone().requires_grad_(True)
    ag = at.clone().requires_grad_(True)
    csc_loss(vg, zt, torch.tensor(labels), csc_temperature(vg, ag, theta)).backward()
    assert ag.grad is None and vg.grad is not None


def test_triplet_margin_and_gate_sparsity():
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    a = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # cos 0.7071, 0
    filt = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)  # cos 1, 0.7071
    # row 0: max(0, 0.7071 - 1 + 0.2) = 0; row 1: max(0, 0 - 0.7071 + 0.2) = 0 -> both inside the margin
    assert mnf_triplet_loss(v, a, filt).item() == 0.0
    # swap: row 0: 1 - 0.7071 + 0.2 = 0.4929; row 1: 0.7071 - 0 + 0.2 = 0.9071
    expected = ((1 - math.sqrt(0.5) + 0.2) + (math.sqrt(0.5) + 0.2)) / 2
    assert mnf_triplet_loss(v, filt, a).item() == pytest.approx(expected, rel=1e-12)
    w1 = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    w2 = torch.tensor([[3.0, 0.0, -1.0]])
    # released loop bug: only the last layer, 0.001 * mean over rows of sum |w|
    assert mnf_gate_sparsity_loss([w1, w2]).item() == pytest.approx(0.001 * 4.0)
    assert mnf_gate_sparsity_loss([w1, w2], all_layers=True).item() == pytest.approx(0.001 * (2.0 + 4.0))


def test_mnf_module_shapes_and_attention_over_student_tokens():
    torch.manual_seed(0)
    mnf = MNFModule(16, 5).eval()
    a, V = torch.rand(3, 16), torch.randn(3, 7, 16)
    out = mnf(a, V)
    assert out.logits.shape == (3, 5) and out.calibrated.shape == (3, 16)
    assert out.attention.shape == (3, 1, 7)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 1))
    assert torch.all((out.gate > 0) & (out.gate < 1))
    torch.testing.assert_close(out.filtered_teacher, out.gate * a)
    # one query over the tokens: permuting the tokens changes nothing, changing one token changes the output
    out_p = mnf(a, V[:, torch.randperm(7)])
    torch.testing.assert_close(out_p.calibrated, out.calibrated, atol=1e-5, rtol=1e-5)
    V2 = V.clone()
    V2[:, 3] += 5
    assert not torch.allclose(mnf(a, V2).calibrated, out.calibrated)
    assert mnf.attention.num_heads == 2
    n = sum(p.numel() for p in MNFModule(512, 51).parameters())
    assert 1.6e6 < n < 1.8e6  # "~1.7 M parameters for C = 51"
    with pytest.raises(ValueError, match="student tokens"):
        mnf(a, torch.randn(3, 7, 8))


def test_frozen_batchnorm_statistics_restores_running_stats():
    mnf = MNFModule(8, 3).train()
    a, V = torch.rand(4, 8), torch.randn(4, 5, 8)
    mnf(a, V)
    before = {k: v.clone() for k, v in mnf.state_dict().items() if "running" in k or "num_batches" in k}
    with frozen_batchnorm_statistics(mnf):
        mnf(a, V)
    after = {k: v for k, v in mnf.state_dict().items() if k in before}
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------------------------------
# Gradient routing: one optimizer == the released two-optimizer loop
# ----------------------------------------------------------------------------------------------------------------
def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def _assert_same_grads(a, b):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("teachers", [["audio"], ["audio", "image"]])
def test_ccl_routing_equals_two_optimizer_reference(teachers):
    torch.manual_seed(0)
    cfg = XKDDistillationConfig(method="ccl", teachers=teachers, num_labels=3, student_config=TINY_R21D,
                                audio_teacher_size=16, image_teacher_size=16)
    model = XKDForCCLDistillation(cfg).double().train()
    ref = copy.deepcopy(model)
    x = torch.randn(6, 4, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    feats = {t: torch.rand(6, 16, dtype=torch.float64) for t in teachers}
    mask = {"audio": torch.tensor([True, True, False, True, True, True])}
    model(x, y, teacher_features=feats, teacher_mask=mask).loss.backward()
    # literal released loop (training.py train_a/ai_epoch): one forward, per-teacher optimizers
    _, s = ref.student_outputs(x)
    z = ref.classifier(s)
    temps = {"audio": 0.5, "image": 0.1}
    loss_v_parts, loss_m = [], {}
    for t in teachers:
        rows = mask.get(t, torch.ones(6, dtype=torch.bool))
        terms = ccl_teacher_terms(s[rows], z[rows], feats[t][rows], y[rows], ref.composition_heads[t], temps[t])
        loss_v_parts.append(terms.student_distillation)
        loss_m[t] = terms.composition_loss
    w = 0.5 if len(teachers) > 1 else 1.0
    loss_v = F.cross_entropy(z, y) + w * sum(loss_v_parts)
    student_params = list(ref.student.parameters()) + list(ref.classifier.parameters())
    for t in teachers:  # optimizer_av.zero_grad(); total_loss_a.backward(retain_graph=True); (same for image)
        for p in ref.composition_heads[t].parameters():
            p.grad = None
        loss_m[t].backward(retain_graph=True)
    for p in student_params:  # optimizer.zero_grad(); total_loss_v.backward()
        p.grad = None
    loss_v.backward()
    _assert_same_grads(_grads(model), _grads(ref))
    # and the groups: heads are auxiliary (CCL multiplier 1.0)
    groups = model.parameter_groups(1e-3, 5e-4)
    assert [g["name"] for g in groups] == ["student", "auxiliary"]
    assert groups[1]["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.composition_heads.parameters()}


@pytest.mark.parametrize("student", ["r2plus1d", "xkd"])
def test_mnf_routing_equals_two_optimizer_reference(student):
    torch.manual_seed(0)
    student_cfg = TINY_R21D if student == "r2plus1d" else TINY_XKD_VIDEO
    cfg = XKDDistillationConfig(method="mnf-csc", teachers=["audio"], num_labels=3, student_type=student,
                                student_config=student_cfg, audio_teacher_size=16)
    model = XKDForMNFDistillation(cfg).double().train()
    ref = copy.deepcopy(model)
    x = torch.randn(6, 4, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 1])
    a = torch.rand(6, 16, dtype=torch.float64)
    model(x, y, teacher_features={"audio": a}).loss.backward()
    # literal released loop (train.py train_av_epoch)
    V, v = ref.student_outputs(x)
    p_v = ref.classifier(v)
    out = ref.mnf(a, V)
    norm = mnf_gate_sparsity_loss(ref.mnf.gate_weights())
    tri = mnf_triplet_loss(v, a, out.filtered_teacher, 0.2)
    a_losses = F.cross_entropy(out.logits, y) + norm + tri
    adj = csc_loss(v, out.calibrated, y, csc_temperature(v, out.filtered_teacher, 0.07))
    v_losses = F.cross_entropy(p_v, y) + adj
    for p in ref.mnf.parameters():  # audio_optimizer.zero_grad()
        p.grad = None
    a_losses.backward(retain_graph=True)
    for p in list(ref.student.parameters()) + list(ref.classifier.parameters()):  # video_optimizer.zero_grad()
        p.grad = None
    v_losses.backward()
    _assert_same_grads(_grads(model), _grads(ref))
    # BatchNorm running statistics advanced once, as in the single released forward
    for (n, b1), (_, b2) in zip(model.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(b1, b2, msg=n)
    groups = model.parameter_groups(3e-4, 5e-4)
    assert groups[1]["lr"] == pytest.approx(0.2 * 3e-4) and groups[1]["lr_scale"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------
def test_r2plus1d_parameter_count_and_token_map():
    def conv(cin, cout, kt, kh, kw):  # factorised conv + its inner BN (weight, bias)
        mid = (kt * kh * kw * cin * cout) // (kh * kw * cin + kt * cout)
        return cin * mid * kh * kw + 2 * mid + mid * cout * kt

    expected = conv(3, 64, 3, 7, 7) + 2 * 64
    cin = 64
    for i, c in enumerate([64, 128, 256, 512]):
        expected += conv(cin, c, 3, 3, 3) + 2 * c + conv(c, c, 3, 3, 3) + 2 * c
        if i > 0:
            expected += conv(cin, c, 1, 1, 1) + 2 * c
        cin = c
    model = XKDR2Plus1DModel(XKDR2Plus1DConfig())
    assert sum(p.numel() for p in model.parameters()) == expected == 14_365_303
    out = XKDR2Plus1DModel(XKDR2Plus1DConfig(**TINY_R21D))(torch.randn(2, 16, 3, 112, 112))
    assert out.last_hidden_state.shape == (2, 2 * 7 * 7, 16)  # 16 x 112 x 112 -> 2 x 7 x 7 tokens
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state.mean(1))


def test_teacher_of_another_width_gets_a_projection_and_bad_input_is_named():
    cfg = XKDDistillationConfig(method="ccl", teachers=["audio", "image"], num_labels=3, student_config=TINY_R21D,
                                audio_teacher_size=16, image_teacher_size=24)
    model = XKDForCCLDistillation(cfg)
    assert list(model.teacher_projections) == ["image"]
    assert model.teacher_projections["image"].in_features == 24
    aux = {id(p) for p in model.parameter_groups(1.0)[1]["params"]}
    assert all(id(p) in aux for p in model.teacher_projections.parameters())
    x = torch.randn(4, 8, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0])
    out = model(x, y, teacher_features={"audio": torch.rand(4, 16), "image": torch.rand(4, 24)})
    assert torch.isfinite(out.loss) and out.logits.shape == (4, 3)
    assert {"ce", "audio_student_teacher", "image_kl", "student"} <= set(out.loss_terms)
    with pytest.raises(ValueError, match=r"teacher_features\['image'\] must be \(batch, 24\)"):
        model(x, y, teacher_features={"audio": torch.rand(4, 16), "image": torch.rand(4, 16)})
    with pytest.raises(ValueError, match="lacks"):
        model(x, y, teacher_features={"audio": torch.rand(4, 16)})


def test_missing_teacher_rows_are_excluded_from_distillation_and_kept_in_ce():
    torch.manual_seed(0)
    s, z = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    t = torch.rand(5, 6, dtype=torch.float64)
    t[2] = 0  # the zero vector of a missing feature
    mask = torch.tensor([True, True, False, True, True])
    head = CCLCompositionHead(6, 3).double()
    out = ccl_objective(s, z, y, {"audio": t}, {"audio": head}, teacher_masks={"audio": mask})
    keep = mask.nonzero().flatten()
    terms = ccl_teacher_terms(s[keep], z[keep], t[keep], y[keep], head, 0.5)
    expected_v = F.cross_entropy(z, y) + terms.student_distillation
    assert out.student_loss.item() == pytest.approx(expected_v.item(), rel=1e-12)
    assert out.num_distilled == {"audio": 4}


def test_distillation_model_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = XKDDistillationConfig(method="mnf-csc", teachers=["audio"], num_labels=3, student_config=TINY_R21D,
                                audio_teacher_size=16, mnf_sparsity_all_layers=True)
    model = XKDForMNFDistillation(cfg).eval()
    model.save_pretrained(tmp_path)
    loaded = XKDForMNFDistillation.from_pretrained(tmp_path).eval()
    assert loaded.config.mnf_sparsity_all_layers is True and loaded.config.resolved_aux_lr_multiplier == 0.2
    x = torch.randn(2, 8, 3, 32, 32)
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(ValueError, match="method 'mnf-csc'"):
        XKDForMNFDistillation(XKDDistillationConfig(method="ccl", num_labels=3, student_config=TINY_R21D))
    with pytest.raises(ValueError, match="teachers must be"):
        XKDDistillationConfig(method="ccl", teachers=["depth"])


@pytest.mark.parametrize("student", ["r2plus1d", "xkd"])
def test_export_loads_in_the_video_pipeline(tmp_path, clips, student):
    from transformers import pipeline

    from transformers_xkd.downstream.distill import DISTILLATION_RECIPES, recipe_video_processor

    root, _, _ = clips
    cfg = XKDDistillationConfig(method="ccl", teachers=["audio"], num_labels=3, student_type=student,
                                student_config=TINY_R21D if student == "r2plus1d" else TINY_XKD_VIDEO,
                                audio_teacher_size=16, id2label={0: "a", 1: "b", 2: "c"},
                                label2id={"a": 0, "b": 1, "c": 2})
    model = XKDForCCLDistillation(cfg).eval()
    vp = recipe_video_processor({**DISTILLATION_RECIPES["ccl"], **TINY_RECIPE, "fps": 8.0}, train=False)
    exported = model.export_classifier(tmp_path / "cls", vp)
    x = torch.randn(2, 8, 3, 32, 32)
    torch.testing.assert_close(exported(x).logits, model(x).logits)
    pipe = pipeline("video-classification", model=str(tmp_path / "cls"))
    result = pipe(str(root / "test" / "class0" / "v0_test0.mp4"), top_k=3)
    assert len(result) == 3 and {r["label"] for r in result} == {"a", "b", "c"}
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Teachers, data, evaluation
# ----------------------------------------------------------------------------------------------------------------
def test_teacher_feature_folder_layout_rows_and_missing(tmp_path, caplog):
    from transformers.utils import logging as hf_logging

    from transformers_xkd.downstream.distill import TeacherFeatureFolder

    (tmp_path / "Drumming").mkdir()
    np.save(tmp_path / "Drumming" / "v_Drumming_g01_c01.npy", np.arange(4, dtype=np.float32))
    np.save(tmp_path / "Drumming" / "v_Drumming_g01_c02.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    folder = TeacherFeatureFolder(tmp_path)
    vec, found = folder.load("/videos/Drumming/v_Drumming_g01_c01.avi", "Drumming")
    assert found and vec.tolist() == [0, 1, 2, 3]
    row, _ = folder.load("x/v_Drumming_g01_c02.avi", "Drumming", np.random.default_rng(0))
    assert row.tolist() in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11])
    hf_logging.enable_propagation()
    with caplog.at_level(logging.WARNING):
        zero, found = folder.load("x/v_Drumming_g02_c01.avi", "Drumming")
    assert not found and zero.tolist() == [0, 0, 0, 0]
    assert "v_Drumming_g02_c01" in caplog.text
    assert folder.missing == {str(tmp_path / "Drumming" / "v_Drumming_g02_c01.npy")}
    with pytest.raises(FileNotFoundError, match="v_Drumming_g03"):
        TeacherFeatureFolder(tmp_path, allow_missing=False).load("v_Drumming_g03_c01.avi", "Drumming")


def test_extract_teacher_features_is_resumable(tmp_path, clips):
    from transformers_xkd import XKDFeatureExtractor
    from transformers_xkd.downstream.distill import TeacherFeatureFolder, extract_teacher_features

    _, train, _ = clips
    teacher = XKDAudioModel(XKDAudioConfig(**TINY_AUDIO))
    fe = XKDFeatureExtractor(feature_size=16, clip_duration=63 * 143 / 16000)
    small = train.select([0, 2])
    first = extract_teacher_features(teacher, "audio", small, tmp_path, feature_extractor=fe, num_clips=2,
                                     progress=False)
    assert first["written"] == 2 and first["skipped_existing"] == 0
    files = sorted(tmp_path.glob("*/*.npy"))
    assert len(files) == 2 and np.load(files[0]).shape == (2, 32)
    again = extract_teacher_features(teacher, "audio", train.select([0, 1, 2]), tmp_path, feature_extractor=fe,
                                     num_clips=2, progress=False)
    assert again["written"] == 1 and again["skipped_existing"] == 2
    assert TeacherFeatureFolder(tmp_path).infer_dim() == 32


def test_filter_keeps_videos_with_audio_and_their_classes(tmp_path):
    from transformers_xkd.downstream.datasets import load_folder
    from transformers_xkd.downstream.distill import filter_videos_with_audio

    for c, with_audio in ((0, [True, False]), (1, [False, False]), (2, [True, True])):
        for k, has in enumerate(with_audio):
            write_class_clip(tmp_path / "train" / f"c{c}" / f"v{k}.mp4", c, k, duration=1.0, audio=has)
            write_class_clip(tmp_path / "test" / f"c{c}" / f"v{k}.mp4", c, k, duration=1.0, audio=has)
    train, test, report = filter_videos_with_audio(load_folder(tmp_path / "train"), load_folder(tmp_path / "test"))
    assert (report.classes_before, report.classes_after) == (3, 2)
    assert (report.train_before, report.train_after, report.test_before, report.test_after) == (6, 3, 6, 3)
    assert report.dropped_classes == ["c1"]
    assert train.features["label"].names == ["c0", "c2"] and sorted(train["label"]) == [0, 1, 1]
    assert "2 of 3 classes" in report.format()


def test_sliding_window_indices_loop_pad_the_tail():
    from transformers_xkd.downstream.distill import sliding_window_indices

    assert sliding_window_indices(40, 16, 16) == [list(range(16)), list(range(16, 32)),
                                                   [32, 33, 34, 35, 36, 37, 38, 39] * 2]
    assert sliding_window_indices(3, 4, 4) == [[0, 1, 2, 0]]
    with pytest.raises(ValueError):
        sliding_window_indices(0)


def test_multistep_schedule_and_aux_group(tmp_path):
    from transformers_xkd.downstream.distill import multistep_factor

    assert multistep_factor(149.9, (150, 225)) == 1.0
    assert multistep_factor(150, (150, 225)) == pytest.approx(0.1)
    assert multistep_factor(230, (150, 225)) == pytest.approx(0.01)


def test_retrieval_metrics_on_a_hand_made_gallery():
    from transformers_xkd.downstream.retrieval import mean_features_by_video, retrieval_metrics

    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float64)
    g_labels = np.array([0, 1, 1, 2])
    queries = np.array([[1, 0.05], [0, 1], [0.5, -1]], dtype=np.float64)
    q_labels = np.array([1, 2, 3])
    # q0 ranking: g0 (0), g1 (1), g2 (1), g3 (2) -> first hit at rank 2; AP = (1/2 + 2/3) / 2
    # q1 ranking: g2 (1), g1 (1), g0 (0), g3 (2) -> hit at rank 4; AP = 1/4
    # q2 (class 3): no hit anywhere -> skipped in the mAP, counted
    m = retrieval_metrics(queries, q_labels, gallery, g_labels, ks=(1, 2, 4), map_at=500)
    assert m["R@1"] == pytest.approx(0.0)
    assert m["R@2"] == pytest.approx(100 / 3)
    assert m["R@4"] == pytest.approx(200 / 3)
    assert m["mAP@500"] == pytest.approx(100 * ((0.5 + 2 / 3) / 2 + 0.25) / 2)
    assert m["queries_without_hit"] == 1 and m["num_queries"] == 3
    # a shorter list: q1's hit falls outside the top 3 -> skipped too
    assert retrieval_metrics(queries, q_labels, gallery, g_labels, map_at=3)["queries_without_hit"] == 2
    f, labels = mean_features_by_video(np.array([[1.0, 0], [3, 0], [0, 2]]), np.array([5, 5, 7]), np.array([1, 1, 0]))
    assert f.tolist() == [[2, 0], [0, 2]] and labels.tolist() == [1, 0]


# ----------------------------------------------------------------------------------------------------------------
# Trainer end to end (a few steps per method and student)
# ----------------------------------------------------------------------------------------------------------------
def _feature_folder(root, dataset, dim=16, skip=()):
    rng = np.random.default_rng(0)
    names = dataset.features["label"].names
    for value, y in zip(dataset["video"], dataset["label"]):
        stem = pathlib.Path(value["path"]).stem
        if stem in skip:
            continue
        v = np.abs(rng.normal(size=dim)).astype(np.float32)
        v[y] += 3.0
        (root / names[y]).mkdir(parents=True, exist_ok=True)
        np.save(root / names[y] / f"{stem}.npy", v)
    return root


class _FixedBatch(torch.utils.data.Dataset):
    """Six fixed clips (no decoding): the Trainer sees the same samples every epoch, so the loss must fall."""

    def __init__(self, teachers, live_audio=False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(6, 4, 3, 16, 16, generator=g)
        self.y = [0, 1, 2, 0, 1, 2]
        self.feats = {t: torch.rand(6, 16, generator=g) for t in teachers if not (t == "audio" and live_audio)}
        self.audio = torch.randn(6, 64, 16, generator=g) if live_audio else None

    def __len__(self):
        return 6

    def __getitem__(self, i):
        item = {"pixel_values": self.x[i], "labels": self.y[i]}
        if self.audio is not None:
            item["input_values"] = self.audio[i]
        if self.feats:
            item["teacher_features"] = {k: v[i] for k, v in self.feats.items()}
            item["teacher_mask"] = {k: i != 0 for k in self.feats}  # sample 0's feature is "missing"
        return item


TRAINER_CASES = [("ccl", ["audio"], "r2plus1d"), ("ccl", ["audio", "image"], "xkd"), ("mnf-csc", ["audio"], "r2plus1d"),
                 ("mnf-csc", ["audio"], "xkd"), ("baseline", [], "r2plus1d")]


@pytest.mark.parametrize("method,teachers,student", TRAINER_CASES)
def test_trainer_steps_lower_the_loss(tmp_path, method, teachers, student):
    from transformers import ResNetConfig, ResNetModel, TrainingArguments

    from transformers_xkd.downstream.distill import (DISTILLATION_RECIPES, DistillationTrainer, FrozenTeachers,
                                                     build_distillation_model, distillation_collate)

    torch.manual_seed(0)
    live_audio = method == "mnf-csc" and student == "xkd"  # the on-the-fly audio teacher path
    live_image = "image" in teachers  # a tiny randomly initialised image backbone built from a config
    audio = XKDAudioModel(XKDAudioConfig(**TINY_AUDIO)) if live_audio else None
    image = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")) \
        if live_image else None
    sizes = {"audio": 32 if live_audio else 16, "image": 16}
    student_config = TINY_R21D if student == "r2plus1d" else {**TINY_XKD_VIDEO, "num_frames": 4, "image_size": 16}
    model = build_distillation_model(method, teachers, ["a", "b", "c"], student, student_config=student_config,
                                     teacher_sizes={t: sizes[t] for t in teachers})
    recipe = dict(DISTILLATION_RECIPES["mnf-csc" if method == "mnf-csc" else "ccl"])
    recipe.update(lr=3e-3 if method == "mnf-csc" else 0.05, milestones=(100,))
    ds = _FixedBatch(teachers, live_audio)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=6,
                             learning_rate=recipe["lr"], logging_steps=1, save_strategy="no", report_to="none",
                             remove_unused_columns=False, dataloader_num_workers=0, max_grad_norm=0.0, use_cpu=True)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=ds, data_collator=distillation_collate,
                                  recipe=recipe, steps_per_epoch=1,
                                  teachers=FrozenTeachers(audio, image) if (audio or image) else None)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert "loss_ce" in logs[0] and all(math.isfinite(h["loss"]) for h in logs)
    if method == "ccl":
        assert "loss_audio_student_teacher" in logs[0]
        assert trainer.distilled_rows["audio"] == 5 * 8 and trainer.seen_rows == 6 * 8
    if method == "mnf-csc":
        assert {"loss_csc", "loss_triplet", "loss_sparsity"} <= set(logs[0])
    groups = trainer.optimizer.param_groups
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    assert type(inner).__name__ == ("Adam" if method == "mnf-csc" else "SGD")
    if len(groups) == 2:
        mult = 0.2 if method == "mnf-csc" else 1.0
        assert groups[1]["lr"] == pytest.approx(mult * recipe["lr"])


RUNS = {
    "ccl-a-r2plus1d-npy": dict(method="ccl", teachers=["audio"], student="r2plus1d"),
    "mnf-xkd-live-audio": dict(method="mnf-csc", teachers=["audio"], student="xkd"),
}


class _RecordingHfApi:
    """Stand-in for `huggingface_hub.HfApi` (no network): records what would be pushed."""

    pushed: list = []

    def __init__(self, token=None, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        return repo_id

    def upload_folder(self, repo_id, folder_path, **kwargs):
        _RecordingHfApi.pushed.append((repo_id, sorted(p.name for p in pathlib.Path(folder_path).iterdir())))
        return {"repo_id": repo_id}


@pytest.mark.parametrize("name", list(RUNS))
def test_run_distillation_end_to_end(tmp_path, clips, name, monkeypatch):
    import huggingface_hub

    from transformers_xkd.downstream.distill import run_distillation

    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingHfApi)
    _RecordingHfApi.pushed = []

    torch.manual_seed(0)
    run = RUNS[name]
    _, train, test = clips
    kwargs = {}
    if name.endswith("npy"):
        skip = {pathlib.Path(train["video"][0]["path"]).stem}
        kwargs["teacher_feature_dirs"] = {"audio": _feature_folder(tmp_path / "feats", train, skip=skip)}
    else:
        kwargs["audio_teacher"] = XKDAudioModel(XKDAudioConfig(**TINY_AUDIO))
        kwargs["push_to_hub"] = "user/mnf-student"
    student_config = TINY_R21D if run["student"] == "r2plus1d" else TINY_XKD_VIDEO
    overrides = {**TINY_RECIPE, "epochs": 1, "batch_size": 3, "fps": 8.0}
    results = run_distillation(run["method"], train, test, tmp_path / "out", teachers=run["teachers"],
                               student=run["student"], student_config=student_config,
                               training_overrides=overrides, **kwargs)
    saved = json.loads((tmp_path / "out" / "distill_results.json").read_text())
    assert saved["top1"] == pytest.approx(results["top1"])
    assert 0.0 <= results["top1"] <= 100.0 and results["num_test_videos"] == 3
    assert set(results["retrieval"]) >= {"R@1", "R@5", "R@10", "R@20", "mAP@500", "queries_without_hit"}
    assert (tmp_path / "out" / "classifier" / "config.json").is_file()
    assert (tmp_path / "out" / "classifier" / "README.md").is_file()
    reloaded = (XKDForMNFDistillation if run["method"] == "mnf-csc" else XKDForCCLDistillation).from_pretrained(
        tmp_path / "out" / "distillation_model")
    assert reloaded.config.method == run["method"]
    if name.endswith("npy"):
        assert results["missing_teacher_features"] == {"audio": 1}
        # 6 videos seen once, the one without a feature never distilled
        assert results["seen_rows"] == 6 and results["distilled_rows"]["audio"] == 5
    else:
        repo, files = _RecordingHfApi.pushed[0]
        assert repo == "user/mnf-student" and {"README.md", "config.json", "model.safetensors"} <= set(files)
        card = (tmp_path / "out" / "classifier" / "README.md").read_text()
        assert "pipeline_tag: video-classification" in card and "MNF + CSC" in card


# ----------------------------------------------------------------------------------------------------------------
# Command lines: extract -> distill, and linear_eval --protocol retrieval for XKD features
# ----------------------------------------------------------------------------------------------------------------
REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_cli(script, argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"related_cli_{script}", REPO / "training" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_extract_then_distill_and_retrieval_command_lines(tmp_path, clips, capsys):
    from transformers_xkd import XKDFeatureExtractor

    root, _, _ = clips
    ckpt = tmp_path / "xkd_audio"
    XKDAudioModel(XKDAudioConfig(**TINY_AUDIO)).save_pretrained(ckpt)
    XKDFeatureExtractor(feature_size=16, clip_duration=63 * 143 / 16000).save_pretrained(ckpt)
    feats = tmp_path / "feats"
    rc = _run_cli("extract_teacher_features", ["--kind", "audio", "--teacher", str(ckpt), "--dataset", "folder",
                                               "--data-root", str(root / "train"), "--out", str(feats)])
    assert rc == 0 and len(list(feats.glob("*/*.npy"))) == 6
    assert '"written": 6' in capsys.readouterr().out
    out = tmp_path / "run"
    rc = _run_cli("distill", ["--method", "ccl", "--teacher", "audio", "--student", "r2plus1d", "--dataset", "folder",
                              "--data-root", str(root), "--audio-features", str(feats), "--output-dir", str(out),
                              "--student-config", json.dumps(TINY_R21D), "--set", "num_frames=8", "image_size=32",
                              "resize_shortest_edge=36", "epochs=1", "batch_size=3", "fps=8.0"])
    assert rc == 0
    results = json.loads((out / "distill_results.json").read_text())
    assert results["missing_teacher_features"] == {"audio": 0} and results["teachers"] == ["audio"]
    assert results["recipe"]["optimizer"] == "sgd" and results["recipe"]["milestones"] == [150, 225]
    # a teacher without features or a model is a usage error naming the flags
    with pytest.raises(SystemExit):
        _run_cli("distill", ["--method", "ccl", "--teacher", "image", "--dataset", "folder", "--data-root",
                             str(root), "--output-dir", str(out)])
    assert "--image-features" in capsys.readouterr().err
    # retrieval with frozen XKD video features
    video = tmp_path / "xkd_video"
    XKDVideoModel(XKDVideoConfig(**TINY_XKD_VIDEO)).save_pretrained(video)
    from transformers_xkd import XKDVideoProcessor

    XKDVideoProcessor(num_frames=8, size={"shortest_edge": 36}, crop_size=32).save_pretrained(video)
    rc = _run_cli("linear_eval", ["--checkpoint", str(video), "--dataset", "folder", "--data-root", str(root),
                                  "--protocol", "retrieval", "--test-clips", "2", "--output-dir", str(tmp_path / "r")])
    assert rc == 0
    metrics = json.loads((tmp_path / "r" / "retrieval_results.json").read_text())
    assert metrics["num_queries"] == 3 and metrics["num_gallery"] == 6
    assert {"R@1", "R@5", "R@10", "R@20", "mAP@500"} <= set(metrics)


def test_audio_filter_and_native_fps_test_on_real_media(real_media, tmp_path):
    from transformers_xkd.downstream.datasets import load_folder
    from transformers_xkd.downstream.distill import (DISTILLATION_RECIPES, build_distillation_model,
                                                     filter_videos_with_audio, sliding_window_predict)

    for cls, name in (("talk", "b.mp4"), ("talk", "world.mp4"), ("silent", "muted_b.mp4")):
        (tmp_path / cls).mkdir(exist_ok=True)
        (tmp_path / cls / name).symlink_to(real_media / "video" / name)
    train, _, report = filter_videos_with_audio(load_folder(tmp_path))
    assert (report.classes_after, report.train_after, report.dropped_classes) == (1, 2, ["silent"])
    model = build_distillation_model("baseline", [], ["talk", "other"], "r2plus1d", student_config=TINY_R21D)
    recipe = {**DISTILLATION_RECIPES["ccl"], **TINY_RECIPE}  # CCL: the file's native 30 fps
    scores, feats, labels = sliding_window_predict(model, train.select([0]), recipe)
    assert scores.shape == (1, 2) and feats.shape == (1, 16)
    assert scores.sum() == pytest.approx(1.0, abs=1e-5) and labels.tolist() == [0]
