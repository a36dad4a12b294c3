"""Video retrieval as the MNF + CSC release evaluates it (``retrieval/*.py``), for any per-video features.

Queries are the test (validation) videos, the gallery the training videos; a video's feature is the mean of its clip
features; similarity is the cosine. Two metrics:

* R@k (``get_retrieval_result_*.py``): the fraction of queries with at least one same-class video among the top k
  gallery items (k = 1, 5, 10, 20 here; the file computes one k at a time).
* mAP@500 (``mAP_result_*.py``): for each query, the average precision over its top-500 list *normalised by the number
  of hits inside that list* (not by all relevant gallery videos); queries without a hit in the list are skipped and
  counted (``queries_without_hit``); the mean over the remaining queries.

:func:`run_retrieval_eval` is the ``training/linear_eval.py --protocol retrieval`` entry point for frozen XKD
features; CCL and MNF students use :func:`retrieval_metrics` on the features of
:func:`~transformers_xkd.downstream.distill.sliding_window_predict`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..utils_io import atomic_write_text

__all__ = ["RETRIEVAL_KS", "retrieval_metrics", "mean_features_by_video", "run_retrieval_eval"]

RETRIEVAL_KS = (1, 5, 10, 20)


def mean_features_by_video(features: np.ndarray, video_ids: np.ndarray, labels: np.ndarray | None = None):
    """Average clip features per video: `(N_clips, D)` -> `(V, D)` in order of first appearance (+ labels)."""
    features, video_ids = np.asarray(features, dtype=np.float64), np.asarray(video_ids)
    if features.ndim != 2 or video_ids.shape != (features.shape[0],):
        raise ValueError(f"mean_features_by_video: features (N, D) and video_ids (N,) expected, got "
                         f"{features.shape} and {video_ids.shape}")
    _, first = np.unique(video_ids, return_index=True)
    order = video_ids[np.sort(first)]
    out = np.stack([features[video_ids == v].mean(0) for v in order])
    if labels is None:
        return out
    labels = np.asarray(labels)
    return out, np.array([labels[video_ids == v][0] for v in order])


def retrieval_metrics(query_features, query_labels, gallery_features, gallery_labels, ks=RETRIEVAL_KS,
                      map_at: int = 500) -> dict[str, float]:
    """R@k and mAP@``map_at`` (percent) of cosine retrieval; see the module docstring for the definitions.

    Args:
        query_features: `(Q, D)`; query_labels: `(Q,)`; gallery_features: `(G, D)`; gallery_labels: `(G,)`.
        ks: the k of R@k (each clipped to G).
        map_at: list length of the mAP (500 released).

    Returns:
        ``{"R@1": ..., "R@5": ..., "mAP@500": ..., "num_queries": Q, "queries_without_hit": n}``.
    """
    q = np.asarray(query_features, dtype=np.float64)
    g = np.asarray(gallery_features, dtype=np.float64)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"retrieval_metrics: query (Q, D) and gallery (G, D) features with one D expected, got "
                         f"{q.shape} and {g.shape}")
    if ql.shape != (q.shape[0],) or gl.shape != (g.shape[0],):
        raise ValueError("retrieval_metrics: one label per query and per gallery item expected")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise ValueError("retrieval_metrics: empty query or gallery set")
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    sim = qn @ gn.T
    # stable sort on -sim: ties keep gallery order, so the result does not depend on the sort's implementation
    ranking = np.argsort(-sim, axis=1, kind="stable")
    hits = gl[ranking] == ql[:, None]  # (Q, G) relevance of each rank
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = 100.0 * float(hits[:, : min(k, g.shape[0])].any(axis=1).mean())
    top = hits[:, :map_at]
    n_hits = top.sum(axis=1)
    precision = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
    ap_sum = (precision * top).sum(axis=1)
    valid = n_hits > 0
    out[f"mAP@{map_at}"] = 100.0 * float((ap_sum[valid] / n_hits[valid]).mean()) if valid.any() else 0.0
    out["num_queries"] = int(q.shape[0])
    out["queries_without_hit"] = int((~valid).sum())
    return out


def run_retrieval_eval(checkpoint, dataset: str, data_root, split_dir=None, split: int = 1, modality: str = "video",
                       test_clips: int = 3, cache_dir=None, output_dir=None, batch_size: int = 32,
                       device: str = "cpu", allow_missing: bool = False, test_root=None, ks=RETRIEVAL_KS,
                       map_at: int = 500) -> dict:
    """Retrieval with frozen XKD features: ``test_clips`` uniform clips per video (the test protocol) for both the
    training videos (gallery) and the test videos (queries), averaged per video, then :func:`retrieval_metrics`.

    Writes ``retrieval_results.json`` to ``output_dir`` when given. Returns the metrics dict.
    """
    from .features import ClipProtocol, extract_features, load_backbone
    from .runner import load_datasets, load_processors

    train_ds, test_ds = load_datasets(dataset, data_root, split_dir, split, modality, allow_missing, test_root)
    backbone = load_backbone(checkpoint, modality)
    need_v, need_a = modality in ("video", "audio_visual"), modality in ("audio", "audio_visual")
    folder = checkpoint if isinstance(checkpoint, (str, Path)) else None
    vp, fe = load_processors(folder, need_v, need_a)
    protocol = ClipProtocol("retrieval", modality, train_clips=test_clips, test_clips=test_clips,
                            train_augment=False)
    # both splits with the test-time rule (uniform clips, no augmentation)
    gallery = extract_features(backbone, train_ds, protocol, split="test", video_processor=vp, feature_extractor=fe,
                               cache_dir=cache_dir, batch_size=batch_size, device=device)
    queries = extract_features(backbone, test_ds, protocol, split="test", video_processor=vp, feature_extractor=fe,
                               cache_dir=cache_dir, batch_size=batch_size, device=device)
    gf, gl = mean_features_by_video(gallery.features, gallery.video_ids, gallery.labels)
    qf, ql = mean_features_by_video(queries.features, queries.video_ids, queries.labels)
    metrics = retrieval_metrics(qf, ql, gf, gl, ks, map_at)
    metrics.update(checkpoint=str(checkpoint) if folder else type(checkpoint).__name__, dataset=dataset,
                   modality=modality, test_clips=test_clips, num_gallery=int(len(gl)))
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(output_dir) / "retrieval_results.json", json.dumps(metrics, indent=2))
    return metrics
