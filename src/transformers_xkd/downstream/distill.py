"""Training and evaluating CCL, MNF + CSC and the supervised baseline on the package's data path (the work behind
``training/distill.py`` and ``training/extract_teacher_features.py``).

* :data:`DISTILLATION_RECIPES`: the released recipes as named presets.
* Teachers: :class:`TeacherFeatureFolder` (pre-extracted per-video ``.npy`` files in class folders, the layout of
  CCL's shipped ``audiocnn14embed512_features``; 1-D vectors or `(T, D)` arrays of which one row is drawn; a missing
  file is reported by name, becomes a zero vector, is excluded from the distillation terms and kept in CE, and is
  counted), :class:`FrozenTeachers` (an `XKDAudioModel` on the clip's own sound and/or any transformers image
  backbone on one random frame of the student's augmented clip, frozen, run by the Trainer), and
  :func:`extract_teacher_features` (writes such folders; cached, resumable, with a progress bar).
* :func:`filter_videos_with_audio`: keep videos with an audio stream and the classes that have some (how the
  papers' "UCF51" comes from UCF101), with counts.
* :class:`DistillationClipDataset` + :func:`distillation_collate`, :class:`DistillationTrainer` (one optimizer with a
  student and an auxiliary parameter group, SGD or Adam, MultiStep schedule in epochs, every loss term logged).
* :func:`sliding_window_predict`: both papers' test (16-frame windows, stride 16, centre crop, clip softmax averaged
  per video), which also returns mean clip features for retrieval (:mod:`.retrieval`).
* :func:`run_distillation`: the whole run, results JSON, exported pipeline folder, card, optional push.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import logging

from ..configuration_xkd_distillation import KINETICS_MEAN, KINETICS_STD, XKDDistillationConfig
from ..decoding_xkd import MediaDecodingError, MediaReader, decode_media
from ..hub import push_folder_to_hub
from ..model_card import make_distillation_card, save_card
from ..utils_io import atomic_path, atomic_write_text
from ..video_processing_xkd import IMAGENET_MEAN, IMAGENET_STD
from .datasets import SplitEntry, entries_to_dataset, media_paths
from .features import ClipProtocol, sample_clips

logger = logging.get_logger(__name__)

__all__ = [
    "DISTILLATION_RECIPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TeacherFeatureFolder",
    "FrozenTeachers",
    "image_backbone_features",
    "extract_teacher_features",
    "filter_videos_with_audio",
    "AudioFilterReport",
    "DistillationClipDataset",
    "distillation_collate",
    "DistillationTrainer",
    "multistep_factor",
    "sliding_window_indices",
    "sliding_window_predict",
    "build_distillation_model",
    "run_distillation",
]

# Released recipes (CCL: opts.py + scripts/run_ccl_*.sh; MNF: args.py + scripts/ucf_train_script.sh).
# fps None = the file's native frame rate (CCL's HDF5 frames); MNF decodes at 4 fps. milestones are in epochs.
# aux_scheduled: whether the MultiStep decay also applies to the auxiliary modules (CCL steps only the student's
# optimizer; MNF steps both schedulers).
DISTILLATION_RECIPES: dict[str, dict[str, Any]] = {
    "ccl": dict(method="ccl", optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, batch_size=16, epochs=300,
                milestones=(150, 225), gamma=0.1, aux_lr_multiplier=1.0, aux_scheduled=False, num_frames=16,
                image_size=112, fps=None, mean=KINETICS_MEAN, std=KINETICS_STD, crop_scale=(0.25, 1.0),
                crop_ratio=(3 / 4, 4 / 3), resize_shortest_edge=128, seed=1),
    # run_ccl_ai.sh overrides the milestones with --multistep_milestones=250
    "ccl-ai": dict(method="ccl", optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, batch_size=16,
                   epochs=300, milestones=(250,), gamma=0.1, aux_lr_multiplier=1.0, aux_scheduled=False,
                   num_frames=16, image_size=112, fps=None, mean=KINETICS_MEAN, std=KINETICS_STD,
                   crop_scale=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3), resize_shortest_edge=128, seed=1),
    "baseline": dict(method="baseline", optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, batch_size=16,
                     epochs=300, milestones=(150, 225), gamma=0.1, aux_lr_multiplier=1.0, aux_scheduled=False,
                     num_frames=16, image_size=112, fps=None, mean=KINETICS_MEAN, std=KINETICS_STD,
                     crop_scale=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3), resize_shortest_edge=128, seed=1),
    "mnf-csc": dict(method="mnf-csc", optimizer="adam", lr=3e-4, momentum=0.0, weight_decay=5e-4, batch_size=32,
                    epochs=200, milestones=(150,), gamma=0.1, aux_lr_multiplier=0.2, aux_scheduled=True,
                    num_frames=16, image_size=112, fps=4.0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    crop_scale=(0.25, 1.0), crop_ratio=(3 / 4, 4 / 3), resize_shortest_edge=128, seed=3),
}


def _recipe(recipe) -> dict:
    if isinstance(recipe, str):
        if recipe not in DISTILLATION_RECIPES:
            raise ValueError(f"unknown distillation recipe {recipe!r}; known: {sorted(DISTILLATION_RECIPES)}")
        return dict(DISTILLATION_RECIPES[recipe])
    base = DISTILLATION_RECIPES.get(recipe.get("method", "ccl"), DISTILLATION_RECIPES["ccl"])
    return {**base, **recipe}


# --------------------------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------------------------
class TeacherFeatureFolder:
    """Pre-extracted teacher features, ``root/<class_name>/<video_stem>.npy`` (CCL's released layout).

    Each file holds a 1-D float vector, or a `(T, D)` array of which one row is drawn (uniformly, with the given
    generator; the mean of the rows without one). A missing file is reported by name (warning, once per video),
    returned as a zero vector with ``found=False`` and counted in :attr:`missing`.

    Args:
        root: the folder.
        dim: the feature width; inferred from the first file found when omitted.
        allow_missing: ``False`` raises `FileNotFoundError` naming the file instead of returning zeros.
    """

    def __init__(self, root, dim: int | None = None, allow_missing: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"teacher feature folder {self.root} does not exist (expected "
                                    "<root>/<class_name>/<video>.npy files)")
        self.dim = dim
        self.allow_missing = allow_missing
        self.missing: set[str] = set()

    def path_for(self, video_path, class_name: str) -> Path:
        return self.root / class_name / f"{Path(video_path).stem}.npy"

    def infer_dim(self) -> int:
        if self.dim is None:
            first = next(iter(sorted(self.root.glob("*/*.npy"))), None)
            if first is None:
                raise FileNotFoundError(f"{self.root}: no <class>/<video>.npy files to infer the feature width from")
            self.dim = int(np.load(first, allow_pickle=False).shape[-1])
        return self.dim

    def load(self, video_path, class_name: str, rng: np.random.Generator | None = None) -> tuple[np.ndarray, bool]:
        """`(feature (D,) float32, found)`."""
        path = self.path_for(video_path, class_name)
        if not path.is_file():
            if not self.allow_missing:
                raise FileNotFoundError(f"teacher feature {path} for video {video_path} is missing")
            if str(path) not in self.missing:
                self.missing.add(str(path))
                logger.warning(f"teacher feature missing for {video_path}: {path} (zero vector; excluded from the "
                               "distillation terms, kept in cross-entropy)")
            return np.zeros(self.infer_dim(), dtype=np.float32), False
        arr = np.load(path, allow_pickle=False)  # data only, never pickled objects
        if arr.ndim == 2:
            arr = arr[int(rng.integers(arr.shape[0]))] if rng is not None else arr.mean(0)
        if arr.ndim != 1:
            raise ValueError(f"teacher feature {path}: expected a 1-D vector or a (T, D) array, got shape {arr.shape}")
        if self.dim is None:
            self.dim = int(arr.shape[0])
        elif arr.shape[0] != self.dim:
            raise ValueError(f"teacher feature {path} has width {arr.shape[0]}, the folder's others {self.dim}")
        return arr.astype(np.float32), True


def image_backbone_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`(B, 3, H, W)` -> `(B, D)` from a transformers image backbone (``pooler_output``, flattened; else the mean of
    ``last_hidden_state`` over tokens / pixels)."""
    out = model(pixel_values=images)
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        hidden = out.last_hidden_state
        pooled = hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)
    return pooled.flatten(1)


