"""Tests of the released-checkpoint conversion (issue 4).

Synthetic released-format files are built here from the released code's parameter inventory
(exact key names and shape formulas, tiny sizes), converted, and
checked (a) key by key against an explicit mapping table written in this file, (b) against an independent
re-implementation of the released forward pass (Linear tokenizer on the (pt, ph, pw, c) flattening, LayerNorm
eps 1e-5, no qkv bias, explicit softmax attention, exact GELU, final norm, mean of patch tokens), and (c) for each
failure mode's message.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from transformers_xkd.configuration_xkd import XKDConfig
from transformers_xkd.convert_original import (
    ConversionError,
    audio_patch_weight_to_conv,
    build_model_from_backbones,
    convert_backbones,
    convert_full_checkpoint,
    convert_to_folders,
    infer_config_from_backbones,
    infer_config_from_full_checkpoint,
    load_original_file,
    save_folder_atomically,
    video_patch_weight_to_conv,
)
from transformers_xkd.hub import push_folder_to_hub

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "conversion" / "convert_xkd_original_to_hf.py"
LN_EPS = 1e-5
BLOCK_TABLE = {  # released block part -> package block part, written out independently here
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "attn.qkv.weight": "attention.qkv.weight",
    "attn.proj.weight": "attention.proj.weight",
    "attn.proj.bias": "attention.proj.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}


# ----------------------------------------------------------------------------------------------------------------
# Tiny configuration and synthetic released files
# ----------------------------------------------------------------------------------------------------------------


def tiny_config(variant: str = "xkd") -> XKDConfig:
    """Video 4 x 16 x 16 frames, 2 x 8 x 8 tubelets (8 tokens, patch_dim 384); audio 8 mel x 48 frames, 4 x 8
    patches (2 x 6 = 12 tokens, patch_dim 32); D=32, 2 layers, 2 heads; decoder 16-d; projector 24/8/40."""
    enc = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return XKDConfig(
        video_config=dict(image_size=16, patch_size=8, num_frames=4, tubelet_size=2, **enc),
        audio_config=dict(num_mel_bins=8, max_length=48, frequency_patch_size=4, time_patch_size=8, **enc),
        variant=variant,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        projector_hidden_size=24,
        projector_bottleneck_size=8,
        projector_output_size=40,
        projector_num_layers=3,
        local_num_frames=2,
        local_image_size=8,
        local_max_length=16,
    )


def _rand(gen, *shape, device=None):
    if device == "meta":
        return torch.empty(*shape, device="meta")
    return torch.randn(*shape, generator=gen)


def released_block(gen, prefix: str, dim: int, mlp: int, device=None) -> dict[str, torch.Tensor]:
    """The 11 tensors of one released block (the released block template), in the listed order; LN weights random so
    that a swapped or dropped norm shows."""
    return {
        f"{prefix}norm1.weight": 1 + 0.1 * _rand(gen, dim, device=device),
        f"{prefix}norm1.bias": 0.1 * _rand(gen, dim, device=device),
        f"{prefix}attn.qkv.weight": _rand(gen, 3 * dim, dim, device=device) / dim**0.5,
        f"{prefix}attn.proj.weight": _rand(gen, dim, dim, device=device) / dim**0.5,
        f"{prefix}attn.proj.bias": 0.1 * _rand(gen, dim, device=device),
        f"{prefix}norm2.weight": 1 + 0.1 * _rand(gen, dim, device=device),
        f"{prefix}norm2.bias": 0.1 * _rand(gen, dim, device=device),
        f"{prefix}mlp.fc1.weight": _rand(gen, mlp, dim, device=device) / dim**0.5,
        f"{prefix}mlp.fc1.bias": 0.1 * _rand(gen, mlp, device=device),
        f"{prefix}mlp.fc2.weight": _rand(gen, dim, mlp, device=device) / mlp**0.5,
        f"{prefix}mlp.fc2.bias": 0.1 * _rand(gen, dim, device=device),
    }


def released_backbone(modality: str, cfg, gen, device=None) -> dict[str, torch.Tensor]:
    """A `VideoViT` / `AudioViT` state dict with the released training names."""
    d, n = cfg.hidden_size, cfg.num_patches
    tok = "cuboid_embed" if modality == "video" else "patch_embed"
    sd = {
        "cls_token": 0.02 * _rand(gen, 1, 1, d, device=device),
        "enc_pos_embed": 0.02 * _rand(gen, 1, n + 1, d, device=device),
        f"{tok}.proj.weight": _rand(gen, d, cfg.patch_dim, device=device) / cfg.patch_dim**0.5,
        f"{tok}.proj.bias": 0.1 * _rand(gen, d, device=device),
    }
    for i in range(cfg.num_hidden_layers):
        sd.update(released_block(gen, f"encoder.blocks.{i}.", d, cfg.intermediate_size, device))
    sd["encoder_norm.weight"] = 1 + 0.1 * _rand(gen, d, device=device)
    sd["encoder_norm.bias"] = 0.1 * _rand(gen, d, device=device)
    return sd


def eval_rename(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released eval code's renaming, applied key by key."""
    out = {}
    for key, value in sd.items():
        if key.startswith("encoder."):
            key = key.replace("encoder.", "")
        elif key.startswith("encoder_"):
            key = key.replace("encoder_", "", 1)
        elif key == "enc_pos_embed":
            key = "pos_embed"
        elif key.startswith("cuboid_embed"):
            key = "patch_embed" + key[len("cuboid_embed"):]
        out[key] = value
    return out


