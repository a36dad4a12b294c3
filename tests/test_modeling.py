"""Tests of the XKD configs, encoders, heads and XKDForPretraining (issue 2), on tiny configs."""

import copy
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
    AutoModelForVideoClassification,
)

from transformers_xkd import (
    XKDAudioConfig,
    XKDAudioModel,
    XKDConfig,
    XKDForAudioClassification,
    XKDForPretraining,
    XKDForVideoClassification,
    XKDModel,
    XKDVideoConfig,
    XKDVideoModel,
)
from transformers_xkd.modeling_xkd import (
    combine_losses,
    cross_modal_attention_weights,
    cross_modal_distillation_loss,
    ema_update,
    gaussian_mmd,
    masked_reconstruction_loss,
    patchify_audio,
    patchify_video,
    random_masking,
    refine_features,
)
from xkd_testers import XKDModelTester, XKDVideoModelTester

model_tester = XKDModelTester()


def video_input(config, batch=2, frames=None, size=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = frames or config.num_frames
    size = size or config.image_size
    return torch.randn(batch, frames, config.num_channels, size, size, generator=g)


def audio_input(config, batch=2, length=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length or config.max_length, config.num_mel_bins, generator=g)


# ------------------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------------------


def test_default_config_is_the_released_vit_b():
    config = XKDConfig()
    v, a = config.video_config, config.audio_config
    assert (v.num_frames, v.image_size, v.tubelet_size, v.patch_size) == (32, 112, 4, 16)
    assert v.grid_size == (8, 7, 7) and v.num_patches == 392 and v.patch_dim == 3072
    assert (a.num_mel_bins, a.max_length, a.frequency_patch_size, a.time_patch_size) == (80, 448, 4, 16)
    assert a.grid_size == (20, 28) and a.num_patches == 560 and a.patch_dim == 64
    for tower in (v, a):
        assert (tower.hidden_size, tower.num_hidden_layers, tower.num_attention_heads) == (768, 12, 12)
        assert tower.layer_norm_eps == 1e-5 and tower.qkv_bias is False and tower.hidden_act == "gelu"
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        384, 4, 12)
    assert (config.projector_hidden_size, config.projector_bottleneck_size, config.projector_output_size,
            config.projector_num_layers) == (2048, 256, 8192, 3)
    assert (config.video_mask_ratio, config.audio_mask_ratio) == (0.85, 0.80)
    assert config.teacher_view == "local" and config.projector_share_hidden_norm
    assert (config.video_teacher_temperature, config.audio_teacher_temperature, config.student_temperature) == (
        0.1, 0.07, 0.1)
    assert config.mmd_gammas == [0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: XKDVideoConfig(image_size=100), "image_size=100 is not divisible by patch_size=16"),
        (lambda: XKDVideoConfig(num_frames=30), "num_frames=30 is not divisible by tubelet_size=4"),
        (lambda: XKDAudioConfig(num_mel_bins=81), "num_mel_bins=81 is not divisible"),
        (lambda: XKDAudioConfig(max_length=450), "max_length=450 is not divisible"),
        (lambda: XKDVideoConfig(hidden_size=100, num_attention_heads=12), "not divisible by num_attention_heads"),
        (lambda: XKDConfig(variant="xkd-foo"), "variant must be one of"),
        (lambda: XKDConfig(video_mask_ratio=1.0), "video_mask_ratio must lie strictly between 0 and 1"),
        (lambda: XKDConfig(audio_mask_ratio=0.0), "audio_mask_ratio must lie strictly between 0 and 1"),
        (lambda: XKDConfig(teacher_view="both"), "teacher_view must be one of"),
        (lambda: XKDConfig(refine_mode="max"), "refine_mode must be one of"),
        (lambda: XKDConfig(mmd_gammas=[1.0, -1.0]), "mmd_gammas"),
        (lambda: XKDConfig(variant="xkd-mas", audio_config={"num_hidden_layers": 6}), "must equal audio_config"),
        (lambda: XKDConfig(local_image_size=90), "not divisible into"),
    ],
)
def test_invalid_configs_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_sub_config_loads_from_composite_folder(tmp_path):
    config = model_tester.get_config("xkd-mas")
    config.save_pretrained(tmp_path)
    assert XKDConfig.from_pretrained(tmp_path).variant == "xkd-mas"
    video = XKDVideoConfig.from_pretrained(tmp_path)
    assert isinstance(video, XKDVideoConfig) and video.image_size == XKDVideoModelTester().image_size
    assert isinstance(AutoConfig.from_pretrained(tmp_path), XKDConfig)


# ------------------------------------------------------------------------------------------------------------
# Encoders
# ------------------------------------------------------------------------------------------------------------


def test_video_encoder_shapes_and_pooled_feature(tiny_video_config):
    model = XKDVideoModel(tiny_video_config).eval()
    x = video_input(tiny_video_config)
    out = model(x, output_hidden_states=True)
    n = tiny_video_config.num_patches
    assert out.last_hidden_state.shape == (2, 1 + n, 32) and out.last_hidden_state.dtype == torch.float32
    assert out.pooler_output.shape == (2, 32)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 1:].mean(1))
    assert len(out.hidden_states) == tiny_video_config.num_hidden_layers + 1
    assert all(h.shape == (2, 1 + n, 32) for h in out.hidden_states)
    # hidden_states[-1] is the last block's output before the final norm
    torch.testing.assert_close(model.layernorm(out.hidden_states[-1]), out.last_hidden_state)


def test_audio_encoder_shapes_and_pooled_feature(tiny_audio_config):
    model = XKDAudioModel(tiny_audio_config).eval()
    out = model(audio_input(tiny_audio_config))
    assert out.last_hidden_state.shape == (2, 1 + tiny_audio_config.num_patches, 32)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 1:].mean(1))


