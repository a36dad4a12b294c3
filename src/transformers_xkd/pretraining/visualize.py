"""Pictures of a pretraining run (the paper's Sec. 4.11 in-painting figure, loss curves, collapse monitors).

* :func:`reconstruction_arrays` / :func:`plot_reconstruction` / :func:`reconstruction_figure`: one PNG with the
  original frames, the masked input and the reconstruction of a clip, and the same for its log-mel spectrogram,
  from an ``XKDForPretraining`` (the student encoders and the MAE decoders; the teachers play no part).
* :func:`plot_training_log`: the losses and the collapse monitors of ``logs/train_log.jsonl``.

Plotting needs matplotlib, the optional ``viz`` extra (``pip install transformers-xkd[viz]``); it is imported only
inside the plotting functions, and nothing in inference or training needs it.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

from ..video_processing_xkd import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["unpatchify_video", "unpatchify_audio", "reconstruction_arrays", "plot_reconstruction",
           "reconstruction_figure", "plot_training_log", "RECONSTRUCTION_DPI"]

RECONSTRUCTION_DPI = 100


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # the optional extra
        raise ImportError("Plotting needs matplotlib: pip install 'transformers-xkd[viz]' (or pip install "
                          "matplotlib).") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def unpatchify_video(patches: torch.Tensor, tubelet_size: int, patch_size: int, frames: int, height: int,
                     width: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`~transformers_xkd.modeling_xkd.patchify_video`: `(B, N, pt*p*p*C)` -> `(B, T, C, H, W)`."""
    b = patches.shape[0]
    nt, nh, nw = frames // tubelet_size, height // patch_size, width // patch_size
    x = patches.reshape(b, nt, nh, nw, tubelet_size, patch_size, patch_size, channels)
    x = x.permute(0, 1, 4, 7, 2, 5, 3, 6)  # b nt pt c nh ph nw pw
    return x.reshape(b, frames, channels, height, width)


def unpatchify_audio(patches: torch.Tensor, frequency_patch_size: int, time_patch_size: int, time: int,
                     mel: int) -> torch.Tensor:
    """Inverse of :func:`~transformers_xkd.modeling_xkd.patchify_audio`: `(B, N, fp*tp)` -> `(B, time, mel)`."""
    b = patches.shape[0]
    nf, nt = mel // frequency_patch_size, time // time_patch_size
    x = patches.reshape(b, nf, nt, frequency_patch_size, time_patch_size).permute(0, 1, 3, 2, 4)
    return x.reshape(b, mel, time).transpose(1, 2)


def _denormalise_prediction(prediction: torch.Tensor, target: torch.Tensor, norm_pix_loss: bool) -> torch.Tensor:
    # With norm_pix_loss the decoder predicts standardised patches; show them in the target's own scale (the usual
    # MAE visualisation: each predicted patch gets the mean and std of the true patch).
    if not norm_pix_loss:
        return prediction
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return prediction * (var + 1.0e-6) ** 0.5 + mean


