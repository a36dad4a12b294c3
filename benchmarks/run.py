"""Side-by-side speed and memory benchmarks for transformers-xkd (issue 7).

    python benchmarks/run.py --suite cpu            # the CPU suite (2-core machine: a few minutes)
    python benchmarks/run.py --suite gpu            # the same measurements on CUDA (bf16 autocast, sdpa, MFU)
    python benchmarks/run.py --suite cpu --smoke    # tiny sizes, one repeat: checks the plumbing, not the speed

Writes ``benchmarks/results/<suite>-<device>.json`` and ``.md`` (and ``.png`` when matplotlib happens to be
installed; it is not a dependency). Sections:

1. ``encoder_inference``: XKDVideoModel vs VideoMAEModel (same width/depth/heads, 392 tokens) and XKDAudioModel vs
   ASTModel (patch strides chosen so that AST also has 560 patch tokens); fp32 and bf16 autocast; sdpa and eager;
   batch 1 and 8.
2. ``pretraining_step``: one XKDForPretraining optimisation step (forward + backward + AdamW + EMA) against the
   audio-visual MAE baseline (students + decoders + masked reconstruction only), time and peak memory; analytic
   FLOPs (cross-checked with torch's FlopCounterMode) and, on a GPU, model FLOPs utilisation.
3. ``log_mel``: XKDFeatureExtractor vs the released librosa recipe on the same 4 s waveforms, batch 1 and 64.
4. ``data_path``: decode + sample (+ augment + log-mel) clips/s on one CPU core, real files and synthetic 480p clips.

Every number is a median over repeats taken after warm-up. Competing measurements (XKD vs its peer) are
interleaved round by round, so that load from other processes on a shared machine hits both alike; the spread
(min, max, interquartile range) is reported next to each median.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import math
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))

SCHEMA_VERSION = 1
DEFAULT_MEDIA = REPO.parent / "shared" / "media"  # the shared clips next to the checkout (../shared/media)

# Dense bf16 tensor-core peak (TFLOP/s) used for MFU; matched against torch.cuda.get_device_name().
GPU_PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "V100": 125.0,
}

# ----------------------------------------------------------------------------------------------------------------
# Suite settings
# ----------------------------------------------------------------------------------------------------------------


def suite_settings(suite: str, smoke: bool) -> dict:
    """Sizes and repeat counts. The CPU suite keeps full ViT-B encoders (what users run) but a reduced width for
    the training step, and chooses repeats so that a 2-core machine finishes in about ten minutes."""
    if smoke:
        return dict(
            encoder_size="tiny", batches=(1, 2), dtypes=("fp32", "bf16"), attn=("sdpa", "eager"),
            warmup={1: 1, 2: 1}, repeats={1: 1, 2: 1}, pretrain_size="tiny", pretrain_batch=2, pretrain_warmup=1,
            pretrain_repeats=1, logmel_batches=(1, 4), logmel_repeats=1, data_clips=1, data_seconds=2.0,
            synth_clips=1, synth_size=(256, 144), synth_seconds=5.0,
        )
    if suite == "cpu":
        return dict(
            encoder_size="base", batches=(1, 8), dtypes=("fp32", "bf16"), attn=("sdpa", "eager"),
            # batch 8 (11-40 s a call here) takes no separate warm-up: fp32 linears go to MKL gemm with no
            # per-shape setup, and the median of three absorbs the first call's oneDNN primitive creation.
            warmup={1: 1, 8: 0}, repeats={1: 5, 8: 4}, pretrain_size="cpu-reduced", pretrain_batch=2,
            pretrain_warmup=1, pretrain_repeats=4, logmel_batches=(1, 64), logmel_repeats=5, data_clips=3, data_seconds=None,
            synth_clips=2, synth_size=(854, 480), synth_seconds=10.0,
        )
    return dict(  # gpu
        encoder_size="base", batches=(1, 8, 32), dtypes=("fp32", "bf16"), attn=("sdpa", "eager"),
        warmup={1: 3, 8: 3, 32: 3}, repeats={1: 20, 8: 20, 32: 10}, pretrain_size="base", pretrain_batch=32, pretrain_warmup=3,
        pretrain_repeats=10, logmel_batches=(1, 64), logmel_repeats=5, data_clips=3, data_seconds=None,
        synth_clips=2, synth_size=(854, 480), synth_seconds=10.0,
    )


# ----------------------------------------------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times: list[float]) -> dict:
    """Median and spread of a list of durations (seconds)."""
    ts = sorted(times)
    q1, q3 = (np.percentile(ts, 25), np.percentile(ts, 75)) if len(ts) > 1 else (ts[0], ts[0])
    return dict(
        median_s=statistics.median(ts), min_s=ts[0], max_s=ts[-1], iqr_s=float(q3 - q1), n=len(ts),
        times_s=[round(t, 6) for t in times],
    )


def time_interleaved(fns: dict, warmup: int, repeats: int, device: torch.device) -> dict:
    """Run every function `warmup` times, then `repeats` rounds in which each function runs once (in an order that
    alternates between rounds, so neither always runs first after the other). Returns name -> summary."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
            _sync(device)
    times = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: summarize(ts) for name, ts in times.items()}


