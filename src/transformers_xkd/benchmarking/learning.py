"""Does XKD learn? Pretrain small XKD models on AV-digits with the paper's Table 1 ablations and probe them.

For each seed and each objective (``"mae"``, ``"mae+kd"``, ``"xkd"``; :data:`OBJECTIVES`) the benchmark pretrains
with :func:`~transformers_xkd.pretraining.run_pretraining` on the unlabelled training split of an AV-digits set
(:mod:`transformers_xkd.pretraining.avdigits`), with the same budget (steps, batch, recipe) for every objective,
keeping checkpoints along the way. Each checkpoint's EMA teachers (what the paper evaluates) then give frozen
features of the labelled train and test splits, read through the package's own data path (PyAV decoding, the
exported processors, the log-mel of ``downstream.features.sample_clips``): video features, audio features and their
late fusion. Two probes score them, both from :mod:`transformers_xkd.downstream`:

* the FC probe (``train_linear_probe``, a fixed recipe: nothing is chosen on the test set) - the table's numbers;
* the linear SVM cost sweep (``svm_sweep``) - which, as released, reports the best cost on the test set
  (optimistic; given for comparison with the paper's protocol).

"Random init" is step 0 of the same seed (the trainer's initial weights, re-created with the same seed), so every
arm of a seed starts from the same network. Results: a JSON with every number, a markdown table shaped like the
paper's Table 1 (mean +- standard deviation over seeds), a PNG of probe accuracy against pretraining steps and a
PNG of the collapse monitors over training (:func:`write_results`).

Scales (:data:`SCALES`): ``"smoke"`` (a handful of clips, 2 steps; the test), ``"cpu"`` (the 2-core benchmark,
about half an hour), ``"gpu"`` (larger clips, ViT-S width, more steps and clips).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ..pretraining.avdigits import AVDigitsSpec, make_avdigits
from ..utils_io import atomic_write_text
from .harness import machine_description

__all__ = ["OBJECTIVES", "SCALES", "BenchmarkScale", "benchmark_config", "pretrain_and_probe",
           "run_learning_benchmark", "reprobe_results", "decode_labelled_split", "encode_features", "probe_features",
           "initial_or_checkpoint_model", "raw_input_features", "probe_arm", "summarise", "write_results"]

OBJECTIVES = ("mae", "mae+kd", "xkd")
OBJECTIVE_NAMES = {"raw": "raw inputs (pixels / log-mel)", "random": "random init", "mae": "MAE only (no KD, no DA)", "mae+kd": "MAE + KD (no DA)",
                   "xkd": "XKD (MAE + KD + DA)"}
MODALITIES = ("video", "audio", "fusion")
METRICS = ("fc_top1", "fc_raw_top1", "svm_top1")


@dataclass(frozen=True)
class BenchmarkScale:
    """Everything a scale fixes: the data set, the model widths, the budget and the recipe overrides."""

    name: str
    data: AVDigitsSpec
    hidden_size: int
    num_layers: int
    num_heads: int
    projector_output_size: int
    steps: int
    batch_size: int
    probe_points: int  # checkpoints probed along the run (plus step 0)
    image_size: int = 32
    num_frames: int = 8
    tubelet_size: int = 2
    patch_size: int = 8
    num_mel_bins: int = 32
    max_length: int = 64
    frequency_patch_size: int = 8
    time_patch_size: int = 8
    train_clips: int = 2
    lr: float = 1.0e-3
    weight_decay: float = 0.05
    ema_momentum_start: float = 0.99
    model_overrides: tuple = ()


SCALES = {
    "smoke": BenchmarkScale(
        name="smoke", data=AVDigitsSpec(num_train=20, num_test=10, seed=0), hidden_size=16, num_layers=1,
        num_heads=2, projector_output_size=32, steps=2, batch_size=4, probe_points=1, train_clips=1,
    ),
    "cpu": BenchmarkScale(
        name="cpu", data=AVDigitsSpec(num_train=600, num_test=200, seed=0), hidden_size=64, num_layers=3,
        num_heads=4, projector_output_size=256, steps=300, batch_size=32, probe_points=3,
    ),
    "quickstart": BenchmarkScale(
        name="quickstart", data=AVDigitsSpec(num_train=200, num_test=100, seed=0), hidden_size=32, num_layers=2,
        num_heads=2, projector_output_size=64, steps=200, batch_size=16, probe_points=1, train_clips=1,
    ),
    "gpu": BenchmarkScale(
        name="gpu", data=AVDigitsSpec(num_train=5000, num_test=1000, seed=0, frame_size=72, digit_size=32,
                                      duration=2.25, fps=8),
        hidden_size=384, num_layers=12, num_heads=6, projector_output_size=4096, steps=5000, batch_size=64,
        probe_points=5, image_size=64, num_frames=16, patch_size=16, num_mel_bins=64, max_length=128,
        frequency_patch_size=16, time_patch_size=16, lr=5.0e-4, ema_momentum_start=0.996,
    ),
}


def benchmark_config(scale: BenchmarkScale, objective: str, seed: int) -> dict:
    """The pretraining configuration (``load_config`` layout) of one arm: the recipe of the released defaults
    with the small-scale changes of README "Small-scale runs" (EMA start, lr, weight decay, no temperature warm-up),
    the same for every objective except ``model.objective``."""
    from ..pretraining.config import load_config

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    s, d = scale, scale.data
    width = dict(hidden_size=s.hidden_size, num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
                 intermediate_size=2 * s.hidden_size)
    clip_duration = s.num_frames / d.fps
    hop = int(d.sampling_rate * clip_duration) // (s.max_length - 1)
    hop += 1 if 1 + int(d.sampling_rate * clip_duration) // hop > s.max_length else 0
    local_frames = s.num_frames // 2
    model = dict(
        objective=objective,
        video_config=dict(image_size=s.image_size, num_frames=s.num_frames, tubelet_size=s.tubelet_size,
                          patch_size=s.patch_size, **width),
        audio_config=dict(num_mel_bins=s.num_mel_bins, max_length=s.max_length,
                          frequency_patch_size=s.frequency_patch_size, time_patch_size=s.time_patch_size, **width),
        decoder_hidden_size=max(16, s.hidden_size // 2), decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=s.hidden_size,
        projector_hidden_size=2 * s.hidden_size, projector_bottleneck_size=max(8, s.hidden_size // 2),
        projector_output_size=s.projector_output_size,
        local_num_frames=local_frames, local_image_size=s.image_size // 2, local_max_length=s.max_length // 2,
        ema_momentum_start=s.ema_momentum_start,
        video_warmup_teacher_temperature=0.1, audio_warmup_teacher_temperature=0.07,
        teacher_temperature_warmup_epochs=0,
    )
    model.update(dict(s.model_overrides))
    steps_per_epoch = d.num_train // s.batch_size
    epochs = s.steps / steps_per_epoch
    every = max(1, s.steps // s.probe_points)
    overrides = {
        "seed": int(seed),
        "model": model,
        "data": {"clip_duration": clip_duration, "fps": float(d.fps), "short_side": d.frame_size,
                 "sampling_rate": d.sampling_rate, "n_fft": 2 * hop if 2 * hop >= 64 else 256, "hop_length": hop,
                 "local_audio_duration": clip_duration / 2, "min_duration": clip_duration + 0.05,
                 "num_workers": 0, "scan_workers": 1, "max_failure_fraction": 0.0,
                 "failure_check_min_samples": 1},
        "train": {"per_device_batch_size": s.batch_size, "epochs": epochs, "warmup_epochs": min(1.0, epochs / 10),
                  "lr": s.lr, "weight_decay": s.weight_decay, "mixed_precision": "no"},
        "checkpoint": {"every_steps": every, "keep_last": 0},
        "log": {"every_steps": max(1, min(10, s.steps // 30)), "trackers": "none", "collapse_patience": 3},
    }
    return load_config(None, overrides)


# ----------------------------------------------------------------------------------------------------------------
# One arm: pretrain, then probe every checkpoint
# ----------------------------------------------------------------------------------------------------------------


def _load_checkpoint_model(model_config, folder: str | None, seed: int):
    """The XKDForPretraining of a checkpoint folder (accelerate ``save_state``: ``model.safetensors``), or the
    trainer's initial weights for ``folder=None`` (same seed, same construction order)."""
    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    from ..modeling_xkd import XKDForPretraining

    set_seed(seed)
    model = XKDForPretraining(model_config)
    if folder is not None:
        state = load_file(os.path.join(folder, "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {folder}: missing keys {missing}, unexpected keys {unexpected}.")
    return model.eval()


def _decode_split(root: str, split: str, processors_dir: str, train_clips: int, seed: int):
    """Clips of one labelled split through the package's data path: (pixel_values, input_values, labels, ids)."""
    from ..downstream.datasets import load_folder, media_paths
    from ..downstream.features import ClipProtocol, sample_clips
    from ..feature_extraction_xkd import XKDFeatureExtractor
    from ..video_processing_xkd import XKDVideoProcessor

    dataset = load_folder(os.path.join(root, split), modality="video")
    vp = XKDVideoProcessor.from_pretrained(processors_dir)
    fe = XKDFeatureExtractor.from_pretrained(processors_dir)
    protocol = ClipProtocol("avdigits", "audio_visual", train_clips=train_clips, test_clips=1, train_augment=False,
                            seed=seed)
    paths, labels = media_paths(dataset), np.asarray(dataset["label"])
    videos, audios, ys, ids = [], [], [], []
    for i, path in enumerate(paths):
        rng = np.random.default_rng([seed, i, 0 if split == "train" else 1])
        pv, iv = sample_clips(path, protocol, split == "train", vp, fe, rng)
        videos.append(pv)
        audios.append(iv)
        ys.append(np.full(pv.shape[0], labels[i], dtype=np.int64))
        ids.append(np.full(pv.shape[0], i, dtype=np.int64))
    return torch.cat(videos), torch.cat(audios), np.concatenate(ys), np.concatenate(ids)


@torch.inference_mode()
def _features(model, pixel_values, input_values, batch_size: int = 64) -> dict[str, np.ndarray]:
    from ..downstream.features import late_fusion

    def encode(tower, x):
        return torch.cat([tower(x[i:i + batch_size]).pooler_output.float() for i in range(0, len(x), batch_size)])

    video = encode(model.video_model, pixel_values)
    audio = encode(model.audio_model, input_values)
    return {"video": video.numpy(), "audio": audio.numpy(), "fusion": late_fusion(video, audio).numpy()}


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # MAE's linear probing puts a BatchNorm without affine parameters before the linear layer: z-score every
    # dimension with the training statistics. Pooled ViT features carry a large common component with a small
    # spread between clips, on which a fixed-recipe linear probe otherwise barely moves.
    mean, std = train.mean(0, keepdims=True), train.std(0, keepdims=True) + 1e-6
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def _probe(train_feats, test_feats, train_y, test_y, train_ids, test_ids, seed: int) -> dict:
    """Per modality: ``fc_top1`` (FC probe on z-scored features, fixed recipe), ``fc_raw_top1`` (the same on the
    raw features), ``svm_top1`` (the released linear-SVM sweep on the raw features, best cost on test)."""
    from ..downstream.features import FeatureSet
    from ..downstream.probe import train_linear_probe
    from ..downstream.svm import svm_sweep

    out = {}
    for modality in train_feats:
        raw_tr, raw_te = train_feats[modality], test_feats[modality]
        z_tr, z_te = _standardise(raw_tr, raw_te)
        fc = train_linear_probe(FeatureSet(z_tr, train_y, train_ids), FeatureSet(z_te, test_y, test_ids),
                                num_classes=10, lr=0.01, epochs=100, batch_size=128, weight_decay=0.05, seed=seed)
        fc_raw = train_linear_probe(FeatureSet(raw_tr, train_y, train_ids), FeatureSet(raw_te, test_y, test_ids),
                                    num_classes=10, lr=0.01, epochs=100, batch_size=128, seed=seed)
        svm = svm_sweep(FeatureSet(raw_tr, train_y, train_ids), FeatureSet(raw_te, test_y, test_ids),
                        costs=[0.01, 0.1, 1.0, 10.0], seed=seed, num_classes=10)
        out[modality] = {"fc_top1": fc.metrics["top1"], "fc_raw_top1": fc_raw.metrics["top1"],
                         "svm_top1": svm.best_top1, "svm_best_cost": svm.best_cost}
    return out


def raw_input_features(pixel_values: torch.Tensor, input_values: torch.Tensor) -> dict[str, np.ndarray]:
    """The "raw inputs" floor of the table: frames averaged over time at 16x16 (768 values) and the flattened
    log-mel (time x mel), late-fused as the encoders' features are."""
    import torch.nn.functional as F

    from ..downstream.features import late_fusion

    video = F.adaptive_avg_pool2d(pixel_values.float().mean(dim=1), 16).flatten(1)
    audio = input_values.float().flatten(1)
    return {"video": video.numpy(), "audio": audio.numpy(), "fusion": late_fusion(video, audio).numpy()}


def probe_arm(out_dir: str, model_config, seed: int, train, test) -> list[dict]:
    """Probe step 0 (the trainer's initial weights for ``seed``) and every checkpoint of a run folder."""
    from ..pretraining.trainer import list_checkpoints

    probes = []
    for step, folder in [(0, None)] + list_checkpoints(os.path.join(out_dir, "checkpoints")):
        model = _load_checkpoint_model(model_config, folder, seed)
        tr, te = _features(model, train[0], train[1]), _features(model, test[0], test[1])
        probes.append({"step": step, **_probe(tr, te, train[2], test[2], train[3], test[3], seed)})
    return probes


def pretrain_and_probe(data_root: str, out_dir: str, scale: BenchmarkScale, objective: str, seed: int,
                       threads: int | None = None) -> dict:
    """One arm (objective x seed): pretrain, probe step 0 (random init) and every checkpoint, write
    ``out_dir/arm.json`` and return it."""
    from ..pretraining.config import build_model_config
    from ..pretraining.trainer import run_pretraining

    if threads:
        torch.set_num_threads(threads)
    config = benchmark_config(scale, objective, seed)
    t0 = time.perf_counter()
    summary = run_pretraining(config, os.path.join(data_root, "train"), out_dir)
    train_seconds = time.perf_counter() - t0
    model_config = build_model_config(config)
    processors = summary["exports"]["teachers"]
    t1 = time.perf_counter()
    train = _decode_split(data_root, "train", processors, scale.train_clips, seed)
    test = _decode_split(data_root, "test", processors, scale.train_clips, seed)
    probes = probe_arm(out_dir, model_config, seed, train, test)
    raw = _probe(raw_input_features(train[0], train[1]), raw_input_features(test[0], test[1]), train[2], test[2],
                 train[3], test[3], seed)
    log = _read_log(os.path.join(out_dir, "logs", "train_log.jsonl"))
    result = {
        "objective": objective, "seed": seed, "steps": summary["step"], "train_seconds": round(train_seconds, 1),
        "probe_seconds": round(time.perf_counter() - t1, 1),
        "seconds_per_step": round(train_seconds / max(1, summary["step"]), 3),
        "probes": probes, "raw_inputs": raw, "final_log": summary["values"], "warnings": [r["warning"] for r in log if "warning" in r],
        "monitors": [{k: r[k] for k in r if k == "step" or "teacher" in k or k.endswith("_loss") or k == "loss"}
                     for r in log if "loss" in r],
        "train_clips": int(len(train[2])), "test_clips": int(len(test[2])),
    }
    atomic_write_text(os.path.join(out_dir, "arm.json"), json.dumps(result, indent=1))
    return result


def reprobe_results(results: dict, work_dir: str, data_root: str, threads: int | None = None) -> dict:
    """Probe the checkpoints of a finished benchmark again with this version's probes (each seed's clips decoded
    once for all its arms); returns the updated results (arms' ``probes`` / ``raw_inputs`` and ``summary``)."""
    from ..pretraining.config import build_model_config

    if threads:
        torch.set_num_threads(threads)
    results = copy.deepcopy(results)
    scale = SCALES[results["scale"]]
    overrides = dict(results["recipe"].get("model_overrides") or ())
    if overrides:
        scale = replace(scale, model_overrides=tuple(overrides.items()))
    scale = replace(scale, steps=int(results["recipe"]["steps"]))
    for seed in results["seeds"]:
        arms = [a for a in results["arms"] if a["seed"] == seed]
        run_dir = lambda a: os.path.join(work_dir, "runs", f"{a['objective'].replace('+', '_')}-seed{seed}")
        processors = os.path.join(run_dir(arms[0]), "teachers")
        train = _decode_split(data_root, "train", processors, scale.train_clips, seed)
        test = _decode_split(data_root, "test", processors, scale.train_clips, seed)
        raw = _probe(raw_input_features(train[0], train[1]), raw_input_features(test[0], test[1]), train[2],
                     test[2], train[3], test[3], seed)
        for arm in arms:
            model_config = build_model_config(benchmark_config(scale, arm["objective"], seed))
            arm["probes"] = probe_arm(run_dir(arm), model_config, seed, train, test)
            arm["raw_inputs"] = raw
    results["summary"] = summarise(results["arms"])
    results["reprobed"] = True
    return results


def _read_log(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _arm_job(args):
    data_root, out_dir, scale, objective, seed = args
    import logging
    import warnings

    logging.getLogger("transformers_xkd.pretraining").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TQDM_DISABLE", "1")
    return pretrain_and_probe(data_root, out_dir, scale, objective, seed, threads=1)


# ----------------------------------------------------------------------------------------------------------------
# The whole benchmark
# ----------------------------------------------------------------------------------------------------------------


def run_learning_benchmark(out_dir: str, scale: str | BenchmarkScale = "cpu", seeds=(0, 1, 2),
                           objectives=OBJECTIVES, workers: int = 2, data_root: str | None = None,
                           steps: int | None = None, progress: bool = True,
                           model_overrides: dict | None = None) -> dict:
    """Make (or reuse) the AV-digits set, run every (objective, seed) arm on ``workers`` processes (one thread
    each), and return the results dict (also written by :func:`write_results`).

    ``model_overrides``: XKDConfig fields changed for every arm (a recipe variant, e.g.
    ``{"video_teacher_temperature": 0.04}``); recorded in the results' ``recipe``."""
    scale = SCALES[scale] if isinstance(scale, str) else scale
    if steps is not None:
        scale = replace(scale, steps=int(steps))
    if model_overrides:
        scale = replace(scale, model_overrides=tuple(dict(scale.model_overrides, **model_overrides).items()))
    for objective in objectives:
        if objective not in OBJECTIVES:
            raise ValueError(f"objectives must be among {OBJECTIVES}, got {objective!r}.")
    data_root = data_root or os.path.join(out_dir, "avdigits")
    t0 = time.perf_counter()
    manifest = make_avdigits(data_root, scale.data, workers=max(1, workers), progress=progress)
    data_seconds = time.perf_counter() - t0
    jobs = [(data_root, os.path.join(out_dir, "runs", f"{o.replace('+', '_')}-seed{s}"), scale, o, s)
            for s in seeds for o in objectives]
    for job in jobs:
        if os.path.exists(job[1]):
            import shutil

            shutil.rmtree(job[1])  # never mix two runs in one folder
    t1 = time.perf_counter()
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            arms = _collect(pool.imap_unordered(_arm_job, jobs), len(jobs), progress)
    else:
        arms = _collect(map(_arm_job, jobs), len(jobs), progress)
    arms.sort(key=lambda a: (a["seed"], OBJECTIVES.index(a["objective"])))
    return {
        "benchmark": "learning", "scale": scale.name, "machine": machine_description(),
        "torch": torch.__version__, "seeds": list(seeds), "objectives": list(objectives),
        "data": {"spec": manifest["spec"], "sound": manifest["sound"], "sound_source": manifest["sound_source"],
                 "num_train": scale.data.num_train, "num_test": scale.data.num_test},
        "recipe": {k: v for k, v in asdict(scale).items() if k != "data"},
        "config_example": benchmark_config(scale, "xkd", seeds[0]),
        "seconds": {"data": round(data_seconds, 1), "arms": round(time.perf_counter() - t1, 1)},
        "arms": arms, "summary": summarise(arms),
    }


def _collect(iterator, total: int, progress: bool) -> list:
    if not progress:
        return list(iterator)
    from tqdm.auto import tqdm

    return list(tqdm(iterator, total=total, desc="learning benchmark arms", unit="arm"))


def _mean_std(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v)),
            "values": [float(x) for x in v]}


