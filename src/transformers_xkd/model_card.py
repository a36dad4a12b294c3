"""Model cards: the one builder for every folder the package writes.

Every card is a `huggingface_hub.ModelCard` whose metadata is `card_metadata` (a `ModelCardData`: license
`cc-by-nc-4.0`, the released code's LICENSE file; `library_name: transformers`; `pipeline_tag`; the numbers as
`model-index` `EvalResult` entries) and whose text ends with the paper's citation.

* Converted checkpoints (`make_model_card`): described per variant and pretraining dataset, with the paper's
  reported downstream numbers.
* Downstream classifiers (`make_downstream_card`: fine-tuning, linear SVM / probe; `make_distillation_card`: the
  CCL / MNF students), with the numbers this package measured. transformers' own `Trainer.create_model_card`
  writes no ``pipeline_tag`` and leaves ``model-index`` empty for video classification, which is why these are
  built here.

Each card is its metadata plus a list of small section functions (`_..._section`), one per heading, in Python so
that an installed package (not only a checkout) can write them.

`save_card` writes a card as a folder's README.md; `transformers_xkd.hub.push_folder_to_hub` uploads the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PAPER_RESULTS", "PaperResult", "paper_results", "make_model_card", "CITATION",
    "MeasuredResult", "card_metadata", "make_downstream_card", "make_distillation_card", "save_card",
]

LICENSE = "cc-by-nc-4.0"
PAPER_URL = "https://arxiv.org/abs/2211.13929"
CODE_URL = "https://github.com/pritamqu/XKD"

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
):
    """The `huggingface_hub.ModelCard` of one converted folder, with the paper's reported numbers.

    Args:
        variant: "xkd" | "xkd-mas" | "xkd-mats".
        pretraining_dataset: "kinetics400" | "audioset".
        model_id: what `from_pretrained` is given in the usage snippet (Hub repo id or local folder).
        kind: "model" (an `XKDModel` folder: both encoders) or "pretraining" (an `XKDForPretraining` folder).
        role: which released towers the weights are ("teacher", "student" or None if unknown).
        config: the `XKDConfig` written next to the card (sizes shown in the card).
        sources: {name: {"file", "sha256"}} of the converted files, listed for provenance.
        epoch: the completed epochs a full checkpoint records.
        has_processors: the folder holds the processors' configs.
    """
    from huggingface_hub import EvalResult, ModelCard

    if variant not in VARIANT_NAMES:
        raise ValueError(f"variant must be one of {tuple(VARIANT_NAMES)}, got {variant!r}.")
    if pretraining_dataset not in DATASET_NAMES:
        raise ValueError(f"pretraining_dataset must be one of {tuple(DATASET_NAMES)}, got {pretraining_dataset!r}.")
    if kind not in ("model", "pretraining"):
        raise ValueError(f"kind must be 'model' or 'pretraining', got {kind!r}.")

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
    sections = [
        _converted_intro_section(name, variant, kind, role),
        _model_description_section(config),
        _pretraining_section(pretraining_dataset),
        _reported_results_section(variant, pretraining_dataset, results),
        _encoder_usage_section(model_id, kind, has_processors),
        _conversion_section(epoch, sources or {}),
        _converted_license_section(),
        _citation_section(),
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Sections of a converted checkpoint's card
# ----------------------------------------------------------------------------------------------------------------


def _converted_intro_section(name: str, variant: str, kind: str, role: str | None) -> str:
    if kind == "model":
        holds = f"{role or 'released'} encoders (one video and one audio ViT)"
    else:
        holds = ("complete pretraining state (teachers, students, projector heads, reconstruction decoders and the "
                 "distillation centers), from which pretraining can continue and whose teacher encoders load as "
                 "`XKDModel`")
    return f"""# {name}

{VARIANT_NAMES[variant]} is a self-supervised audio-visual video representation model from
*XKD: Cross-modal Knowledge Distillation with Domain Alignment for Video Representation Learning*
(Pritam Sarkar and Ali Etemad, AAAI 2024; [paper]({PAPER_URL}), [original code]({CODE_URL})).
This repository holds the {holds},
converted from the original release into transformers-xkd classes.

Variant: **{VARIANT_NAMES[variant]}**, {VARIANT_DESCRIPTIONS[variant]}"""


def _model_description_section(config) -> str:
    if config is not None:
        v, a = config.video_config, config.audio_config
        video = (f"{v.num_frames} frames x {v.image_size} x {v.image_size} pixels, cut into {v.tubelet_size} x "
                 f"{v.patch_size} x {v.patch_size} tubelets ({v.num_patches} tokens), width {v.hidden_size}, "
                 f"{v.num_hidden_layers} blocks")
        audio = (f"{a.num_mel_bins} mel bins x {a.max_length} frames, cut into {a.frequency_patch_size} x "
                 f"{a.time_patch_size} patches ({a.num_patches} tokens, frequency-major), width {a.hidden_size}, "
                 f"{a.num_hidden_layers} blocks")
    else:
        video = "32 frames of 112 x 112 pixels cut into 4 x 16 x 16 tubelets"
        audio = "80 mel bins x 448 frames cut into 4 x 16 patches"
    return (
        "## Model description\n\n"
        f"- **Video encoder**: a ViT over a clip of {video}; learned CLS and position embeddings, pre-norm blocks "
        "without qkv bias, LayerNorm eps 1e-5.\n"
        f"- **Audio encoder**: a ViT over a log-mel spectrogram of {audio}.\n"
        "- **Features**: the mean of the patch tokens (CLS excluded) after the final LayerNorm, as the original "
        "evaluation code\n  uses them (`pooler_output`, also of `get_video_features` / `get_audio_features`; "
        "`get_audio_visual_features` L2-normalises\n  both and concatenates them, as the Kinetics-Sound late-fusion "
        "evaluation does)."
    )


def _pretraining_section(pretraining_dataset: str) -> str:
    audioset = ("For AudioSet pretraining the paper uses a ViT-L video encoder (ViT-B for audio) and 400 epochs.\n"
                if pretraining_dataset == "audioset" else "")
    return f"""## How it was trained

