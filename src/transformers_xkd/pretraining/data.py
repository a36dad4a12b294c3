"""Pretraining data: where the clips come from, which ones are usable, and how one sample is decoded.

Three kinds of source (``--train-data SRC``):

* a folder, searched recursively for video files (by extension);
* a ``.txt`` list (one path per line) or a ``.csv`` list (a ``path``/``video``/``file`` column, or the first
  column); relative paths are resolved against the list's folder;
* a ``datasets`` dataset: a folder written by ``Dataset.save_to_disk`` or a Hub id (``hf://owner/name`` or any
  SRC that is not an existing path), with a column holding paths, bytes, or ``{"path", "bytes"}`` dicts. A
  ``Video``/``Audio`` feature is cast to ``decode=False`` because datasets' own decoding needs torchcodec;
* prepared shards (``training/prepare_data.py``): a ``manifest.json``, its folder or URL, or ``.tar`` shards
  (:mod:`.shards`); the manifest's durations replace the scan.

:func:`scan_clips` keeps only inputs with both a video and an audio stream longer than the released minimum
(1.1 s) and reports counts and reasons. :class:`XKDPretrainingDataset` decodes, in DataLoader workers, one
synchronised window (4 s: 32 frames at 8 fps + 64,000 samples at 16 kHz as released) with the package's PyAV
decoder, resizes the frames to the training short side and computes the audio views (log-mel, volume jitter, local
random-resize-crop). The random video augmentations run later, batched on the training device
(:mod:`.augment`, :mod:`.views`).

Every random choice of a sample is drawn from ``numpy.random.default_rng((seed, epoch, index))``: a sample is the
same whichever worker decodes it, and a resumed run sees exactly the data the uninterrupted run would have seen.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler, get_worker_info

from ..clips_xkd import ClipSpec, read_clips, resize_shorter_side
from ..decoding_xkd import MediaDecodingError, MediaReader
from ..feature_extraction_xkd import XKDFeatureExtractor
from ..log_mel_xkd import KINETICS_SOUND_MEAN, KINETICS_SOUND_STD
from ..utils_io import atomic_write_text
from .augment import audio_random_resize_crop
from .sources import ClipSource


logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")
RELEASED_MIN_DURATION = 1.1  # seconds; the released K400 list keeps files whose audio and video both exceed this
_PATH_COLUMNS = ("video", "path", "file", "filename", "audio", "media", "bytes")


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------


def _list_folder(root: str, extensions: Sequence[str]) -> list[str]:
    found = []
    wanted = tuple(e.lower() for e in extensions)
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()  # os.walk order is file-system dependent; sorting makes the index (and data order) stable
        for name in sorted(files):
            if name.lower().endswith(wanted):
                found.append(os.path.join(folder, name))
    return found


def _read_list(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    entries: list[str] = []
    if path.lower().endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        column = next((header.index(c) for c in _PATH_COLUMNS if c in header), None)
        body = rows[1:] if column is not None else rows
        column = 0 if column is None else column
        entries = [r[column].strip() for r in body if len(r) > column and r[column].strip()]
    else:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    full = line if os.path.isabs(line) else os.path.join(base, line)
                    # the released K400 lists carry a label after the path; keep only the path unless the whole
                    # line is an existing path (names with spaces)
                    entries.append(line if os.path.exists(full) else line.split()[0])
    return [e if os.path.isabs(e) else os.path.join(base, e) for e in entries]


def _pick_column(dataset, column: str | None) -> str:
    names = list(dataset.column_names)
    if column is not None:
        if column not in names:
            raise ValueError(f"data.column={column!r} is not a column of the dataset; its columns are {names}.")
        return column
    for candidate in _PATH_COLUMNS:
        if candidate in names:
            return candidate
    raise ValueError(
        f"Cannot tell which column of the dataset holds the media (columns {names}); set data.column to the column "
        "with paths, bytes or {'path', 'bytes'} dicts."
    )


def _undecoded(dataset, column: str):
    """Cast a Video/Audio/Image column to decode=False: datasets decodes them with torchcodec, which we avoid."""
    import datasets

    feature = dataset.features[column]
    for kind in ("Video", "Audio", "Image"):
        cls = getattr(datasets, kind, None)
        if cls is not None and isinstance(feature, cls) and getattr(feature, "decode", False):
            return dataset.cast_column(column, cls(decode=False))
    return dataset


def resolve_source(
    src: str,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    column: str | None = None,
    split: str = "train",
) -> ClipSource:
    """Turn ``--train-data SRC`` into a :class:`ClipSource` (see the module docstring for the accepted forms)."""
    src = os.fspath(src)
    from .shards import looks_like_shards, resolve_shards  # prepared shards (training/prepare_data.py)

    if looks_like_shards(src):
        return resolve_shards(src)
    if src.startswith("hf://"):
        return _hub_source(src[len("hf://"):], column, split)
    if os.path.isdir(src):
        if os.path.exists(os.path.join(src, "dataset_info.json")) or os.path.exists(
            os.path.join(src, "dataset_dict.json")
        ):
            import datasets

            loaded = datasets.load_from_disk(src)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"{src!r} is a DatasetDict without split {split!r}; it has {list(loaded)}.")
                loaded = loaded[split]
            col = _pick_column(loaded, column)
            loaded = _undecoded(loaded, col)
            return ClipSource(f"datasets folder {src} (column {col!r})", list(range(len(loaded))), loaded, col)
        files = _list_folder(src, extensions)
        if not files:
            raise ValueError(f"--train-data {src!r}: no files with extensions {tuple(extensions)} under that folder.")
        return ClipSource(f"folder {src}", files)
    if os.path.isfile(src):
        if not src.lower().endswith((".txt", ".csv", ".lst", ".list")):
            raise ValueError(
                f"--train-data {src!r} is a file; expected a folder of videos, a .txt/.csv list of paths, or a "
                "datasets dataset (folder from save_to_disk, or hf://owner/name)."
            )
        entries = _read_list(src)
        if not entries:
            raise ValueError(f"--train-data {src!r}: the list is empty.")
        return ClipSource(f"list {src}", entries)
    return _hub_source(src, column, split)


def _hub_source(name: str, column: str | None, split: str) -> ClipSource:
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as err:
        raise ValueError(
            f"--train-data {name!r} is not an existing folder or list file, and loading it as a datasets dataset "
            f"failed: {err}"
        ) from err
    col = _pick_column(loaded, column)
    loaded = _undecoded(loaded, col)
    return ClipSource(f"datasets {name} split {split} (column {col!r})", list(range(len(loaded))), loaded, col)


# ----------------------------------------------------------------------------------------------------------------
# Scan
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ScanReport:
    """Result of :func:`scan_clips`.

    Attributes:
        kept (`list`): the usable items (paths or row numbers), in source order.
        durations (`list[tuple[float, float]]`): (video, audio) seconds of each kept item.
        dropped (`dict[str, int]`): reason -> number of items dropped for it.
        examples (`dict[str, list[str]]`): reason -> up to 5 item names, to find the culprits.
    """

    source: str
    total: int
    kept: list = field(default_factory=list)
    durations: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    fingerprint: str | None = None  # of the source and the scan settings (see clip_index_fingerprint)

    def summary(self) -> str:
        lines = [f"scan of {self.source}: kept {len(self.kept)} of {self.total}"]
        for reason, count in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            shown = ", ".join(self.examples.get(reason, [])[:3])
            lines.append(f"  dropped {count}: {reason} (e.g. {shown})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "source": self.source, "total": self.total, "kept": self.kept, "durations": self.durations,
            "dropped": self.dropped, "examples": self.examples, "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: dict) -> "ScanReport":
        return cls(**data)


def probe_clip(media, min_duration: float) -> tuple[str | None, float | None, float | None]:
    """Check one input: ``(None, video_s, audio_s)`` when usable, else ``(reason, video_s, audio_s)``."""
    try:
        with MediaReader(media) as reader:
            info = reader.info
    except MediaDecodingError as err:
        return f"unreadable ({err.reason.split(' (')[0]})", None, None
    except Exception as err:  # anything else PyAV may throw on odd inputs; a scan must never stop for one file
        return f"unreadable ({type(err).__name__})", None, None
    if not info.has_video:
        return "no video stream", None, info.audio_duration
    if not info.has_audio:
        return "no audio stream", info.video_duration, None
    v, a = info.video_duration, info.audio_duration
    if v is None or a is None:
        return "unknown stream duration", v, a
    if v <= min_duration:
        return f"video not longer than {min_duration:g} s", v, a
    if a <= min_duration:
        return f"audio not longer than {min_duration:g} s", v, a
    return None, v, a


def scan_clips(source: ClipSource, min_duration: float = RELEASED_MIN_DURATION, num_workers: int = 4) -> ScanReport:
    """Probe every item of ``source`` (container headers only, no decoding) and keep those with both streams
    longer than ``min_duration`` seconds. Probing runs in a thread pool: it is I/O and FFmpeg bound."""
    report = ScanReport(source=source.description, total=len(source.items))

    def one(item):
        try:
            media = source.media(item)
        except Exception as err:
            return f"unreadable ({type(err).__name__})", None, None
        return probe_clip(media, min_duration)

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = list(pool.map(one, source.items))
    counts: Counter = Counter()
    for item, (reason, v, a) in zip(source.items, results):
        if reason is None:
            report.kept.append(item)
            report.durations.append((float(v), float(a)))
        else:
            counts[reason] += 1
            report.examples.setdefault(reason, [])
            if len(report.examples[reason]) < 5:
                report.examples[reason].append(source.name(item))
    report.dropped = dict(counts)
    return report


# ----------------------------------------------------------------------------------------------------------------
# Sampler: epoch-seeded, sharded across processes, resumable mid-epoch
# ----------------------------------------------------------------------------------------------------------------


class ShardedEpochSampler(Sampler):
    """Yields ``(epoch, index)`` pairs for one process: a permutation of the items drawn from ``(seed, epoch)``,
    cut into global batches of ``batch_size * num_replicas``, of which this process takes its slice. Incomplete
    global batches are dropped (``drop_last`` as released).

    The data position is just ``(epoch, batch)``: :meth:`set_position` makes the next iteration start there, which
    is how ``--resume`` continues mid-epoch. The epoch travels with every index so that a DataLoader worker (which
    holds its own copy of the dataset) can draw that sample's augmentation randomness from ``(seed, epoch, index)``.
    """

    def __init__(self, num_items: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if num_items < batch_size * num_replicas:
            raise ValueError(
                f"The data has {num_items} usable clips, fewer than one global batch of "
                f"{batch_size} x {num_replicas} processes; lower train.per_device_batch_size or add data."
            )
        self.num_items, self.batch_size = num_items, batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.num_replicas)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng((self.seed, epoch)).permutation(self.num_items)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order(self.epoch)
        global_batch = self.batch_size * self.num_replicas
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = order[b * global_batch:(b + 1) * global_batch]
            for index in chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]:
                yield (self.epoch, int(index))

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ClipSettings:
    """What one sample is made of (released values in brackets).

    Video: ``clip_duration`` s at ``fps`` [4 s, 8 fps -> 32 frames], frames resized so that the shorter side is
    ``short_side`` [112] (bilinear, antialiased as PIL does), ``local_num_frames`` [8] consecutive frames per local
    view, ``num_local_video_views`` [1; 3 for MAS/MATS].
    Audio: ``sampling_rate`` [16 kHz], log-mel with ``n_fft`` [1024], ``hop_length`` [143], ``num_mel_bins`` [80],
    ``global_frames`` [448]; local views of ``local_audio_duration`` s [1 s -> ``local_frames`` 112] starting at a
    multiple of ``local_audio_start_step`` samples [100]; volume jitter ``global_gain`` [0.9, 1.1] and
    ``local_gain`` [0.8, 1.2]; local random-resize-crop on a (1.0, 1.5) virtual canvas with crop scale (0.6, 1.5).
    """

    clip_duration: float = 4.0
    fps: float = 8.0
    short_side: int = 112
    local_num_frames: int = 8
    num_local_video_views: int = 1
    sampling_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 143
    num_mel_bins: int = 80
    mel_mean: float = KINETICS_SOUND_MEAN
    mel_std: float = KINETICS_SOUND_STD
    global_frames: int = 448
    local_frames: int = 112
    local_audio_duration: float = 1.0
    local_audio_start_step: int = 100
    num_local_audio_views: int = 1
    global_gain: tuple = (0.9, 1.1)
    local_gain: tuple = (0.8, 1.2)
    global_random_resize_crop: bool = False
    local_random_resize_crop: bool = True
    virtual_crop_scale: tuple = (1.0, 1.5)
    crop_scale: tuple = (0.6, 1.5)
    max_retries: int = 10

    @property
    def clip_spec(self) -> ClipSpec:
        """The global clip in the clip layer's terms (``clips_xkd.ClipSpec``)."""
        return ClipSpec(self.clip_duration, self.fps, self.sampling_rate)

    @property
    def num_frames(self) -> int:
        return self.clip_spec.num_frames

    @property
    def num_samples(self) -> int:
        return self.clip_spec.num_samples

    @property
    def local_num_samples(self) -> int:
        return int(round(self.local_audio_duration * self.sampling_rate))