def released_head(gen, prefix: str, config, in_dim: int, device=None) -> dict[str, torch.Tensor]:
    """`DINOHead` keys: mlp.0/3/6 Linear, mlp.1 == mlp.4 (one shared LayerNorm), weight-norm last layer."""
    h, b, o = config.projector_hidden_size, config.projector_bottleneck_size, config.projector_output_size
    norm_w, norm_b = 1 + 0.1 * _rand(gen, h, device=device), 0.1 * _rand(gen, h, device=device)
    return {
        f"{prefix}mlp.0.weight": _rand(gen, h, in_dim, device=device), f"{prefix}mlp.0.bias": _rand(gen, h, device=device),
        f"{prefix}mlp.1.weight": norm_w, f"{prefix}mlp.1.bias": norm_b,
        f"{prefix}mlp.3.weight": _rand(gen, h, h, device=device), f"{prefix}mlp.3.bias": _rand(gen, h, device=device),
        f"{prefix}mlp.4.weight": norm_w, f"{prefix}mlp.4.bias": norm_b,
        f"{prefix}mlp.6.weight": _rand(gen, b, h, device=device), f"{prefix}mlp.6.bias": _rand(gen, b, device=device),
        f"{prefix}last_layer.weight_g": torch.ones(o, 1, device=device),
        f"{prefix}last_layer.weight_v": _rand(gen, o, b, device=device),
    }


def released_full_checkpoint(config, seed: int = 0, device=None) -> dict:
    """`checkpoint.pth.tar` as the released training code writes it: 'model' in registration order with the `module.` prefix,
    the MAE encoder being the student backbone's very tensors; MAS/MATS share blocks across modalities by
    reusing the same tensor objects (as one shared module would)."""
    gen = torch.Generator().manual_seed(seed)
    variant = config.variant
    model: dict[str, torch.Tensor] = {}
    shared_student_blocks = shared_teacher_blocks = None
    dec_d, dec_mlp = config.decoder_hidden_size, config.decoder_intermediate_size
    for m, cfg in (("vid", config.video_config), ("aud", config.audio_config)):
        backbones = {}
        for role in ("teacher", "student"):
            bb = released_backbone("video" if m == "vid" else "audio", cfg, gen, device)
            blocks = {k: v for k, v in bb.items() if k.startswith("encoder.blocks.")}
            if role == "student" and variant in ("xkd-mas", "xkd-mats"):
                shared_student_blocks = shared_student_blocks or blocks
                bb.update(shared_student_blocks)
            if role == "teacher" and variant == "xkd-mats":
                shared_teacher_blocks = shared_teacher_blocks or blocks
                bb.update(shared_teacher_blocks)
            backbones[role] = bb
            model.update({f"{m}_{role}.backbone.{k}": v for k, v in bb.items()})
            model.update(released_head(gen, f"{m}_{role}.head.", config, cfg.hidden_size, device))
        model[f"{m}_ae.dec_pos_embed"] = _rand(gen, 1, cfg.num_patches + 1, dec_d, device=device)
        model[f"{m}_ae.mask_token"] = _rand(gen, 1, 1, dec_d, device=device)
        model.update({f"{m}_ae.encoder.{k}": v for k, v in backbones["student"].items()})
        for i in range(config.decoder_num_hidden_layers):
            model.update(released_block(gen, f"{m}_ae.decoder.blocks.{i}.", dec_d, dec_mlp, device))
        model[f"{m}_ae.mid_proj.weight"] = _rand(gen, dec_d, cfg.hidden_size, device=device)
        model[f"{m}_ae.mid_proj.bias"] = _rand(gen, dec_d, device=device)
        model[f"{m}_ae.out_proj.weight"] = _rand(gen, cfg.patch_dim, dec_d, device=device)
        model[f"{m}_ae.out_proj.bias"] = _rand(gen, cfg.patch_dim, device=device)
    model["vt2as_ce_loss.center"] = _rand(gen, 1, config.projector_output_size, device=device)
    model["at2vs_ce_loss.center"] = _rand(gen, 1, config.projector_output_size, device=device)
    return {
        "model": {f"module.{k}": v for k, v in model.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}, {"lr": 1e-4, "params": [1]}]},
        "epoch": 800,
        "amp": {"scale": 65536.0},
    }


def backbone_pair(variant: str, seed: int = 0, role: str = "teacher"):
    """(video, audio) backbone files of one variant: MAS students and MATS towers share block tensors."""
    config = tiny_config(variant)
    gen = torch.Generator().manual_seed(seed)
    video = released_backbone("video", config.video_config, gen)
    audio = released_backbone("audio", config.audio_config, gen)
    shares = variant == "xkd-mats" or (variant == "xkd-mas" and role == "student")
    if shares:
        audio.update({k: v.clone() for k, v in video.items() if k.startswith("encoder.blocks.")})
    return config, video, audio


def write_pair(tmp_path: Path, variant: str, role: str = "teacher", seed: int = 0, eval_names: bool = False):
    config, video, audio = backbone_pair(variant, seed, role)
    if eval_names:
        video, audio = eval_rename(video), eval_rename(audio)
    stem = {"xkd": "XKD", "xkd-mas": "XKD_MAS", "xkd-mats": "XKD_MATS"}[variant]
    vpath = tmp_path / f"{stem}_pretext_kinetics400_ep799vid_{role}.pth.tar"
    apath = tmp_path / f"{stem}_pretext_kinetics400_ep799aud_{role}.pth.tar"
    torch.save(video, vpath)
    torch.save(audio, apath)
    return config, video, audio, vpath, apath


# ----------------------------------------------------------------------------------------------------------------
# Independent reference forward of the released backbone
# ----------------------------------------------------------------------------------------------------------------