@torch.no_grad()
def reconstruction_arrays(model, pixel_values: torch.Tensor, input_values: torch.Tensor, seed: int = 0,
                          image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD) -> dict:
    """Original, masked and reconstructed views of one clip, as numpy arrays ready to draw.

    Args:
        model: an ``XKDForPretraining``.
        pixel_values: `(1, T, 3, H, W)` normalised frames; input_values: `(1, time, mel)` normalised log-mel.
        seed: seeds the masking noise (the model's mask ratios).
        image_mean / image_std: the video processor's normalisation, undone for display.

    Returns: ``video_original`` / ``video_masked`` / ``video_reconstruction`` `(T, H, W, 3)` in [0, 1] (masked
    tubelets NaN in ``video_masked``), ``audio_*`` `(mel, time)` (masked patches NaN), ``video_mask`` /
    ``audio_mask`` `(N,)` (1 = masked) and the per-modality masked-patch MSE in normalised units.
    """
    from ..modeling_xkd import patchify_audio, patchify_video

    cfg = model.config
    v_cfg, a_cfg = cfg.video_config, cfg.audio_config
    model.eval()
    g = torch.Generator().manual_seed(seed)
    v_noise = torch.rand(1, v_cfg.num_patches, generator=g)
    a_noise = torch.rand(1, a_cfg.num_patches, generator=g)
    pixel_values = pixel_values.to(torch.float32)
    input_values = input_values.to(torch.float32)
    v_latent = model.video_student(pixel_values, mask_ratio=cfg.video_mask_ratio, noise=v_noise)
    a_latent = model.audio_student(input_values, mask_ratio=cfg.audio_mask_ratio, noise=a_noise)
    v_pred = model.video_decoder(v_latent.last_hidden_state, v_latent.ids_restore)
    a_pred = model.audio_decoder(a_latent.last_hidden_state, a_latent.ids_restore)
    v_target = patchify_video(pixel_values, v_cfg.tubelet_size, v_cfg.patch_size)
    a_target = patchify_audio(input_values, a_cfg.frequency_patch_size, a_cfg.time_patch_size)
    v_rec = _denormalise_prediction(v_pred, v_target, cfg.norm_pix_loss)
    a_rec = _denormalise_prediction(a_pred, a_target, cfg.norm_pix_loss)
    v_mask, a_mask = v_latent.mask[0], a_latent.mask[0]
    _, t, c, h, w = pixel_values.shape
    _, time, mel = input_values.shape

    def video(patches):
        x = unpatchify_video(patches, v_cfg.tubelet_size, v_cfg.patch_size, t, h, w, c)[0]
        x = x * torch.tensor(image_std).view(1, 3, 1, 1) + torch.tensor(image_mean).view(1, 3, 1, 1)
        return x.permute(0, 2, 3, 1).numpy()

    def audio(patches):
        return unpatchify_audio(patches, a_cfg.frequency_patch_size, a_cfg.time_patch_size, time, mel)[0].T.numpy()

    nan = float("nan")
    v_masked = v_target.clone()
    v_masked[0, v_mask.bool()] = nan
    a_masked = a_target.clone()
    a_masked[0, a_mask.bool()] = nan
    # the reconstruction picture shows the visible patches as given and the masked ones as predicted
    v_shown = torch.where(v_mask.bool()[None, :, None], v_rec, v_target)
    a_shown = torch.where(a_mask.bool()[None, :, None], a_rec, a_target)
    return {
        "video_original": np.clip(video(v_target), 0, 1), "video_masked": np.clip(video(v_masked), 0, 1),
        "video_reconstruction": np.clip(video(v_shown), 0, 1),
        "audio_original": audio(a_target), "audio_masked": audio(a_masked), "audio_reconstruction": audio(a_shown),
        "video_mask": v_mask.numpy(), "audio_mask": a_mask.numpy(),
        "video_masked_mse": float(_masked_mse(v_pred, v_target, v_latent.mask, cfg.norm_pix_loss)),
        "audio_masked_mse": float(_masked_mse(a_pred, a_target, a_latent.mask, cfg.norm_pix_loss)),
    }


def _masked_mse(prediction, target, mask, norm_pix_loss):
    from ..modeling_xkd import masked_reconstruction_loss

    return masked_reconstruction_loss(prediction, target, mask, norm_pix_loss)


VIDEO_ROWS = ("original", "masked", "reconstruction")