class FrozenTeachers(nn.Module):
    """Teachers run on the fly, frozen (``eval()``, no gradients), never saved with the student.

    Args:
        audio: an `XKDAudioModel` (its ``pooler_output`` on the clip's log-mel ``input_values``).
        image: a transformers image backbone (e.g. ``AutoModel.from_pretrained("microsoft/resnet-34")``); CCL-I feeds
            it one random frame of the student's own augmented clip, normalised as the student's clip is (released).
        seed: the frame draw (one frame index per batch, as ``random.randint`` in the release).
    """

    def __init__(self, audio: nn.Module | None = None, image: nn.Module | None = None, seed: int = 0):
        super().__init__()
        self.audio, self.image = audio, image
        for m in (audio, image):
            if m is not None:
                m.eval().requires_grad_(False)
        self._rng = np.random.default_rng(seed)

    @property
    def names(self) -> list[str]:
        return [n for n, m in (("audio", self.audio), ("image", self.image)) if m is not None]

    def train(self, mode: bool = True):
        return super().train(False)  # frozen teachers always run in eval mode

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, input_values: torch.Tensor | None = None) -> dict:
        feats = {}
        if self.audio is not None:
            if input_values is None:
                raise ValueError("FrozenTeachers: the audio teacher needs the clip's input_values (log-mel)")
            feats["audio"] = self.audio(input_values).pooler_output.float()
        if self.image is not None:
            frame = int(self._rng.integers(pixel_values.shape[1]))
            feats["image"] = image_backbone_features(self.image, pixel_values[:, frame]).float()
        return feats


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


