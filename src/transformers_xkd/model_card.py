"""Model cards: the one builder for every folder the package writes.

Every card is a `huggingface_hub.ModelCard` whose metadata is `card_metadata` (a `ModelCardData`: license
`cc-by-nc-4.0`, the released code's LICENSE file; `library_name: transformers`; `pipeline_tag`; the numbers as
`model-index` `EvalResult` entries) and whose text ends with the paper's citation.

* Converted checkpoints (`make_model_card`): the template `model_cards/template.md` at the repository root
  (jinja2, rendered by `ModelCard.from_template`), filled per variant and pretraining dataset, with the paper's
  reported downstream numbers.
* Downstream classifiers (`make_downstream_card`: fine-tuning, linear SVM / probe; `make_distillation_card`: the
  CCL / MNF students): the section functions below, with the numbers this package measured. transformers' own
  `Trainer.create_model_card` writes no ``pipeline_tag`` and leaves ``model-index`` empty for video
  classification (hf_conventions section 5), which is why these are built here.

`save_card` writes a card as a folder's README.md; `transformers_xkd.hub.push_folder_to_hub` uploads the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PAPER_RESULTS", "PaperResult", "paper_results", "make_model_card", "DEFAULT_TEMPLATE", "CITATION",
    "MeasuredResult", "card_metadata", "make_downstream_card", "make_distillation_card", "save_card",
]

LICENSE = "cc-by-nc-4.0"
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


def card_metadata(model_name: str, pipeline_tag: str, tags: list[str], eval_results: list, *,
                  datasets: list[str] | None = None, base_model: str | None = None, license: str = LICENSE):
    """The card's YAML metadata (`huggingface_hub.ModelCardData`); `metrics` are the results' metric types."""
    from huggingface_hub import ModelCardData

    return ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=datasets or None,
        license=license,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=tags,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        eval_results=eval_results or None,
    )


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
    from huggingface_hub import EvalResult, ModelCard

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
    card_data = card_metadata(
        name, "feature-extraction",
        ["xkd", "self-supervised", "video", "audio", "audio-visual", "knowledge-distillation", variant],
        eval_results, datasets=[pretraining_dataset],
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


def save_card(card, folder) -> Path:
    """Write `card` as `folder/README.md` (replacing the Trainer's card) and return the path."""
    path = Path(folder) / "README.md"
    card.save(str(path))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Downstream classifiers (measured numbers)
# ----------------------------------------------------------------------------------------------------------------

PIPELINE_TAGS = {"video": "video-classification", "audio": "audio-classification"}
TASK_NAMES = {"video": "Video classification", "audio": "Audio classification"}


@dataclass(frozen=True)
class MeasuredResult:
    """One number measured by this package (percent), for the card's ``model-index``.

    Attributes:
        dataset_type / dataset_name: Hub dataset id-like type (``"ucf101"``) and display name.
        metric_type: ``"accuracy"`` or ``"map"``; metric_name: e.g. ``"Top-1 accuracy (linear SVM, C=0.01)"``.
        value: the number.
        split / config: dataset split (``"test"``) and config (``"split1"``, ``"fold1"``), optional.
    """

    dataset_type: str
    dataset_name: str
    metric_type: str
    metric_name: str
    value: float
    split: str | None = "test"
    config: str | None = None


def _is_hub_id(value: str | None) -> bool:
    # a local folder is not a Hub id; the card's base_model must name a repo others can open
    return bool(value) and not os.path.exists(str(value)) and str(value).count("/") == 1


def _measured_eval_results(modality: str, results: list[MeasuredResult]) -> list:
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type=PIPELINE_TAGS[modality], task_name=TASK_NAMES[modality],
            dataset_type=r.dataset_type, dataset_name=r.dataset_name, dataset_split=r.split,
            dataset_config=r.config, metric_type=r.metric_type, metric_name=r.metric_name,
            metric_value=round(float(r.value), 4),
        )
        for r in results
    ]


def _classifier_intro_section(model_name: str, modality: str, base_model: str | None, protocol: str) -> str:
    base_text = f"[{base_model}](https://huggingface.co/{base_model})" if _is_hub_id(base_model) else (
        f"`{base_model}`" if base_model else "an XKD checkpoint")
    return f"""# {model_name}

An XKD {modality} encoder ({base_text}) with a classification head trained by **{protocol}**, exported by
[transformers-xkd]({CODE_URL}). XKD: *Cross-modal Knowledge Distillation with Domain Alignment for Video
Representation Learning* (AAAI 2024, [paper]({PAPER_URL}))."""


