"""Frozen XKD features for linear evaluation (released `codes/eval`), with per-video clip sampling and a disk cache.

Protocol (released eval code):

* The feature is the encoder's ``pooler_output``: mean of the last layer's patch tokens after the final LayerNorm,
  with no extra normalisation for a single modality.
* Audio-visual (Kinetics-Sound): the video and audio features are each L2-normalised, then concatenated (late
  fusion, :func:`late_fusion`), ``(N, 2D)``.
* Training videos give ``train_clips`` clips each, at random start times, with the eval-time training
  augmentation: video RandomResizedCrop (scale 0.08-1), horizontal flip 0.5, colour jitter (0.4, 0.4, 0.4, 0.2)
  always, grayscale 0.2, the same on every frame of a clip (kornia, batched); audio volume jitter of +-0.1.
  Each clip is one SVM sample.
* Test videos give ``test_clips`` uniformly spaced clips with the plain eval transform; the classifier's clip
  scores are averaged per video (``FeatureSet.video_ids``).

Each file is read once by the clip layer (``clips_xkd.read_clips``: one demux pass over the union of the clips'
windows, the released start, frame and padding rules); each clip is then augmented here.
Features are cached as ``.npz`` under ``cache_dir``, keyed by a hash of the checkpoint, the file list (paths,
sizes, modification times, labels), the protocol and the processors' settings, so a cost sweep or a re-run does
not extract again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..clips_xkd import ClipSpec, read_clips
from ..decoding_xkd import MediaDecodingError
from ..utils_io import atomic_path
from .datasets import media_paths

__all__ = [
    "ClipProtocol",
    "LINEAR_EVAL_PROTOCOLS",
    "FeatureSet",
    "Backbone",
    "load_backbone",
    "late_fusion",
    "extract_features",
    "sample_clips",
    "video_train_augmentation",
]

# 2: clips cut by the clip layer (clips_xkd): header-duration starts and the frame shown at each time
CACHE_VERSION = 2


@dataclass(frozen=True)
class ClipProtocol:
    """How clips are cut and augmented for frozen-feature evaluation.

    Attributes:
        name: a label (used in cache file names).
        modality: ``"video"``, ``"audio"`` or ``"audio_visual"`` (late fusion).
        train_clips / test_clips: clips per training / test video.
        train_augment: apply the training augmentation to training clips.
        min_crop_scale: RandomResizedCrop lower area bound (0.08 released).
        color_jitter: (brightness, contrast, saturation, hue), applied with probability 1 (released).
        grayscale_p / flip_p: probabilities.
        volume_jitter: audio gain drawn from U(1 - v, 1 + v).
        seed: seeds clip positions and augmentation (per video: seed + video index), so a cache is reproducible.
    """

    name: str = "custom"
    modality: str = "video"
    train_clips: int = 25
    test_clips: int = 3
    train_augment: bool = True
    min_crop_scale: float = 0.08
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.2)
    grayscale_p: float = 0.2
    flip_p: float = 0.5
    volume_jitter: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.modality not in ("video", "audio", "audio_visual"):
            raise ValueError(f"modality must be 'video', 'audio' or 'audio_visual', got {self.modality!r}")
        if self.train_clips < 1 or self.test_clips < 1:
            raise ValueError(f"train_clips and test_clips must be >= 1, got {self.train_clips}, {self.test_clips}")

    def clip_spec(self, video_processor=None, feature_extractor=None) -> ClipSpec:
        """The clip window (``clips_xkd.ClipSpec``) of this protocol with these processors: their frame rate and
        sampling rate, and the longer of their clip lengths. With both modalities each takes its own length from
        the same start (:func:`sample_clips`); the released protocols use equal lengths."""
        vp, fe = video_processor, feature_extractor
        if self.needs_video and vp is None or self.needs_audio and fe is None:
            raise ValueError(f"modality {self.modality!r} needs a video processor and/or a feature extractor")
        duration = max(p.clip_duration for p in (vp, fe) if p is not None)
        return ClipSpec(duration, vp.fps if vp is not None else 8.0, fe.sampling_rate if fe is not None else 16000)

    @property
    def needs_video(self) -> bool:
        return self.modality in ("video", "audio_visual")

    @property
    def needs_audio(self) -> bool:
        return self.modality in ("audio", "audio_visual")


# Released clip counts (`codes/eval` configs): UCF/HMDB 25 train clips, K400 3, ESC50 100, Kinetics-Sound 20;
# test 3 uniformly spaced clips (2 for Kinetics-Sound). ESC-50's audio test clips follow the same 3-clip rule.
LINEAR_EVAL_PROTOCOLS: dict[str, ClipProtocol] = {
    "ucf101": ClipProtocol("ucf101", "video", 25, 3),
    "hmdb51": ClipProtocol("hmdb51", "video", 25, 3),
    "kinetics400": ClipProtocol("kinetics400", "video", 3, 3),
    "esc50": ClipProtocol("esc50", "audio", 100, 3),
    "kinetics_sound": ClipProtocol("kinetics_sound", "audio_visual", 20, 2),
}


@dataclass
class FeatureSet:
    """Clip-level features of one split.

    Attributes:
        features: `(N_clips, D)` float32 (`D = 2 * hidden` for late fusion).
        labels: `(N_clips,)` int64 class ids, or `(N_clips, C)` multi-hot for multi-label data.
        video_ids: `(N_clips,)` int64, the row of the source video in the dataset (clips of one video share it).
        meta: what produced it (checkpoint, protocol, split, cache key).
    """

    features: np.ndarray
    labels: np.ndarray
    video_ids: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_videos(self) -> int:
        return int(len(np.unique(self.video_ids)))

    def save(self, path) -> None:
        np.savez(path, features=self.features, labels=self.labels, video_ids=self.video_ids,
                 meta=np.asarray(json.dumps(self.meta)))

    @classmethod
    def load(cls, path) -> "FeatureSet":
        # allow_pickle=False: a cache file is data, never code
        with np.load(path, allow_pickle=False) as z:
            return cls(z["features"], z["labels"], z["video_ids"], json.loads(str(z["meta"])))


def late_fusion(video_features: torch.Tensor | np.ndarray, audio_features: torch.Tensor | np.ndarray):
    """The Kinetics-Sound late fusion: L2-normalise each modality's `(N, D)` features, concatenate to `(N, 2D)`."""
    as_numpy = isinstance(video_features, np.ndarray)
    v = torch.as_tensor(video_features, dtype=torch.float32)
    a = torch.as_tensor(audio_features, dtype=torch.float32)
    if v.ndim != 2 or a.ndim != 2 or v.shape[0] != a.shape[0]:
        raise ValueError(f"late_fusion needs (N, D) video and audio features with the same N; got "
                         f"{tuple(v.shape)} and {tuple(a.shape)}")
    out = torch.cat([F.normalize(v, dim=-1), F.normalize(a, dim=-1)], dim=-1)
    return out.numpy() if as_numpy else out