def patchify_video(pixel_values: torch.Tensor, pt: int, p: int) -> torch.Tensor:
    """(B, T, C, H, W) -> (B, N, pt*p*p*C): `b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)`."""
    x = pixel_values.permute(0, 2, 1, 3, 4)  # the released code works on (B, C, T, H, W)
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // pt, pt, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, t, h, w, pt, ph, pw, c
    return x.reshape(b, (t // pt) * (h // p) * (w // p), pt * p * p * c)


def patchify_audio(input_values: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(B, time, mel) -> (B, N, ph*pw): the released input is (B, 1, mel, time) rearranged
    `b c (h ph) (w pw) -> b (h w) (ph pw c)`, h = frequency (tokens frequency-major)."""
    x = input_values.transpose(1, 2).unsqueeze(1)
    b, c, f, t = x.shape
    x = x.reshape(b, c, f // ph, ph, t // pw, pw).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (f // ph) * (t // pw), ph * pw * c)


def reference_features(sd: dict[str, torch.Tensor], patches: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The released backbone forward on already-flattened patches; sd uses the training names."""
    tok = "cuboid_embed" if "cuboid_embed.proj.weight" in sd else "patch_embed"
    x = patches @ sd[f"{tok}.proj.weight"].T + sd[f"{tok}.proj.bias"]
    pos = sd["enc_pos_embed"]
    x = x + pos[:, 1:]
    cls = (sd["cls_token"] + pos[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    b, n, d = x.shape
    hd = d // num_heads
    i = 0
    while f"encoder.blocks.{i}.norm1.weight" in sd:
        p = f"encoder.blocks.{i}."
        h = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], LN_EPS)
        qkv = (h @ sd[p + "attn.qkv.weight"].T).reshape(b, n, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * hd**-0.5, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        x = x + out @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], LN_EPS)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"], approximate="none")
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
        i += 1
    x = F.layer_norm(x, (d,), sd["encoder_norm.weight"], sd["encoder_norm.bias"], LN_EPS)
    return x[:, 1:].mean(dim=1)


def expected_encoder_key(released_key: str) -> str:
    """Released training key -> package encoder key, from the contract's table."""
    fixed = {
        "cls_token": "embeddings.cls_token",
        "enc_pos_embed": "embeddings.position_embeddings",
        "cuboid_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "cuboid_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "encoder_norm.weight": "layernorm.weight",
        "encoder_norm.bias": "layernorm.bias",
    }
    if released_key in fixed:
        return fixed[released_key]
    match = re.fullmatch(r"encoder\.blocks\.(\d+)\.(.+)", released_key)
    return f"encoder.layer.{match.group(1)}.{BLOCK_TABLE[match.group(2)]}"


def assert_encoder_landed(released: dict, converted: dict, prefix: str, modality: str, cfg) -> None:
    """(a): every released tensor is found, unchanged, at its contract name; the tokenizer is checked
    element-wise through the flattening formula: conv[d, c, t, i, j] == linear[d, ((t*p + i)*p + j)*C + c]."""
    for key, value in released.items():
        target = prefix + expected_encoder_key(key)
        assert target in converted, f"{key} -> {target} missing"
        got = converted[target]
        if key.endswith("proj.weight") and key.startswith(("cuboid_embed", "patch_embed")):
            d = value.shape[0]
            if modality == "video":
                pt, p, c = cfg.tubelet_size, cfg.patch_size, cfg.num_channels
                assert list(got.shape) == [d, c, pt, p, p]
                ci, ti, hi, wi = torch.meshgrid(
                    torch.arange(c), torch.arange(pt), torch.arange(p), torch.arange(p), indexing="ij")
                flat = ((ti * p + hi) * p + wi) * c + ci
                assert torch.equal(got, value[:, flat])
            else:
                ph, pw = cfg.frequency_patch_size, cfg.time_patch_size
                assert list(got.shape) == [d, 1, ph, pw]
                hi, wi = torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing="ij")
                assert torch.equal(got[:, 0], value[:, hi * pw + wi])
        else:
            assert torch.equal(got, value), f"{key} -> {target} differs"


# ----------------------------------------------------------------------------------------------------------------
# The synthetic builder matches the spec's inventory
# ----------------------------------------------------------------------------------------------------------------


def test_synthetic_builder_matches_released_inventory():
    """At the released sizes (on the meta device, no memory) the builder yields the released counts: 138 tensors and
    87,691,008 / 85,509,888 parameters per backbone, 978 keys in the full checkpoint."""
    config = XKDConfig()
    video = released_backbone("video", config.video_config, None, device="meta")
    audio = released_backbone("audio", config.audio_config, None, device="meta")
    assert len(video) == len(audio) == 138
    assert sum(v.numel() for v in video.values()) == 87_691_008
    assert sum(v.numel() for v in audio.values()) == 85_509_888
    assert list(video["cuboid_embed.proj.weight"].shape) == [768, 3072]
    assert list(audio["enc_pos_embed"].shape) == [1, 561, 768]
    full = released_full_checkpoint(config, device="meta")["model"]
    assert len(full) == 978
    assert all(k.startswith("module.") for k in full)


# ----------------------------------------------------------------------------------------------------------------
# Backbone files
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["xkd", "xkd-mas", "xkd-mats"])
@pytest.mark.parametrize("eval_names", [False, True], ids=["train-names", "eval-names"])
def test_backbones_land_key_by_key(variant, eval_names):
    config, video, audio = backbone_pair(variant, seed=1)
    src_v, src_a = (eval_rename(video), eval_rename(audio)) if eval_names else (video, audio)
    converted = convert_backbones(src_v, src_a, config)
    assert_encoder_landed(video, converted, "video_model.", "video", config.video_config)
    assert_encoder_landed(audio, converted, "audio_model.", "audio", config.audio_config)
    assert len(converted) == len(video) + len(audio)  # nothing else was produced


