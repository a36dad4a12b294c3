"""Labelled clip lists for the downstream protocols, as `datasets.Dataset` objects that hold paths, not pixels.

Every loader returns a `datasets.Dataset` with

* a media column, ``"video"`` (`datasets.Video(decode=False)`) or ``"audio"`` (`datasets.Audio(decode=False)`):
  ``{"path": str, "bytes": None}``. ``decode=False`` because `datasets` decodes through torchcodec, which is not
  usable here; XKD's own PyAV decoder (``decoding_xkd``) reads the files;
* ``"label"``: a `datasets.ClassLabel` (class names in ``ds.features["label"].names``).

Supported inputs:

* a labelled folder, ``root/<class_name>/<clip>.<ext>`` (:func:`load_folder`);
* UCF101's official lists, ``classInd.txt`` + ``trainlist0{1,2,3}.txt`` / ``testlist0{1,2,3}.txt``
  (:func:`load_ucf101`);
* HMDB51's ``<class>_test_split{1,2,3}.txt`` files whose lines are ``<clip> <tag>``, tag 1 = train, 2 = test,
  0 = unused (:func:`load_hmdb51`);
* ESC-50's ``meta/esc50.csv`` with its five folds, audio in ``audio/`` (:func:`load_esc50`).

Split files name clips that may not be on disk (partial downloads, renamed files). :func:`check_entries` lists the
missing ones; with ``check=True`` the loaders raise :class:`MissingMediaError`, whose message is a readable report
(the CLIs print it and exit with status 2, no traceback).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "VIDEO_EXTENSIONS",
    "AUDIO_EXTENSIONS",
    "SplitEntry",
    "MissingMediaReport",
    "MissingMediaError",
    "SplitFileError",
    "check_entries",
    "entries_to_dataset",
    "load_folder",
    "load_ucf101",
    "load_hmdb51",
    "load_esc50",
    "load_split",
    "media_column",
    "media_paths",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus")


class SplitFileError(ValueError):
    """A split or metadata file is missing or malformed; the message names the file and the line."""


@dataclass(frozen=True)
class SplitEntry:
    """One clip of a split: where it is, its label, and where the split file named it (for the report)."""

    path: str
    label: int
    source: str = ""  # e.g. "trainlist01.txt:17"


@dataclass
class MissingMediaReport:
    """Which entries of a split are not on disk.

    Attributes:
        split: a name for the split (e.g. ``"ucf101 split 1 train"``).
        root: the folder the entries are resolved against.
        total: number of entries in the split.
        missing: the entries whose file does not exist (or is empty).
    """

    split: str
    root: str
    total: int
    missing: list[SplitEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing

    def format(self, limit: int = 20) -> str:
        """A human-readable report: counts, then up to ``limit`` missing entries with their split-file line."""
        if self.ok:
            return f"{self.split}: all {self.total} entries found under {self.root}"
        lines = [
            f"{self.split}: {len(self.missing)} of {self.total} entries are missing under {self.root}",
        ]
        for entry in self.missing[:limit]:
            where = f" ({entry.source})" if entry.source else ""
            lines.append(f"  missing: {entry.path}{where}")
        if len(self.missing) > limit:
            lines.append(f"  ... and {len(self.missing) - limit} more")
        lines.append(
            "Check the data root (is it the folder that holds the class folders?), finish the download, or pass "
            "--allow-missing to evaluate on the entries that exist."
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


class MissingMediaError(FileNotFoundError):
    """Raised by the loaders with ``check=True`` when files are missing; ``.report`` is the full report."""

    def __init__(self, report: MissingMediaReport):
        self.report = report
        super().__init__(report.format())

    def __str__(self) -> str:
        return self.report.format()


def check_entries(entries: list[SplitEntry], split: str = "split", root: str | os.PathLike = "") -> MissingMediaReport:
    """Report the entries whose file is absent or empty (a zero-byte file is a failed download, not a clip)."""
    missing = []
    for entry in entries:
        p = Path(entry.path)
        if not p.is_file() or p.stat().st_size == 0:
            missing.append(entry)
    return MissingMediaReport(split=split, root=str(root), total=len(entries), missing=missing)


def _finish(entries, class_names, modality, split, root, check, allow_missing):
    report = check_entries(entries, split=split, root=root)
    if not report.ok:
        if allow_missing:
            entries = [e for e in entries if e not in set(report.missing)]
        elif check:
            raise MissingMediaError(report)
    ds = entries_to_dataset(entries, class_names, modality)
    ds.info.description = report.format(limit=5)
    return ds


def entries_to_dataset(entries: list[SplitEntry], class_names: list[str], modality: str = "video"):
    """Build the `datasets.Dataset` (media column with ``decode=False`` + ``ClassLabel``) from entries.

    Args:
        entries: the clips.
        class_names: index -> name.
        modality: ``"video"`` (column ``video``, `Video(decode=False)`) or ``"audio"`` (`Audio(decode=False)`).
    """
    from datasets import Audio, ClassLabel, Dataset, Video

    if modality not in ("video", "audio"):
        raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
    if not entries:
        raise ValueError("no entries: the split is empty (or every file is missing)")
    # Built from plain strings then cast: encoding Audio/Video values directly imports torchcodec in datasets 5.x,
    # a cast of a string column does not.
    ds = Dataset.from_dict({modality: [e.path for e in entries], "label": [int(e.label) for e in entries]})
    ds = ds.cast_column(modality, Video(decode=False) if modality == "video" else Audio(decode=False))
    return ds.cast_column("label", ClassLabel(names=list(class_names)))


def media_column(dataset) -> str:
    """``"video"`` or ``"audio"``: the dataset's media column."""
    for name in ("video", "audio"):
        if name in dataset.column_names:
            return name
    raise ValueError(f"dataset has no 'video' or 'audio' column (columns: {dataset.column_names})")