Pretraining on {DATASET_NAMES[pretraining_dataset]} (audio-visual, no labels) for \
{400 if pretraining_dataset == "audioset" else 800} epochs, following the paper and the
released training code:

1. **Masked reconstruction**: each modality is an MAE-style autoencoder; 85% of the video tubelets and 80% of the
   audio patches are dropped and reconstructed (normalised-pixel targets) by a shallow decoder (Eq. 1-2).
2. **Domain alignment**: the teachers' last-layer CLS attention is cross-modally re-weighted ("refine") to pick the
   most transferable tokens, and an MMD loss between the two modalities' projected features reduces the domain gap
   (Eq. 3-9).
3. **Cross-modal knowledge distillation**: the video teacher supervises the audio student and the audio teacher
   supervises the video student through DINO-style projector heads (8192 outputs) with centering and sharpening
   (Eq. 10-11); the teachers are exponential moving averages of the students (momentum 0.997 -> 1, Eq. 13).

Inputs: video at 8 fps, 112 x 112 (global 32 frames; local views 8 x 96 x 96), audio at 16 kHz as 80-bin log-mel
spectrograms (global 4 s = 448 frames; local 1 s = 112 frames). AdamW, batch 256 on 8 V100 GPUs, mixed precision.
{audioset}
The paper evaluates the **teachers** downstream (Sec. 4.6)."""


def _reported_results_section(variant: str, pretraining_dataset: str, results: list[PaperResult]) -> str:
    if results:
        rows = "\n".join(f"| {r.task_name} | {r.dataset_name} | {r.metric_name} | {r.value} | {r.source} |"
                         for r in results)
        body = f"| task | dataset | metric | value | source |\n|---|---|---|---|---|\n{rows}"
    else:
        body = "The paper reports no downstream numbers for this variant with this pretraining dataset."
    return f"""## Reported results

Numbers as reported in the paper for {VARIANT_NAMES[variant]} pretrained on {DATASET_NAMES[pretraining_dataset]} \
(they were **not**
re-measured with this converted checkpoint; fine-tuning uses 224 x 224 frames and the paper's full protocols):

{body}"""


def _encoder_usage_section(model_id: str, kind: str, has_processors: bool) -> str:
    text = f"""## Usage

```python
import torch
from transformers_xkd import XKDModel

model = XKDModel.from_pretrained("{model_id}").eval()
video_cfg, audio_cfg = model.config.video_config, model.config.audio_config
# video: (batch, frames, 3, height, width), ImageNet-normalised RGB frames at 8 fps
pixel_values = torch.randn(1, video_cfg.num_frames, 3, video_cfg.image_size, video_cfg.image_size)
# audio: (batch, time, mel), normalised log-mel spectrogram (16 kHz, n_fft 1024, hop 143)
input_values = torch.randn(1, audio_cfg.max_length, audio_cfg.num_mel_bins)
with torch.no_grad():
    video_features = model.get_video_features(pixel_values).pooler_output  # (1, hidden_size)
    audio_features = model.get_audio_features(input_values).pooler_output  # (1, hidden_size)
    joint = model.get_audio_visual_features(pixel_values, input_values)  # (1, 2 * hidden_size)
print(video_features.shape, audio_features.shape, joint.shape)
```"""
    if has_processors:
        text += """

The folder also holds the preprocessing configurations (`XKDVideoProcessor`, `XKDFeatureExtractor`), which turn
decoded frames and waveforms into the inputs above."""
    if kind == "pretraining":
        text += f"""

To continue pretraining, load `XKDForPretraining.from_pretrained("{model_id}")`; `XKDVideoModel` /
`XKDAudioModel.from_pretrained` on this folder load the teacher encoders. The original optimizer state is not
included."""
    return text


def _conversion_section(epoch: int | None, sources: dict) -> str:
    text = """## Conversion

Converted with `conversion/convert_xkd_original_to_hf.py` of transformers-xkd: every released tensor was mapped
(the Linear patch embeddings permuted into Conv3d / Conv2d kernels), every target parameter was filled, and the
shapes were checked."""
    if epoch is not None:
        text += f"\nThe full checkpoint records {epoch} completed training epochs."
    if sources:
        rows = "\n".join(f"| {key} | `{src['file']}` | `{src['sha256']}` |" for key, src in sources.items())
        text += f"\n\n| source | file | sha256 |\n|---|---|---|\n{rows}"
    return text


def _converted_license_section() -> str:
    return """## License

CC BY-NC 4.0 (Creative Commons Attribution-NonCommercial 4.0 International), the license of the original code
release; non-commercial use only. (The arXiv page of the paper lists CC BY-NC-SA 4.0 for the paper text.)"""


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