def test_patch_permutation_equals_linear_on_flattened_patches():
    """The Conv3d / Conv2d kernels compute exactly the released Linear on the einops flattening.

    In float64: a wrong permutation changes the sums by O(1), while the two kernels' different summation orders
    differ by about eps64 * sqrt(K) * |x||w| ~ 1e-14 here (K = 384 or 32 products of N(0, 1) values). In float32 the
    same rounding noise reaches 3e-5 on AVX2 (AMD) and depends on the CPU's kernel, so fp32 cannot test exactness.
    """
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(5, 2 * 8 * 8 * 3, generator=gen, dtype=torch.float64)
    clip = torch.randn(2, 4, 3, 16, 16, generator=gen, dtype=torch.float64)  # (B, T, C, H, W)
    conv = F.conv3d(clip.permute(0, 2, 1, 3, 4), video_patch_weight_to_conv(w, 2, 8, 3), stride=(2, 8, 8))
    torch.testing.assert_close(conv.flatten(2).transpose(1, 2), patchify_video(clip, 2, 8) @ w.T, rtol=0, atol=1e-10)
    wa = torch.randn(5, 4 * 8, generator=gen, dtype=torch.float64)
    spec = torch.randn(2, 48, 8, generator=gen, dtype=torch.float64)  # (B, time, mel)
    conv = F.conv2d(spec.transpose(1, 2).unsqueeze(1), audio_patch_weight_to_conv(wa, 4, 8), stride=(4, 8))
    torch.testing.assert_close(conv.flatten(2).transpose(1, 2), patchify_audio(spec, 4, 8) @ wa.T, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant", ["xkd", "xkd-mats"])
def test_converted_features_match_reference_forward(tmp_path, variant, capsys):
    """(b): pooled features of the converted XKDModel == the independent reference forward, within 1e-5 (fp32)."""
    from transformers_xkd import XKDModel  # noqa: F401  (the public name must exist)

    config, video, audio, vpath, apath = write_pair(tmp_path, variant, seed=2)
    model, _ = build_model_from_backbones(vpath, apath, variant, config)
    vcfg, acfg = config.video_config, config.audio_config
    gen = torch.Generator().manual_seed(4)
    pixel_values = torch.randn(3, vcfg.num_frames, 3, vcfg.image_size, vcfg.image_size, generator=gen)
    input_values = torch.randn(3, acfg.max_length, acfg.num_mel_bins, generator=gen)
    with torch.no_grad():
        got_v = model.video_model(pixel_values=pixel_values).pooler_output
        got_a = model.audio_model(input_values=input_values).pooler_output
        feat_v = model.get_video_features(pixel_values).pooler_output
        feat_a = model.get_audio_features(input_values).pooler_output
        ref_v = reference_features(video, patchify_video(pixel_values, vcfg.tubelet_size, vcfg.patch_size),
                                   vcfg.num_attention_heads)
        ref_a = reference_features(audio, patchify_audio(input_values, acfg.frequency_patch_size,
                                                         acfg.time_patch_size), acfg.num_attention_heads)
    diff_v = (got_v - ref_v).abs().max().item()
    diff_a = (got_a - ref_a).abs().max().item()
    with capsys.disabled():
        print(f"\n[{variant}] max |converted - reference| video {diff_v:.3g}, audio {diff_a:.3g}")
    # fp32: the two forwards sum in different orders; measured 5e-7 on AMD AVX2 and Intel, 1 or 2 threads (the
    # pooled features are LayerNorm-ed, |x| ~ 1, two blocks of width 32), so 1e-5 leaves 20x room.
    assert got_v.dtype == torch.float32 and diff_v < 1e-5 and diff_a < 1e-5
    # get_*_features is the same computation as the tower's pooler_output: identical up to a kernel choice.
    torch.testing.assert_close(feat_v, got_v, rtol=0, atol=1e-6)
    torch.testing.assert_close(feat_a, got_a, rtol=0, atol=1e-6)
    # Exactness of the conversion itself, in float64 where rounding (~1e-15) cannot hide an O(1e-6) weight error.
    model64 = model.double()
    with torch.no_grad():
        got_v64 = model64.video_model(pixel_values=pixel_values.double()).pooler_output
        got_a64 = model64.audio_model(input_values=input_values.double()).pooler_output
        ref_v64 = reference_features({k: v.double() for k, v in video.items()}, patchify_video(
            pixel_values.double(), vcfg.tubelet_size, vcfg.patch_size), vcfg.num_attention_heads)
        ref_a64 = reference_features({k: v.double() for k, v in audio.items()}, patchify_audio(
            input_values.double(), acfg.frequency_patch_size, acfg.time_patch_size), acfg.num_attention_heads)
    torch.testing.assert_close(got_v64, ref_v64, rtol=0, atol=1e-10)
    torch.testing.assert_close(got_a64, ref_a64, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# Failure modes of backbone conversion
# ----------------------------------------------------------------------------------------------------------------


def test_missing_key_is_listed():
    config, video, audio = backbone_pair("xkd")
    del video["encoder.blocks.1.mlp.fc2.bias"]
    del audio["encoder_norm.weight"]
    with pytest.raises(ConversionError) as err:
        convert_backbones(video, audio, config)
    msg = str(err.value)
    assert "missing keys (2" in msg
    assert "video_model.encoder.layer.1.mlp.fc2.bias" in msg and "audio_model.layernorm.weight" in msg


def test_unexpected_keys_are_listed():
    config, video, audio = backbone_pair("xkd")
    video["encoder.blocks.0.attn.qkv.bias"] = torch.zeros(96)  # timm-style qkv bias: the release has none
    audio.update(released_block(torch.Generator().manual_seed(0), "encoder.blocks.2.", 32, 64))  # one block too many
    audio["head.weight"] = torch.zeros(3, 32)
    with pytest.raises(ConversionError) as err:
        convert_backbones(video, audio, config)
    msg = str(err.value)
    assert "unexpected keys (13" in msg
    assert "[--video-checkpoint] encoder.blocks.0.attn.qkv.bias" in msg
    assert "[--audio-checkpoint] head.weight" in msg
    assert "encoder.blocks.2.norm1.weight (-> audio_model.encoder.layer.2.layernorm_before.weight" in msg


def test_shape_mismatch_names_key_and_both_shapes():
    config, video, audio = backbone_pair("xkd")
    video["enc_pos_embed"] = torch.zeros(1, 10, 32)
    audio["encoder.blocks.0.mlp.fc1.weight"] = torch.zeros(48, 32)
    video["cuboid_embed.proj.weight"] = torch.zeros(32, 385)
    with pytest.raises(ConversionError) as err:
        convert_backbones(video, audio, config)
    msg = str(err.value)
    assert "enc_pos_embed -> video_model.embeddings.position_embeddings: source [1, 10, 32] vs expected [1, 9, 32]" in msg
    assert "encoder.blocks.0.mlp.fc1.weight -> audio_model.encoder.layer.0.mlp.fc1.weight: source [48, 32] vs expected [64, 32]" in msg
    assert "cuboid_embed.proj.weight: source [32, 385] vs expected [32, 384]" in msg


@pytest.mark.parametrize("eval_names", [False, True])
def test_wrong_modality_is_named(eval_names):
    config, video, audio = backbone_pair("xkd")
    if eval_names:  # no cuboid_embed key left: detected from the tokenizer width
        video, audio = eval_rename(video), eval_rename(audio)
    with pytest.raises(ConversionError, match=r"Wrong modality: --video-checkpoint should be a video backbone, but it "
                                              r"is an audio backbone"):
        convert_backbones(audio, video, config)
    with pytest.raises(ConversionError) as err:
        convert_backbones(video, video, config)
    assert "Wrong modality: --audio-checkpoint" in str(err.value) and "video backbone" in str(err.value)


def test_wrong_variant_backbones():
    config, video, audio = backbone_pair("xkd-mats")  # identical blocks
    xkd = tiny_config("xkd")
    with pytest.raises(ConversionError, match=r"Wrong variant: --variant xkd, but the video and audio blocks are identical"):
        convert_backbones(video, audio, xkd)
    _, video, audio = backbone_pair("xkd")  # distinct blocks
    with pytest.raises(ConversionError, match=r"Wrong variant: --variant xkd-mats, but .* different"):
        convert_backbones(video, audio, tiny_config("xkd-mats"))
    with pytest.raises(ConversionError, match="XKD-MAS students share"):
        convert_backbones(video, audio, tiny_config("xkd-mas"), role="student")
    convert_backbones(video, audio, tiny_config("xkd-mas"), role="teacher")  # MAS teachers are separate: fine


def test_mixed_naming_styles_and_full_checkpoint_as_backbone():
    config, video, audio = backbone_pair("xkd")
    video["pos_embed"] = video.pop("enc_pos_embed")
    with pytest.raises(ConversionError, match="mixes training names"):
        convert_backbones(video, audio, config)
    full = released_full_checkpoint(config)
    with pytest.raises(ConversionError, match="full training checkpoint .* --full-checkpoint"):
        convert_backbones(full, audio, config)


def test_config_inference():
    """Widths/depths come from the files; input sizes that differ from the release ask for --config."""
    config, video, audio = backbone_pair("xkd")
    with pytest.raises(ConversionError, match=r"--video-checkpoint: video tokenizer width 384 / 9 positions do not "
                                              r"match the released pretraining input \(3072 / 393\); pass --config"):
        infer_config_from_backbones(video, audio, "xkd")
    base = XKDConfig(video_config=config.video_config.to_dict(), audio_config=config.audio_config.to_dict())
    inferred = infer_config_from_backbones(video, audio, "xkd-mas", base_config=base)
    assert inferred.variant == "xkd-mas" and inferred.video_config.num_hidden_layers == 2
    assert inferred.audio_config.intermediate_size == 64 and inferred.video_config.num_attention_heads == 2
    full = infer_config_from_full_checkpoint(released_full_checkpoint(config), "xkd", base_config=base)
    for name in ("decoder_hidden_size", "decoder_num_hidden_layers", "decoder_intermediate_size",
                 "projector_hidden_size", "projector_bottleneck_size", "projector_output_size", "projector_num_layers"):
        assert getattr(full, name) == getattr(config, name), name


class _NotATensor:
    pass


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"cls_token": _NotATensor()}, path)
    with pytest.raises(ConversionError, match=r"weights_only=True"):
        load_original_file(path)
    with pytest.raises(ConversionError, match="no such file"):
        load_original_file(tmp_path / "absent.pth.tar")