def media_paths(dataset) -> list[str]:
    """The file path of every row (the media column holds ``{"path", "bytes"}`` dicts, or plain strings)."""
    col = media_column(dataset)
    out = []
    for value in dataset[col]:
        out.append(value["path"] if isinstance(value, dict) else str(value))
    return out


# --------------------------------------------------------------------------------------------------------------
def load_folder(root, modality: str = "video", extensions=None, check: bool = True, allow_missing: bool = False):
    """``root/<class_name>/<clip>``: one class per sub-folder (sorted names -> label ids 0..C-1).

    Returns the `datasets.Dataset` described in the module docstring.
    """
    root = Path(root)
    if not root.is_dir():
        raise SplitFileError(f"{root}: not a folder (expected root/<class_name>/<clip> files)")
    exts = tuple(e.lower() for e in (extensions or (VIDEO_EXTENSIONS if modality == "video" else AUDIO_EXTENSIONS)))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SplitFileError(f"{root}: no class sub-folders (expected root/<class_name>/<clip> files)")
    entries = []
    for label, name in enumerate(classes):
        for clip in sorted((root / name).iterdir()):
            if clip.is_file() and clip.suffix.lower() in exts:
                entries.append(SplitEntry(str(clip), label, f"{name}/"))
    if not entries:
        raise SplitFileError(f"{root}: no files with extensions {exts} in the class folders")
    return _finish(entries, classes, modality, f"folder {root.name}", root, check, allow_missing)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise SplitFileError(f"{path}: split file not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        return [(i + 1, line.strip()) for i, line in enumerate(f) if line.strip()]


def load_ucf101(root, split_dir, split: int = 1, subset: str = "train", check: bool = True,
                allow_missing: bool = False):
    """UCF101 official split ``split`` (1-3), ``subset`` "train" or "test".

    Args:
        root: the folder holding ``<ClassName>/v_<ClassName>_gXX_cYY.avi`` (the ``UCF-101`` folder).
        split_dir: the folder holding ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``
            (``ucfTrainTestlist``).
    """
    root, split_dir = Path(root), Path(split_dir)
    if split not in (1, 2, 3) or subset not in ("train", "test"):
        raise ValueError(f"UCF101: split must be 1, 2 or 3 and subset 'train' or 'test', got {split}, {subset!r}")
    class_ids = {}
    for lineno, line in _read_lines(split_dir / "classInd.txt"):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitFileError(f"{split_dir / 'classInd.txt'}:{lineno}: expected '<index> <ClassName>', got {line!r}")
        class_ids[parts[1]] = int(parts[0]) - 1  # classInd is 1-based
    names = [None] * len(class_ids)
    for name, idx in class_ids.items():
        names[idx] = name
    list_file = split_dir / f"{subset}list0{split}.txt"
    entries = []
    for lineno, line in _read_lines(list_file):
        rel = line.split()[0]
        cls = rel.replace("\\", "/").split("/")[0]
        if cls not in class_ids:
            raise SplitFileError(f"{list_file}:{lineno}: class {cls!r} is not in classInd.txt")
        # testlists carry no label column; the class folder is the label in both lists
        entries.append(SplitEntry(str(root / rel), class_ids[cls], f"{list_file.name}:{lineno}"))
    return _finish(entries, names, "video", f"UCF101 split {split} {subset}", root, check, allow_missing)


def load_hmdb51(root, split_dir, split: int = 1, subset: str = "train", check: bool = True,
                allow_missing: bool = False):
    """HMDB51 official split ``split`` (1-3): ``<class>_test_split<N>.txt`` lines ``<clip.avi> <tag>``.

    Tag 1 marks a training clip, 2 a test clip, 0 an unused one. Clips live at ``root/<class>/<clip.avi>``.
    """
    root, split_dir = Path(root), Path(split_dir)
    if split not in (1, 2, 3) or subset not in ("train", "test"):
        raise ValueError(f"HMDB51: split must be 1, 2 or 3 and subset 'train' or 'test', got {split}, {subset!r}")
    files = sorted(split_dir.glob(f"*_test_split{split}.txt"))
    if not files:
        raise SplitFileError(f"{split_dir}: no '*_test_split{split}.txt' files (the HMDB51 'testTrainMulti' lists)")
    suffix = f"_test_split{split}.txt"
    names = [f.name[: -len(suffix)] for f in files]
    want = "1" if subset == "train" else "2"
    entries = []
    for label, (name, f) in enumerate(zip(names, files)):
        for lineno, line in _read_lines(f):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise SplitFileError(f"{f}:{lineno}: expected '<clip.avi> <0|1|2>', got {line!r}")
            if parts[1] == want:
                entries.append(SplitEntry(str(root / name / parts[0]), label, f"{f.name}:{lineno}"))
    return _finish(entries, names, "video", f"HMDB51 split {split} {subset}", root, check, allow_missing)


def load_esc50(root, fold: int = 1, subset: str = "train", check: bool = True, allow_missing: bool = False):
    """ESC-50 with ``fold`` (1-5) as the test fold: ``root/meta/esc50.csv`` and ``root/audio/<filename>``."""
    root = Path(root)
    if fold not in range(1, 6) or subset not in ("train", "test"):
        raise ValueError(f"ESC-50: fold must be 1-5 and subset 'train' or 'test', got {fold}, {subset!r}")
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise SplitFileError(f"{meta}: ESC-50 metadata not found (expected <root>/meta/esc50.csv)")
    rows = []
    with open(meta, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"filename", "fold", "target", "category"}
        if not need.issubset(reader.fieldnames or []):
            raise SplitFileError(f"{meta}: expected columns {sorted(need)}, got {reader.fieldnames}")
        for lineno, row in enumerate(reader, start=2):
            rows.append((lineno, row))
    names: dict[int, str] = {}
    entries = []
    for lineno, row in rows:
        try:
            target, row_fold = int(row["target"]), int(row["fold"])
        except ValueError:
            raise SplitFileError(f"{meta}:{lineno}: 'fold' and 'target' must be integers, got {row}") from None
        names[target] = row["category"]
        if (row_fold == fold) == (subset == "test"):
            entries.append(SplitEntry(str(root / "audio" / row["filename"]), target, f"esc50.csv:{lineno}"))
    class_names = [names.get(i, f"class_{i}") for i in range(max(names) + 1)]
    return _finish(entries, class_names, "audio", f"ESC-50 fold {fold} {subset}", root, check, allow_missing)


def load_split(dataset: str, root, subset: str, split_dir=None, split: int = 1, modality: str = "video",
               check: bool = True, allow_missing: bool = False):
    """One entry point for the CLIs: ``dataset`` in {"folder", "ucf101", "hmdb51", "esc50"}.

    For "folder", ``root`` is the folder of the subset itself when ``split_dir`` is None, else
    ``root/<subset>`` (a ``train/`` + ``test/`` layout).
    """
    if dataset == "folder":
        path = Path(root) / subset if (Path(root) / subset).is_dir() else Path(root)
        return load_folder(path, modality=modality, check=check, allow_missing=allow_missing)
    if dataset == "ucf101":
        return load_ucf101(root, split_dir or root, split, subset, check, allow_missing)
    if dataset == "hmdb51":
        return load_hmdb51(root, split_dir or root, split, subset, check, allow_missing)
    if dataset == "esc50":
        return load_esc50(root, split, subset, check, allow_missing)
    raise ValueError(f"dataset must be one of folder, ucf101, hmdb51, esc50; got {dataset!r}")