def autocast_ctx(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------------------------
# Device names
# ----------------------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name or "unknown-cpu"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def device_slug(device: torch.device) -> str:
    """A short file-name-safe device string: 'intel-xeon-2c' or 'nvidia-h100-80gb-hbm3'."""
    if device.type == "cuda":
        raw = torch.cuda.get_device_name(device)
        suffix = ""
    else:
        raw = cpu_name()
        suffix = f"-{usable_cpus()}c"
    raw = re.sub(r"\((R|TM|tm|r)\)", "", raw)
    raw = re.sub(r"(?i)\b(processor|cpu|@.*)\b", "", raw)
    slug = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-") or device.type
    return slug + suffix


def gpu_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in GPU_PEAK_BF16_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


# ----------------------------------------------------------------------------------------------------------------
# 1. Encoder inference
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# 2. Pretraining step
# ----------------------------------------------------------------------------------------------------------------


def pretraining_config(size: str, attn: str):
    from transformers_xkd import XKDConfig

    if size == "tiny":
        width = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        video = dict(image_size=32, num_frames=8, tubelet_size=4, patch_size=16)
        audio = dict(num_mel_bins=16, max_length=64, frequency_patch_size=4, time_patch_size=16)
        extra = dict(decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                     decoder_intermediate_size=32, projector_hidden_size=32, projector_bottleneck_size=8,
                     projector_output_size=64, local_num_frames=4, local_image_size=16, local_max_length=32)
    elif size == "cpu-reduced":
        # ViT-S width (384) at full depth and the released input sizes (392 / 560 tokens, local views 72 / 140):
        # the token counts decide the distillation's relative cost, so they stay; decoder and projector hidden
        # width are halved with the encoder, the 8192-way projector output (the KD softmax) is kept.
        width = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
        video, audio = {}, {}
        extra = dict(decoder_hidden_size=192, decoder_num_hidden_layers=4, decoder_num_attention_heads=6,
                     decoder_intermediate_size=768, projector_hidden_size=1024)
    else:  # base: the released configuration
        width, video, audio, extra = {}, {}, {}, {}
    cfg = XKDConfig(video_config=dict(width, **video), audio_config=dict(width, **audio), **extra)
    for sub in (cfg, cfg.video_config, cfg.audio_config):
        sub._attn_implementation = attn
    return cfg


def pretraining_batch(cfg, batch: int, device: torch.device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    v, a = cfg.video_config, cfg.audio_config
    out = dict(
        pixel_values=torch.randn(batch, v.num_frames, 3, v.image_size, v.image_size, generator=g),
        input_values=torch.randn(batch, a.max_length, a.num_mel_bins, generator=g),
        local_pixel_values=torch.randn(batch, cfg.num_local_video_views, cfg.local_num_frames, 3,
                                       cfg.local_image_size, cfg.local_image_size, generator=g),
        local_input_values=torch.randn(batch, cfg.num_local_audio_views, cfg.local_max_length, a.num_mel_bins,
                                       generator=g),
    )
    return {k: t.to(device) for k, t in out.items()}


def mae_only_loss(model, batch: dict) -> torch.Tensor:
    """The audio-visual MAE baseline (paper Table 1): the same students, decoders and masked reconstruction loss
    as XKD, with no local views, teachers, projector heads, alignment or distillation."""
    from transformers_xkd.modeling_xkd import masked_reconstruction_loss, patchify_audio, patchify_video

    cfg = model.config
    v_cfg, a_cfg = cfg.video_config, cfg.audio_config
    pv, iv = batch["pixel_values"], batch["input_values"]
    v_lat = model.video_student(pv, mask_ratio=cfg.video_mask_ratio)
    a_lat = model.audio_student(iv, mask_ratio=cfg.audio_mask_ratio)
    v_pred = model.video_decoder(v_lat.last_hidden_state, v_lat.ids_restore)
    a_pred = model.audio_decoder(a_lat.last_hidden_state, a_lat.ids_restore)
    v_rec = masked_reconstruction_loss(v_pred, patchify_video(pv, v_cfg.tubelet_size, v_cfg.patch_size),
                                       v_lat.mask, cfg.norm_pix_loss)
    a_rec = masked_reconstruction_loss(a_pred, patchify_audio(iv, a_cfg.frequency_patch_size, a_cfg.time_patch_size),
                                       a_lat.mask, cfg.norm_pix_loss)
    return (v_rec + a_rec) / 2


def mae_parameters(model):
    seen = set()
    for module in (model.video_student, model.audio_student, model.video_decoder, model.audio_decoder):
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield p


def make_step(variant: str, cfg, batch: dict, device: torch.device, dtype: str, fused_adamw: bool | None,
              compile_model: bool = False):
    """Build a model + optimizer and return a zero-argument function doing one optimisation step.

    variant: "full" (XKD: loss.backward, AdamW, EMA teacher update), "mae" (reconstruction only, no teachers),
    "full_ckpt" (XKD with activation checkpointing of every transformer block).
    """
    from transformers_xkd import XKDForPretraining

    torch.manual_seed(0)
    model = XKDForPretraining(cfg).to(device)
    model.train()
    if variant == "full_ckpt":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = list(mae_parameters(model)) if variant == "mae" else [p for p in model.parameters() if p.requires_grad]
    opt_kwargs = dict(lr=1e-4, weight_decay=0.05)
    if fused_adamw is not None:
        opt_kwargs["fused"] = fused_adamw
    optimizer = torch.optim.AdamW(params, **opt_kwargs)
    forward = model
    if compile_model:
        forward = torch.compile(model)

    def step():
        with autocast_ctx(device, dtype):
            if variant == "mae":
                loss = mae_only_loss(model, batch)
            else:
                loss = forward(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if variant != "mae":
            model.update_teachers(0.998)

    return model, step


def _linear_flops(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def transformer_flops(tokens: int, dim: int, layers: int, mlp: int) -> int:
    """Forward FLOPs (2 per multiply-add) of `layers` pre-norm ViT blocks on one sequence of `tokens`:
    qkv + output projection (4 D^2 per token), MLP (2 D M per token), and q k^T and attn v (2 L^2 D)."""
    per_layer = _linear_flops(tokens, dim, 3 * dim) + _linear_flops(tokens, dim, dim)
    per_layer += _linear_flops(tokens, dim, mlp) + _linear_flops(tokens, mlp, dim)
    per_layer += 2 * (2 * tokens * tokens * dim)
    return layers * per_layer


def analytic_step_flops(cfg, batch: int) -> dict:
    """Model FLOPs of one step from the architecture (2 per multiply-add). Trained parts cost 3x their forward
    (backward = input grad + weight grad), except the patch embedding whose input needs no gradient (2x); the
    teachers run forward only. The patch embedding sees every patch (masking happens after it); the blocks see the
    kept tokens + CLS; the decoder's input projection sees the visible tokens, its blocks and output projection all
    tokens. Elementwise work, norms, softmax, losses and the optimizer are not counted (the usual MFU convention)."""
    v, a = cfg.video_config, cfg.audio_config

    def encoder(tower, patches, tokens, trained):
        embed = _linear_flops(patches, tower.patch_dim, tower.hidden_size)
        blocks = transformer_flops(tokens + 1, tower.hidden_size, tower.num_hidden_layers, tower.intermediate_size)
        return 2 * embed + 3 * blocks if trained else embed + blocks

    def decoder(tower, visible):
        n, d = tower.num_patches + 1, cfg.decoder_hidden_size
        fwd = _linear_flops(visible + 1, tower.hidden_size, d) + _linear_flops(n, d, tower.patch_dim)
        fwd += transformer_flops(n, d, cfg.decoder_num_hidden_layers, cfg.decoder_intermediate_size)
        return 3 * fwd

    def head(rows, dim, trained):
        h, b, o = cfg.projector_hidden_size, cfg.projector_bottleneck_size, cfg.projector_output_size
        fwd = _linear_flops(rows, dim, h) + _linear_flops(rows, h, h) + _linear_flops(rows, h, b) + \
            _linear_flops(rows, b, o)
        return 3 * fwd if trained else fwd

    v_keep = int(round(v.num_patches * (1 - cfg.video_mask_ratio)))
    a_keep = int(round(a.num_patches * (1 - cfg.audio_mask_ratio)))
    v_local = (cfg.local_num_frames // v.tubelet_size) * (cfg.local_image_size // v.patch_size) ** 2
    a_local = (a.num_mel_bins // a.frequency_patch_size) * (cfg.local_max_length // a.time_patch_size)
    nv, na = cfg.num_local_video_views, cfg.num_local_audio_views
    mae = encoder(v, v.num_patches, v_keep, True) + encoder(a, a.num_patches, a_keep, True) + \
        decoder(v, v_keep) + decoder(a, a_keep)
    students = nv * encoder(v, v_local, v_local, True) + na * encoder(a, a_local, a_local, True) + \
        head(1 + nv, v.hidden_size, True) + head(1 + na, a.hidden_size, True)
    tv = v.num_patches if cfg.teacher_view == "global" else v_local
    ta = a.num_patches if cfg.teacher_view == "global" else a_local
    teachers = encoder(v, tv, tv, False) + encoder(a, ta, ta, False) + head(1, v.hidden_size, False) + \
        head(1, a.hidden_size, False)
    full = mae + students + teachers
    return dict(mae=int(mae * batch), full=int(full * batch), ratio=full / mae,
                tokens=dict(video_visible=v_keep, audio_visible=a_keep, video_local=v_local, audio_local=a_local,
                            video_decoder=v.num_patches + 1, audio_decoder=a.num_patches + 1))


def counted_step_flops(step) -> int:
    """FLOPs of one step as counted by torch's FlopCounterMode (matmuls and convs, fwd + bwd). On a CPU the fused
    sdpa kernel is not counted by it (only the CUDA flash / memory-efficient kernels are), so there this count
    misses the attention products; with eager attention it matches the analytic count."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def measure_matmul_peak(device: torch.device, dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """Achievable dense matmul FLOP/s on this device (a yardstick for CPU 'MFU'; the GPU uses its datasheet)."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    a @ b
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux: writing 5 to /proc/self/clear_refs), so that the
    peak read afterwards belongs to the steps, not to model construction."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_memory(args) -> None:
    """Run in a fresh process: build one variant, take two steps, print its peak memory as JSON.

    A fresh process per variant because the CPU allocator keeps freed memory, so an in-process high-water mark
    would carry one variant's peak into the next."""
    torch.set_num_threads(1)  # memory does not depend on threads; leave the cores to the timing process
    cfg = pretraining_config(args.size, args.attn)
    device = torch.device("cpu")
    batch = pretraining_batch(cfg, args.batch, device)
    model, step = make_step(args.variant, cfg, batch, device, args.dtype, None)
    before = _rss_bytes()
    reset = _reset_peak_rss()
    for _ in range(2):
        step()
    # Without the reset, ru_maxrss would report model construction's peak for every variant alike.
    peak = _vm_hwm_bytes() if reset else None
    peak = peak if peak is not None else _peak_rss_bytes()
    print(json.dumps(dict(peak_rss_mb=peak / 2**20, rss_before_steps_mb=before / 2**20,
                          step_peak_increase_mb=(peak - before) / 2**20, hwm_reset=reset)))


def bench_pretraining(settings: dict, device: torch.device, suite: str, args, log) -> dict:
    size = settings["pretrain_size"]
    attn = "sdpa"
    # The gpu suite trains in bf16 autocast (also when its code path is exercised on a CPU); the cpu suite in fp32.
    dtype = "bf16" if suite == "gpu" else "fp32"
    batch_size = settings["pretrain_batch"]
    cfg = pretraining_config(size, attn)
    batch = pretraining_batch(cfg, batch_size, device)
    # Fused AdamW (one kernel for all parameters) on CUDA and on the CPU, as the trainer uses it.
    fused = True if device.type in ("cuda", "cpu") else None
    variants = ["full", "mae", "full_ckpt"]
    cuda_memory = {}
    if device.type == "cuda":
        # One variant on the device at a time, so that each peak holds only its own weights, gradients, AdamW
        # state and activations.
        import gc

        for variant in variants:
            model, step = make_step(variant, cfg, batch, device, dtype, True, False)
            step()  # AdamW state is allocated on the first step
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            _sync(device)
            cuda_memory[variant] = torch.cuda.max_memory_allocated(device) / 2**20
            del model, step
            gc.collect()
            torch.cuda.empty_cache()
    steps, models = {}, {}
    for variant in variants:
        models[variant], steps[variant] = make_step(variant, cfg, batch, device, dtype, fused, args.compile)
    flops = analytic_step_flops(cfg, batch_size)
    # One step under the counter also serves as the first warm-up step.
    counted = {v: counted_step_flops(steps[v]) for v in ("full", "mae")}
    stats = time_interleaved(steps, settings["pretrain_warmup"], settings["pretrain_repeats"], device)
    results = {}
    for variant in variants:
        s = stats[variant]
        results[variant] = dict(step=s, clips_per_s=batch_size / s["median_s"])
    for variant in ("full", "mae"):
        results[variant]["achieved_tflops"] = flops[variant] / results[variant]["step"]["median_s"] / 1e12
    # memory
    if device.type == "cuda":
        for variant in variants:
            results[variant]["peak_memory_mb"] = cuda_memory[variant]
    elif args.smoke:
        # Smoke runs stay in-process (a child costs an interpreter start and a torch import, ~10 s on a busy
        # 2-core machine): the high-water-mark increase of each variant, only a plumbing check.
        for variant in variants:
            before = _rss_bytes()
            reset = _reset_peak_rss()
            steps[variant]()
            peak = (_vm_hwm_bytes() if reset else None) or _peak_rss_bytes()
            # max(.., 1 page): the freed memory of an earlier variant can serve a tiny step without any growth
            results[variant]["peak_memory_mb"] = max(peak - before, 4096) / 2**20
            results[variant]["peak_rss_mb"] = peak / 2**20
    else:
        del models, steps
        procs = {}
        for variant in variants:  # the children only measure memory, so they may run side by side
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_child-memory", "--variant", variant,
                   "--size", size, "--attn", attn, "--dtype", dtype, "--batch", str(batch_size)]
            procs[variant] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              cwd=str(REPO))
        for variant, proc in procs.items():
            out, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child for {variant} failed:\n{err[-3000:]}")
            mem = json.loads(out.strip().splitlines()[-1])
            results[variant]["peak_memory_mb"] = mem["step_peak_increase_mb"]
            results[variant]["peak_rss_mb"] = mem["peak_rss_mb"]
    ratio = results["full"]["step"]["median_s"] / results["mae"]["step"]["median_s"]
    out = dict(
        size=size, dtype=dtype, attn=attn, batch=batch_size, fused_adamw=fused, compiled=bool(args.compile),
        widths=dict(hidden_size=cfg.video_config.hidden_size, num_hidden_layers=cfg.video_config.num_hidden_layers,
                    decoder_hidden_size=cfg.decoder_hidden_size, projector_hidden_size=cfg.projector_hidden_size,
                    projector_output_size=cfg.projector_output_size),
        memory_measure=("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                        "in-process high-water increase (smoke only: not comparable)" if args.smoke else
                        "peak RSS increase over two steps in a fresh process (activations, grads, AdamW state)"),
        results=results,
        ratio_full_over_mae=ratio,
        ratio_checkpointing_over_full=results["full_ckpt"]["step"]["median_s"] / results["full"]["step"]["median_s"],
        memory_checkpointing_over_full=results["full_ckpt"]["peak_memory_mb"] / max(results["full"]["peak_memory_mb"],
                                                                                   1e-9),
        flops=dict(analytic=flops, counted_fwd_bwd=counted,
                   counted_ratio=counted["full"] / max(counted["mae"], 1)),
    )
    peak = gpu_peak_tflops(device)
    if peak is not None:
        out["mfu"] = results["full"]["achieved_tflops"] / peak
        out["peak_tflops_bf16"] = peak
    else:
        out["mfu"] = None
        matmul = measure_matmul_peak(device, dtype, 256 if size == "tiny" else 2048)
        out["cpu_matmul_peak_tflops"] = matmul / 1e12
        out["fraction_of_matmul_peak"] = results["full"]["achieved_tflops"] * 1e12 / matmul
    log(f"  pretraining {size} b{batch_size}: full {results['full']['step']['median_s']:.3f} s, "
        f"MAE-only {results['mae']['step']['median_s']:.3f} s, ratio {ratio:.2f}x "
        f"(analytic FLOP ratio {flops['ratio']:.2f}x); checkpointing memory x{out['memory_checkpointing_over_full']:.2f}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# 3. Log-mel extraction
# ----------------------------------------------------------------------------------------------------------------


def librosa_recipe(waveform: np.ndarray, mel_basis: np.ndarray) -> np.ndarray:
    """The released MelSpectrogramLibrosa on one clip (spec section 6.4): librosa.stft (n_fft 1024, hop 143,
    centred, reflect), power + 2.2e-16, Slaney mel (80, 0-8000), natural log after float32 eps, normalise.
    Returns (frames, mels)."""
    import librosa

    spec = librosa.stft(waveform, n_fft=1024, hop_length=143, center=True, pad_mode="reflect")
    power = np.abs(spec) ** 2 + 2.2e-16
    log_mel = np.log(mel_basis @ power + np.finfo(np.float32).eps)
    return ((log_mel - (-5.3688107)) / 4.410007).T


def test_waveforms(batch: int, seconds: float = 4.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: a few harmonics with a wandering pitch, noise and silent stretches (quiet bins are
    where log-mel round-off shows)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for _ in range(batch):
        f0 = 120 + 60 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        x = sum(rng.uniform(0.05, 0.3) / k * np.sin(k * phase) for k in range(1, 6))
        x = x + 0.01 * rng.standard_normal(t.size)
        gate = (np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t) > -0.6).astype(np.float64)
        out.append((x * gate).astype(np.float32))
    return np.stack(out)


def bench_log_mel(settings: dict, log) -> dict:
    import librosa

    from transformers_xkd import feature_extraction_xkd
    from transformers_xkd.feature_extraction_xkd import XKDFeatureExtractor

    from threadpoolctl import threadpool_limits  # installed with scikit-learn (the train extra)

    fe = XKDFeatureExtractor()  # compute_dtype="mixed", the default
    fe32 = XKDFeatureExtractor(compute_dtype="float32")
    mel_basis = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)  # built once, as released
    device = torch.device("cpu")
    rows = []
    for batch in settings["logmel_batches"]:
        waves = test_waveforms(batch)
        wave_list = list(waves)
        threads = torch.get_num_threads()

        def ours():
            fe(wave_list, sampling_rate=16000, return_tensors="pt")

        def ours_1_thread():
            torch.set_num_threads(1)
            try:
                fe(wave_list, sampling_rate=16000, return_tensors="pt")
            finally:
                torch.set_num_threads(threads)

        def ours_float32():  # compute_dtype="float32": no float64 guard (training speed, up to ~1e-3 off)
            fe32(wave_list, sampling_rate=16000, return_tensors="pt")

        def released():  # one clip at a time, as the released dataset's __getitem__ does
            # numpy's BLAS gets the same number of threads as torch: idle BLAS threads spinning on a busy core
            # made the baseline 2-4x slower in some runs, which would flatter the speed-up.
            with threadpool_limits(limits=threads):
                for w in wave_list:
                    librosa_recipe(w, mel_basis)

        stats = time_interleaved({"xkd": ours, "xkd_1_thread": ours_1_thread, "xkd_float32": ours_float32,
                                  "librosa": released}, 1, settings["logmel_repeats"], device)
        a = fe(wave_list, sampling_rate=16000, return_tensors="pt")["input_values"].numpy()
        b = np.stack([librosa_recipe(w, mel_basis) for w in wave_list])
        diff = float(np.abs(a - b).max())
        a32 = fe32(wave_list, sampling_rate=16000, return_tensors="pt")["input_values"].numpy()
        row = dict(batch=batch, xkd=stats["xkd"], xkd_1_thread=stats["xkd_1_thread"], librosa=stats["librosa"],
                   xkd_float32=stats["xkd_float32"],
                   speedup=stats["librosa"]["median_s"] / stats["xkd"]["median_s"],
                   speedup_1_thread=stats["librosa"]["median_s"] / stats["xkd_1_thread"]["median_s"],
                   speedup_float32=stats["librosa"]["median_s"] / stats["xkd_float32"]["median_s"],
                   max_abs_diff=diff, max_abs_diff_float32=float(np.abs(a32 - b).max()),
                   output_shape=list(a.shape), torch_threads=threads, compute_dtype=fe.compute_dtype)
        rows.append(row)
        log(f"  log-mel b{batch}: XKD {stats['xkd']['median_s'] * 1e3:.1f} ms ({threads} threads), "
            f"1 thread {stats['xkd_1_thread']['median_s'] * 1e3:.1f} ms, librosa {stats['librosa']['median_s'] * 1e3:.1f} ms "
            f"-> {row['speedup']:.2f}x; max |diff| {diff:.2e}")
    return dict(parity_budget=1e-4, librosa_version=librosa.__version__,
                extractor_module=feature_extraction_xkd.__name__, results=rows)


# ----------------------------------------------------------------------------------------------------------------
# 4. Data path
# ----------------------------------------------------------------------------------------------------------------


def synthesize_clip(path: Path, width: int, height: int, seconds: float, fps: int = 30, seed: int = 0) -> None:
    """Write an h264 + AAC test clip with moving content (static frames would compress to nothing and decode
    unrealistically fast). The video bitrate is capped at 1.5 Mbit/s, about what YouTube serves at 480p (the
    uncapped noise texture came out at ~14 Mbit/s, ten times a real clip); x264's default GOP (up to 250 frames)
    is kept, so a random 4 s window usually needs several seconds of decoding from the previous key frame."""
    import av

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "23", "maxrate": "1500k", "bufsize": "3000k"}
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "stereo"
        n_frames = int(seconds * fps)
        noise = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
        for i in range(n_frames):
            phase = i / fps
            r = (127 + 127 * np.sin(xx / 37.0 + 3 * phase)).astype(np.uint8)
            g = (127 + 127 * np.sin(yy / 23.0 - 2 * phase)).astype(np.uint8)
            b = (127 + 127 * np.sin((xx + yy) / 51.0 + phase)).astype(np.uint8)
            img = np.stack([r, g, b], axis=-1)
            img = np.roll(img + noise, shift=(i * 3, i * 5), axis=(0, 1))
            for packet in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples_per_frame = 1024
        total = int(seconds * 44100)
        t0 = 0
        while t0 < total:
            t = (np.arange(samples_per_frame) + t0) / 44100
            tone = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(samples_per_frame)
            data = np.stack([tone, tone]).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="stereo")
            frame.sample_rate = 44100
            frame.pts = t0
            for packet in audio.encode(frame):
                container.mux(packet)
            t0 += samples_per_frame
        for packet in audio.encode():
            container.mux(packet)


@contextlib.contextmanager
def one_core():
    """Pin this process to one CPU and one torch thread (FFmpeg's decoder threads follow the affinity mask)."""
    threads = torch.get_num_threads()
    try:
        affinity = os.sched_getaffinity(0)
    except AttributeError:
        affinity = None
    try:
        if affinity:
            os.sched_setaffinity(0, {min(affinity)})
        torch.set_num_threads(1)
        yield
    finally:
        torch.set_num_threads(threads)
        if affinity:
            os.sched_setaffinity(0, affinity)


def _has_audio_and_video(path: str) -> bool:
    from transformers_xkd.decoding_xkd import MediaReader

    try:
        with MediaReader(path) as reader:
            return reader.info.has_video and reader.info.has_audio
    except Exception:
        return False


def bench_data_path(settings: dict, args, device: torch.device, log) -> dict:
    """Clips/s of the data path on ONE CPU core: decode (PyAV, the package's reader) -> sample + resize to the
    112 short side + audio views (log-mel, jitter, local crop: the DataLoader worker's job) -> kornia video views
    (global 32x112x112 + local 8x96x96, the device's job; measured on the CPU core here, and on the GPU in the gpu
    suite). Real files (XKD_REAL_MEDIA, else ../shared/media next to the checkout when present) and synthetic
    480p h264 clips."""
    from transformers_xkd import pretraining as pre
    media_root = os.environ.get("XKD_REAL_MEDIA")
    media_root = Path(media_root) if media_root else (DEFAULT_MEDIA if DEFAULT_MEDIA.exists() else None)
    real, skipped = [], {}
    if media_root is not None:
        found = sorted(glob.glob(str(media_root / "video" / "*.mp4")) + glob.glob(str(media_root / "video" / "*.avi")))
        for path in found:
            if _has_audio_and_video(path):
                real.append(path)
            else:
                skipped[os.path.basename(path)] = "no audio stream (pretraining needs both)"
        if args.smoke:
            real = real[:1]
    clip_seconds = settings["data_seconds"] or 4.0
    tmp = tempfile.TemporaryDirectory(prefix="xkd_bench_")
    synth = []
    w, h = settings["synth_size"]
    for i in range(settings["synth_clips"]):
        path = Path(tmp.name) / f"synthetic_{h}p_{i}.mp4"
        synthesize_clip(path, w, h, settings["synth_seconds"], seed=i)
        synth.append(str(path))
    groups = {"real": real, f"synthetic_{h}p": synth}
    aug_batch = settings.get("augment_batch", 8)
    out = dict(pipeline=("transformers_xkd.pretraining: XKDPretrainingDataset (decode, sample, resize, audio views) "
                         "+ XKDViewMaker (kornia views)"),
               augmentation_status="measured",
               clip_seconds=clip_seconds, augment_batch=aug_batch, augment_device=device.type,
               measured_on="one CPU core (affinity mask of 1 CPU, 1 torch thread)",
               media_root=str(media_root) if media_root else None, skipped_files=skipped, groups={})
    settings_clip = pre.ClipSettings(clip_duration=clip_seconds)
    view_maker = pre.XKDViewMaker(pre.VideoViewSettings(), pre.released_local_video_settings(),
                                  settings_clip.local_num_frames).to(device)
    with one_core():
        for group, files in groups.items():
            if not files:
                out["groups"][group] = dict(files={}, skipped="no files (XKD_REAL_MEDIA unset and default missing)")
                continue
            per_file = {}
            for path in files:
                rows = []
                ds = pre.XKDPretrainingDataset(pre.ClipSource(path, [path]), [path], settings_clip, seed=0)
                samples = []
                for k in range(settings["data_clips"] + 1):  # the first clip is the warm-up
                    rng = np.random.default_rng((0, k))
                    t0 = time.perf_counter()
                    frames, audio = ds.decode(0, rng)
                    t1 = time.perf_counter()
                    sample = ds.build(frames, audio, 0, rng)
                    sample["failed"] = []
                    t2 = time.perf_counter()
                    samples.append(sample)
                    if k:
                        rows.append(dict(decode=t1 - t0, sample_and_audio=t2 - t1))
                # augmentation: batched as in training (one batch of `aug_batch` clips), per-clip cost
                batch = pre.collate_clips([samples[i % len(samples)] for i in range(aug_batch)])
                batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                aug = time_interleaved({"augment": lambda: view_maker(batch)}, 1,
                                       max(1, settings["data_clips"]), device)["augment"]
                augment_per_clip = aug["median_s"] / aug_batch
                frame_size = list(samples[0]["video"].shape[-2:])
                decoded_size = list(frames.shape[1:3])
                med = {key: statistics.median(r[key] for r in rows) for key in ("decode", "sample_and_audio")}
                worker = med["decode"] + med["sample_and_audio"]
                total = worker + (augment_per_clip or 0.0)
                per_file[os.path.basename(path)] = dict(
                    median_s=dict(med, augment_per_clip=augment_per_clip, total=total),
                    clips_per_s=1.0 / total, worker_clips_per_s=1.0 / worker,
                    decoded_size=decoded_size, resized_size=frame_size, n=len(rows))
            totals = [v["clips_per_s"] for v in per_file.values()]
            out["groups"][group] = dict(files=per_file, median_clips_per_s=statistics.median(totals),
                                        min_clips_per_s=min(totals))
            log(f"  data path {group}: median {statistics.median(totals):.2f} clips/s/core "
                f"(min {min(totals):.2f}) over {len(files)} files; augmentation {out['augmentation_status']}")
    tmp.cleanup()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Goals, report
# ----------------------------------------------------------------------------------------------------------------


def evaluate_goals(results: dict) -> list[dict]:
    goals = []
    enc = results.get("encoder_inference")
    if enc:
        worst = min(enc["results"], key=lambda r: r["throughput_ratio"])
        goals.append(dict(
            name="encoder throughput vs peer", target=">= 1.0x everywhere", measured=enc["min_throughput_ratio"],
            met=enc["min_throughput_ratio"] >= 1.0,
            note=f"worst cell: {worst['modality']} {worst['attn']} {worst['dtype']} batch {worst['batch']}; "
                 f"geometric mean {enc['geomean_throughput_ratio']:.2f}x"))
    pre = results.get("pretraining_step")
    if pre:
        goals.append(dict(name="full XKD step / MAE-only step", target="<= 1.6x", measured=pre["ratio_full_over_mae"],
                          met=pre["ratio_full_over_mae"] <= 1.6,
                          note=f"analytic FLOP ratio {pre['flops']['analytic']['ratio']:.2f}x ({pre['size']} width)"))
        goals.append(dict(name="MFU (bf16, sdpa)", target=">= 40% on H100/H200", measured=pre["mfu"],
                          met=None if pre["mfu"] is None else pre["mfu"] >= 0.40,
                          note="needs a GPU" if pre["mfu"] is None else ""))
        ckpt = pre["memory_checkpointing_over_full"]
        goals.append(dict(name="activation checkpointing cuts memory", target="< 0.9x of the full step's memory",
                          measured=ckpt, met=ckpt < 0.9,
                          note="peak memory ratio" + ("" if ckpt < 0.9 else "; at this size gradients and AdamW "
                                                      "state, not activations, dominate the step's memory")))
    lm = results.get("log_mel")
    if lm:
        big = max(lm["results"], key=lambda r: r["batch"])
        goals.append(dict(name=f"log-mel speed-up at batch {big['batch']}", target=">= 5x with parity <= 1e-4",
                          measured=big["speedup"], met=big["speedup"] >= 5.0 and big["max_abs_diff"] <= 1e-4,
                          note=f"max |diff| {big['max_abs_diff']:.2e}"))
    dp = results.get("data_path")
    if dp:
        def worst_group_median(key):
            medians = [statistics.median(f[key] for f in g["files"].values())
                       for g in dp["groups"].values() if g.get("files")]
            return min(medians) if medians else None

        # The trainer augments on the training device, so what one DataLoader core must sustain is decode +
        # sample + resize + audio views; the all-on-CPU figure (kornia on the same core) is reported beside it.
        worker = worst_group_median("worker_clips_per_s")
        goals.append(dict(name="one core feeds training clips/s (worker; augmentation on the accelerator)",
                          target=">= 8 clips/s", measured=worker,
                          met=None if worker is None or dp["pipeline"] is None else worker >= 8.0,
                          note="worst group's median over its files"))
        everything = worst_group_median("clips_per_s")
        goals.append(dict(name="one core feeds training clips/s (augmentation on the same CPU core)",
                          target=">= 8 clips/s", measured=everything,
                          met=None if everything is None or dp["pipeline"] is None else everything >= 8.0,
                          note=dp["augmentation_status"]))
    return goals


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.0f}" if s >= 0.1 else f"{s * 1e3:.1f}"