@torch.no_grad()  # not inference_mode: the log-mel extractor reuses its own buffers across calls
def extract_teacher_features(teacher: nn.Module, kind: str, dataset, out_dir, video_processor=None,
                             feature_extractor=None, num_clips: int = 1, batch_size: int = 16,
                             device: str = "cpu", progress: bool = True, overwrite: bool = False) -> dict:
    """Write one ``out_dir/<class>/<video>.npy`` per video (the layout :class:`TeacherFeatureFolder` reads).

    Args:
        teacher: an `XKDAudioModel` (``kind="audio"``: ``num_clips`` uniformly spaced log-mel windows), an
            `XKDVideoModel` (``kind="video"``) or a transformers image backbone (``kind="image"``: the middle frame of
            each of ``num_clips`` uniform clips).
        dataset: a labelled `datasets.Dataset` (:mod:`.datasets`).
        num_clips: rows per video; 1 writes a 1-D vector, more a `(num_clips, D)` array (one row drawn per step).
        overwrite: recompute existing files; otherwise they are kept, so an interrupted run resumes.

    Files are written atomically (temporary name, then rename). Returns
    ``{"written", "skipped_existing", "failed": [(path, reason)], "out_dir"}``.
    """
    from tqdm.auto import tqdm

    from ..feature_extraction_xkd import XKDFeatureExtractor
    from ..video_processing_xkd import XKDVideoProcessor

    if kind not in ("audio", "video", "image"):
        raise ValueError(f"kind must be 'audio', 'video' or 'image', got {kind!r}")
    out_dir = Path(out_dir)
    teacher.eval().to(device)
    names = dataset.features["label"].names
    paths, labels = media_paths(dataset), list(dataset["label"])
    vp = video_processor or XKDVideoProcessor()
    fe = feature_extractor or XKDFeatureExtractor()
    report = {"written": 0, "skipped_existing": 0, "failed": [], "out_dir": str(out_dir)}
    for path, label in tqdm(list(zip(paths, labels)), desc=f"{kind} teacher features", unit="video",
                            disable=not progress):
        target = out_dir / names[label] / f"{Path(path).stem}.npy"
        if target.is_file() and not overwrite:
            report["skipped_existing"] += 1
            continue
        try:
            if kind == "audio":
                x = fe(path, num_clips=num_clips, return_tensors="pt")["input_values"]
                x = x.reshape(-1, *x.shape[-2:])
                feats = torch.cat([teacher(x[i:i + batch_size].to(device)).pooler_output.float().cpu()
                                   for i in range(0, x.shape[0], batch_size)])
            else:
                x = vp(path, num_clips=num_clips, return_tensors="pt")["pixel_values"]
                x = x.reshape(-1, *x.shape[-4:])
                if kind == "video":
                    feats = torch.cat([teacher(x[i:i + batch_size].to(device)).pooler_output.float().cpu()
                                       for i in range(0, x.shape[0], batch_size)])
                else:
                    frames = x[:, x.shape[1] // 2]
                    feats = image_backbone_features(teacher, frames.to(device)).float().cpu()
        except MediaDecodingError as err:
            report["failed"].append((path, str(err)))
            logger.warning(f"teacher features: skipping {path}: {err}")
            continue
        arr = feats.numpy().astype(np.float32)
        _atomic_save_npy(target, arr[0] if num_clips == 1 else arr)
        report["written"] += 1
    return report


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AudioFilterReport:
    """What :func:`filter_videos_with_audio` kept (the counts the papers' "UCF51" comes from)."""

    classes_before: int
    classes_after: int
    train_before: int
    train_after: int
    test_before: int = 0
    test_after: int = 0
    dropped_classes: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)

    def format(self) -> str:
        return (f"audio filter: {self.classes_after} of {self.classes_before} classes kept; train videos "
                f"{self.train_after} of {self.train_before}, test videos {self.test_after} of {self.test_before} have "
                f"an audio stream; dropped classes: {', '.join(self.dropped_classes) or 'none'}"
                + (f"; {len(self.undecodable)} unreadable files dropped" if self.undecodable else ""))


