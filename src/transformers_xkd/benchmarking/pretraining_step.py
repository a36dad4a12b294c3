"""Section 2, the pretraining step: one XKDForPretraining optimisation step (forward + backward + AdamW + EMA)
against the audio-visual MAE baseline (students + decoders + masked reconstruction only) and against XKD with
activation checkpointing; time and peak memory; analytic FLOPs (cross-checked with torch's FlopCounterMode) and,
on a GPU, model FLOPs utilisation. Result key: ``pretraining_step``.

CPU memory is measured in a fresh process per variant (``python -m transformers_xkd.benchmarking.pretraining_step
--variant ...``, see :func:`child_memory`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .harness import (
    autocast_ctx, gpu_peak_tflops, measure_matmul_peak, peak_rss_bytes, reset_peak_rss, rss_bytes, sync,
    time_interleaved, vm_hwm_bytes,
)


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
    """Trainable parameters of the students and decoders, each once (a throwaway `ModuleList` dedupes them)."""
    parts = torch.nn.ModuleList([model.video_student, model.audio_student, model.video_decoder, model.audio_decoder])
    return (p for p in parts.parameters() if p.requires_grad)


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



def child_memory(variant: str, size: str, attn: str, dtype: str, batch_size: int) -> dict:
    """Build one variant, take two steps, return its peak memory (MiB). Run in a fresh process (:func:`main`).

    A fresh process per variant because the CPU allocator keeps freed memory, so an in-process high-water mark
    would carry one variant's peak into the next."""
    torch.set_num_threads(1)  # memory does not depend on threads; leave the cores to the timing process
    cfg = pretraining_config(size, attn)
    device = torch.device("cpu")
    batch = pretraining_batch(cfg, batch_size, device)
    model, step = make_step(variant, cfg, batch, device, dtype, None)
    before = rss_bytes()
    reset = reset_peak_rss()
    for _ in range(2):
        step()
    # Without the reset, ru_maxrss would report model construction's peak for every variant alike.
    peak = vm_hwm_bytes() if reset else None
    peak = peak if peak is not None else peak_rss_bytes()
    return dict(peak_rss_mb=peak / 2**20, rss_before_steps_mb=before / 2**20,
                step_peak_increase_mb=(peak - before) / 2**20, hwm_reset=reset)


def _memory_child_command(variant: str, size: str, attn: str, dtype: str, batch_size: int) -> tuple[list, dict]:
    """This module's :func:`main` in a fresh interpreter that imports the same transformers_xkd as this one (a
    checkout's src/ first on the path, not another installed copy)."""
    import transformers_xkd

    package_parent = str(Path(transformers_xkd.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "transformers_xkd.benchmarking.pretraining_step", "--variant", variant,
           "--size", size, "--attn", attn, "--dtype", dtype, "--batch", str(batch_size)]
    return cmd, env


def bench_pretraining(settings: dict, device: torch.device, suite: str, log, smoke: bool = False,
                      compile_model: bool = False) -> dict:
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
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            sync(device)
            cuda_memory[variant] = torch.cuda.max_memory_allocated(device) / 2**20
            del model, step
            gc.collect()
            torch.cuda.empty_cache()
    steps, models = {}, {}
    for variant in variants:
        models[variant], steps[variant] = make_step(variant, cfg, batch, device, dtype, fused, compile_model)
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
    elif smoke:
        # Smoke runs stay in-process (a child costs an interpreter start and a torch import, ~10 s on a busy
        # 2-core machine): the high-water-mark increase of each variant, only a plumbing check.
        for variant in variants:
            before = rss_bytes()
            reset = reset_peak_rss()
            steps[variant]()
            peak = (vm_hwm_bytes() if reset else None) or peak_rss_bytes()
            # max(.., 1 page): the freed memory of an earlier variant can serve a tiny step without any growth
            results[variant]["peak_memory_mb"] = max(peak - before, 4096) / 2**20
            results[variant]["peak_rss_mb"] = peak / 2**20
    else:
        del models, steps
        procs = {}
        for variant in variants:  # the children only measure memory, so they may run side by side
            cmd, env = _memory_child_command(variant, size, attn, dtype, batch_size)
            procs[variant] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              env=env)
        for variant, proc in procs.items():
            out, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child for {variant} failed:\n{err[-3000:]}")
            mem = json.loads(out.strip().splitlines()[-1])
            results[variant]["peak_memory_mb"] = mem["step_peak_increase_mb"]
            results[variant]["peak_rss_mb"] = mem["peak_rss_mb"]
    ratio = results["full"]["step"]["median_s"] / results["mae"]["step"]["median_s"]
    out = dict(
        size=size, dtype=dtype, attn=attn, batch=batch_size, fused_adamw=fused, compiled=bool(compile_model),
        widths=dict(hidden_size=cfg.video_config.hidden_size, num_hidden_layers=cfg.video_config.num_hidden_layers,
                    decoder_hidden_size=cfg.decoder_hidden_size, projector_hidden_size=cfg.projector_hidden_size,
                    projector_output_size=cfg.projector_output_size),
        memory_measure=("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                        "in-process high-water increase (smoke only: not comparable)" if smoke else
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


def main(argv=None) -> None:
    """The memory child: ``python -m transformers_xkd.benchmarking.pretraining_step --variant full ...`` prints
    :func:`child_memory`'s JSON on its last line."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--variant", default="full", choices=("full", "mae", "full_ckpt"))
    p.add_argument("--size", default="tiny")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args(argv)
    print(json.dumps(child_memory(args.variant, args.size, args.attn, args.dtype, args.batch)))


if __name__ == "__main__":
    main()