def _measured_results_section(results: list[MeasuredResult]) -> str:
    rows = "\n".join(
        f"| {r.dataset_name} | {r.config or ''} | {r.split or ''} | {r.metric_name} | {r.value:.2f} |" for r in results
    ) or "| - | - | - | - | - |"
    return f"""## Results (measured)

| dataset | config | split | metric | value |
|---|---|---|---|---|
{rows}"""


def _pipeline_usage_section(modality: str, repo_id: str | None) -> str:
    return f"""## Usage

```python
from transformers import pipeline

clf = pipeline("{PIPELINE_TAGS[modality]}", model="{repo_id or '<repo_id>'}", trust_remote_code=True)
print(clf("clip.{'mp4' if modality == 'video' else 'wav'}"))
```

With `pip install transformers-xkd`, `import transformers_xkd` registers the classes and `trust_remote_code` is
not needed. Decoding uses PyAV (`pip install av`); no torchvision, torchaudio or ffmpeg program is required."""


def _training_procedure_section(protocol: str, details: dict | None) -> str:
    detail_rows = "\n".join(f"| {k} | {v} |" for k, v in (details or {}).items())
    return f"""## Training procedure

| setting | value |
|---|---|
| protocol | {protocol} |
{detail_rows}"""


def _license_section() -> str:
    return "## License\n\nCC BY-NC 4.0, the license of the original XKD code release."


def _citation_section() -> str:
    return f"## Citation\n\n```bibtex\n{CITATION}\n```"


def make_downstream_card(
    modality: str,
    model_name: str,
    results: list[MeasuredResult],
    base_model: str | None = None,
    datasets: list[str] | None = None,
    protocol: str = "fine-tuning",
    details: dict | None = None,
    license: str = LICENSE,
    repo_id: str | None = None,
):
    """A `huggingface_hub.ModelCard` for a downstream XKD classifier.

    Args:
        modality: ``"video"`` or ``"audio"`` (sets ``pipeline_tag``).
        model_name: the model-index name.
        results: measured numbers.
        base_model: the pretrained XKD repo id (omitted from the metadata when it is a local path).
        datasets: Hub dataset ids/names the classifier was trained on.
        protocol: ``"fine-tuning"``, ``"linear SVM"`` or ``"linear probe"`` (prose only).
        details: hyper-parameters shown in a table.
        repo_id: used in the usage snippet.
    """
    from huggingface_hub import ModelCard

    if modality not in PIPELINE_TAGS:
        raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
    data = card_metadata(
        model_name, PIPELINE_TAGS[modality], ["xkd", modality, PIPELINE_TAGS[modality], protocol.replace(" ", "-")],
        _measured_eval_results(modality, results), datasets=datasets,
        base_model=base_model if _is_hub_id(base_model) else None, license=license,
    )
    sections = [
        _classifier_intro_section(model_name, modality, base_model, protocol),
        _measured_results_section(results),
        _pipeline_usage_section(modality, repo_id),
        _training_procedure_section(protocol, details),
        _license_section(),
        _citation_section(),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


DISTILLATION_METHOD_NAMES = {"ccl": "CCL", "mnf-csc": "MNF + CSC", "baseline": "supervised baseline"}


def make_distillation_card(results: dict, repo_id: str | None = None):
    """The card of a distilled video student (`downstream.distill.run_distillation`'s `results`): its top-1
    over sliding 16-frame windows and, when measured, retrieval R@1, on the user's own labelled clips."""
    name = DISTILLATION_METHOD_NAMES[results["method"]]
    measured = [MeasuredResult("custom", "custom", "accuracy", "Top-1 (sliding 16-frame windows)", results["top1"])]
    if "retrieval" in results:
        measured.append(MeasuredResult("custom", "custom", "recall", "Retrieval R@1", results["retrieval"]["R@1"]))
    recipe = results["recipe"]
    details = {"method": name, "teachers": ", ".join(results["teachers"]) or "none",
               "student": results["student"], "optimizer": recipe["optimizer"],
               "learning rate": recipe["lr"], "batch size": recipe["batch_size"]}
    return make_downstream_card("video", f"{name} student ({results['student']})", measured,
                                protocol="supervised distillation", details=details, repo_id=repo_id)