def reference_video_forward(model: XKDVideoModel, x: torch.Tensor) -> torch.Tensor:
    """Independent re-statement of the released forward: Linear patch embedding on (pt, ph, pw, c)-flattened
    patches, explicit attention, LayerNorm eps 1e-5, exact GELU, mean of normalised patch tokens."""
    cfg = model.config
    conv = model.embeddings.patch_embeddings.projection.weight  # (D, C, pt, ph, pw)
    linear_weight = conv.permute(0, 2, 3, 4, 1).reshape(cfg.hidden_size, -1)  # (D, pt*ph*pw*C), channel fastest
    b, t, c, h, w = x.shape
    pt, p = cfg.tubelet_size, cfg.patch_size
    patches = x.reshape(b, t // pt, pt, c, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 5, 7, 3)
    patches = patches.reshape(b, -1, pt * p * p * c)
    tokens = patches @ linear_weight.T + model.embeddings.patch_embeddings.projection.bias
    pos = model.embeddings.position_embeddings
    tokens = tokens + pos[:, 1:]
    tokens = torch.cat([(model.embeddings.cls_token + pos[:, :1]).expand(b, -1, -1), tokens], 1)
    heads, dim = cfg.num_attention_heads, cfg.hidden_size
    for layer in model.encoder.layer:
        y = F.layer_norm(tokens, (dim,), layer.layernorm_before.weight, layer.layernorm_before.bias, 1e-5)
        q, k, v = (y @ layer.attention.qkv.weight.T).chunk(3, dim=-1)
        split = lambda z: z.reshape(b, -1, heads, dim // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        attn = ((q @ k.transpose(-1, -2)) / math.sqrt(dim // heads)).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        tokens = tokens + y @ layer.attention.proj.weight.T + layer.attention.proj.bias
        y = F.layer_norm(tokens, (dim,), layer.layernorm_after.weight, layer.layernorm_after.bias, 1e-5)
        y = F.gelu(y @ layer.mlp.fc1.weight.T + layer.mlp.fc1.bias)
        tokens = tokens + y @ layer.mlp.fc2.weight.T + layer.mlp.fc2.bias
    tokens = F.layer_norm(tokens, (dim,), model.layernorm.weight, model.layernorm.bias, 1e-5)
    return tokens[:, 1:].mean(1)


def test_video_encoder_matches_independent_reference(tiny_video_config):
    # float64: the two forwards sum in different orders, which in float32 moves the result by ~1e-6 depending on
    # the CPU's kernels; in float64 that noise is ~1e-15, so 1e-10 checks the formula, not the hardware.
    torch.manual_seed(0)
    model = XKDVideoModel(tiny_video_config).eval().double()
    x = video_input(tiny_video_config).double()
    with torch.no_grad():
        torch.testing.assert_close(model(x).pooler_output, reference_video_forward(model, x), atol=1e-10, rtol=0)


def test_audio_tokens_are_frequency_major(tiny_audio_config):
    model = XKDAudioModel(tiny_audio_config).eval().double()  # float64: exactness, not CPU rounding
    x = audio_input(tiny_audio_config).double()
    tokens, grid = model.embeddings.patch_embeddings(x), model.embeddings.patch_embeddings.patch_grid(x)
    assert grid == tiny_audio_config.grid_size  # (freq, time)
    conv = model.embeddings.patch_embeddings.projection
    manual = patchify_audio(x, 4, 16) @ conv.weight.reshape(32, -1).T + conv.bias
    torch.testing.assert_close(tokens, manual, atol=1e-10, rtol=0)


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_matmul_patch_embedding_equals_the_convolution(tiny_video_config, tiny_audio_config, modality):
    """The fast path (patchify + matmul on the conv weight) is the convolution: outputs, grid and weight grads.

    Exactness in float64 (a convolution and a matmul over K = 3072 products sum in different orders: ~1e-6 apart
    in float32, more on AVX2 than on AVX-512, ~1e-14 in float64); the bf16 leg only checks that both run the same
    map, to a few bf16 units (2^-8 relative) of outputs of magnitude ~1.
    """
    torch.manual_seed(0)
    if modality == "video":
        embed = XKDVideoModel(tiny_video_config).embeddings.patch_embeddings
        x = video_input(tiny_video_config)
    else:
        embed = XKDAudioModel(tiny_audio_config).embeddings.patch_embeddings
        x = audio_input(tiny_audio_config)
    embed.double()
    fast, fast_grid = embed(x.double()), embed.patch_grid(x.double())
    ref, ref_grid = embed.conv_forward(x.double())
    assert tuple(fast_grid) == tuple(ref_grid)
    torch.testing.assert_close(fast, ref, atol=1e-10, rtol=0)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), embed.projection.weight)
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), embed.projection.weight)
    torch.testing.assert_close(grad_fast, grad_ref, atol=1e-9, rtol=1e-10)
    with torch.no_grad():  # bf16: same map, bf16 rounding only
        fast16 = embed.to(torch.bfloat16)(x.to(torch.bfloat16))
        ref16, _ = embed.conv_forward(x.to(torch.bfloat16))
    torch.testing.assert_close(fast16.float(), ref16.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("attn", ["eager", "flex_attention"])
def test_sdpa_matches_other_attention_kernels(tiny_video_config, attn):
    torch.manual_seed(0)
    model = XKDVideoModel(tiny_video_config).eval()
    other = XKDVideoModel(copy.deepcopy(tiny_video_config))
    other.load_state_dict(model.state_dict())
    other.set_attn_implementation(attn)
    other.eval()
    x = video_input(tiny_video_config)
    if attn == "eager":  # float64 where the kernel allows it: exactness, not CPU rounding
        model, other, x = model.double(), other.double(), x.double()
    # flex_attention on the CPU has no float64; in float32 the kernels differ by ~7e-7 on LayerNorm-ed outputs of
    # magnitude ~1 (sums of <= 64 products), so 1e-5 is 14x that, and a wrong attention is off by O(0.1).
    tol = 1e-10 if attn == "eager" else 1e-5
    with torch.no_grad():
        torch.testing.assert_close(model(x).last_hidden_state, other(x).last_hidden_state, atol=tol, rtol=0)


def test_eager_attentions_have_documented_shapes(tiny_audio_config):
    model = XKDAudioModel(tiny_audio_config)
    model.set_attn_implementation("eager")
    out = model(audio_input(tiny_audio_config), output_attentions=True)
    n = 1 + tiny_audio_config.num_patches
    assert len(out.attentions) == tiny_audio_config.num_hidden_layers
    assert all(a.shape == (2, 2, n, n) for a in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 2, n))


def test_cls_attention_equals_row_of_eager_attention(tiny_video_config):
    model = XKDVideoModel(tiny_video_config).eval().double()  # float64: two code paths, exact formula
    model.set_attn_implementation("eager")
    out = model(video_input(tiny_video_config).double(), output_attentions=True, output_cls_attention=True)
    assert out.cls_attention.dtype == torch.float64  # no silent downcast of float64 inputs
    torch.testing.assert_close(out.cls_attention, out.attentions[-1][:, :, 0, 1:], atol=1e-12, rtol=0)


def test_position_embeddings_interpolate_for_other_sizes(tiny_video_config, tiny_audio_config):
    video = XKDVideoModel(tiny_video_config).eval()
    out = video(video_input(tiny_video_config, frames=4, size=48))  # grid (1, 3, 3) instead of (2, 2, 2)
    assert out.last_hidden_state.shape == (2, 1 + 9, 32)
    audio = XKDAudioModel(tiny_audio_config).eval()
    assert audio(audio_input(tiny_audio_config, length=32)).last_hidden_state.shape == (2, 1 + 4 * 2, 32)
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        video(video_input(tiny_video_config, size=48), interpolate_pos_encoding=False)