def summarise(arms: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of the final probes, per arm and modality; random init is
    step 0 of the "mae" arm of each seed (every arm of a seed starts from the same weights)."""
    out = {}
    by_objective = {}
    for arm in arms:
        by_objective.setdefault(arm["objective"], []).append(arm)
    rows = {}
    if by_objective:
        first = by_objective.get("mae") or next(iter(by_objective.values()))
        rows["random"] = [a["probes"][0] for a in first]
    for objective, group in by_objective.items():
        rows[objective] = [a["probes"][-1] for a in group]
    if arms and all("raw_inputs" in a for a in arms):
        rows["raw"] = [a["raw_inputs"] for a in (by_objective.get("mae") or arms)]
    for row, probes in rows.items():
        out[row] = {m: {metric: _mean_std([p[m][metric] for p in probes]) for metric in METRICS if metric in
                        probes[0][m]} for m in MODALITIES}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Writing: JSON, markdown table, PNGs
# ----------------------------------------------------------------------------------------------------------------


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def results_markdown(results: dict) -> str:
    s = results["summary"]
    rows = [r for r in ("raw", "random", "mae", "mae+kd", "xkd") if r in s]
    arm = results["arms"][0] if results["arms"] else {}
    lines = [
        f"### Learning benchmark ({results['scale']}): AV-digits, {len(results['seeds'])} seeds, "
        f"{arm.get('steps', '?')} pretraining steps per arm",
        "",
        f"Machine: {results['machine']}; torch {results['torch']}. Data: {results['data']['num_train']} train / "
        f"{results['data']['num_test']} test clips, sound: {results['data']['sound_source']}.",
        "Frozen EMA-teacher features; test top-1 % (mean ± std over seeds; chance 10). FC probe: fixed recipe on "
        "z-scored features (MAE's BatchNorm-before-linear probe; nothing chosen on test). SVM: raw features, best of "
        "the cost sweep on test, as the released protocol reports (optimistic).",
    ]
    overrides = dict(results["recipe"].get("model_overrides") or ())
    if overrides:
        lines.append("Recipe variant, for every arm: " + ", ".join(f"model.{k}={v}" for k, v in overrides.items())
                     + ".")
    lines += [
        "",
        "| Method | Video FC | Audio FC | Video+Audio FC | Video SVM | Audio SVM | Video+Audio SVM |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [_cell(s[r][m]["fc_top1"]) for m in MODALITIES] + [_cell(s[r][m]["svm_top1"]) for m in MODALITIES]
        lines.append(f"| {OBJECTIVE_NAMES[r]} | " + " | ".join(cells) + " |")
    secs = [a["seconds_per_step"] for a in results["arms"]]
    by_obj = {}
    for a in results["arms"]:
        by_obj.setdefault(a["objective"], []).append(a["seconds_per_step"])
    lines += ["", "Seconds per pretraining step (1 thread): " + ", ".join(
        f"{o} {np.mean(v):.2f}" for o, v in by_obj.items()) + (f"; total {results['seconds']['arms']:.0f} s for "
                                                                f"{len(secs)} arms." if secs else "")]
    warnings = [(a["objective"], a["seed"], w) for a in results["arms"] for w in a["warnings"]]
    if warnings:
        lines += ["", "Collapse warnings:"] + [f"- {o} seed {sd}: {w[:160]}..." for o, sd, w in warnings]
    return "\n".join(lines) + "\n"


def plot_probe_curves(results: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    colours = {"mae": "tab:blue", "mae+kd": "tab:orange", "xkd": "tab:green"}
    for ax, modality in zip(axes, MODALITIES):
        for objective in results["objectives"]:
            arms = [a for a in results["arms"] if a["objective"] == objective]
            if not arms:
                continue
            steps = [p["step"] for p in arms[0]["probes"]]
            values = np.array([[p[modality]["fc_top1"] for p in a["probes"]] for a in arms])
            mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(steps))
            ax.plot(steps, mean, marker="o", color=colours[objective], label=OBJECTIVE_NAMES[objective])
            ax.fill_between(steps, mean - std, mean + std, color=colours[objective], alpha=0.2)
        ax.axhline(10, color="grey", lw=0.8, ls=":")
        ax.set_title({"video": "video", "audio": "audio", "fusion": "video + audio (late fusion)"}[modality])
        ax.set_xlabel("pretraining step (0 = random init)")
    axes[0].set_ylabel("FC-probe test top-1 (%)")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"AV-digits linear probes vs pretraining ({results['scale']}; mean ± std over "
                 f"{len(results['seeds'])} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_monitors(results: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("teacher_entropy", "per-sample teacher entropy"), ("teacher_batch_entropy",
              "entropy of the batch-mean teacher"), ("teacher_spread", "teacher output spread across batch"),
              ("teacher_student_kl", "KL(teacher || student)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 3.6))
    colours = {"mae+kd": "tab:orange", "xkd": "tab:green"}
    log_k = None
    for arm in results["arms"]:
        if arm["objective"] not in colours or not arm["monitors"]:
            continue
        log_k = math.log(results["recipe"]["projector_output_size"])
        steps = [r["step"] for r in arm["monitors"]]
        for ax, (key, title) in zip(axes, panels):
            for tower, ls in (("video", "-"), ("audio", "--")):
                values = [r.get(f"{tower}_{key}", float("nan")) for r in arm["monitors"]]
                label = f"{arm['objective']} {tower}" if arm["seed"] == results["seeds"][0] else None
                ax.plot(steps, values, ls=ls, color=colours[arm["objective"]], alpha=0.7, label=label)
    for ax, (key, title) in zip(axes, panels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        if log_k is not None and "entropy" in key:
            ax.axhline(log_k, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=7)
    fig.suptitle("Collapse monitors over training (dotted: log K, the uniform distribution)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(results: dict, prefix: str) -> dict:
    """``prefix.json``, ``prefix.md``, ``prefix-steps.png``, ``prefix-monitors.png``; returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    paths = {"json": prefix + ".json", "md": prefix + ".md", "steps_png": prefix + "-steps.png",
             "monitors_png": prefix + "-monitors.png"}
    slim = copy.deepcopy(results)
    atomic_write_text(paths["json"], json.dumps(slim, indent=1, default=str))
    atomic_write_text(paths["md"], results_markdown(results))
    plot_probe_curves(results, paths["steps_png"])
    plot_monitors(results, paths["monitors_png"])
    return paths


# Public names of the steps above, for scripts (examples/quickstart.py) that probe a run of their own.
decode_labelled_split = _decode_split
encode_features = _features
probe_features = _probe
initial_or_checkpoint_model = _load_checkpoint_model