def _has_audio(path: str, bad: list[str]) -> bool:
    try:
        with MediaReader(path) as reader:
            return bool(reader.info.has_audio)
    except MediaDecodingError:
        bad.append(path)
        return False


def filter_videos_with_audio(train_dataset, test_dataset=None, progress: bool = False):
    """Keep the videos that have an audio stream, and the classes with at least one such training video.

    Class ids are renumbered ``0..C'-1`` in the original order (names kept); the test split keeps the same classes.
    Returns ``(train, test or None, AudioFilterReport)``.
    """
    from tqdm.auto import tqdm

    names = train_dataset.features["label"].names
    bad: list[str] = []

    def keep(ds):
        paths, labels = media_paths(ds), list(ds["label"])
        flags = [_has_audio(p, bad) for p in tqdm(paths, desc="probing audio streams", disable=not progress)]
        return [(p, y) for p, y, f in zip(paths, labels, flags) if f], len(paths)

    train_kept, n_train = keep(train_dataset)
    kept_classes = sorted({y for _, y in train_kept})
    if not kept_classes:
        raise ValueError("filter_videos_with_audio: no training video has an audio stream")
    remap = {old: new for new, old in enumerate(kept_classes)}
    new_names = [names[c] for c in kept_classes]
    train = entries_to_dataset([SplitEntry(p, remap[y]) for p, y in train_kept], new_names)
    report = AudioFilterReport(len(names), len(kept_classes), n_train, len(train_kept),
                               dropped_classes=[n for i, n in enumerate(names) if i not in remap], undecodable=bad)
    test = None
    if test_dataset is not None:
        test_names = test_dataset.features["label"].names
        if list(test_names) != list(names):
            raise ValueError("filter_videos_with_audio: train and test splits must share one class list")
        test_kept, n_test = keep(test_dataset)
        test_kept = [(p, y) for p, y in test_kept if y in remap]
        if not test_kept:
            raise ValueError("filter_videos_with_audio: no test video with audio in the kept classes")
        test = entries_to_dataset([SplitEntry(p, remap[y]) for p, y in test_kept], new_names)
        report.test_before, report.test_after = n_test, len(test_kept)
    logger.warning(report.format())
    return train, test, report


def clip_augmentation(recipe: dict):
    """The released training crop: RandomResizedCrop(112, scale 0.25-1, ratio 3/4-4/3) + horizontal flip, the same
    on every frame of a clip (kornia)."""
    import kornia.augmentation as K

    size = (recipe["image_size"], recipe["image_size"])
    return K.VideoSequential(
        K.RandomResizedCrop(size, scale=tuple(recipe["crop_scale"]), ratio=tuple(recipe["crop_ratio"])),
        K.RandomHorizontalFlip(p=0.5), data_format="BTCHW", same_on_frame=True,
    )


def recipe_video_processor(recipe: dict, train: bool):
    """`XKDVideoProcessor` for the recipe: training resizes the shorter side to ``resize_shortest_edge`` (the random
    crop follows); testing resizes it to the crop size and centre-crops (released ``Resize(112) + CenterCrop(112)``)."""
    from ..video_processing_xkd import XKDVideoProcessor

    size = recipe["resize_shortest_edge"] if train else recipe["image_size"]
    return XKDVideoProcessor(num_frames=recipe["num_frames"], fps=recipe["fps"] or 8.0,
                             size={"shortest_edge": size}, crop_size=recipe["image_size"],
                             image_mean=list(recipe["mean"]), image_std=list(recipe["std"]))