def test_video_interpolation_follows_released_scale_factor(tiny_video_config):
    from transformers_xkd.modeling_xkd import _interpolate_video_position_embeddings

    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 2 * 2 * 2, 5)
    out = _interpolate_video_position_embeddings(pos, (2, 2, 2), (1, 3, 3))
    grid = pos[:, 1:].reshape(1, 2, 2, 2, 5).permute(0, 4, 1, 2, 3)
    # released: scale_factor = ((t1 + 0.1) / t0, ...), used as given (not recomputed from the output size)
    expected = F.interpolate(grid, scale_factor=(1.1 / 2, 3.1 / 2, 3.1 / 2), mode="trilinear", align_corners=False)
    torch.testing.assert_close(out[:, 1:], expected.permute(0, 2, 3, 4, 1).reshape(1, 9, 5))
    torch.testing.assert_close(out[:, :1], pos[:, :1])
    assert _interpolate_video_position_embeddings(pos, (2, 2, 2), (2, 2, 2)) is pos


def test_activation_checkpointing_gives_the_same_gradients(tiny_video_config):
    torch.manual_seed(0)
    model = XKDVideoModel(tiny_video_config).train()
    other = copy.deepcopy(model)
    other.activation_checkpointing_enable()
    x = video_input(tiny_video_config)
    model(x).pooler_output.sum().backward()
    other(x).pooler_output.sum().backward()
    assert other.encoder.layer[0].gradient_checkpointing
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


# ------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------


def test_bad_video_inputs_name_the_input(tiny_video_config):
    model = XKDVideoModel(tiny_video_config)
    x = video_input(tiny_video_config)
    with pytest.raises(ValueError, match=r"`pixel_values` has 1 channels .* expects 3"):
        model(x[:, :, :1])
    with pytest.raises(ValueError, match="6 frames, which is not divisible by the tubelet size 4"):
        model(x[:, :6])
    with pytest.raises(ValueError, match="32x30, which is not divisible by the patch size 16"):
        model(x[..., :30])
    with pytest.raises(ValueError, match=r"shape \(batch, frames, channels, height, width\)"):
        model(x[0])
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`pixel_values` contains NaN or infinite values"):
        model(bad)
    with pytest.raises(ValueError, match="floating-point"):
        model(x.to(torch.uint8))


def test_bad_audio_inputs_name_the_input(tiny_audio_config):
    model = XKDAudioModel(tiny_audio_config)
    x = audio_input(tiny_audio_config)
    with pytest.raises(ValueError, match=r"`input_values` has 20 mel bins .* expects 16"):
        model(torch.randn(2, 64, 20))
    with pytest.raises(ValueError, match="60 time frames, which is not divisible by the time patch size 16"):
        model(x[:, :60])
    huge = torch.full_like(x, 3e38)  # finite, but its sum overflows: the cheap check must not raise on it
    assert model(huge).last_hidden_state.shape[0] == 2
    x[1, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="`input_values` contains NaN or infinite values"):
        model(x)


def test_misuse_of_models_gets_clear_errors(tiny_video_config, tiny_audio_config):
    """Issue 11.6 (model side): empty batches, mask ratios, labels, unpaired batches, dtypes, misspelled config keys."""
    video = XKDVideoModel(tiny_video_config).eval()
    x = video_input(tiny_video_config)
    with pytest.raises(ValueError, match=r"`pixel_values` is an empty batch"):
        video(x[:0])
    with pytest.raises(ValueError, match=r"`input_values` is an empty batch"):
        XKDAudioModel(tiny_audio_config)(audio_input(tiny_audio_config)[:0])
    for ratio in (0.0, 1.0, -0.2, 1.5, "0.5"):
        with pytest.raises(ValueError, match=r"`mask_ratio` must be a number strictly between 0 and 1"):
            video(x, mask_ratio=ratio)
    with pytest.raises(ValueError, match=r"`mask_ratio`=0.99 keeps no patch of 8"):
        video(x, mask_ratio=0.99)
    # a float32 batch into a bf16 model is cast to the model's dtype (not a dtype error from inside a matmul)
    bf16 = copy.deepcopy(video).to(torch.bfloat16)
    with torch.no_grad():
        out = bf16(x)
        ref = bf16(x.to(torch.bfloat16))
    assert out.last_hidden_state.dtype == torch.bfloat16 and torch.equal(out.last_hidden_state, ref.last_hidden_state)
    # labels outside num_labels, of the wrong shape or kind
    config = copy.deepcopy(tiny_video_config)
    config.id2label = {i: f"c{i}" for i in range(3)}
    classifier = XKDForVideoClassification(config).eval()
    with pytest.raises(ValueError, match=r"`labels` holds class index 3, outside \[0, 3\) \(num_labels=3\)"):
        classifier(x, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"`labels` holds class index -1"):
        classifier(x, labels=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"`labels` has 3 rows but the batch has 2"):
        classifier(x, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"float `labels` are multi-hot targets and must have shape \(2, 3\)"):
        classifier(x, labels=torch.tensor([0.0, 1.0]))
    assert classifier(x, labels=torch.tensor([2, -100])).loss.isfinite()  # ignore_index is allowed
    # audio and video of different batch sizes cannot be fused sample by sample
    model = XKDModel(model_tester.get_config()).eval()
    with pytest.raises(ValueError, match=r"different batch sizes: `pixel_values` 2, `input_values` 3"):
        model.get_audio_visual_features(x, audio_input(tiny_audio_config, batch=3))
    pre = XKDForPretraining(model_tester.get_config())
    batch = model_tester.pretraining_inputs(pre.config)
    batch["local_input_values"] = batch["local_input_values"][:1]
    with pytest.raises(ValueError, match=r"different batch sizes: .*`local_input_values\[0\]` 1"):
        pre(**batch)
    # config keywords close to a field name
    with pytest.raises(ValueError, match=r"'hiden_size', which is not one of its fields; did you mean 'hidden_size'"):
        XKDVideoConfig(**{**XKDVideoModelTester().config_kwargs(), "hiden_size": 32})
    with pytest.raises(ValueError, match=r"did you mean 'num_mel_bins'"):
        XKDAudioConfig(num_mel_bin=16)
    with pytest.raises(ValueError, match=r"XKDConfig got the keyword 'video_mask_ration'.*'video_mask_ratio'"):
        model_tester.get_config(video_mask_ration=0.5)
    with pytest.raises(ValueError, match=r"XKDVideoConfig got the keyword 'num_frame'"):
        XKDConfig(video_config={"num_frame": 8})
    # transformers' own keywords and unrelated metadata still pass
    assert XKDVideoConfig(num_labels=4, problem_type="single_label_classification", architectures=["X"]).num_labels == 4