# ----------------------------------------------------------------------------------------------------------------
# Full checkpoint
# ----------------------------------------------------------------------------------------------------------------


def _expected_full_mapping(config) -> dict[str, str]:
    """Released full-checkpoint key (no `module.`) -> XKDForPretraining key, written from the contract."""
    table = {}
    for m, mod, cfg in (("vid", "video", config.video_config), ("aud", "audio", config.audio_config)):
        bb = released_backbone(mod, cfg, torch.Generator(), device="meta")
        for role, dst in (("teacher", f"{mod}_model."), ("student", f"{mod}_student.")):
            for k in bb:
                table[f"{m}_{role}.backbone.{k}"] = dst + expected_encoder_key(k)
            head = f"{mod}_{role}_head."
            table.update({
                f"{m}_{role}.head.mlp.0.weight": head + "layers.0.weight", f"{m}_{role}.head.mlp.0.bias": head + "layers.0.bias",
                f"{m}_{role}.head.mlp.3.weight": head + "layers.1.weight", f"{m}_{role}.head.mlp.3.bias": head + "layers.1.bias",
                f"{m}_{role}.head.mlp.6.weight": head + "layers.2.weight", f"{m}_{role}.head.mlp.6.bias": head + "layers.2.bias",
                f"{m}_{role}.head.mlp.1.weight": head + "hidden_norms.0.weight",
                f"{m}_{role}.head.mlp.1.bias": head + "hidden_norms.0.bias",
                f"{m}_{role}.head.mlp.4.weight": head + "hidden_norms.0.weight",  # the same module, loaded once
                f"{m}_{role}.head.mlp.4.bias": head + "hidden_norms.0.bias",
                f"{m}_{role}.head.last_layer.weight_g": head + "last_layer.weight_g",
                f"{m}_{role}.head.last_layer.weight_v": head + "last_layer.weight_v",
            })
        for k in bb:
            table[f"{m}_ae.encoder.{k}"] = f"{mod}_student." + expected_encoder_key(k)
        dec = f"{mod}_decoder."
        table.update({
            f"{m}_ae.dec_pos_embed": dec + "position_embeddings", f"{m}_ae.mask_token": dec + "mask_token",
            f"{m}_ae.mid_proj.weight": dec + "decoder_embed.weight", f"{m}_ae.mid_proj.bias": dec + "decoder_embed.bias",
            f"{m}_ae.out_proj.weight": dec + "decoder_pred.weight", f"{m}_ae.out_proj.bias": dec + "decoder_pred.bias",
        })
        for i in range(config.decoder_num_hidden_layers):
            for part, hf in BLOCK_TABLE.items():
                table[f"{m}_ae.decoder.blocks.{i}.{part}"] = f"{dec}layers.{i}.{hf}"
    table["vt2as_ce_loss.center"] = "video_teacher_center"
    table["at2vs_ce_loss.center"] = "audio_teacher_center"
    return table