# --------------------------------------------------------------------------------------------------------------
@dataclass
class Backbone:
    """The frozen encoders used for features: ``video`` (`XKDVideoModel`) and/or ``audio`` (`XKDAudioModel`)."""

    video: Any = None
    audio: Any = None
    fingerprint: str = ""
    name: str = ""

    def eval(self) -> "Backbone":
        for m in (self.video, self.audio):
            if m is not None:
                m.eval().requires_grad_(False)
        return self


def _file_fingerprint(folder: Path) -> str:
    # path + size + mtime of the weight files: cheap (no hashing of GBs) and changes whenever the weights do
    h = hashlib.sha256(str(folder.resolve()).encode())
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [folder / "config.json"]:
        if f.exists():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _module_fingerprint(*modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        if m is None:
            h.update(b"none")
            continue
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def load_backbone(checkpoint, modality: str = "video") -> Backbone:
    """Frozen encoder(s) from any XKD checkpoint.

    Args:
        checkpoint: a folder saved by `XKDForPretraining` (its teachers are loaded, as the paper evaluates them),
            `XKDModel`, `XKDVideoModel` / `XKDAudioModel` or a classification model; or an in-memory `XKDModel`,
            `XKDForPretraining`, tower or classifier.
        modality: ``"video"``, ``"audio"`` or ``"audio_visual"``.
    """
    from ..modeling_xkd import XKDAudioModel, XKDVideoModel

    need_v = modality in ("video", "audio_visual")
    need_a = modality in ("audio", "audio_visual")
    if isinstance(checkpoint, (str, os.PathLike)):
        folder = Path(checkpoint)
        if not (folder / "config.json").is_file():
            raise ValueError(f"checkpoint {folder}: not a saved model folder (no config.json)")
        video = XKDVideoModel.from_pretrained(folder) if need_v else None
        audio = XKDAudioModel.from_pretrained(folder) if need_a else None
        return Backbone(video, audio, _file_fingerprint(folder), str(folder)).eval()
    model = checkpoint
    video = audio = None
    if isinstance(model, XKDVideoModel):
        video = model
    elif isinstance(model, XKDAudioModel):
        audio = model
    else:
        video = getattr(model, "video_model", None)
        audio = getattr(model, "audio_model", None)
    if need_v and video is None:
        raise ValueError(f"modality {modality!r} needs a video encoder; {type(model).__name__} has none")
    if need_a and audio is None:
        raise ValueError(f"modality {modality!r} needs an audio encoder; {type(model).__name__} has none")
    video, audio = (video if need_v else None), (audio if need_a else None)
    return Backbone(video, audio, _module_fingerprint(video, audio), type(model).__name__).eval()


# --------------------------------------------------------------------------------------------------------------
def video_train_augmentation(protocol: ClipProtocol, crop_size: tuple[int, int]):
    """kornia pipeline for training clips `(B, T, 3, H, W)` in [0, 1]: one random draw per clip, every frame alike."""
    import kornia.augmentation as K

    b, c, s, h = protocol.color_jitter
    return K.VideoSequential(
        K.RandomResizedCrop(crop_size, scale=(protocol.min_crop_scale, 1.0), ratio=(3 / 4, 4 / 3)),
        K.RandomHorizontalFlip(p=protocol.flip_p),
        K.ColorJiggle(b, c, s, h, p=1.0),  # released: jitter always applied
        K.RandomGrayscale(p=protocol.grayscale_p),
        data_format="BTCHW",
        same_on_frame=True,
    )


def sample_clips(
    source,
    protocol: ClipProtocol,
    train: bool,
    video_processor=None,
    feature_extractor=None,
    rng: np.random.Generator | None = None,
    video_augment=None,
):
    """Decode one file once and cut its clips.

    Args:
        source: path of a media file.
        protocol: clip counts and augmentation.
        train: random starts (+ augmentation) for ``protocol.train_clips`` clips, else ``protocol.test_clips``
            uniformly spaced clips.
        video_processor: `XKDVideoProcessor` (frame rate, clip length, resize/crop/normalise).
        feature_extractor: `XKDFeatureExtractor` (sampling rate, clip length, log-mel).
        rng: numpy generator for starts and volume jitter.
        video_augment: the kornia pipeline of :func:`video_train_augmentation` (built once by the caller).

    Returns:
        `(pixel_values (K, T, 3, H, W) or None, input_values (K, time, mel) or None)`. With both modalities, clip k
        of video and audio starts at the same time.
    """
    rng = rng if rng is not None else np.random.default_rng(protocol.seed)
    n = protocol.train_clips if train else protocol.test_clips
    vp, fe = video_processor, feature_extractor
    spec = protocol.clip_spec(vp if protocol.needs_video else None, fe if protocol.needs_audio else None)
    # the clip layer: random starts for training clips, uniform ones for test clips; one read of the file
    clips = read_clips(
        source, spec, n, rng=rng if train else None,
        video=protocol.needs_video, audio=protocol.needs_audio,
        require_video=protocol.needs_video, require_audio=protocol.needs_audio,
    )
    pixel_values = input_values = None
    if protocol.needs_video and clips.frames.shape[1] > vp.num_frames:  # the audio clip is the longer one
        clips = dataclasses.replace(clips, frames=clips.frames[:, : vp.num_frames],
                                    spec=ClipSpec(vp.clip_duration, vp.fps, spec.sampling_rate))
    if protocol.needs_video:
        if train and protocol.train_augment:
            # shorter side to the processor's resize, then the random crop picks the final size
            x = vp(clips, do_center_crop=False, do_rescale=False, do_normalize=False)["pixel_values"][0] / 255.0
            x = x.reshape(n, vp.num_frames, *x.shape[-3:])
            crop = (vp.crop_size["height"], vp.crop_size["width"])
            aug = video_augment if video_augment is not None else video_train_augmentation(protocol, crop)
            x = aug(x).clamp_(0, 1)
            mean = torch.tensor(vp.image_mean).view(1, 1, 3, 1, 1)
            std = torch.tensor(vp.image_std).view(1, 1, 3, 1, 1)
            pixel_values = (x - mean) / std
        else:
            x = vp(clips)["pixel_values"][0]
            pixel_values = x.reshape(n, vp.num_frames, *x.shape[-3:])
    if protocol.needs_audio:
        windows = clips.waveforms[:, : fe.num_samples]  # the video clip may be the longer one
        if train and protocol.train_augment and protocol.volume_jitter > 0:
            gains = rng.uniform(1 - protocol.volume_jitter, 1 + protocol.volume_jitter, size=(n, 1))
            windows = (windows * gains).astype(np.float32)
        input_values = fe.log_mel(windows)
    return pixel_values, input_values


def _cache_key(backbone: Backbone, paths, labels, protocol, split, vp, fe) -> str:
    data = []
    for p, y in zip(paths, labels):
        try:
            st = os.stat(p)
            data.append([os.path.abspath(p), st.st_size, st.st_mtime_ns, np.asarray(y).tolist()])
        except OSError:
            data.append([os.path.abspath(p), -1, -1, np.asarray(y).tolist()])
    payload = {
        "version": CACHE_VERSION,
        "checkpoint": backbone.fingerprint,
        "data": data,
        "protocol": asdict(protocol),
        "split": split,
        "video_processor": vp.to_dict() if vp is not None and protocol.needs_video else None,
        "feature_extractor": fe.to_dict() if fe is not None and protocol.needs_audio else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@torch.inference_mode()
def _encode(model, inputs: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """`(K, ...)` clips -> `(K, D)` pooled features, in chunks of ``batch_size``."""
    outs = []
    use_autocast = torch.device(device).type == "cuda"
    for i in range(0, inputs.shape[0], batch_size):
        chunk = inputs[i: i + batch_size].to(device)
        # released eval runs under autocast; on CPU fp32 is kept (bf16 autocast changes features by ~1e-2)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
            outs.append(model(chunk).pooler_output.float().cpu())
    return torch.cat(outs)


def extract_features(
    checkpoint,
    dataset,
    protocol: ClipProtocol,
    split: str = "train",
    video_processor=None,
    feature_extractor=None,
    cache_dir=None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_error: str = "raise",
) -> FeatureSet:
    """Frozen features of every clip of ``dataset`` (see the module docstring for the protocol).

    Args:
        checkpoint: a folder or model accepted by :func:`load_backbone`, or a :class:`Backbone`.
        dataset: a `datasets.Dataset` from :mod:`.datasets` (media column + ``label``).
        protocol: a :class:`ClipProtocol` (e.g. ``LINEAR_EVAL_PROTOCOLS["ucf101"]``).
        split: ``"train"`` (augmented random clips) or ``"test"`` (uniform clips).
        video_processor / feature_extractor: processors whose output sizes match the model; loaded from the
            checkpoint folder when omitted (or built with defaults).
        cache_dir: where ``.npz`` caches live; ``None`` disables caching.
        batch_size: clips per forward pass.
        device: where the encoders run.
        progress: show a tqdm bar over videos.
        on_error: ``"raise"`` or ``"skip"`` files that fail to decode (a warning names each).

    Returns:
        :class:`FeatureSet` with `(N_clips, D)` features (`2D` for ``audio_visual``).
    """
    from tqdm.auto import tqdm

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    backbone = checkpoint if isinstance(checkpoint, Backbone) else load_backbone(checkpoint, protocol.modality)
    vp, fe = _default_processors(checkpoint, protocol, video_processor, feature_extractor)
    paths = media_paths(dataset)
    labels = np.asarray(dataset["label"])

    cache_path = None
    if cache_dir is not None:
        key = _cache_key(backbone, paths, labels, protocol, split, vp, fe)
        cache_path = Path(cache_dir) / f"{protocol.name}-{protocol.modality}-{split}-{key[:20]}.npz"
        if cache_path.is_file():
            cached = FeatureSet.load(cache_path)
            cached.meta["from_cache"] = True
            return cached

    for m in (backbone.video, backbone.audio):
        if m is not None:
            m.to(device)
    augment = None
    if split == "train" and protocol.train_augment and protocol.needs_video:
        augment = video_train_augmentation(protocol, (vp.crop_size["height"], vp.crop_size["width"]))
    feats, labs, vids = [], [], []
    train = split == "train"
    bar = tqdm(range(len(paths)), desc=f"features {protocol.name}/{split}", unit="video", disable=not progress)
    for i in bar:
        # per-video seed: the cache stays valid whatever order or subset is extracted
        rng = np.random.default_rng([protocol.seed, i, 0 if train else 1])
        torch.manual_seed(int(rng.integers(2**31)))
        try:
            pv, iv = sample_clips(paths[i], protocol, train, vp, fe, rng, augment)
        except MediaDecodingError as err:
            if on_error == "skip":
                bar.write(f"skipping {paths[i]}: {err}")
                continue
            raise
        parts = []
        if pv is not None:
            parts.append(_encode(backbone.video, pv, batch_size, device))
        if iv is not None:
            parts.append(_encode(backbone.audio, iv, batch_size, device))
        f = late_fusion(*parts) if len(parts) == 2 else parts[0]
        feats.append(f.numpy().astype(np.float32))
        labs.append(np.repeat(labels[i][None], f.shape[0], axis=0))
        vids.append(np.full(f.shape[0], i, dtype=np.int64))
    if not feats:
        raise ValueError(f"no features extracted: every file of the {split} split failed to decode")
    out = FeatureSet(
        np.concatenate(feats), np.concatenate(labs), np.concatenate(vids),
        meta={"checkpoint": backbone.name, "protocol": asdict(protocol), "split": split, "from_cache": False},
    )
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_path, suffix=".npz") as tmp:  # an interrupted run never leaves a truncated cache
            out.save(tmp)
        out.meta["cache_path"] = str(cache_path)
    return out


def _default_processors(checkpoint, protocol, video_processor, feature_extractor):
    from ..feature_extraction_xkd import XKDFeatureExtractor
    from ..video_processing_xkd import XKDVideoProcessor

    folder = Path(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else None
    vp, fe = video_processor, feature_extractor
    if protocol.needs_video and vp is None:
        if folder is not None and (folder / "video_preprocessor_config.json").is_file():
            vp = XKDVideoProcessor.from_pretrained(folder)
        else:
            vp = XKDVideoProcessor()
    if protocol.needs_audio and fe is None:
        if folder is not None and (folder / "preprocessor_config.json").is_file():
            try:
                fe = XKDFeatureExtractor.from_pretrained(folder)
            except Exception:  # a video-only preprocessor_config.json: fall back to the released defaults
                fe = XKDFeatureExtractor()
        else:
            fe = XKDFeatureExtractor()
    if fe is not None and not hasattr(fe, "clip_duration"):
        raise ValueError("feature_extractor must be an XKDFeatureExtractor (needs clip_duration / log_mel)")
    return vp, fe