# ------------------------------------------------------------------------------------------------------------
# Heads and XKDModel
# ------------------------------------------------------------------------------------------------------------


def test_video_classification_head_and_loss(tiny_video_config):
    config = copy.deepcopy(tiny_video_config)
    config.id2label = {i: f"c{i}" for i in range(5)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = XKDForVideoClassification(config).eval()
    assert model.loss_type == "ForVideoClassification"
    x = video_input(config)
    labels = torch.tensor([1, 3])
    out = model(x, labels=labels)
    assert out.logits.shape == (2, 5)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    expected = model.classifier(model.video_model(x).pooler_output)
    torch.testing.assert_close(out.logits, expected)


def test_audio_classification_multi_label_uses_bce(tiny_audio_config):
    config = copy.deepcopy(tiny_audio_config)
    config.id2label = {i: f"c{i}" for i in range(4)}
    config.problem_type = "multi_label_classification"
    model = XKDForAudioClassification(config).eval()
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    out = model(audio_input(config), labels=labels)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels))


def test_xkd_model_late_fusion_features():
    model = XKDModel(model_tester.get_config()).eval()
    v_cfg, a_cfg = model.config.video_config, model.config.audio_config
    pv, iv = video_input(v_cfg), audio_input(a_cfg)
    fused = model.get_audio_visual_features(pv, iv)
    assert fused.shape == (2, 64)
    torch.testing.assert_close(fused[:, :32], F.normalize(model.get_video_features(pv).pooler_output, dim=-1))
    torch.testing.assert_close(fused[:, 32:], F.normalize(model.get_audio_features(iv).pooler_output, dim=-1))
    torch.testing.assert_close(fused.norm(dim=-1), torch.full((2,), math.sqrt(2.0)))
    with pytest.raises(ValueError, match="needs `pixel_values`, `input_values` or both"):
        model()


# ------------------------------------------------------------------------------------------------------------
# Save / load round trips and tower loading
# ------------------------------------------------------------------------------------------------------------


def _same_outputs(a, b, inputs):
    a.eval(), b.eval()
    with torch.no_grad():
        out_a, out_b = a(**inputs), b(**inputs)
    key = "logits" if "logits" in out_a else "last_hidden_state"
    torch.testing.assert_close(out_a[key], out_b[key], atol=0, rtol=0)


@pytest.mark.parametrize("cls, auto", [
    (XKDVideoModel, AutoModel), (XKDForVideoClassification, AutoModelForVideoClassification)])
def test_video_round_trip(tmp_path, tiny_video_config, cls, auto):
    model = cls(tiny_video_config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    inputs = {"pixel_values": video_input(tiny_video_config)}
    _same_outputs(model, cls.from_pretrained(tmp_path), inputs)
    loaded = auto.from_pretrained(tmp_path)
    assert type(loaded) is cls
    _same_outputs(model, loaded, inputs)


@pytest.mark.parametrize("cls, auto", [
    (XKDAudioModel, AutoModel), (XKDForAudioClassification, AutoModelForAudioClassification)])
def test_audio_round_trip(tmp_path, tiny_audio_config, cls, auto):
    model = cls(tiny_audio_config)
    model.save_pretrained(tmp_path)
    inputs = {"input_values": audio_input(tiny_audio_config)}
    _same_outputs(model, cls.from_pretrained(tmp_path), inputs)
    assert type(auto.from_pretrained(tmp_path)) is cls


def test_towers_load_from_an_xkd_model_folder(tmp_path):
    model = XKDModel(model_tester.get_config()).eval()
    model.save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is XKDModel
    v_cfg, a_cfg = model.config.video_config, model.config.audio_config
    video = XKDVideoModel.from_pretrained(tmp_path).eval()
    audio = XKDAudioModel.from_pretrained(tmp_path).eval()
    pv, iv = video_input(v_cfg), audio_input(a_cfg)
    with torch.no_grad():
        torch.testing.assert_close(video(pv).pooler_output, model.get_video_features(pv).pooler_output, atol=0,
                                   rtol=0)
        torch.testing.assert_close(audio(iv).pooler_output, model.get_audio_features(iv).pooler_output, atol=0,
                                   rtol=0)
    classifier = XKDForVideoClassification.from_pretrained(tmp_path, num_labels=3)
    for key, value in model.video_model.state_dict().items():
        torch.testing.assert_close(classifier.video_model.state_dict()[key], value, atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["xkd", "xkd-mas", "xkd-mats"])
def test_pretraining_round_trip_and_teacher_towers(tmp_path, variant):
    torch.manual_seed(0)
    model = XKDForPretraining(model_tester.get_config(variant))
    batch = model_tester.pretraining_inputs(model.config)
    model(**batch).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.update_teachers(0.9)
    model.save_pretrained(tmp_path)
    loaded = XKDForPretraining.from_pretrained(tmp_path)
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is XKDForPretraining
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=0, rtol=0, msg=key)
    assert (loaded.audio_student.encoder is loaded.video_student.encoder) == (variant != "xkd")
    assert (loaded.audio_model.encoder is loaded.video_model.encoder) == (variant == "xkd-mats")
    assert not any(p.requires_grad for p in loaded.video_model.parameters())
    assert not any(p.requires_grad for p in loaded.audio_teacher_head.parameters())
    # XKDVideoModel / XKDAudioModel from a pretraining folder give the teachers
    pv, iv = batch["pixel_values"], batch["input_values"]
    model.eval()
    with torch.no_grad():
        video = XKDVideoModel.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(video(pv).pooler_output, model.video_model(pv).pooler_output, atol=0, rtol=0)
        audio = XKDAudioModel.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(audio(iv).pooler_output, model.audio_model(iv).pooler_output, atol=0, rtol=0)
        exported = model.export_teachers().eval()
        torch.testing.assert_close(exported.get_video_features(pv).pooler_output, model.video_model(pv).pooler_output)


# ------------------------------------------------------------------------------------------------------------
# Losses against hand-computed examples
# ------------------------------------------------------------------------------------------------------------