def markdown_report(res: dict) -> str:
    lines = [f"# XKD benchmarks: {res['suite']} suite on {res['device_name']}", ""]
    env = res["env"]
    lines.append(f"torch {env['torch']}, transformers {env['transformers']}, {env['threads']} threads; "
                 f"load average before/after {env['load_before']} / {env['load_after']}. Medians after warm-up; "
                 "spread = min-max. Generated by `benchmarks/run.py`" + (" (SMOKE: tiny sizes, not speeds)" if
                                                                         res["smoke"] else "") + ".")
    runs = res.get("section_runs") or {}
    if len({r.get("created") for r in runs.values()}) > 1:  # merged from several runs (--merge)
        lines.append("Sections measured in separate runs: " + "; ".join(
            f"{name} at {r.get('created')} (load {r.get('load_before')} -> {r.get('load_after')})"
            for name, r in runs.items()) + ".")
    lines.append("")
    enc = res.get("encoder_inference")
    if enc:
        v, a = enc["models"]["video"], enc["models"]["audio"]
        lines += ["## Encoder inference (ms per batch; ratio = peer time / XKD time, > 1 means XKD is faster)", "",
                  f"Video: XKD {v['xkd_patch_tokens']} tokens (+CLS) vs VideoMAE {v['peer_patch_tokens']} tokens; "
                  f"audio: XKD {a['xkd_patch_tokens']} tokens (+CLS) on {a['input_shape']} vs AST "
                  f"{a['peer_patch_tokens']} tokens (+2) on {a['peer_input_shape']} "
                  f"(strides f{a['peer_geometry']['frequency_stride']}/t{a['peer_geometry']['time_stride']}). "
                  f"Width {v['hidden_size']}, depth {v['num_hidden_layers']}, {v['num_attention_heads']} heads.", "",
                  "| modality | attn | dtype | batch | XKD ms (spread) | peer ms (spread) | XKD clips/s | ratio |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in enc["results"]:
            x, p = r["xkd"], r["peer_stats"]
            lines.append(f"| {r['modality']} vs {r['peer']} | {r['attn']} | {r['dtype']} | {r['batch']} | "
                         f"{fmt_ms(x['median_s'])} ({fmt_ms(x['min_s'])}-{fmt_ms(x['max_s'])}) | "
                         f"{fmt_ms(p['median_s'])} ({fmt_ms(p['min_s'])}-{fmt_ms(p['max_s'])}) | "
                         f"{r['xkd_clips_per_s']:.2f} | {r['throughput_ratio']:.2f}x |")
        lines.append("")
    pre = res.get("pretraining_step")
    if pre:
        w = pre["widths"]
        lines += [f"## Pretraining step ({pre['size']}: width {w['hidden_size']}, depth {w['num_hidden_layers']}, "
                  f"decoder {w['decoder_hidden_size']}, projector {w['projector_hidden_size']}->"
                  f"{w['projector_output_size']}; batch {pre['batch']}, {pre['dtype']}, {pre['attn']})", "",
                  "| step | time s (spread) | clips/s | peak memory MiB | model TFLOP/s |", "|---|---|---|---|---|"]
        names = {"full": "XKD (fwd+bwd+AdamW+EMA)", "mae": "AV-MAE baseline (reconstruction only)",
                 "full_ckpt": "XKD + activation checkpointing"}
        for key, label in names.items():
            r = pre["results"][key]
            s = r["step"]
            tf = f"{r['achieved_tflops']:.3f}" if "achieved_tflops" in r else "-"
            lines.append(f"| {label} | {s['median_s']:.3f} ({s['min_s']:.3f}-{s['max_s']:.3f}) | "
                         f"{r['clips_per_s']:.2f} | {r['peak_memory_mb']:.0f} | {tf} |")
        fl = pre["flops"]
        lines += ["", f"Full / MAE-only step time: **{pre['ratio_full_over_mae']:.2f}x** (analytic FLOP ratio "
                  f"{fl['analytic']['ratio']:.2f}x, FlopCounterMode {fl['counted_ratio']:.2f}x). Checkpointing: "
                  f"{pre['ratio_checkpointing_over_full']:.2f}x time, {pre['memory_checkpointing_over_full']:.2f}x "
                  f"memory. Memory: {pre['memory_measure']}.", ""]
        if pre.get("mfu") is not None:
            lines += [f"MFU: **{pre['mfu'] * 100:.1f} %** of {pre['peak_tflops_bf16']:.0f} TFLOP/s bf16.", ""]
        elif "fraction_of_matmul_peak" in pre:
            lines += [f"CPU: {pre['results']['full']['achieved_tflops'] * 1e3:.1f} GFLOP/s model FLOPs = "
                      f"{pre['fraction_of_matmul_peak'] * 100:.0f} % of this CPU's measured "
                      f"{pre['cpu_matmul_peak_tflops'] * 1e3:.0f} GFLOP/s matmul peak (no GPU MFU measured).", ""]
    lm = res.get("log_mel")
    if lm:
        lines += ["## Log-mel extraction (4 s, 16 kHz -> 448 x 80)", "",
                  "Default `compute_dtype=\"mixed\"` (float32 STFT, frames that could miss the 1e-4 parity redone in "
                  "float64); `float32` skips that guard (training speed; up to ~1e-3 off on loud pure tones). The "
                  "librosa recipe runs with numpy's BLAS limited to the same thread count.", "",
                  "| batch | XKD ms (mixed) | (1 thread) | XKD float32 ms | librosa recipe ms | speed-up mixed | "
                  "speed-up float32 | max abs diff mixed / float32 |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in lm["results"]:
            lines.append(f"| {r['batch']} | {fmt_ms(r['xkd']['median_s'])} | {fmt_ms(r['xkd_1_thread']['median_s'])} "
                         f"| {fmt_ms(r['xkd_float32']['median_s'])} | {fmt_ms(r['librosa']['median_s'])} "
                         f"| {r['speedup']:.2f}x ({r['speedup_1_thread']:.2f}x on 1 thread) "
                         f"| {r['speedup_float32']:.2f}x | {r['max_abs_diff']:.1e} / {r['max_abs_diff_float32']:.1e} |")
        lines.append("")
    dp = res.get("data_path")
    if dp:
        lines += [f"## Data path ({dp['measured_on']}; {dp['clip_seconds']:.0f} s clip: 32 frames at 8 fps + 4 s audio)",
                  "", f"Pipeline: {dp['pipeline'] or 'decode + sample only'}; augmentation "
                  f"{dp['augmentation_status']} (kornia on {dp['augment_device']}, batch {dp['augment_batch']}, "
                  "per-clip share shown).", "",
                  "| files | file | decoded | decode ms | sample+resize+audio views ms | augment ms/clip | "
                  "worker clips/s (augment on the accelerator) | clips/s, all on this core |",
                  "|---|---|---|---|---|---|---|---|"]
        for group, g in dp["groups"].items():
            for name, f in g.get("files", {}).items():
                m = f["median_s"]
                aug = "-" if m["augment_per_clip"] is None else fmt_ms(m["augment_per_clip"])
                lines.append(f"| {group} | {name} | {f['decoded_size'][1]}x{f['decoded_size'][0]} | "
                             f"{fmt_ms(m['decode'])} | {fmt_ms(m['sample_and_audio'])} | {aug} | "
                             f"{f['worker_clips_per_s']:.2f} | {f['clips_per_s']:.2f} |")
        for name, why in dp.get("skipped_files", {}).items():
            lines.append(f"| skipped | {name} | - | - | - | - | - | {why} |")
        lines.append("")
    lines += ["## Goals", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in res["goals"]:
        m = g["measured"]
        ms = "n/a" if m is None else (f"{m * 100:.1f} %" if "MFU" in g["name"] else f"{m:.2f}")
        met = "n/a" if g["met"] is None else ("yes" if g["met"] else "no")
        lines.append(f"| {g['name']} | {g['target']} | {ms} | {met}{' (' + g['note'] + ')' if g['note'] else ''} |")
    lines.append("")
    if res.get("not_run"):
        lines += ["Not run: " + "; ".join(res["not_run"]), ""]
    return "\n".join(lines)


def write_plot(res: dict, path: Path) -> bool:
    """Encoder throughput bars, only when matplotlib is installed (not a dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    enc = res.get("encoder_inference")
    if not enc:
        return False
    rows = enc["results"]
    labels = [f"{r['modality'][0]} {r['attn']} {r['dtype']} b{r['batch']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.6), 4))
    ax.bar(x - 0.2, [r["xkd_clips_per_s"] for r in rows], 0.4, label="XKD")
    ax.bar(x + 0.2, [r["peer_clips_per_s"] for r in rows], 0.4, label="VideoMAE / AST")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("clips/s")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------

SECTIONS = ("encoder", "pretrain", "logmel", "data")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (plumbing check, not speed)")
    p.add_argument("--device", default=None, help="override the suite's device (e.g. run the gpu suite's code "
                                                  "path on cpu for testing)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list from {SECTIONS}")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--compile", action="store_true", help="torch.compile the pretraining model")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--merge", action="store_true",
                   help="keep the sections of an existing results file that this run does not measure")
    # internal: one memory measurement in a fresh process
    p.add_argument("--_child-memory", dest="child_memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="full", help=argparse.SUPPRESS)
    p.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--attn", default="sdpa", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> dict | None:
    """Run the suite; returns the results dict (also written to disk). Restores torch's thread count, so that
    the smoke test can call it in-process."""
    threads = torch.get_num_threads()
    try:
        return _main(parse_args(argv))
    finally:
        torch.set_num_threads(threads)


def _main(args) -> dict | None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.smoke:
        # Tiny ops on 2 threads of a busy machine spend most of their time in OpenMP hand-offs; the smoke run
        # checks the plumbing, so it takes one thread and stays fast.
        torch.set_num_threads(1)
    if args.child_memory:
        child_memory(args)
        return None
    import transformers

    transformers.logging.set_verbosity_error()
    device = torch.device(args.device or ("cuda" if args.suite == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--suite gpu needs a CUDA device (torch.cuda.is_available() is False); "
                         "use --device cpu to exercise its code path on the CPU")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from {SECTIONS}")
    settings = suite_settings(args.suite, args.smoke)

    def log(msg):
        print(msg, flush=True)

    start = time.perf_counter()
    torch.manual_seed(0)
    res = dict(
        schema_version=SCHEMA_VERSION, suite=args.suite, smoke=args.smoke, device=device_slug(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        env=dict(torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                 threads=torch.get_num_threads(), cpus=usable_cpus(), load_before=load_average()),
        settings={k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()}) for k, v in
                  settings.items()},
        not_run=[],
    )
    log(f"XKD benchmarks: suite {args.suite}{' (smoke)' if args.smoke else ''} on {res['device_name']} "
        f"({device.type}, {res['env']['threads']} threads, load {res['env']['load_before']})")
    if args.suite == "cpu":
        res["not_run"].append("GPU suite (no GPU on this machine): run `python benchmarks/run.py --suite gpu` "
                              "where one is available")
    timings = {}
    section_keys = dict(encoder="encoder_inference", pretrain="pretraining_step", logmel="log_mel", data="data_path")
    res["section_runs"] = {name: dict(created=res["created"], load_before=res["env"]["load_before"])
                           for name in sections}
    if "encoder" in sections:
        t = time.perf_counter()
        res["encoder_inference"] = bench_encoders(settings, device, log)
        timings["encoder"] = time.perf_counter() - t
    if "pretrain" in sections:
        t = time.perf_counter()
        res["pretraining_step"] = bench_pretraining(settings, device, args.suite, args, log)
        timings["pretrain"] = time.perf_counter() - t
    if "logmel" in sections:
        t = time.perf_counter()
        res["log_mel"] = bench_log_mel(settings, log)
        timings["logmel"] = time.perf_counter() - t
    if "data" in sections:
        t = time.perf_counter()
        res["data_path"] = bench_data_path(settings, args, device, log)
        timings["data"] = time.perf_counter() - t
        if res["data_path"]["pipeline"] is None:
            res["not_run"].append("augmentation in the data path: " + res["data_path"]["augmentation_status"])
    res["env"]["load_after"] = load_average()
    for name in sections:
        res["section_runs"][name]["load_after"] = res["env"]["load_after"]
    res["section_seconds"] = timings
    res["total_seconds"] = time.perf_counter() - start

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{args.suite}-{res['device']}" + ("-smoke" if args.smoke else "")
    previous_path = out_dir / f"{stem}.json"
    if args.merge and previous_path.exists():
        # Sections measured in an earlier run are kept with the time and load of that run (section_runs).
        previous = json.loads(previous_path.read_text())
        for name, key in section_keys.items():
            if name not in sections and key in previous:
                res[key] = previous[key]
                res["section_runs"][name] = previous.get("section_runs", {}).get(
                    name, dict(created=previous.get("created"), load_before=previous.get("env", {}).get("load_before"),
                               load_after=previous.get("env", {}).get("load_after")))
                res["section_seconds"][name] = previous.get("section_seconds", {}).get(name)
    res["goals"] = evaluate_goals(res)
    (out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown_report(res))
    res["plot"] = write_plot(res, out_dir / f"{stem}.png")
    log(f"wrote {out_dir / stem}.json/.md in {res['total_seconds']:.0f} s")
    for g in res["goals"]:
        log(f"  goal {g['name']}: {g['measured']} ({g['target']}) met={g['met']}")
    return res


if __name__ == "__main__":
    main()
