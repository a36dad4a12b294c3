"""Model cards for converted XKD checkpoints.

One template (`model_cards/template.md` at the repository root, jinja2 as `huggingface_hub.ModelCard` renders
it) is filled per variant and pretraining dataset. The metadata carries the paper's reported downstream numbers
as `model-index` results (`huggingface_hub.EvalResult`), license `cc-by-nc-4.0` (the released code's
LICENSE file) and the paper's citation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["PAPER_RESULTS", "PaperResult", "paper_results", "make_model_card", "DEFAULT_TEMPLATE", "CITATION"]

PAPER_URL = "https://arxiv.org/abs/2211.13929"
CODE_URL = "https://github.com/pritamqu/XKD"
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "template.md"

# The BibTeX entry the original repository's README asks users to cite (the paper appeared at AAAI 2024).
CITATION = """@misc{sarkar2022xkd,
      title={XKD: Cross-modal Knowledge Distillation with Domain Alignment for Video Representation Learning},
      author={Pritam Sarkar and Ali Etemad},
      year={2022},
      eprint={2211.13929},
      archivePrefix={arXiv},
      primaryClass={cs.CV}
}"""

VARIANT_NAMES = {"xkd": "XKD", "xkd-mas": "XKD-MAS", "xkd-mats": "XKD-MATS"}
VARIANT_DESCRIPTIONS = {
    "xkd": "modality-specific: separate video and audio encoders (students and teachers).",
    "xkd-mas": "modality-agnostic students: the video and audio students share one set of transformer blocks; "
    "the teachers are modality-specific.",
    "xkd-mats": "modality-agnostic students and teachers: one set of transformer blocks serves both modalities "
    "(tokenizers, CLS, position embeddings and final norms stay per modality).",
}
DATASET_NAMES = {"kinetics400": "Kinetics-400", "audioset": "AudioSet"}


@dataclass(frozen=True)
class PaperResult:
    """One number reported in the paper (top-1 accuracy or mAP, in percent)."""

    task_type: str  # Hub task id
    task_name: str
    dataset_type: str
    dataset_name: str
    metric_type: str
    metric_name: str
    value: float
    source: str  # table of the paper


def _video(dataset_type, dataset_name, lin, ft, table, average=""):
    # The Hub groups model-index results by (task, dataset), so the protocol goes into the metric name.
    return [
        PaperResult("video-classification", "Video action recognition", dataset_type, dataset_name,
                    "accuracy", f"Top-1 accuracy (linear evaluation{average})", lin, table),
        PaperResult("video-classification", "Video action recognition", dataset_type, dataset_name,
                    "accuracy", f"Top-1 accuracy (fine-tuning{average})", ft, table),
    ]


def _audio(esc_lin, esc_ft, fsd_lin, fsd_ft):
    table, task = "Table 8", "Sound classification"
    return [
        PaperResult("audio-classification", task, "esc50", "ESC-50", "accuracy",
                    "Top-1 accuracy (linear evaluation, 5-fold average)", esc_lin, table),
        PaperResult("audio-classification", task, "esc50", "ESC-50", "accuracy",
                    "Top-1 accuracy (fine-tuning, 5-fold average)", esc_ft, table),
        PaperResult("audio-classification", task, "fsd50k", "FSD50K", "map", "mAP (linear evaluation)", fsd_lin, table),
        PaperResult("audio-classification", task, "fsd50k", "FSD50K", "map", "mAP (fine-tuning)", fsd_ft, table),
    ]


def _ks(value):
    return [PaperResult("video-classification", "Audio-visual action classification", "kinetics_sound",
                        "Kinetics-Sound", "accuracy", "Top-1 accuracy (late fusion, linear SVM)", value, "Table 9")]


def _rows(ucf, hmdb, k400, esc, fsd, ks=None):
    rows = (
        _video("ucf101", "UCF101", *ucf, "Table 7", ", 3-fold average")
        + _video("hmdb51", "HMDB51", *hmdb, "Table 7", ", 3-fold average")
        + _video("kinetics400", "Kinetics-400", *k400, "Table 7")
        + _audio(*esc, *fsd)
    )
    return rows + (_ks(ks) if ks is not None else [])


# Paper (AAAI 2024, arXiv 2211.13929) Tables 7 (video), 8 (audio) and 9 (Kinetics-Sound late fusion).
# (linear, fine-tune) pairs; the paper reports no MAS/MATS model pretrained on AudioSet.
PAPER_RESULTS: dict[tuple[str, str], list[PaperResult]] = {
    ("xkd", "kinetics400"): _rows((83.8, 94.1), (57.4, 69.0), (51.4, 77.6), (89.4, 93.6), (45.8, 54.1), 81.2),
    ("xkd-mas", "kinetics400"): _rows((81.7, 93.4), (55.1, 65.9), (50.1, 75.9), (87.3, 92.7), (43.0, 52.3), 78.8),
    ("xkd-mats", "kinetics400"): _rows((80.1, 93.1), (53.1, 65.7), (48.8, 75.7), (88.7, 92.9), (43.4, 53.8), 78.3),
    ("xkd", "audioset"): _rows((88.4, 95.8), (62.2, 75.7), (56.5, 80.1), (93.6, 96.5), (51.5, 58.5)),
}


def paper_results(variant: str, pretraining_dataset: str) -> list[PaperResult]:
    """The paper's numbers for one (variant, pretraining dataset); empty when the paper reports none."""
    return list(PAPER_RESULTS.get((variant, pretraining_dataset), []))