def test_mmd_hand_computed():
    # x = {0, 1}, y = {3} in 1-D, one gamma = 0.5: K(a,b) = exp(-0.5 (a-b)^2). float64 in, float64 out: the check
    # is the formula, to 1e-12, on any CPU.
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[3.0]], dtype=torch.float64)
    k = lambda d2: math.exp(-0.5 * d2)  # noqa: E731
    kxx = (k(0) + k(1) + k(1) + k(0)) / 4
    kyy = k(0)
    kxy = (k(9) + k(4)) / 2
    expected = kxx + kyy - 2 * kxy
    assert gaussian_mmd(x, y, [0.5]).dtype == torch.float64
    torch.testing.assert_close(gaussian_mmd(x, y, [0.5]), torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    # several bandwidths add their kernels
    two = gaussian_mmd(x, y, [0.5, 2.0])
    k2 = lambda d2: math.exp(-2.0 * d2)  # noqa: E731
    expected2 = expected + (2 * k2(0) + 2 * k2(1)) / 4 + k2(0) - (k2(9) + k2(4))
    torch.testing.assert_close(two, torch.tensor(expected2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert gaussian_mmd(x, x, [1.0]).abs() < 1e-12


def test_distillation_with_centering_hand_computed():
    f64 = dict(dtype=torch.float64)  # float64 in, float64 out: the formula to 1e-12, on any CPU
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]], **f64)  # 2 views x batch 2
    teacher = torch.tensor([[1.0, 3.0], [2.0, 2.0]], **f64)
    center = torch.tensor([[1.0, 0.0]])  # a float32 buffer, as in the model
    tau_t, tau_s = 0.5, 0.25
    loss, entropy, kl, batch_mean = cross_modal_distillation_loss(student, teacher, center, tau_t, tau_s)

    def softmax(values):
        e = [math.exp(v) for v in values]
        return [v / sum(e) for v in e]

    q = [softmax([(1 - 1) / tau_t, (3 - 0) / tau_t]), softmax([(2 - 1) / tau_t, (2 - 0) / tau_t])]
    terms, ents, kls = [], [], []
    for row, s in enumerate(student.tolist()):
        p = softmax([v / tau_s for v in s])
        qq = q[row % 2]  # view-major stacking: row r pairs with teacher sample r mod batch
        terms.append(-sum(a * math.log(b) for a, b in zip(qq, p)))
        ents.append(-sum(a * math.log(a) for a in qq))
        kls.append(sum(a * (math.log(a) - math.log(b)) for a, b in zip(qq, p)))
    assert loss.dtype == entropy.dtype == kl.dtype == batch_mean.dtype == torch.float64
    torch.testing.assert_close(loss, torch.tensor(sum(terms) / 4, **f64), atol=1e-12, rtol=0)
    torch.testing.assert_close(entropy, torch.tensor(sum(ents) / 4, **f64), atol=1e-12, rtol=0)
    torch.testing.assert_close(kl, torch.tensor(sum(kls) / 4, **f64), atol=1e-12, rtol=0)
    torch.testing.assert_close(batch_mean, torch.tensor([[1.5, 2.5]], **f64), atol=0, rtol=0)
    with pytest.raises(ValueError, match="not a whole number of views"):
        cross_modal_distillation_loss(student[:3], teacher, center, tau_t, tau_s)


def test_refine_hand_computed():
    # one sample, 2 heads; video 2 tokens, audio 3 tokens
    v = torch.tensor([[[0.2, 0.6], [0.4, 0.4]]])
    a = torch.tensor([[[0.1, 0.2, 0.3], [0.3, 0.3, 0.3]]])
    wv, wa = cross_modal_attention_weights(v, a, "mean")
    # M[h, i, j] = a[h, i] v[h, j]; video weight_j = mean_i M / mean_j v
    for h in range(2):
        mean_v = sum(v[0, h].tolist()) / 2
        mean_a = sum(a[0, h].tolist()) / 3
        for j in range(2):
            m = sum(a[0, h, i].item() * v[0, h, j].item() for i in range(3)) / 3
            assert wv[0, h, j].item() == pytest.approx(m / mean_v, rel=1e-6)
        for i in range(3):
            m = sum(a[0, h, i].item() * v[0, h, j].item() for j in range(2)) / 2
            assert wa[0, h, i].item() == pytest.approx(m / mean_a, rel=1e-6)
    # align_feats: omega = mean over heads; s = sqrt(E_org / E_aft); output = mean_n (s * omega * F)
    features = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])
    omega = wv.mean(1)[0]
    pooled = features[0].mean(0)
    weighted = (omega[:, None] * features[0]).mean(0)
    s = math.sqrt(pooled.pow(2).sum().item() / weighted.pow(2).sum().item())
    torch.testing.assert_close(refine_features(features, wv)[0], s * weighted)


def test_refine_is_invariant_to_a_per_sample_scale():
    torch.manual_seed(0)
    features = torch.randn(3, 5, 4)
    weights = torch.rand(3, 2, 5)
    scale = torch.tensor([0.5, 3.0, 10.0]).view(3, 1, 1)
    torch.testing.assert_close(refine_features(features, weights * scale), refine_features(features, weights))
    # and the refined feature keeps the energy of the plain mean
    torch.testing.assert_close(refine_features(features, weights).norm(dim=-1), features.mean(1).norm(dim=-1))
    # uniform weights give back the plain mean
    torch.testing.assert_close(refine_features(features, torch.ones(3, 2, 5)), features.mean(1))


def test_reconstruction_counts_masked_patches_only():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 3.0], [5.0, 5.0], [0.0, 4.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    # raw: ((1 + 9) / 2 + (0 + 16) / 2) / 2 masked patches
    assert masked_reconstruction_loss(pred, target, mask, norm_pix_loss=False).item() == pytest.approx(6.5)
    # norm_pix, unbiased variance: [1, 3] -> +-1/sqrt(2+1e-6); [0, 4] -> +-2/sqrt(8+1e-6)
    expected = 1.0 / (2.0 + 1e-6)
    assert masked_reconstruction_loss(pred, target, mask).item() == pytest.approx(
        (expected + 4.0 / (8.0 + 1e-6)) / 2, rel=1e-6)
    # changing an unmasked patch's prediction changes nothing
    pred2 = pred.clone()
    pred2[0, 1] = 100.0
    assert masked_reconstruction_loss(pred2, target, mask).item() == masked_reconstruction_loss(pred, target, mask).item()


def test_total_loss_weights():
    config = XKDConfig()
    assert combine_losses(1.0, 2.0, 3.0, config) == pytest.approx((5 * 1 + 2 + 3) / 7)
    config.normalize_loss_weights = False
    assert combine_losses(1.0, 2.0, 3.0, config) == pytest.approx(5 + 2 + 3)


def test_patchify_orders_match_the_released_einops():
    x = torch.arange(2 * 8 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 8, 3, 32, 32)
    patches = patchify_video(x, 4, 16)
    assert patches.shape == (2, 2 * 2 * 2, 4 * 16 * 16 * 3)
    # token (t=1, h=0, w=1), element (pt=2, ph=3, pw=5, c=1): channel fastest
    token = 1 * 4 + 0 * 2 + 1
    element = ((2 * 16 + 3) * 16 + 5) * 3 + 1
    assert patches[1, token, element] == x[1, 1 * 4 + 2, 1, 0 * 16 + 3, 1 * 16 + 5]
    audio = torch.arange(64 * 16, dtype=torch.float32).reshape(1, 64, 16)  # (time, mel)
    ap = patchify_audio(audio, 4, 16)
    # token (f=2, t=3) frequency-major of a (4 f x 4 t) grid; element (pf=1, pt=7)
    assert ap[0, 2 * 4 + 3, 1 * 16 + 7] == audio[0, 3 * 16 + 7, 2 * 4 + 1]


def test_random_masking_keeps_the_released_count_and_is_deterministic_with_noise():
    seq = torch.randn(2, 392, 4)
    kept, mask, ids_restore = random_masking(seq, 0.85)
    assert kept.shape == (2, 59, 4) and mask.sum(1).tolist() == [333, 333]
    assert random_masking(torch.randn(1, 560, 4), 0.8)[0].shape[1] == 112
    noise = torch.rand(2, 392)
    a = random_masking(seq, 0.85, noise)
    b = random_masking(seq, 0.85, noise.clone())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the kept tokens are those with the smallest noise, in noise order
    order = noise[0].argsort()[:59]
    torch.testing.assert_close(a[0][0], seq[0, order])
    assert (a[1][0, order] == 0).all()


def test_ema_update_formula():
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, 0.9 * t0[key] + 0.1 * student.state_dict()[key])


