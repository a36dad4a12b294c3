"""Section 1, encoder inference: XKDVideoModel vs VideoMAEModel (same width/depth/heads, 392 tokens) and
XKDAudioModel vs ASTModel (patch strides chosen so that AST also has 560 patch tokens); fp32 and bf16 autocast;
sdpa and eager; the suite's batch sizes. Result key: ``encoder_inference``.
"""

from __future__ import annotations

import numpy as np
import torch

from .harness import autocast_ctx, time_interleaved


def encoder_geometry(size: str) -> dict:
    if size == "tiny":
        width = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        video = dict(image_size=32, num_frames=8, tubelet_size=4, patch_size=16)
        audio = dict(num_mel_bins=16, max_length=64, frequency_patch_size=4, time_patch_size=16)
    else:  # ViT-B, the released pretraining input sizes
        width = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        video = dict(image_size=112, num_frames=32, tubelet_size=4, patch_size=16)
        audio = dict(num_mel_bins=80, max_length=448, frequency_patch_size=4, time_patch_size=16)
    return dict(width=width, video=video, audio=audio)


def ast_geometry(num_mel_bins: int, target_tokens: int, target_length: int, patch: int = 16) -> dict:
    """AST strides and input length giving `target_tokens` patch tokens on `num_mel_bins` mel bins.

    AST cuts 16x16 patches with configurable strides: f = (mel - 16) // fs + 1, t = (length - 16) // ts + 1.
    Among exact matches we pick the input length closest to XKD's (so both models see nearly the same
    spectrogram), then the least overlap. Falls back to the closest token count when no exact match exists.
    """
    best = None
    for fs in range(1, patch + 1):
        f = (num_mel_bins - patch) // fs + 1
        if f < 1:
            continue
        for ts in range(1, patch + 1):
            t = max(1, round(target_tokens / f))
            length = patch + (t - 1) * ts
            tokens = f * t
            key = (abs(tokens - target_tokens), abs(length - target_length), -(fs * ts))
            if best is None or key < best[0]:
                best = (key, dict(frequency_stride=fs, time_stride=ts, max_length=length, num_patch_tokens=tokens,
                                  frequency_patches=f, time_patches=t))
    return best[1]


def build_encoder_pair(modality: str, size: str, attn: str, device: torch.device):
    """XKD encoder and its transformers peer with the same width, depth, heads and patch-token count."""
    from transformers import ASTConfig, ASTModel, VideoMAEConfig, VideoMAEModel

    from transformers_xkd import XKDAudioConfig, XKDAudioModel, XKDVideoConfig, XKDVideoModel

    geo = encoder_geometry(size)
    width = geo["width"]
    if modality == "video":
        v = geo["video"]
        xkd = XKDVideoModel._from_config(XKDVideoConfig(**width, **v), attn_implementation=attn)
        # qkv_bias=False as in XKD (VideoMAE's default adds q/v biases); use_mean_pooling keeps VideoMAE's own head.
        peer_cfg = VideoMAEConfig(**width, **v, num_channels=3, qkv_bias=False)
        peer = VideoMAEModel._from_config(peer_cfg, attn_implementation=attn)
        xkd_tokens = xkd.config.num_patches
        peer_tokens = peer.embeddings.num_patches
        meta = dict(input_shape=[v["num_frames"], 3, v["image_size"], v["image_size"]], peer_name="VideoMAEModel",
                    xkd_patch_tokens=xkd_tokens, peer_patch_tokens=peer_tokens,
                    xkd_sequence_length=xkd_tokens + 1, peer_sequence_length=peer_tokens)

        def make_inputs(batch):
            x = torch.randn(batch, v["num_frames"], 3, v["image_size"], v["image_size"], device=device)
            return (lambda: xkd(pixel_values=x)), (lambda: peer(pixel_values=x))
    else:
        a = geo["audio"]
        xkd = XKDAudioModel._from_config(XKDAudioConfig(**width, **a), attn_implementation=attn)
        xkd_tokens = xkd.config.num_patches
        g = ast_geometry(a["num_mel_bins"], xkd_tokens, a["max_length"])
        peer_cfg = ASTConfig(**width, num_mel_bins=a["num_mel_bins"], max_length=g["max_length"], patch_size=16,
                             frequency_stride=g["frequency_stride"], time_stride=g["time_stride"], qkv_bias=False)
        peer = ASTModel._from_config(peer_cfg, attn_implementation=attn)
        f_dim, t_dim = peer.embeddings.get_shape(peer_cfg)
        peer_tokens = f_dim * t_dim
        meta = dict(input_shape=[a["max_length"], a["num_mel_bins"]], peer_name="ASTModel",
                    peer_input_shape=[g["max_length"], a["num_mel_bins"]], peer_geometry=g,
                    xkd_patch_tokens=xkd_tokens, peer_patch_tokens=peer_tokens,
                    xkd_sequence_length=xkd_tokens + 1, peer_sequence_length=peer_tokens + 2)  # AST: CLS + distil

        def make_inputs(batch):
            x = torch.randn(batch, a["max_length"], a["num_mel_bins"], device=device)
            y = torch.randn(batch, g["max_length"], a["num_mel_bins"], device=device)
            return (lambda: xkd(input_values=x)), (lambda: peer(input_values=y))

    xkd.to(device).eval()
    peer.to(device).eval()
    meta.update(hidden_size=width["hidden_size"], num_hidden_layers=width["num_hidden_layers"],
                num_attention_heads=width["num_attention_heads"], intermediate_size=width["intermediate_size"])
    return xkd, peer, make_inputs, meta


def bench_encoders(settings: dict, device: torch.device, log) -> dict:
    rows = []
    models_meta = {}
    for modality in ("video", "audio"):
        for attn in settings["attn"]:
            xkd, peer, make_inputs, meta = build_encoder_pair(modality, settings["encoder_size"], attn, device)
            models_meta[modality] = meta
            for dtype in settings["dtypes"]:
                for batch in settings["batches"]:
                    xkd_fn, peer_fn = make_inputs(batch)

                    def run(fn):
                        def call():
                            with torch.inference_mode(), autocast_ctx(device, dtype):
                                fn()
                        return call

                    stats = time_interleaved({"xkd": run(xkd_fn), "peer": run(peer_fn)}, settings["warmup"][batch],
                                             settings["repeats"][batch], device)
                    x_t, p_t = stats["xkd"]["median_s"], stats["peer"]["median_s"]
                    row = dict(
                        modality=modality, peer=meta["peer_name"], attn=attn, dtype=dtype, batch=batch,
                        xkd=stats["xkd"], peer_stats=stats["peer"],
                        xkd_clips_per_s=batch / x_t, peer_clips_per_s=batch / p_t,
                        throughput_ratio=p_t / x_t,  # > 1: XKD faster
                    )
                    rows.append(row)
                    log(f"  encoder {modality:5s} {attn:5s} {dtype} b{batch}: XKD {x_t * 1e3:8.1f} ms  "
                        f"{meta['peer_name']} {p_t * 1e3:8.1f} ms  ratio {row['throughput_ratio']:.2f}x")
            del xkd, peer
    ratios = [r["throughput_ratio"] for r in rows]
    return dict(models=models_meta, results=rows, min_throughput_ratio=min(ratios),
                geomean_throughput_ratio=float(np.exp(np.mean(np.log(ratios)))))