def make_model_card(
    *,
    variant: str,
    pretraining_dataset: str = "kinetics400",
    model_id: str,
    kind: str = "model",
    role: str | None = "teacher",
    config=None,
    sources: dict | None = None,
    epoch: int | None = None,
    has_processors: bool = False,
    template_path: str | Path | None = None,
):
    """Fill the template for one converted folder and return a `huggingface_hub.ModelCard`.

    Args:
        variant: "xkd" | "xkd-mas" | "xkd-mats".
        pretraining_dataset: "kinetics400" | "audioset".
        model_id: what `from_pretrained` is given in the usage snippet (Hub repo id or local folder).
        kind: "model" (an `XKDModel` folder: both encoders) or "pretraining" (an `XKDForPretraining` folder).
        role: which released towers the weights are ("teacher", "student" or None if unknown).
        config: the `XKDConfig` written next to the card (sizes shown in the card).
        sources: {name: {"file", "sha256"}} of the converted files, listed for provenance.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    if variant not in VARIANT_NAMES:
        raise ValueError(f"variant must be one of {tuple(VARIANT_NAMES)}, got {variant!r}.")
    if pretraining_dataset not in DATASET_NAMES:
        raise ValueError(f"pretraining_dataset must be one of {tuple(DATASET_NAMES)}, got {pretraining_dataset!r}.")
    if kind not in ("model", "pretraining"):
        raise ValueError(f"kind must be 'model' or 'pretraining', got {kind!r}.")
    template_path = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template {template_path} not found (it lives in model_cards/ of the repo).")

    name = f"{VARIANT_NAMES[variant]} ({DATASET_NAMES[pretraining_dataset]})"
    results = paper_results(variant, pretraining_dataset)
    eval_results = [
        EvalResult(
            task_type=r.task_type, task_name=r.task_name, dataset_type=r.dataset_type, dataset_name=r.dataset_name,
            metric_type=r.metric_type, metric_name=r.metric_name, metric_value=r.value,
            source_name=f"XKD paper, {r.source}", source_url=PAPER_URL,
        )
        for r in results
    ]
    card_data = ModelCardData(
        model_name=name,
        license="cc-by-nc-4.0",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=["xkd", "self-supervised", "video", "audio", "audio-visual", "knowledge-distillation", variant],
        datasets=[pretraining_dataset],
        metrics=sorted({r.metric_type for r in results}) or None,
        eval_results=eval_results or None,
    )
    vcfg = config.video_config if config is not None else None
    acfg = config.audio_config if config is not None else None
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        title=name,
        variant=variant,
        variant_name=VARIANT_NAMES[variant],
        variant_description=VARIANT_DESCRIPTIONS[variant],
        dataset_name=DATASET_NAMES[pretraining_dataset],
        pretraining_dataset=pretraining_dataset,
        epochs=400 if pretraining_dataset == "audioset" else 800,
        model_id=model_id,
        kind=kind,
        role=role,
        results=results,
        video_config=vcfg,
        audio_config=acfg,
        sources=sources or {},
        epoch=epoch,
        has_processors=has_processors,
        paper_url=PAPER_URL,
        code_url=CODE_URL,
        citation=CITATION,
    )
    return card