def plot_reconstruction(arrays: dict, path: str, title: str = "", column_inches: float = 1.2) -> dict:
    """Draw :func:`reconstruction_arrays` into one PNG: three rows of frames (original, masked input,
    reconstruction) above three log-mel panels (the same). Returns ``{"path", "size": (width, height) pixels,
    "panels": [names]}``."""
    plt = _pyplot()
    frames = arrays["video_original"].shape[0]
    width = max(frames * column_inches, 6.0)
    height = 3 * column_inches + 3 * 1.1 + 0.6
    fig = plt.figure(figsize=(width, height), dpi=RECONSTRUCTION_DPI)
    grid = fig.add_gridspec(6, frames, height_ratios=[column_inches] * 3 + [1.1] * 3)
    panels = []
    for row, name in enumerate(VIDEO_ROWS):
        images = arrays[f"video_{name}"]
        for k in range(frames):
            ax = fig.add_subplot(grid[row, k])
            image = images[k]
            if name == "masked":
                image = np.where(np.isnan(image), 0.5, image)  # masked tubelets in grey
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(name, fontsize=8)
            panels.append(f"video_{name}_{k}")
    audio_original = arrays["audio_original"]
    lo, hi = np.nanpercentile(audio_original, 1), np.nanpercentile(audio_original, 99)
    for row, name in enumerate(VIDEO_ROWS):
        ax = fig.add_subplot(grid[3 + row, :])
        data = np.ma.masked_invalid(arrays[f"audio_{name}"])
        cmap = plt.get_cmap("magma").with_extremes(bad="0.5")
        ax.imshow(data, origin="lower", aspect="auto", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_ylabel(f"log-mel\n{name}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        panels.append(f"audio_{name}")
    fig.suptitle(title or "XKD masked reconstruction (grey: masked)", fontsize=9)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.94, bottom=0.02, hspace=0.15, wspace=0.05)
    fig.savefig(path, dpi=RECONSTRUCTION_DPI)
    size = tuple(int(round(v * RECONSTRUCTION_DPI)) for v in (width, height))
    plt.close(fig)
    return {"path": path, "size": size, "panels": panels}


def reconstruction_figure(model_dir: str, clip: str, path: str, seed: int = 0) -> dict:
    """The in-painting figure of one media file for a saved ``XKDForPretraining`` folder (``OUT/pretraining`` of a
    run, which holds the processors too). The clip is read as the linear probes read test clips (one centred clip,
    the folder's processors). Returns :func:`plot_reconstruction`'s dict plus the masked-patch errors."""
    from ..downstream.features import ClipProtocol, sample_clips
    from ..feature_extraction_xkd import XKDFeatureExtractor
    from ..modeling_xkd import XKDForPretraining
    from ..video_processing_xkd import XKDVideoProcessor

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ValueError(f"{model_dir!r} is not a saved XKDForPretraining folder (no config.json).")
    model = XKDForPretraining.from_pretrained(model_dir)
    vp = XKDVideoProcessor.from_pretrained(model_dir)
    fe = XKDFeatureExtractor.from_pretrained(model_dir)
    protocol = ClipProtocol("reconstruction", "audio_visual", train_clips=1, test_clips=1, train_augment=False)
    pixel_values, input_values = sample_clips(clip, protocol, False, vp, fe)
    arrays = reconstruction_arrays(model, pixel_values[:1], input_values[:1], seed=seed,
                                   image_mean=vp.image_mean, image_std=vp.image_std)
    title = (f"{os.path.basename(clip)}: masked-patch MSE video {arrays['video_masked_mse']:.3f}, audio "
             f"{arrays['audio_masked_mse']:.3f} (grey: masked)")
    out = plot_reconstruction(arrays, path, title)
    out.update(video_masked_mse=arrays["video_masked_mse"], audio_masked_mse=arrays["audio_masked_mse"])
    return out


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


LOSS_KEYS = ("loss", "reconstruction_loss", "video_reconstruction_loss", "audio_reconstruction_loss",
             "distillation_loss", "alignment_loss")
MONITOR_PANELS = (
    ("teacher_entropy", "per-sample teacher entropy"),
    ("teacher_batch_entropy", "batch-mean teacher entropy"),
    ("teacher_spread", "teacher spread across the batch"),
    ("teacher_student_kl", "KL(teacher || student)"),
)


def plot_training_log(log: str, path: str, output_size: int | None = None) -> dict:
    """Loss curves and collapse monitors of a run: ``log`` is a run folder or its ``logs/train_log.jsonl``.
    ``output_size`` (K) draws log K on the entropy panels (read from ``pretraining_config.json`` when omitted).
    Returns ``{"path", "panels": [names], "steps": n}``."""
    plt = _pyplot()
    run_dir = None
    if os.path.isdir(log):
        run_dir, log = log, os.path.join(log, "logs", "train_log.jsonl")
    if not os.path.isfile(log):
        raise FileNotFoundError(f"no training log at {log!r} (expected OUT/logs/train_log.jsonl of a run).")
    records = [r for r in _read_jsonl(log) if "step" in r and "loss" in r]
    if not records:
        raise ValueError(f"{log}: no logged steps yet.")
    if output_size is None and run_dir and os.path.isfile(os.path.join(run_dir, "pretraining_config.json")):
        with open(os.path.join(run_dir, "pretraining_config.json")) as f:
            output_size = json.load(f).get("model", {}).get("projector_output_size", 8192)
    warnings = [r for r in _read_jsonl(log) if "warning" in r]
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 1 + len(MONITOR_PANELS), figsize=(4 * (1 + len(MONITOR_PANELS)), 3.4))
    panels = ["losses"]
    for key in LOSS_KEYS:
        values = [r.get(key) for r in records]
        if any(v is not None for v in values):
            axes[0].plot(steps, [np.nan if v is None else v for v in values], label=key.replace("_loss", ""))
    axes[0].set_yscale("log")
    axes[0].set_title("losses", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax, (key, title) in zip(axes[1:], MONITOR_PANELS):
        for tower, ls in (("video", "-"), ("audio", "--")):
            values = [r.get(f"{tower}_{key}") for r in records]
            if any(v is not None for v in values):
                ax.plot(steps, [np.nan if v is None else v for v in values], ls=ls, label=tower)
        if output_size and "entropy" in key:
            ax.axhline(math.log(output_size), color="grey", ls=":", lw=0.8, label="log K")
        for w in warnings:
            ax.axvline(w["step"], color="red", lw=0.8, alpha=0.6)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        panels.append(key)
    for ax in axes:
        ax.set_xlabel("step")
    fig.suptitle("training log" + (f" ({len(warnings)} collapse warning(s), red lines)" if warnings else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"path": path, "panels": panels, "steps": len(records)}