def test_center_update_inside_forward():
    torch.manual_seed(0)
    model = XKDForPretraining(model_tester.get_config()).train()
    batch = model_tester.pretraining_inputs(model.config)
    model.video_teacher_center.fill_(0.5)
    with torch.no_grad():
        teacher_in = batch["local_pixel_values"][:, 0]  # released: teachers see the first local view
        v_feat, _ = model._teacher_features(teacher_in, batch["local_input_values"][:, 0])
        expected_mean = model.video_teacher_head(v_feat).mean(0, keepdim=True)
    model(**batch)
    torch.testing.assert_close(model.video_teacher_center, 0.9 * 0.5 + 0.1 * expected_mean)
    model.eval()
    before = model.video_teacher_center.clone()
    model(**batch)
    assert torch.equal(before, model.video_teacher_center)  # no update outside training


RELEASED_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def mmd_float64_reference(x, y, gammas):
    """Independent MMD^2 in float64 from explicit differences (no norm expansion, nothing to cancel)."""
    x, y = x.double(), y.double()

    def k(a, b):
        d2 = (a[:, None] - b[None]).pow(2).sum(-1)
        return sum(torch.exp(-g * d2) for g in gammas)

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def test_mmd_under_bf16_autocast_equals_float64_on_nearly_identical_rows():
    """Issue 16.7: 8192-wide LayerNorm-ed projector rows a few percent apart (early training). Before, bf16
    autocast cast the distance matmul down and the MMD came out 0.0 (or 6.75 against 0.72); float32 without the
    common-mean shift was 10 % off."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8192, generator=g)
    for noise in (1e-3, 3e-2):
        x = F.layer_norm(base + noise * torch.randn(16, 8192, generator=g), (8192,))
        y = F.layer_norm(base + noise * torch.randn(1, 8192, generator=g) + noise * torch.randn(16, 8192, generator=g),
                         (8192,))
        expected = mmd_float64_reference(x, y, RELEASED_GAMMAS)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = gaussian_mmd(x, y, RELEASED_GAMMAS)
        assert got.dtype == torch.float32
        # float32 after the shift: relative error ~1e-4 (distances of ~1e-2..1e2 from sums of 8192 products)
        torch.testing.assert_close(got.double(), expected, rtol=2e-3, atol=1e-6)
        assert gaussian_mmd(x.double(), y.double(), RELEASED_GAMMAS).dtype == torch.float64
        torch.testing.assert_close(gaussian_mmd(x.double(), y.double(), RELEASED_GAMMAS), expected, rtol=1e-9, atol=0)


def test_kd_and_reconstruction_losses_under_bf16_autocast_equal_float64():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(6, 64, generator=g)
    teacher = 5 + 0.01 * torch.randn(3, 64, generator=g)  # centred logits: large common part, small differences
    center = torch.full((1, 64), 5.0) + 0.005 * torch.randn(1, 64, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cross_modal_distillation_loss(student, teacher, center, 0.04, 0.1)
    ref = cross_modal_distillation_loss(student.double(), teacher.double(), center.double(), 0.04, 0.1)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32 and b.dtype == torch.float64
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    pred = torch.randn(2, 5, 48, generator=g)
    target = 3 + 1e-3 * torch.randn(2, 5, 48, generator=g)  # low-contrast patches: norm-pix divides by a small std
    mask = torch.tensor([[1.0, 0, 1, 1, 0], [0, 1, 1, 0, 1]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = masked_reconstruction_loss(pred.bfloat16(), target, mask)
    ref = masked_reconstruction_loss(pred.bfloat16().double(), target.double(), mask)
    assert got.dtype == torch.float32 and ref.dtype == torch.float64
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)


def test_float64_is_kept_by_attention_weights_and_position_interpolation():
    from transformers_xkd.modeling_xkd import (
        _interpolate_audio_position_embeddings,
        _interpolate_video_position_embeddings,
    )

    v = torch.rand(2, 2, 8, dtype=torch.float64)
    a = torch.rand(2, 2, 16, dtype=torch.float64)
    for mode in ("mean", "softmax"):
        assert all(w.dtype == torch.float64 for w in cross_modal_attention_weights(v, a, mode))
    pos = torch.randn(1, 1 + 8, 4, dtype=torch.float64)
    assert _interpolate_video_position_embeddings(pos, (2, 2, 2), (1, 3, 3)).dtype == torch.float64
    assert _interpolate_audio_position_embeddings(pos, (2, 4), (2, 2)).dtype == torch.float64
    # float64 end to end through the pretraining forward
    torch.manual_seed(0)
    model = XKDForPretraining(model_tester.get_config()).double().eval()
    batch = {k: v.double() for k, v in model_tester.pretraining_inputs(model.config).items()}
    out = model(**batch)
    assert all(getattr(out, name).dtype == torch.float64 for name in (
        "loss", "video_reconstruction_loss", "distillation_loss", "student_alignment_loss", "video_teacher_entropy"))


def test_distillation_loss_module_owns_its_centre():
    from transformers_xkd.modeling_xkd import XKDCrossModalDistillationLoss

    loss = XKDCrossModalDistillationLoss(4, center_momentum=0.9)
    assert [n for n, _ in loss.named_buffers()] == ["center"] and not list(loss.parameters())
    loss.center.fill_(0.25)
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g)
    got = loss(student, teacher, 0.07, 0.1)
    want = cross_modal_distillation_loss(student, teacher, torch.full((1, 4), 0.25), 0.07, 0.1)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    loss.update_center(got[3])
    torch.testing.assert_close(loss.center, 0.9 * 0.25 + 0.1 * teacher.mean(0, keepdim=True))
    # in the model: one module per direction, each owning the centre of its teacher
    model = XKDForPretraining(model_tester.get_config())
    assert model.video_teacher_center is model.video_to_audio_distillation.center
    assert model.audio_teacher_center is model.audio_to_video_distillation.center


PRE_LOSS_MODULE_FOLDER = pathlib.Path(__file__).parent / "fixtures" / "xkd_pretraining_pre_loss_module"


def test_folder_saved_before_the_loss_module_still_loads(tmp_path):
    """tests/fixtures/xkd_pretraining_pre_loss_module was written by the code before the loss module (the centres
    were the model's own buffers). It loads with every key, through from_pretrained and load_state_dict, and new
    saves keep its key names (accelerate checkpoints and the converter use them)."""
    from safetensors.torch import load_file

    saved = load_file(PRE_LOSS_MODULE_FOLDER / "model.safetensors")
    assert saved["video_teacher_center"].abs().sum() > 0  # the fixture's centres moved in a training forward
    model = XKDForPretraining.from_pretrained(PRE_LOSS_MODULE_FOLDER)  # loud loading: any key off would raise
    for name, owner in (("video_teacher_center", model.video_to_audio_distillation),
                        ("audio_teacher_center", model.audio_to_video_distillation)):
        assert torch.equal(owner.center, saved[name]), name
    assert not any("center" in n for n, _ in model.named_parameters())  # still buffers, not parameters
    state = model.state_dict()
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    fresh = XKDForPretraining(model.config)
    fresh.load_state_dict(saved)  # strict, old names (accelerate's load_state path)
    assert torch.equal(fresh.audio_teacher_center, saved["audio_teacher_center"])
    model.save_pretrained(tmp_path)
    assert load_file(tmp_path / "model.safetensors").keys() == saved.keys()


@pytest.mark.parametrize("view", ["local", "global"])
def test_teacher_view_routing(view):
    torch.manual_seed(0)
    model = XKDForPretraining(model_tester.get_config(teacher_view=view)).eval()
    batch = model_tester.pretraining_inputs(model.config)
    seen = []
    handle = model.video_model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].shape),
                                                         with_kwargs=True)
    model(**batch)
    handle.remove()
    expected = batch["local_pixel_values"][:, 0].shape if view == "local" else batch["pixel_values"].shape
    assert seen == [expected]


# ------------------------------------------------------------------------------------------------------------
# Variants and training
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["xkd", "xkd-mas", "xkd-mats"])
def test_variant_parameter_sharing(variant):
    model = XKDForPretraining(model_tester.get_config(variant))
    student_shared = variant in ("xkd-mas", "xkd-mats")
    teacher_shared = variant == "xkd-mats"
    vs, as_ = model.video_student, model.audio_student
    vt, at = model.video_model, model.audio_model
    for p, q in zip(vs.encoder.parameters(), as_.encoder.parameters()):
        assert (p is q) == student_shared
    for p, q in zip(vt.encoder.parameters(), at.encoder.parameters()):
        assert (p is q) == teacher_shared
    # never shared: tokenizers, CLS, positions, final norms, heads, decoders; teachers never alias students
    assert vs.embeddings.cls_token is not as_.embeddings.cls_token
    assert vs.layernorm.weight is not as_.layernorm.weight
    assert model.video_student_head.layers[0].weight is not model.audio_student_head.layers[0].weight
    assert model.video_decoder.mask_token is not model.audio_decoder.mask_token
    student_ids = {id(p) for p in model.student_parameters()}
    assert not any(id(p) in student_ids for p in vt.parameters())
    n_student = len({id(p) for p in list(vs.parameters()) + list(as_.parameters())})
    n_expected = len(list(vs.parameters())) * 2 - (len(list(vs.encoder.parameters())) if student_shared else 0)
    assert n_student == n_expected


def test_mats_shared_teacher_blocks_get_two_ema_updates():
    for twice, power in [(True, 2), (False, 1)]:
        model = XKDForPretraining(model_tester.get_config("xkd-mats", ema_shared_teacher_blocks_twice=twice))
        with torch.no_grad():
            for p in model.video_model.parameters():
                p.fill_(1.0)
            for p in model.video_student.parameters():
                p.fill_(0.0)
            for p in model.audio_model.embeddings.parameters():
                p.fill_(1.0)
            for p in model.audio_student.embeddings.parameters():
                p.fill_(0.0)
        model.update_teachers(0.5)
        block = model.video_model.encoder.layer[0].mlp.fc1.weight
        torch.testing.assert_close(block, torch.full_like(block, 0.5**power))
        cls = model.audio_model.embeddings.cls_token
        torch.testing.assert_close(cls, torch.full_like(cls, 0.5))  # not shared: one update


def test_teachers_start_as_student_copies_and_receive_no_gradient():
    model = XKDForPretraining(model_tester.get_config())
    for t, s in zip(model.video_model.parameters(), model.video_student.parameters()):
        assert torch.equal(t, s) and t is not s
    model(**model_tester.pretraining_inputs(model.config)).loss.backward()
    assert all(p.grad is None for p in model.video_model.parameters())
    assert all(p.grad is None for p in model.audio_teacher_head.parameters())
    assert model.video_student.embeddings.cls_token.grad is not None
    assert model.video_decoder.mask_token.grad is not None
    assert model.video_student_head.last_layer.weight_g.grad is None  # frozen magnitude


@pytest.mark.parametrize("variant", ["xkd", "xkd-mas"])
def test_a_few_optimizer_steps_lower_the_loss(variant):
    torch.manual_seed(0)
    model = XKDForPretraining(model_tester.get_config(variant, num_local_video_views=2)).train()
    batch = model_tester.pretraining_inputs(model.config, batch_size=4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3, betas=(0.9, 0.95))
    noise = {"video_noise": torch.rand(4, 8), "audio_noise": torch.rand(4, 16)}
    losses = []
    for _ in range(8):
        out = model(**batch, **noise)
        losses.append(out.loss.item())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        model.update_teachers(0.99)
    assert losses[-1] < losses[0]
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
    assert torch.isfinite(model.video_teacher_center).all()


def test_pretraining_output_fields_and_monitors():
    torch.manual_seed(0)
    model = XKDForPretraining(model_tester.get_config()).eval()
    out = model(**model_tester.pretraining_inputs(model.config))
    cfg = model.config
    torch.testing.assert_close(out.reconstruction_loss, (out.video_reconstruction_loss + out.audio_reconstruction_loss) / 2)
    torch.testing.assert_close(out.distillation_loss,
                               (out.video_to_audio_distillation_loss + out.audio_to_video_distillation_loss) / 2)
    torch.testing.assert_close(out.alignment_loss, (out.student_alignment_loss + out.teacher_alignment_loss) / 2)
    torch.testing.assert_close(out.loss, combine_losses(out.reconstruction_loss, out.alignment_loss,
                                                        out.distillation_loss, cfg))
    assert out.video_mask.shape == (2, 8) and out.video_reconstruction.shape == (2, 8, 4 * 16 * 16 * 3)
    assert out.audio_mask.shape == (2, 16) and out.audio_reconstruction.shape == (2, 16, 4 * 16)
    assert 0 <= out.video_teacher_entropy <= math.log(64) + 1e-4
    assert out.video_teacher_student_kl >= 0
    assert out.video_mask.sum(1).tolist() == [round(8 * 0.85), round(8 * 0.85)]


def test_pretraining_rejects_bad_local_views():
    model = XKDForPretraining(model_tester.get_config())
    batch = model_tester.pretraining_inputs(model.config)
    batch["local_pixel_values"] = batch["local_pixel_values"][:, :, :, :1]
    with pytest.raises(ValueError, match=r"`local_pixel_values\[0\]` has 1 channels"):
        model(**batch)
    batch = model_tester.pretraining_inputs(model.config)
    batch["local_input_values"] = []
    with pytest.raises(ValueError, match="local_input_values"):
        model(**batch)


# ------------------------------------------------------------------------------------------------------------
# Loading is loud (issue 11.3)
# ------------------------------------------------------------------------------------------------------------


def _rewrite_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def test_loading_stops_with_the_names_of_keys_that_do_not_fit(tmp_path, tiny_video_config):
    config = model_tester.get_config()
    XKDModel(config).save_pretrained(tmp_path / "model")
    XKDVideoModel(tiny_video_config).save_pretrained(tmp_path / "tower")
    # a tower folder into XKDModel: the audio tower would stay random
    with pytest.raises(ValueError, match=r"XKDModel.*missing from the folder.*audio_model\.embeddings\.cls_token"):
        XKDModel.from_pretrained(tmp_path / "tower")
    # an XKDModel folder into XKDForPretraining: students, heads and decoders would stay random
    with pytest.raises(ValueError, match=r"missing from the folder.*audio_decoder\.") as error:
        XKDForPretraining.from_pretrained(tmp_path / "model")
    assert "allow_partial_load=True" in str(error.value)
    # one tensor missing, one extra tensor (inside a tower, where transformers' merged ignore rules used to hide it)
    for name, edit, pattern in (
        ("missing", lambda s: s.pop("video_model.layernorm.weight"), r"missing from the folder.*: video_model\.layernorm\.weight\."),
        ("extra", lambda s: s.update({"video_model.extra_tensor": torch.zeros(2)}), r"not in XKDModel.*: video_model\.extra_tensor\."),
    ):
        folder = tmp_path / name
        XKDModel(config).save_pretrained(folder)
        _rewrite_weights(folder, edit)
        with pytest.raises(ValueError, match=pattern):
            XKDModel.from_pretrained(folder)
    # the explicit opt-out loads what fits
    partial = XKDModel.from_pretrained(tmp_path / "missing", allow_partial_load=True)
    reference = XKDModel.from_pretrained(tmp_path / "model")
    assert torch.equal(partial.audio_model.layernorm.weight, reference.audio_model.layernorm.weight)
    # a classifier's head into a bare tower would be dropped
    XKDForVideoClassification.from_pretrained(tmp_path / "tower", num_labels=3).save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match=r"not in XKDVideoModel.*classifier\.bias, classifier\.weight"):
        XKDVideoModel.from_pretrained(tmp_path / "clf")
    # another head size without ignore_mismatched_sizes: the shapes are named and the way out is given
    with pytest.raises(ValueError, match=r"classifier\.weight \(3, 32\) in the folder vs \(5, 32\).*ignore_mismatched_sizes"):
        XKDForVideoClassification.from_pretrained(tmp_path / "clf", num_labels=5)


def test_fresh_classification_head_loads_with_a_one_line_note(tmp_path, tiny_video_config):
    from transformers.testing_utils import CaptureLogger

    from transformers_xkd import modeling_xkd

    XKDVideoModel(tiny_video_config).save_pretrained(tmp_path / "tower")
    with CaptureLogger(modeling_xkd.logger) as captured:
        model = XKDForVideoClassification.from_pretrained(tmp_path / "tower", num_labels=3)
    lines = [line for line in captured.out.splitlines() if line.strip()]
    assert len(lines) == 1 and "new head" in lines[0] and "classifier.bias, classifier.weight" in lines[0], lines
    assert model.classifier.weight.shape == (3, 32)
    # output_loading_info still works and reports the head as transformers does
    _, info = XKDForVideoClassification.from_pretrained(tmp_path / "tower", num_labels=3, output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}
    # other label count on purpose: also the fresh-head case
    model.save_pretrained(tmp_path / "clf")
    with CaptureLogger(modeling_xkd.logger) as captured:
        XKDForVideoClassification.from_pretrained(tmp_path / "clf", num_labels=5, ignore_mismatched_sizes=True)
    assert "new head" in captured.out


def test_truncated_weights_file_is_named(tmp_path):
    XKDModel(model_tester.get_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    for size in (weights.stat().st_size // 2, 5):  # cut in the data, cut in the header
        with open(weights, "r+b") as handle:
            handle.truncate(size)
        with pytest.raises(OSError, match=rf"cannot read the weights file {weights}.*truncated"):
            XKDModel.from_pretrained(tmp_path)


def test_exported_teachers_have_their_own_config(tmp_path):
    """A teachers folder maps AutoModel to XKDModel and does not name XKDForPretraining (it lacks the student,
    decoder and head weights); saving it leaves the pretraining model's config as it was."""
    import json

    model = XKDForPretraining(model_tester.get_config())
    model.save_pretrained(tmp_path / "pretraining")
    before = model.config.to_dict()
    model.export_teachers().save_pretrained(tmp_path / "teachers")
    auto_map = json.loads((tmp_path / "teachers" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_xkd.XKDModel" and "AutoModelForPreTraining" not in auto_map
    assert model.config.to_dict() == before