class DistillationClipDataset(torch.utils.data.Dataset):
    """One random training clip per video per access, with its teacher features.

    Items: ``pixel_values`` `(T, 3, H, W)` (augmented), ``labels``, ``input_values`` (log-mel of the same window,
    only for an on-the-fly audio teacher), ``teacher_features`` / ``teacher_mask`` dicts for pre-extracted teachers.

    Args:
        dataset: labelled `datasets.Dataset`.
        recipe: a :data:`DISTILLATION_RECIPES` entry (frames, fps, crop, normalisation).
        teacher_folders: ``{name: TeacherFeatureFolder}``.
        feature_extractor: an `XKDFeatureExtractor` when the audio teacher runs on the fly.
        train: random start + augmentation; ``False`` takes the first clip, centre-cropped.
    """

    def __init__(self, dataset, recipe: dict, teacher_folders: dict | None = None, feature_extractor=None,
                 train: bool = True):
        self.paths, self.labels = media_paths(dataset), [int(y) for y in dataset["label"]]
        self.class_names = dataset.features["label"].names
        self.recipe, self.train = recipe, train
        self.folders = dict(teacher_folders or {})
        self.fe = feature_extractor
        self.vp = recipe_video_processor(recipe, train)
        self.augment = clip_augmentation(recipe) if train else None
        modality = "audio_visual" if feature_extractor is not None else "video"
        self.protocol = ClipProtocol("distill", modality, 1, 1, train_augment=train, volume_jitter=0.0)
        self._native_fps: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _processor_for(self, path: str):
        if self.recipe["fps"] is not None:
            return self.vp
        if path not in self._native_fps:  # CCL: frames at the file's own rate
            with MediaReader(path) as reader:
                self._native_fps[path] = float(reader.info.native_fps or 8.0)
        vp = copy.copy(self.vp)
        vp.fps = self._native_fps[path]
        return vp

    @property
    def missing_teacher_features(self) -> dict[str, list[str]]:
        return {name: sorted(f.missing) for name, f in self.folders.items()}

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, ())))
        path, label = self.paths[i], self.labels[i]
        vp = self._processor_for(path)
        pv, iv = sample_clips(path, self.protocol, self.train, vp, self.fe, rng, self.augment)
        item = {"pixel_values": pv[0].float(), "labels": label}
        if iv is not None:
            item["input_values"] = iv[0]
        if self.folders:
            feats, masks = {}, {}
            for name, folder in self.folders.items():
                vec, found = folder.load(path, self.class_names[label], rng if self.train else None)
                feats[name], masks[name] = torch.from_numpy(vec), found
            item["teacher_features"], item["teacher_mask"] = feats, masks
        return item