@pytest.mark.parametrize("variant", ["xkd", "xkd-mas", "xkd-mats"])
def test_full_checkpoint_lands_key_by_key(variant):
    config = tiny_config(variant)
    ckpt = released_full_checkpoint(config, seed=5)
    converted = convert_full_checkpoint(ckpt, config)
    table = _expected_full_mapping(config)
    model_sd = ckpt["model"]
    assert set(table) == {k[len("module."):] for k in model_sd}  # the table covers every released key
    for key, target in table.items():
        value = model_sd[f"module.{key}"]
        if key.endswith(("cuboid_embed.proj.weight", "patch_embed.proj.weight")):
            continue  # the tokenizer permutation is checked by assert_encoder_landed below
        assert torch.equal(converted[target], value), f"{key} -> {target}"
    for m, mod, cfg in (("vid", "video", config.video_config), ("aud", "audio", config.audio_config)):
        for role, dst in (("teacher", f"{mod}_model."), ("student", f"{mod}_student.")):
            released = {k.split(".backbone.", 1)[1]: v for k, v in model_sd.items()
                        if k.startswith(f"module.{m}_{role}.backbone.")}
            assert_encoder_landed(released, converted, dst, mod, cfg)
    assert set(converted) == set(table.values())


@pytest.mark.parametrize("trained,given", [("xkd-mas", "xkd"), ("xkd", "xkd-mats"), ("xkd-mats", "xkd-mas")])
def test_full_checkpoint_wrong_variant(trained, given):
    ckpt = released_full_checkpoint(tiny_config(trained))
    with pytest.raises(ConversionError, match=rf"Wrong variant: --full-checkpoint was trained as {trained}.*--variant {given}"):
        convert_full_checkpoint(ckpt, tiny_config(given))


def test_projector_norms_must_be_identical():
    config = tiny_config()
    ckpt = released_full_checkpoint(config)
    ckpt["model"]["module.aud_student.head.mlp.4.weight"] = ckpt["model"]["module.aud_student.head.mlp.4.weight"] + 1
    with pytest.raises(ConversionError, match=r"aud_student\.head\.mlp\.4\.weight differs from aud_student\.head\.mlp\.1\.weight"):
        convert_full_checkpoint(ckpt, config)


def test_mae_encoder_must_be_the_student():
    config = tiny_config()
    ckpt = released_full_checkpoint(config)
    key = "module.vid_ae.encoder.encoder.blocks.0.attn.qkv.weight"
    ckpt["model"][key] = ckpt["model"][key] + 1
    with pytest.raises(ConversionError, match=r"vid_ae\.encoder\.encoder\.blocks\.0\.attn\.qkv\.weight differs from vid_student"):
        convert_full_checkpoint(ckpt, config)


def test_full_checkpoint_missing_unexpected_shape():
    config = tiny_config()
    ckpt = released_full_checkpoint(config)
    sd = ckpt["model"]
    del sd["module.at2vs_ce_loss.center"]
    sd["module.vid_ae.decoder_norm.weight"] = torch.ones(16)  # MAE has a decoder norm; the release does not
    sd["module.aud_ae.out_proj.weight"] = torch.zeros(33, 16)
    with pytest.raises(ConversionError) as err:
        convert_full_checkpoint(ckpt, config)
    msg = str(err.value)
    assert "missing keys (1" in msg and "audio_teacher_center" in msg
    assert "unexpected keys (1" in msg and "vid_ae.decoder_norm.weight" in msg
    assert "aud_ae.out_proj.weight -> audio_decoder.decoder_pred.weight: source [33, 16] vs expected [32, 16]" in msg
    sd.pop("module.vid_ae.decoder_norm.weight")
    sd["vt2as_ce_loss.center"] = sd.pop("module.vt2as_ce_loss.center")
    with pytest.raises(ConversionError, match="'module.' prefix and these do not: \\['vt2as_ce_loss.center'\\]"):
        convert_full_checkpoint(ckpt, config)