def resize_short_side(frames: np.ndarray, short_side: int, exact_float: bool = False) -> torch.Tensor:
    """`(T, H, W, 3)` uint8 -> `(T, 3, H', W')` uint8 with ``min(H', W') == short_side`` (bilinear, antialiased).

    The clip layer's shorter-side rule (``clips_xkd.resize_shorter_side``: the longer side truncated, as the
    released ``resize_clip``). The released ``Basic`` transform resizes with PIL bilinear, which is antialiased when
    downscaling (a triangle filter stretched by the scale factor). By default this uses torch's uint8
    antialiased-bilinear kernel on the channels-last frames (no float copy; 10-30x faster than the float path on one
    core): it computes PIL's fixed-point filter and agrees with PIL within 1 grey level on ~0.01-0.2% of the pixels.
    ``exact_float=True`` runs the same resampling in float32 and rounds once at the end; the two paths differ by at
    most 1 grey level (on a few percent of the pixels; tested), the float path being the farther one from PIL.
    """
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # a channels-last view, no copy
    if not exact_float:
        out = resize_shorter_side(video, short_side)
        return out.contiguous()
    out = resize_shorter_side(video.float(), short_side)
    return out if out.dtype == torch.uint8 else out.to(torch.uint8)


def _fit_frames(features: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or zero-pad the time axis of `(N, time, mel)` log-mels to ``length`` (exact for the released sizes)."""
    if features.shape[1] >= length:
        return features[:, :length]
    return F.pad(features, (0, 0, 0, length - features.shape[1]))


class XKDPretrainingDataset(Dataset):
    """Decodes one training sample per ``(epoch, index)`` key (what :class:`ShardedEpochSampler` yields).

    A sample (before batching by :func:`collate_clips`):
        ``video``: `(T, 3, H, W)` uint8, the synchronised clip resized to the short side (H or W equals
        ``short_side``; the other side keeps the aspect ratio);
        ``local_video_starts``: `(V_v,)` int64, first frame of each local video view (uniform in [0, T - T_local]);
        ``input_values``: `(global_frames, mel)` float32, normalised log-mel of the volume-jittered window;
        ``local_input_values``: `(V_a, local_frames, mel)` float32, local audio views (jittered, log-mel,
        random-resize-cropped);
        ``index``: the item actually used; ``failed``: names of items that failed to decode and were replaced.

    A file that fails to decode is replaced by another item (deterministically chosen from the same seed), so the
    batch keeps its size and the run its determinism; the failure is reported in ``failed``.
    """

    def __init__(self, source: ClipSource, items: Sequence, settings: ClipSettings, seed: int = 0,
                 durations: Sequence | None = None):
        self.source = source
        self.items = list(items)
        self.durations = None if durations is None else [tuple(d) for d in durations]
        self.settings = settings
        self.seed = int(seed)
        self._feature_extractor = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def feature_extractor(self) -> XKDFeatureExtractor:
        # Built lazily: each DataLoader worker makes its own (the mel filter bank is a small array).
        if self._feature_extractor is None:
            s = self.settings
            self._feature_extractor = XKDFeatureExtractor(
                feature_size=s.num_mel_bins, sampling_rate=s.sampling_rate, n_fft=s.n_fft, hop_length=s.hop_length,
                clip_duration=s.clip_duration, mean=s.mel_mean, std=s.mel_std,
            )
        return self._feature_extractor

    def decode(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Decode a synchronised window of item ``index``: frames `(T, H, W, 3)` uint8, audio `(S,)` float32."""
        s = self.settings
        # One decoder thread in a DataLoader worker (there is a worker per core, as torch uses one thread there);
        # FFmpeg's default would start a thread per CPU in every worker.
        in_worker = get_worker_info() is not None
        # the clip layer: one random start for both streams (synchronised, as released when both are long enough),
        # drawn from the duration both cover; shorter inputs start at 0 and are padded (last frame, zeros)
        clips = read_clips(
            self.source.media(self.items[index]), s.clip_spec, 1, rng=rng, require_video=True, require_audio=True,
            threads=1 if in_worker else None,
        )
        frames, audio = clips.frames[0], clips.waveforms[0]
        if frames.shape[0] != s.num_frames or audio.shape[0] != s.num_samples:
            raise MediaDecodingError(clips.source, "the decoded window is incomplete")
        return frames, audio

    def audio_views(self, audio: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveform `(S,)` -> global `(global_frames, mel)` and local `(V_a, local_frames, mel)` log-mels.

        Volume jitter multiplies the waveform (before the log, as released); the random-resize-crop acts on the
        normalised log-mel.
        """
        s = self.settings
        fe = self.feature_extractor
        wave = torch.from_numpy(np.asarray(audio, dtype=np.float32))
        global_wave = wave * float(rng.uniform(*s.global_gain))
        local_len = s.local_num_samples
        max_start = max(0, (len(wave) - local_len) // s.local_audio_start_step)
        local_waves = []
        for _ in range(s.num_local_audio_views):
            start = int(rng.integers(0, max_start + 1)) * s.local_audio_start_step
            piece = wave[start:start + local_len]
            if len(piece) < local_len:
                piece = F.pad(piece, (0, local_len - len(piece)))
            local_waves.append(piece * float(rng.uniform(*s.local_gain)))
        global_mel = _fit_frames(fe.log_mel(global_wave[None]), s.global_frames)[0]
        local_mel = _fit_frames(fe.log_mel(torch.stack(local_waves)), s.local_frames)
        if s.global_random_resize_crop:
            global_mel = audio_random_resize_crop(global_mel, rng, s.virtual_crop_scale, s.crop_scale)
        if s.local_random_resize_crop:
            local_mel = torch.stack(
                [audio_random_resize_crop(m, rng, s.virtual_crop_scale, s.crop_scale) for m in local_mel]
            )
        return global_mel, local_mel

    def build(self, frames: np.ndarray, audio: np.ndarray, index: int, rng: np.random.Generator) -> dict:
        """Decoded window -> one sample (see the class docstring)."""
        s = self.settings
        video = resize_short_side(frames, s.short_side)
        starts = rng.integers(0, s.num_frames - s.local_num_frames + 1, size=s.num_local_video_views)
        global_mel, local_mel = self.audio_views(audio, rng)
        return {
            "video": video,
            "local_video_starts": torch.as_tensor(starts, dtype=torch.long),
            "input_values": global_mel,
            "local_input_values": local_mel,
            "index": index,
        }

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        failed: list[str] = []
        candidate = int(index)
        for attempt in range(self.settings.max_retries + 1):
            rng = np.random.default_rng((self.seed, int(epoch), int(index), attempt))
            try:
                frames, audio = self.decode(candidate, rng)
            except Exception as err:  # PyAV/IO errors of every kind: one bad file must never stop the run
                failed.append(f"{self.source.name(self.items[candidate])}: {err}")
                candidate = int(rng.integers(0, len(self.items)))
                continue
            # Errors past decoding are bugs, not bad files: they propagate.
            sample = self.build(frames, audio, candidate, rng)
            sample["failed"] = failed
            return sample
        raise RuntimeError(
            f"{self.settings.max_retries + 1} files in a row failed to decode, starting at item {index}:\n  "
            + "\n  ".join(failed)
        )


def collate_clips(samples: list[dict]) -> dict:
    """Batch samples of :class:`XKDPretrainingDataset`.

    Clips of different aspect ratios are zero-padded to the largest height and width of the batch; ``video_sizes``
    keeps each clip's real `(H, W)` so that the crops on the device never see the padding.

    Returns:
        ``video`` `(B, T, 3, H_max, W_max)` uint8, ``video_sizes`` `(B, 2)` int64, ``local_video_starts``
        `(B, V_v)` int64, ``input_values`` `(B, global_frames, mel)`, ``local_input_values``
        `(B, V_a, local_frames, mel)`, ``indices`` `(B,)` int64, ``failed`` list of str.
    """
    heights = [s["video"].shape[-2] for s in samples]
    widths = [s["video"].shape[-1] for s in samples]
    h_max, w_max = max(heights), max(widths)
    t, c = samples[0]["video"].shape[:2]
    video = torch.zeros(len(samples), t, c, h_max, w_max, dtype=torch.uint8)
    for i, s in enumerate(samples):
        video[i, :, :, : heights[i], : widths[i]] = s["video"]
    return {
        "video": video,
        "video_sizes": torch.tensor(list(zip(heights, widths)), dtype=torch.long),
        "local_video_starts": torch.stack([s["local_video_starts"] for s in samples]),
        "input_values": torch.stack([s["input_values"] for s in samples]),
        "local_input_values": torch.stack([s["local_input_values"] for s in samples]),
        "indices": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "failed": [f for s in samples for f in s["failed"]],
    }


class ClipIndexMismatchError(ValueError):
    """The saved clip index was built from other data (or other scan settings) than this run's."""


def clip_index_fingerprint(source: ClipSource, min_duration: float, scan: bool) -> str:
    """SHA-256 of what the index is built from: the source's description and item list (and, for a datasets
    source, the dataset's own fingerprint) and the scan settings."""
    import hashlib

    payload = {
        "source": source.description, "items": [str(i) for i in source.items],
        "column": getattr(source, "column", None),
        "dataset": getattr(source.hf_dataset, "_fingerprint", None), "min_duration": float(min_duration),
        "scan": bool(scan),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def load_or_scan(source: ClipSource, index_path: str | None, min_duration: float, num_workers: int,
                 scan: bool = True, on_mismatch: str = "rescan") -> ScanReport:
    """Reuse a saved scan of the same data (so that a resumed run sees the same list, in the same order) or scan
    and save it. A saved index whose fingerprint (:func:`clip_index_fingerprint`) differs is never reused:
    ``on_mismatch="rescan"`` rebuilds it (with a warning), ``"refuse"`` raises :class:`ClipIndexMismatchError`
    (``--resume``: the data order of the run would change)."""
    fingerprint = clip_index_fingerprint(source, min_duration, scan)
    if index_path and os.path.exists(index_path):
        with open(index_path) as f:
            report = ScanReport.from_json(json.load(f))
        if report.fingerprint == fingerprint:
            return report
        what = (f"was made from {report.source} ({report.total} items), but the data is now {source.description} "
                f"({len(source.items)} items)" if report.fingerprint is None or report.source != source.description
                or report.total != len(source.items) else "was made from other files or scan settings "
                "(data.min_duration / data.scan) than this run's")
        if on_mismatch == "refuse":
            raise ClipIndexMismatchError(
                f"The saved clip index {index_path} {what}. --resume needs the same data in the same order: pass "
                "the run's --train-data (and data settings), or start a new run."
            )
        logger.warning("The saved clip index %s %s; rescanning.", index_path, what)
    if hasattr(source, "kept_items"):  # prepared shards: the manifest has the durations, nothing to probe
        kept, durations, dropped = source.kept_items(min_duration)
        report = ScanReport(source=source.description, total=len(source.items), kept=kept, durations=durations,
                            dropped={f"shorter than {min_duration:g} s": dropped} if dropped else {})
    elif scan:
        report = scan_clips(source, min_duration=min_duration, num_workers=num_workers)
    else:
        report = ScanReport(source=source.description, total=len(source.items), kept=list(source.items),
                            durations=[(float("nan"), float("nan"))] * len(source.items))
    report.fingerprint = fingerprint
    if index_path:
        # json.dumps, one C call: json.dump's chunked writes are ~5x slower at 1M
        atomic_write_text(index_path, json.dumps(report.to_json()))
    return report


__all__ = [
    "VIDEO_EXTENSIONS", "RELEASED_MIN_DURATION", "ClipSource", "resolve_source", "ScanReport", "probe_clip",
    "scan_clips", "ShardedEpochSampler", "ClipSettings", "XKDPretrainingDataset", "collate_clips",
    "resize_short_side", "load_or_scan", "clip_index_fingerprint", "ClipIndexMismatchError",
]