def distillation_collate(items: list[dict]) -> dict:
    """Stack :class:`DistillationClipDataset` items (teacher dicts stacked per name)."""
    batch = {"pixel_values": torch.stack([it["pixel_values"] for it in items]),
             "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long)}
    if "input_values" in items[0]:
        batch["input_values"] = torch.stack([torch.as_tensor(it["input_values"]) for it in items])
    if "teacher_features" in items[0]:
        names = items[0]["teacher_features"].keys()
        batch["teacher_features"] = {n: torch.stack([it["teacher_features"][n] for it in items]) for n in names}
        batch["teacher_mask"] = {n: torch.tensor([bool(it["teacher_mask"][n]) for it in items]) for n in names}
    return batch


# --------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------
def multistep_factor(epoch: float, milestones, gamma: float = 0.1) -> float:
    """`MultiStepLR`'s factor at (fractional) ``epoch``: ``gamma ** (number of milestones <= floor(epoch))``."""
    e = math.floor(epoch + 1e-9)
    return gamma ** sum(1 for m in milestones if e >= m)


class DistillationTrainer(Trainer):
    """`Trainer` for the distillation models.

    * ``create_optimizer``: the model's :meth:`parameter_groups` (student at lr, auxiliary modules at
      ``lr * aux_lr_multiplier``) in SGD (momentum, coupled weight decay) or Adam (coupled L2 weight decay, as
      ``torch.optim.Adam(weight_decay=...)`` in the release).
    * ``create_scheduler``: MultiStep decay at ``milestones`` epochs (per step: ``steps_per_epoch``); the auxiliary
      group decays too only when ``aux_scheduled`` (CCL: no, MNF: yes, as released).
    * ``compute_loss``: runs the on-the-fly :class:`FrozenTeachers` first, then the model; each loss term is averaged
      over the logging interval and logged (``loss_<term>``), and missing teacher features are counted.
    """

    def __init__(self, *args, recipe: dict, steps_per_epoch: int, teachers: FrozenTeachers | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.recipe, self.steps_per_epoch, self.teachers = recipe, max(1, int(steps_per_epoch)), teachers
        self.model_accepts_loss_kwargs = False  # the loss is a batch mean
        self._term_sums: dict[str, float] = {}
        self._term_count = 0
        self.distilled_rows: dict[str, int] = {}
        self.seen_rows = 0

    def create_optimizer(self, model=None):
        model = self.model if model is None else model
        if self.optimizer is None:
            groups = model.parameter_groups(self.args.learning_rate, self.recipe["weight_decay"])
            if self.recipe["optimizer"] == "sgd":
                self.optimizer = torch.optim.SGD(groups, lr=self.args.learning_rate,
                                                 momentum=self.recipe["momentum"], dampening=0.0, nesterov=False)
            elif self.recipe["optimizer"] == "adam":
                self.optimizer = torch.optim.Adam(groups, lr=self.args.learning_rate)
            else:
                raise ValueError(f"recipe optimizer must be 'sgd' or 'adam', got {self.recipe['optimizer']!r}")
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        optimizer = optimizer or self.optimizer
        if self.lr_scheduler is None:
            ms, gamma, spe = tuple(self.recipe["milestones"]), self.recipe["gamma"], self.steps_per_epoch
            decay = lambda step: multistep_factor(step / spe, ms, gamma)  # noqa: E731
            lambdas = [decay if (g.get("name") != "auxiliary" or self.recipe["aux_scheduled"]) else (lambda step: 1.0)
                       for g in optimizer.param_groups]
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        input_values = inputs.pop("input_values", None)
        if self.teachers is not None and self.teachers.names:
            self.teachers.to(inputs["pixel_values"].device)
            live = self.teachers(inputs["pixel_values"], input_values)
            inputs["teacher_features"] = {**(inputs.get("teacher_features") or {}), **live}
        outputs = model(**inputs)
        if model.training:
            for k, v in (outputs.loss_terms or {}).items():
                self._term_sums[k] = self._term_sums.get(k, 0.0) + float(v)
            self._term_count += 1
            self.seen_rows += int(inputs["labels"].shape[0])
            for k, v in (outputs.num_distilled or {}).items():
                self.distilled_rows[k] = self.distilled_rows.get(k, 0) + int(v)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict, *args, **kwargs):
        if self._term_count and "loss" in logs:
            for k, v in self._term_sums.items():
                logs[f"loss_{k}"] = round(v / self._term_count, 6)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, *args, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------
def sliding_window_indices(num_frames: int, size: int = 16, stride: int = 16) -> list[list[int]]:
    """3D-ResNets' ``SlidingWindow`` (both papers' test): a window at every ``stride`` frames; a window running past
    the end keeps its frames and is loop-padded (its own indices repeated) to ``size``."""
    if num_frames < 1 or size < 1 or stride < 1:
        raise ValueError(f"sliding_window_indices: num_frames, size and stride must be >= 1, got {num_frames}, "
                         f"{size}, {stride}")
    out = []
    for begin in range(0, num_frames, stride):
        window = list(range(begin, min(num_frames, begin + size)))
        base = list(window)
        k = 0
        while len(window) < size:
            window.append(base[k % len(base)])
            k += 1
        out.append(window)
    return out


@torch.inference_mode()
def sliding_window_predict(model, dataset, recipe: dict | str, window: int | None = None, stride: int | None = None,
                           batch_size: int = 8, device: str = "cpu", progress: bool = False):
    """Top-1 test of both papers: every ``window``-frame window (stride ``stride``), shorter side resized to the
    crop size and centre-cropped, softmax of each window averaged per video.

    ``model`` is a distillation model (its ``pooler_output`` gives the retrieval feature) or any classifier with
    ``logits``. Returns ``(scores (V, C), features (V, D) or None, labels (V,))``.
    """
    from tqdm.auto import tqdm

    recipe = _recipe(recipe)
    window = window or recipe["num_frames"]
    stride = stride or window
    vp = recipe_video_processor(recipe, train=False)
    model.eval().to(device)
    paths, labels = media_paths(dataset), np.asarray(dataset["label"])
    scores, feats = [], []
    for path in tqdm(paths, desc="sliding-window test", unit="video", disable=not progress):
        fps = recipe["fps"]
        if fps is None:
            with MediaReader(path) as reader:
                fps = float(reader.info.native_fps or 8.0)
        decoded = decode_media(path, fps=fps, decode_audio=False, require_video=True)
        n = len(decoded.frames) - decoded.num_padded_frames
        frames = decoded.frames[: max(n, 1)]
        clip_idx = sliding_window_indices(len(frames), window, stride)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        x = vp.transform(x)  # resize + centre crop + normalise, each frame once
        probs, pooled = [], []
        for i in range(0, len(clip_idx), batch_size):
            clips = torch.stack([x[idx] for idx in clip_idx[i: i + batch_size]]).to(device)
            out = model(pixel_values=clips)
            probs.append(out.logits.float().softmax(-1).cpu())
            if getattr(out, "pooler_output", None) is not None:
                pooled.append(out.pooler_output.float().cpu())
        scores.append(torch.cat(probs).mean(0).numpy())
        if pooled:
            feats.append(torch.cat(pooled).mean(0).numpy())
    return np.stack(scores), (np.stack(feats) if feats else None), labels


# --------------------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------------------
def build_distillation_model(method: str, teachers: list[str], class_names: list[str], student: str = "r2plus1d",
                             student_checkpoint=None, student_config: dict | None = None,
                             teacher_sizes: dict | None = None, **config_overrides):
    """`XKDForCCLDistillation` / `XKDForMNFDistillation` with a fresh or pretrained (XKD folder) student."""
    from ..modeling_xkd_distillation import XKDForCCLDistillation, XKDForMNFDistillation

    pretrained = None
    if student == "xkd" and student_checkpoint is not None:
        from ..modeling_xkd import XKDVideoModel

        pretrained = XKDVideoModel.from_pretrained(str(student_checkpoint))
        student_config = pretrained.config.to_dict()
    sizes = {f"{k}_teacher_size": int(v) for k, v in (teacher_sizes or {}).items()}
    config = XKDDistillationConfig(
        method=method, teachers=list(teachers) if method != "baseline" else [], student_type=student,
        student_config=student_config, num_labels=len(class_names),
        id2label={i: n for i, n in enumerate(class_names)}, label2id={n: i for i, n in enumerate(class_names)},
        **sizes, **config_overrides,
    )
    cls = XKDForMNFDistillation if method == "mnf-csc" else XKDForCCLDistillation
    model = cls(config)
    if pretrained is not None:
        model.student.load_state_dict(pretrained.state_dict(), strict=True)
    return model


def run_distillation(
    method: str,
    train_dataset,
    test_dataset,
    output_dir,
    teachers: list[str] = ("audio",),
    student: str = "r2plus1d",
    recipe: str | dict | None = None,
    teacher_feature_dirs: dict | None = None,
    audio_teacher=None,
    image_teacher=None,
    student_checkpoint=None,
    student_config: dict | None = None,
    training_overrides: dict | None = None,
    config_overrides: dict | None = None,
    filter_audio: bool = False,
    retrieval: bool = True,
    push_to_hub: str | None = None,
    device: str | None = None,
) -> dict:
    """Train one method, test it (sliding windows + retrieval), export the pipeline folder, write results.

    Args:
        method: ``"ccl"``, ``"mnf-csc"`` or ``"baseline"``.
        teachers: names among ``"audio"``, ``"image"``.
        teacher_feature_dirs: ``{name: folder}`` of pre-extracted features (:class:`TeacherFeatureFolder`).
        audio_teacher / image_teacher: on-the-fly teachers: an `XKDAudioModel` (or its folder) / a transformers
            image backbone (or its folder / Hub id for `AutoModel`). A teacher needs a folder or a model.
        student: ``"r2plus1d"`` (from scratch) or ``"xkd"`` (``student_checkpoint`` folder, or ``student_config``).
        training_overrides: `TrainingArguments` fields (e.g. ``max_steps`` for a smoke run) and recipe keys
            (``epochs``, ``batch_size``, ``lr``).
        filter_audio: apply :func:`filter_videos_with_audio` first.

    Returns: the results dict (also ``output_dir/distill_results.json``).
    """
    from .retrieval import retrieval_metrics

    recipe = _recipe(recipe or ("ccl-ai" if method == "ccl" and len(teachers) > 1 else method))
    training_overrides = dict(training_overrides or {})
    for key in [k for k in training_overrides if k in recipe]:
        recipe[key] = training_overrides.pop(key)
    teachers = [] if method == "baseline" else list(teachers)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    filter_report = None
    if filter_audio:
        train_dataset, test_dataset, filter_report = filter_videos_with_audio(train_dataset, test_dataset)
    class_names = list(train_dataset.features["label"].names)

    folders, teacher_sizes, live = {}, {}, {}
    for name in teachers:
        folder = (teacher_feature_dirs or {}).get(name)
        if folder is not None:
            folders[name] = TeacherFeatureFolder(folder)
            teacher_sizes[name] = folders[name].infer_dim()
            continue
        given = audio_teacher if name == "audio" else image_teacher
        if given is None:
            raise ValueError(f"teacher {name!r} needs a pre-extracted feature folder or an on-the-fly model")
        if isinstance(given, (str, os.PathLike)):
            if name == "audio":
                from ..modeling_xkd import XKDAudioModel

                given = XKDAudioModel.from_pretrained(str(given))
            else:
                from transformers import AutoModel

                given = AutoModel.from_pretrained(str(given))
        live[name] = given
        teacher_sizes[name] = _teacher_width(name, given, recipe)
    frozen = FrozenTeachers(live.get("audio"), live.get("image"), seed=recipe["seed"]) if live else None
    fe = None
    if "audio" in live:
        from ..feature_extraction_xkd import XKDFeatureExtractor

        fe = XKDFeatureExtractor()
        fe = _feature_extractor_for(live["audio"], fe, recipe)

    model = build_distillation_model(method, teachers, class_names, student, student_checkpoint, student_config,
                                     teacher_sizes, aux_lr_multiplier=recipe["aux_lr_multiplier"],
                                     **(config_overrides or {}))
    train_ds = DistillationClipDataset(train_dataset, recipe, folders, fe, train=True)
    steps_per_epoch = max(1, math.ceil(len(train_ds) / recipe["batch_size"]))
    args = dict(output_dir=str(output_dir / "trainer"), learning_rate=recipe["lr"], weight_decay=0.0,
                num_train_epochs=recipe["epochs"], per_device_train_batch_size=recipe["batch_size"],
                logging_steps=1, save_strategy="no", report_to="none", remove_unused_columns=False,
                dataloader_num_workers=0, seed=recipe["seed"], max_grad_norm=0.0,
                use_cpu=(device == "cpu") if device else False)
    args.update(training_overrides)
    trainer = DistillationTrainer(model=model, args=TrainingArguments(**args), train_dataset=train_ds,
                                  data_collator=distillation_collate, recipe=recipe, steps_per_epoch=steps_per_epoch,
                                  teachers=frozen)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    dev = trainer.args.device
    scores, test_feats, test_labels = sliding_window_predict(model, test_dataset, recipe, device=dev)
    top1 = 100.0 * float((scores.argmax(1) == test_labels).mean())
    results: dict[str, Any] = {"method": method, "teachers": teachers, "student": student, "recipe": recipe,
                               "top1": top1, "num_test_videos": int(len(test_labels)),
                               "num_train_videos": len(train_ds), "train_loss_first": losses[0] if losses else None,
                               "train_loss_last": losses[-1] if losses else None,
                               "student_parameters": int(sum(p.numel() for p in model.student.parameters()))}
    if retrieval and test_feats is not None:
        _, gallery_feats, gallery_labels = sliding_window_predict(model, train_dataset, recipe, device=dev)
        results["retrieval"] = retrieval_metrics(test_feats, test_labels, gallery_feats, gallery_labels)
    missing = train_ds.missing_teacher_features
    results["missing_teacher_features"] = {k: len(v) for k, v in missing.items()}
    results["missing_teacher_feature_files"] = {k: v[:50] for k, v in missing.items()}
    results["distilled_rows"], results["seen_rows"] = trainer.distilled_rows, trainer.seen_rows
    if filter_report is not None:
        results["audio_filter"] = filter_report.__dict__ | {"summary": filter_report.format()}
    export_dir = output_dir / "classifier"
    model.export_classifier(export_dir, recipe_video_processor(recipe, train=False))
    model.save_pretrained(str(output_dir / "distillation_model"))
    save_card(make_distillation_card(results, push_to_hub), export_dir)
    atomic_write_text(output_dir / "distill_results.json", json.dumps(results, indent=2, default=_json_default))
    if push_to_hub:
        push_folder_to_hub(export_dir, push_to_hub, commit_message=f"Upload {method} student")
    return results


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    return str(x)


def _teacher_width(name: str, model: nn.Module, recipe: dict) -> int:
    cfg = getattr(model, "config", None)
    if name == "audio":
        return int(cfg.hidden_size)
    for attr in ("hidden_sizes", "hidden_size"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value[-1] if isinstance(value, (list, tuple)) else value)
    with torch.no_grad():  # probe once
        x = torch.zeros(1, 3, recipe["image_size"], recipe["image_size"])
        return int(image_backbone_features(model.eval(), x).shape[1])


def _feature_extractor_for(audio_model, fe, recipe: dict):
    """A log-mel extractor whose window matches the audio teacher's input length and the student clip."""
    from ..feature_extraction_xkd import XKDFeatureExtractor

    cfg = audio_model.config
    hop = getattr(fe, "hop_length", 143)
    samples = (cfg.max_length - 1) * hop
    return XKDFeatureExtractor(feature_size=cfg.num_mel_bins, clip_duration=samples / fe.sampling_rate)