# ----------------------------------------------------------------------------------------------------------------
# Folders, card, push, CLI
# ----------------------------------------------------------------------------------------------------------------


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_write(tmp_path):
    out = tmp_path / "out"

    def failing(tmp: Path):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_folder_atomically(out, failing)
    assert sorted(os.listdir(tmp_path)) == []  # neither the folder nor a temporary one is left
    save_folder_atomically(out, lambda tmp: (tmp / "a.txt").write_text("1"))
    with pytest.raises(ConversionError, match="not empty; pass --overwrite"):
        save_folder_atomically(out, lambda tmp: (tmp / "b.txt").write_text("2"))
    save_folder_atomically(out, lambda tmp: (tmp / "b.txt").write_text("2"), overwrite=True)
    assert sorted(os.listdir(out)) == ["b.txt"] and sorted(os.listdir(tmp_path)) == ["out"]


@pytest.fixture(scope="module")
def converted_folder(tmp_path_factory):
    """One backbone conversion (variant xkd, K400) through the library entry point, shared by several tests."""
    tmp = tmp_path_factory.mktemp("conv")
    config, video, audio, vpath, apath = write_pair(tmp, "xkd", seed=7)
    out = tmp / "xkd-vitb-k400"
    convert_to_folders(variant="xkd", output_dir=out, video_checkpoint=vpath, audio_checkpoint=apath, config=config)
    return out, video, audio, config


def test_folder_loads_with_all_three_classes(converted_folder):
    from transformers_xkd import XKDAudioModel, XKDModel, XKDVideoModel

    out, video, audio, config = converted_folder
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "README.md", "conversion_info.json"} <= files
    model = XKDModel.from_pretrained(out)
    assert model.config.variant == "xkd"
    assert_encoder_landed(video, model.state_dict(), "video_model.", "video", config.video_config)
    vmodel, amodel = XKDVideoModel.from_pretrained(out), XKDAudioModel.from_pretrained(out)
    assert_encoder_landed(video, vmodel.state_dict(), "", "video", config.video_config)
    assert_encoder_landed(audio, amodel.state_dict(), "", "audio", config.audio_config)
    info = json.loads((out / "conversion_info.json").read_text())
    assert info["role"] == "teacher" and info["sources"]["video"]["file"].endswith("vid_teacher.pth.tar")


def test_model_card_metadata_and_usage_snippet_runs(converted_folder):
    from huggingface_hub import ModelCard

    out, *_ = converted_folder
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-nc-4.0" and data["library_name"] == "transformers"
    values = {(r.dataset_name, r.metric_name, r.metric_value) for r in card.data.eval_results}
    assert len(values) == 11  # Table 7 (3 datasets x 2 protocols), Table 8 (2 datasets x 2), Table 9 (1)
    assert ("UCF101", "Top-1 accuracy (fine-tuning, 3-fold average)", 94.1) in values
    assert ("Kinetics-400", "Top-1 accuracy (linear evaluation)", 51.4) in values
    assert ("ESC-50", "Top-1 accuracy (linear evaluation, 5-fold average)", 89.4) in values
    assert ("FSD50K", "mAP (fine-tuning)", 54.1) in values
    assert ("Kinetics-Sound", "Top-1 accuracy (late fusion, linear SVM)", 81.2) in values
    assert "sarkar2022xkd" in card.text and "CC BY-NC 4.0" in card.text
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert str(out) in snippet
    exec(compile(snippet, "README usage", "exec"), {})


def test_model_card_sections_follow_the_folder():
    from transformers_xkd.model_card import make_model_card

    config = tiny_config("xkd-mas")
    card = make_model_card(variant="xkd-mas", pretraining_dataset="audioset", model_id="me/pre", kind="pretraining",
                           config=config, epoch=800, sources={"full": {"file": "checkpoint.pth.tar", "sha256": "ab12"}})
    text = card.text
    assert "The paper reports no downstream numbers" in text  # the paper has no MAS model pretrained on AudioSet
    assert card.data.eval_results is None
    assert "ViT-L video encoder" in text and "for 400 epochs" in text
    assert "The full checkpoint records 800 completed training epochs." in text
    assert "| full | `checkpoint.pth.tar` | `ab12` |" in text
    assert 'XKDForPretraining.from_pretrained("me/pre")' in text and "preprocessing configurations" not in text
    assert f"({config.video_config.num_patches} tokens)" in text and f"({config.audio_config.num_patches} tokens," in text
    card = make_model_card(variant="xkd", model_id="me/enc", role="student", has_processors=True)
    text = card.text
    assert "holds the student encoders" in text and "To continue pretraining" not in text
    assert "preprocessing configurations" in text and "completed training epochs" not in text and "| source | file | sha256 |" not in text
    assert "32 frames of 112 x 112 pixels" in text and "| Video action recognition | UCF101 |" in text
    assert "\n\n\n" not in card.content


