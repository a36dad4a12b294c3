"""Training input from prepared shards (:mod:`.prepare`) on local disk, shared storage or object storage.

``--train-data`` takes a ``manifest.json`` (a path or any fsspec URL: ``https://``, ``s3://``, ``gs://``,
``hf://datasets/owner/name/...``), the folder/URL prefix that holds it, or a glob / comma-separated list of
``shard-*.tar`` files. The manifest gives every clip's shard, byte range and stream durations, so a run over a
million clips starts without listing or probing a file (measured in ``benchmarks/data_at_scale.py``).

Each clip is read with one ranged read of its ``.mkv`` member (``fs.cat_file(path, start, end)``: a local
``pread`` or an HTTP ``Range`` request) and decoded from those bytes by the package's decoder, exactly as a file on
disk would be: :class:`ShardClipSource` is a :class:`.data.ClipSource`, so the usual dataset, sampler and
DataLoader do the rest. That choice (random access into shards, instead of reading shards front to back through a
shuffle buffer, as ``datasets``' streaming webdataset builder or webdataset do) keeps three properties of the
released pipeline that a shuffle buffer loses: the global per-epoch permutation (not a buffer-local shuffle),
sharding over ranks and DataLoader workers by the same :class:`.data.ShardedEpochSampler`, and exact resume
from the checkpoint's ``(epoch, micro-batch)`` position (a streaming shuffle buffer's contents are not part of a
resumable state: ``datasets.IterableDataset.state_dict`` documents that "examples from shuffle buffers are lost
when resuming and the buffers are refilled with new data", so N/2 + resume + N/2 steps would not see the data of
N straight steps). The clip order needs only the manifest's row count, so a run over a million clips needs no
listing; the per-clip cost is one small ranged GET (latency hidden by DataLoader workers and their prefetch).
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import tarfile

import numpy as np

from .sources import ClipSource

MANIFEST_NAME = "manifest.json"  # written by .prepare next to the shards
MANIFEST_FORMAT = "xkd-shards/1"


def _is_url(src: str) -> bool:
    return "://" in src and not src.startswith("file://")


def looks_like_shards(src: str) -> bool:
    """Whether ``--train-data SRC`` names prepared shards (a manifest, its folder/URL prefix, or .tar files)."""
    src = os.fspath(src)
    first = src.split(",")[0].strip()
    if first.endswith(".json") and os.path.basename(first.split("?")[0]) == MANIFEST_NAME:
        return True
    if first.endswith(".tar") or (any(c in first for c in "*?[") and ".tar" in first):
        return True
    if os.path.isdir(first) and os.path.exists(os.path.join(first, MANIFEST_NAME)):
        return True
    return _is_url(first) and not first.startswith("hf://") or (
        first.startswith("hf://") and (first.endswith("/") or first.endswith(".json") or first.endswith(".tar")))


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def _join(base: str, name: str) -> str:
    if _is_url(base):
        return posixpath.join(base.rstrip("/"), name)
    return os.path.join(base, name)


class ShardClipSource(ClipSource):
    """Clips of prepared shards, addressed by row ``i`` of the manifest.

    Attributes:
        tars (`list[str]`): shard URLs/paths; ``shard[i]`` indexes it for clip ``i``.
        shard, offset, size (`np.ndarray`): where clip ``i``'s ``.mkv`` bytes are.
        durations (`list[tuple[float, float]]`): (video, audio) seconds of each clip (no probe needed).
    """

    def __init__(self, description: str, tars: list[str], columns: dict):
        self.tars = list(tars)
        self.shard = np.asarray(columns["shard"], dtype=np.int64)
        self.offset = np.asarray(columns["offset"], dtype=np.int64)
        self.size = np.asarray(columns["size"], dtype=np.int64)
        self.video_duration = np.asarray(columns["video_duration"], dtype=np.float64)
        self.audio_duration = np.asarray(columns["audio_duration"], dtype=np.float64)
        self.sources = columns.get("source")
        self._filesystems: dict = {}
        super().__init__(description, list(range(len(self.shard))))

    @property
    def durations(self) -> list:
        return list(zip(self.video_duration.tolist(), self.audio_duration.tolist()))

    def kept_items(self, min_duration: float) -> tuple[list, list, int]:
        """Items whose two streams are longer than ``min_duration`` (from the manifest; no decoding)."""
        keep = np.nonzero((self.video_duration > min_duration) & (self.audio_duration > min_duration))[0]
        durations = np.stack([self.video_duration[keep], self.audio_duration[keep]], axis=1)
        return keep.tolist(), durations.tolist(), int(len(self.shard) - len(keep))

    def _filesystem(self, url: str):
        # one filesystem object per process (a DataLoader worker makes its own after the fork)
        key = (os.getpid(), url.split("://")[0] if _is_url(url) else "local")
        if key not in self._filesystems:
            self._filesystems[key] = _fs(url)[0]
        return self._filesystems[key]

    def media(self, item) -> bytes:
        i = int(item)
        url = self.tars[self.shard[i]]
        start, end = int(self.offset[i]), int(self.offset[i] + self.size[i])
        if not _is_url(url):
            with open(url, "rb") as f:
                f.seek(start)
                data = f.read(end - start)
        else:
            fs = self._filesystem(url)
            data = fs.cat_file(_fs(url)[1] if not url.startswith("http") else url, start=start, end=end)
        if len(data) != end - start:
            raise OSError(f"{url}: read {len(data)} bytes of clip {i} at offset {start}, expected {end - start} "
                          "(the shard is shorter than its manifest says)")
        return data

    def name(self, item) -> str:
        i = int(item)
        source = f" ({self.sources[i]})" if self.sources is not None else ""
        return f"clip {i} of {self.tars[self.shard[i]]}{source}"

    def __getstate__(self):  # DataLoader workers get the arrays, not open connections
        state = dict(self.__dict__)
        state["_filesystems"] = {}
        return state


def load_manifest(src: str) -> ShardClipSource:
    """Read a manifest (path/URL of ``manifest.json`` or of the folder holding it) into a :class:`ShardClipSource`."""
    src = os.fspath(src).rstrip("/") if not src.endswith(".json") else os.fspath(src)
    path = src if src.endswith(".json") else _join(src, MANIFEST_NAME)
    try:
        if _is_url(path):
            fs, inner = _fs(path)
            with fs.open(inner if not path.startswith("http") else path, "rb") as f:
                manifest = json.loads(f.read())
        else:
            with open(path, "rb") as f:
                manifest = json.loads(f.read())
    except FileNotFoundError:
        raise ValueError(f"--train-data {src!r}: no {MANIFEST_NAME} there (prepare the data with "
                         "training/prepare_data.py, or pass the shard .tar files)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path!r} is not an XKD shard manifest (expected format {MANIFEST_FORMAT!r}, got "
                         f"{manifest.get('format') if isinstance(manifest, dict) else type(manifest).__name__!r})")
    base = posixpath.dirname(path) if _is_url(path) else os.path.dirname(os.path.abspath(path))
    tars = [t if _is_url(t) or os.path.isabs(t) else _join(base, t) for t in manifest["tars"]]
    return ShardClipSource(f"shards {path} ({len(tars)} tars)", tars, manifest["clips"])


def _index_from_tar(url: str) -> list[dict]:
    """Per-clip rows of one tar, from its sibling ``.json`` index if present, else from its headers (no decoding)."""
    sibling = url[: -len(".tar")] + ".json"
    try:
        if _is_url(sibling):
            fs, inner = _fs(sibling)
            with fs.open(inner if not sibling.startswith("http") else sibling, "rb") as f:
                return json.loads(f.read())["clips"]
        if os.path.exists(sibling):
            with open(sibling) as f:
                return json.load(f)["clips"]
    except FileNotFoundError:
        pass
    opener = (lambda: _fs(url)[0].open(url if url.startswith("http") else _fs(url)[1], "rb")) if _is_url(url) \
        else (lambda: open(url, "rb"))
    rows, metas = {}, {}
    with opener() as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            key, ext = os.path.splitext(member.name)
            if ext == ".json":
                metas[key] = json.load(tar.extractfile(member))
            elif ext == ".mkv":
                rows[key] = {"key": key, "offset": member.offset_data, "size": member.size}
    out = []
    for key, row in rows.items():
        meta = metas.get(key, {})
        if "video_duration" not in meta:
            raise ValueError(f"{url}: member {key}.mkv has no {key}.json with its durations; prepare the shards "
                             "with training/prepare_data.py")
        row.update(source=meta.get("source", key), video_duration=meta["video_duration"],
                   audio_duration=meta["audio_duration"])
        out.append(row)
    return out


def shards_from_tars(src: str) -> ShardClipSource:
    """A source over ``.tar`` shards given as a glob (local) or a comma-separated list of paths/URLs."""
    tars = []
    for part in [p.strip() for p in src.split(",") if p.strip()]:
        if not _is_url(part) and any(c in part for c in "*?["):
            found = sorted(glob.glob(part))
            if not found:
                raise ValueError(f"--train-data {part!r}: the glob matches no file")
            tars.extend(found)
        else:
            tars.append(part)
    columns = {k: [] for k in ("shard", "source", "offset", "size", "video_duration", "audio_duration")}
    for position, url in enumerate(tars):
        if not _is_url(url) and not os.path.exists(url):
            raise ValueError(f"--train-data: shard {url!r} does not exist")
        for row in _index_from_tar(url):
            columns["shard"].append(position)
            for k in ("source", "offset", "size", "video_duration", "audio_duration"):
                columns[k].append(row[k])
    return ShardClipSource(f"shards {src} ({len(tars)} tars)", tars, columns)


def resolve_shards(src: str) -> ShardClipSource:
    """``--train-data`` naming shards -> a :class:`ShardClipSource` (see the module docstring)."""
    src = os.fspath(src)
    first = src.split(",")[0].strip()
    if first.endswith(".tar") or (".tar" in first and any(c in first for c in "*?[")):
        return shards_from_tars(src)
    return load_manifest(src)


__all__ = ["ShardClipSource", "load_manifest", "shards_from_tars", "resolve_shards", "looks_like_shards"]