def test_push_without_network_keeps_folder(converted_folder, monkeypatch):
    import huggingface_hub

    out, *_ = converted_folder
    before = _tree(out)

    def no_network(self, *args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", no_network)
    with pytest.raises(RuntimeError) as err:
        push_folder_to_hub(out, "xkd/vitb-k400")
    msg = str(err.value)
    assert "xkd/vitb-k400" in msg and "Network is unreachable" in msg and "complete and unchanged" in msg
    assert _tree(out) == before


def test_push_uploads_the_folder(converted_folder, monkeypatch):
    import huggingface_hub

    out, *_ = converted_folder
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload", kw["repo_id"], kw["folder_path"])) or "url")
    assert push_folder_to_hub(out, "xkd/vitb-k400") == "url"
    assert calls == [("create", "xkd/vitb-k400"), ("upload", "xkd/vitb-k400", str(out))]


@pytest.mark.parametrize("variant", ["xkd-mas"])
def test_full_checkpoint_folder_and_teacher_export(tmp_path, variant):
    from transformers_xkd import XKDForPretraining, XKDModel, XKDVideoModel

    config = tiny_config(variant)
    ckpt = released_full_checkpoint(config, seed=9)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(ckpt, path)
    folders = convert_to_folders(variant=variant, output_dir=tmp_path / "pre", full_checkpoint=path, config=config,
                                 export_teachers_dir=tmp_path / "teachers")
    pre = XKDForPretraining.from_pretrained(folders["pretraining"])
    expected = convert_full_checkpoint(ckpt, config)
    live = pre.state_dict()
    for key, value in expected.items():
        assert torch.equal(live[key], value), key
    # MAS: the student blocks are one module in the converted model too
    assert pre.video_student.encoder.layer[0].attention.qkv.weight.data_ptr() == \
        pre.audio_student.encoder.layer[0].attention.qkv.weight.data_ptr()
    teachers = XKDModel.from_pretrained(folders["teachers"]).state_dict()
    for key, value in teachers.items():
        assert torch.equal(value, expected[key]), key
    video_teacher = XKDVideoModel.from_pretrained(folders["pretraining"]).state_dict()
    for key, value in video_teacher.items():
        assert torch.equal(value, expected["video_model." + key]), key
    info = json.loads((folders["pretraining"] / "conversion_info.json").read_text())
    assert info["epoch"] == 800 and info["variant"] == variant


def test_cli_end_to_end(tmp_path, capsys):
    config, video, audio, vpath, apath = write_pair(tmp_path, "xkd-mats", seed=11, eval_names=True)
    cfg_path = tmp_path / "tiny_config.json"
    config.to_json_file(str(cfg_path))
    out = tmp_path / "converted"
    cmd = [sys.executable, str(CLI), "--video-checkpoint", str(vpath), "--audio-checkpoint", str(apath),
           "--variant", "xkd-mats", "--output-dir", str(out), "--config", str(cfg_path), "--repo-id", "xkd/vitb-k400-mats"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "wrote model folder" in run.stdout
    readme = (out / "README.md").read_text()
    assert 'XKDModel.from_pretrained("xkd/vitb-k400-mats")' in readme and "XKD-MATS" in readme
    from transformers_xkd import XKDModel

    model = XKDModel.from_pretrained(out)
    assert_encoder_landed(eval_rename_inverse(video), model.state_dict(), "video_model.", "video", config.video_config)
    # the same command with the two files swapped fails with the modality message and writes nothing (run in
    # process: a second interpreter start would double this test's time)
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_cli", CLI)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    bad = cmd[2:]
    bad[1], bad[3] = bad[3], bad[1]
    bad[bad.index(str(out))] = str(tmp_path / "bad")
    assert cli.main(bad) == 2
    assert "Wrong modality: --video-checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def eval_rename_inverse(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Eval names of a video file back to training names (for `assert_encoder_landed`)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("blocks."):
            key = "encoder." + key
        elif key.startswith("norm."):
            key = "encoder_" + key
        elif key == "pos_embed":
            key = "enc_pos_embed"
        elif key.startswith("patch_embed"):
            key = "cuboid_embed" + key[len("patch_embed"):]
        out[key] = value
    return out


def _converter_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_cli_errors", CLI)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_cli_user_errors_exit_2_naming_the_file_before_anything_is_written(tmp_path, capsys):
    """Issue 11.7: a --config that is not JSON, an unwritable output folder, two outputs into one folder and a
    malformed state dict value each exit 2 with a message naming the file or argument; nothing is written; stale
    temporary folders of a killed run are removed."""
    cli = _converter_cli()
    config, video, audio, vpath, apath = write_pair(tmp_path, "xkd", seed=3)
    cfg_path = tmp_path / "tiny_config.json"
    config.to_json_file(str(cfg_path))
    base = ["--video-checkpoint", str(vpath), "--audio-checkpoint", str(apath), "--variant", "xkd"]

    def run(*extra):
        rc = cli.main([*base, *extra])
        err = capsys.readouterr().err
        return rc, err, err.strip().splitlines()[-1]

    not_json = tmp_path / "config.yaml"
    not_json.write_text("hidden_size: 8\n")
    rc, err, last = run("--output-dir", str(tmp_path / "a"), "--config", str(not_json))
    assert rc == 2 and f"--config {not_json}: not a JSON file" in err
    assert last.startswith("convert_xkd_original_to_hf.py: exit status 2 (bad arguments or input files)")

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc, err, _ = run("--output-dir", str(blocker / "out"), "--config", str(cfg_path))
    assert rc == 2 and "--output-dir" in err and "is not a writable folder" in err

    full = tmp_path / "checkpoint.pth.tar"
    torch.save(released_full_checkpoint(config, seed=1), full)
    same = tmp_path / "same"
    rc, err, _ = run("--output-dir", str(same), "--config", str(cfg_path), "--full-checkpoint", str(full),
                     "--pretraining-output-dir", str(same))
    assert rc == 2 and "--pretraining-output-dir and --output-dir are the same folder" in err
    assert not same.exists()

    bad_sd = dict(video)
    bad_sd[next(iter(bad_sd))] = "not a tensor"
    bad_path = tmp_path / "XKD_pretext_kinetics400_ep799vid_teacher_bad.pth.tar"
    torch.save(bad_sd, bad_path)
    out = tmp_path / "out"
    stale = tmp_path / ".out.tmp-killed"  # what a conversion killed mid-write leaves next to its folder
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    rc = cli.main(["--video-checkpoint", str(bad_path), "--audio-checkpoint", str(apath), "--variant", "xkd",
                   "--output-dir", str(out), "--config", str(cfg_path)])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad_path) in err and f"entry {next(iter(bad_sd))!r} is a str, expected a tensor" in err
    assert not out.exists() and not stale.exists()
