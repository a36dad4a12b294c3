"""Conversion of the released XKD checkpoints (github.com/pritamqu/XKD) into this package's models.

Two kinds of released file exist (those the released training and eval code write):

* **Backbone files** `<run>vid_teacher.pth.tar`, `<run>vid_student.pth.tar`, `<run>aud_teacher.pth.tar`,
  `<run>aud_student.pth.tar`: plain state dicts of one `VideoViT` / `AudioViT` (138 tensors at ViT-B), either with
  the training names (`cls_token`, `enc_pos_embed`, `cuboid_embed.proj.*` (video) / `patch_embed.proj.*` (audio),
  `encoder.blocks.{i}.*`, `encoder_norm.*`) or with the names the released eval code renames them to
  (`pos_embed`, `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`). Both are accepted here (one style per file).
  One video and one audio file become an `XKDModel` (keys `video_model.*`, `audio_model.*`).
* **The full resumable checkpoint** `checkpoint.pth.tar`: a dict whose `'model'` entry is the state dict of the
  DDP-wrapped `XKD_Net` (every key prefixed `module.`; 978 keys for XKD). It becomes an
  `XKDForPretraining` (teachers as `video_model`/`audio_model`, students, projector heads, decoders, centers).

Name mapping of one encoder (released -> HF; `BLOCK_RENAMES` below is the block part):

    cls_token                               -> embeddings.cls_token                     [1, 1, D]
    enc_pos_embed | pos_embed               -> embeddings.position_embeddings           [1, 1+N, D]
    cuboid_embed.proj.* | patch_embed.proj.* -> embeddings.patch_embeddings.projection.*
    [encoder.]blocks.{i}.norm1.*            -> encoder.layer.{i}.layernorm_before.*
    [encoder.]blocks.{i}.attn.qkv.weight    -> encoder.layer.{i}.attention.qkv.weight   [3D, D] (no bias)
    [encoder.]blocks.{i}.attn.proj.*        -> encoder.layer.{i}.attention.proj.*
    [encoder.]blocks.{i}.norm2.*            -> encoder.layer.{i}.layernorm_after.*
    [encoder.]blocks.{i}.mlp.fc{1,2}.*      -> encoder.layer.{i}.mlp.fc{1,2}.*
    encoder_norm.* | norm.*                 -> layernorm.*

The patch embedding is the one tensor whose values are rearranged: the released tokenizer is a
Linear over patches flattened in (pt, ph, pw, c) order (video) or (ph, pw) order (audio, c = 1); the package uses
a Conv3d / Conv2d whose kernel is laid out (c, pt, ph, pw) / (c, ph, pw). See `video_patch_weight_to_conv` and
`audio_patch_weight_to_conv`.

Variant detection (the layouts are *inferred*, since no MAS/MATS file could be inspected):
the MAS/MATS training code builds ONE `ViT_Backbone` object and hands it to both modality wrappers, and
`state_dict()` walks every module path without de-duplicating, so (i) a MAS/MATS full checkpoint has exactly the
XKD key layout (978 keys) with the shared blocks appearing under both `vid_*` and `aud_*` paths as equal tensors,
and (ii) the MAS/MATS backbone files of the sharing side (students; and teachers for MATS) hold identical
`encoder.blocks.*` tensors while their tokenizer, CLS, position embedding and final norm differ. The converter
therefore decides the variant from *value equality* of the video and audio blocks:

    full checkpoint   student blocks equal   teacher blocks equal   -> variant
                      no                     no                     -> xkd
                      yes                    no                     -> xkd-mas
                      yes                    yes                    -> xkd-mats
    backbone files    blocks equal -> xkd-mats, or xkd-mas students;  distinct -> xkd, or xkd-mas teachers
                      (the teacher/student role is read from the file names when they carry one)

Every function here is loud: a source tensor that maps nowhere, a target parameter that nothing fills, a shape
that does not match, a file of the wrong modality or variant all raise `ConversionError` (a `ValueError`) naming
the file, the keys and the shapes. Files are read with `torch.load(..., weights_only=True)` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .utils_io import replace_folder

__all__ = [
    "ConversionError",
    "load_original_file",
    "check_state_dict_values",
    "check_output_folders",
    "remove_stale_temporary_folders",
    "load_config_file",
    "detect_backbone_modality",
    "backbone_key_to_hf",
    "video_patch_weight_to_conv",
    "audio_patch_weight_to_conv",
    "convert_backbone_state_dict",
    "convert_backbones",
    "convert_full_checkpoint",
    "detect_full_checkpoint_variant",
    "infer_config_from_backbones",
    "infer_config_from_full_checkpoint",
    "build_model_from_backbones",
    "build_pretraining_model_from_checkpoint",
    "save_folder_atomically",
    "infer_role_from_filename",
]

VARIANTS = ("xkd", "xkd-mas", "xkd-mats")
MODALITIES = ("video", "audio")
_SRC_PREFIX = {"video": "vid", "audio": "aud"}

# Block sub-module names: released (timm/DINO) -> package (the module docstring's table). Shared by encoders and
# decoders.
BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "attn.qkv": "attention.qkv",
    "attn.proj": "attention.proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_BLOCK_PART = "|".join(re.escape(k) for k in BLOCK_RENAMES)
_TRAIN_BLOCK_RE = re.compile(rf"encoder\.blocks\.(\d+)\.({_BLOCK_PART})\.(weight|bias)")
_EVAL_BLOCK_RE = re.compile(rf"blocks\.(\d+)\.({_BLOCK_PART})\.(weight|bias)")
_DECODER_BLOCK_RE = re.compile(rf"decoder\.blocks\.(\d+)\.({_BLOCK_PART})\.(weight|bias)")
_HEAD_MLP_RE = re.compile(r"mlp\.(\d+)\.(weight|bias)")

Transform = Callable[[torch.Tensor], torch.Tensor]


class ConversionError(ValueError):
    """A released checkpoint could not be converted exactly; the message names the file, keys and shapes."""


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def load_original_file(path: str | os.PathLike) -> dict:
    """Read a released `.pth.tar` with `torch.load(weights_only=True)` onto the CPU.

    Returns the loaded object (a state dict for backbone files; a dict with `'model'`, `'optimizer'`, `'epoch'`,
    `'amp'` for the full checkpoint). Raises `ConversionError` when the file is missing or holds anything that
    the safe unpickler refuses (arbitrary pickled objects are never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the safe unpickler raises UnpicklingError or RuntimeError depending on the content
        raise ConversionError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(err).__name__}: {err}). Only plain "
            "tensor state dicts (as the released XKD code saves them) are accepted."
        ) from err
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a dict (a state dict or a checkpoint), got {type(obj).__name__}.")
    return obj


def check_state_dict_values(sd: Mapping, source: str) -> None:
    """Every entry of a released state dict must be a tensor under a string key; the first that is not is named
    (a malformed file fails here, not deep inside the key mapping)."""
    if not isinstance(sd, Mapping) or not sd:
        raise ConversionError(f"{source}: expected a non-empty state dict (key -> tensor), got "
                              f"{type(sd).__name__}{' (empty)' if isinstance(sd, Mapping) else ''}.")
    for key, value in sd.items():
        if not isinstance(key, str):
            raise ConversionError(f"{source}: state dict key {key!r} is a {type(key).__name__}, expected a string.")
        if not torch.is_tensor(value):
            raise ConversionError(f"{source}: state dict entry {key!r} is a {type(value).__name__}, expected a tensor.")


def check_output_folders(folders: dict[str, Path], overwrite: bool) -> None:
    """Everything about the output folders that can be checked before converting: distinct, not files, empty (or
    ``overwrite``), and creatable in a writable parent. Runs before the first folder is written."""
    resolved: dict[Path, str] = {}
    for flag, folder in folders.items():
        folder = Path(folder).resolve()
        if folder in resolved:
            raise ConversionError(
                f"{flag} and {resolved[folder]} are the same folder ({folder}); give distinct folders.")
        for other, other_flag in resolved.items():
            if other in folder.parents or folder in other.parents:
                raise ConversionError(f"{flag} {folder} and {other_flag} {other} are nested; give separate folders.")
        resolved[folder] = flag
        if folder.exists() and not folder.is_dir():
            raise ConversionError(f"{flag} {folder} exists and is not a folder.")
        if folder.is_dir() and any(folder.iterdir()) and not overwrite:
            raise ConversionError(f"{flag} {folder} exists and is not empty; pass --overwrite to replace it.")
        parent = folder.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConversionError(f"{flag} {folder}: cannot be written ({parent} is not a writable folder).")


def load_config_file(path):
    """``--config``: a config.json file (or a folder holding one) of an `XKDConfig`; anything else raises a
    `ConversionError` naming the file."""
    from .configuration_xkd import XKDConfig

    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConversionError(f"--config {path}: no such file"
                              + (" (the folder has no config.json)." if path.is_dir() else "."))
    try:
        values = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConversionError(f"--config {file}: not a JSON file ({err}).") from None
    if not isinstance(values, dict) or values.get("model_type", "xkd") != "xkd":
        raise ConversionError(f"--config {file}: expected the config.json of an XKDConfig (model_type 'xkd').")
    try:
        return XKDConfig.from_json_file(str(file))
    except (TypeError, ValueError) as err:
        raise ConversionError(f"--config {file}: not a valid XKDConfig ({err}).") from None


def remove_stale_temporary_folders(output_dir) -> list[Path]:
    """Delete ``.<name>.tmp-*`` / ``.<name>.old-*`` siblings left by a conversion that was killed mid-write."""
    output_dir = Path(output_dir).resolve()
    if not output_dir.parent.is_dir():
        return []
    removed = []
    for pattern in (f".{output_dir.name}.tmp-*", f".{output_dir.name}.old-*"):
        for stale in output_dir.parent.glob(pattern):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
                removed.append(stale)
    return removed


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def infer_role_from_filename(path: str | os.PathLike | None) -> str | None:
    """'teacher' / 'student' when the released file name says so (e.g. `..._ep799vid_teacher.pth.tar`), else None."""
    if path is None:
        return None
    name = Path(path).name.lower()
    has_teacher, has_student = "teacher" in name, "student" in name
    if has_teacher == has_student:
        return None
    return "teacher" if has_teacher else "student"


# ----------------------------------------------------------------------------------------------------------------
# Patch-embedding permutation
# ----------------------------------------------------------------------------------------------------------------


def video_patch_weight_to_conv(
    weight: torch.Tensor, tubelet_size: int, patch_size: int, num_channels: int = 3
) -> torch.Tensor:
    """Released video tokenizer weight -> Conv3d kernel.

    Args:
        weight: `[D, pt*ph*pw*c]` Linear weight; its input vector is a tubelet flattened as `(pt, ph, pw, c)`
            with the channel fastest (einops `b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)`).
    Returns:
        `[D, c, pt, ph, pw]`, the kernel of `Conv3d(c, D, kernel_size=stride=(pt, ph, pw))` that computes the same
        projection on a `(B, c, T, H, W)` clip.
    """
    dim = weight.shape[0]
    kernel = weight.reshape(dim, tubelet_size, patch_size, patch_size, num_channels)
    return kernel.permute(0, 4, 1, 2, 3).contiguous()


def audio_patch_weight_to_conv(weight: torch.Tensor, frequency_patch_size: int, time_patch_size: int) -> torch.Tensor:
    """Released audio tokenizer weight -> Conv2d kernel.

    Args:
        weight: `[D, ph*pw]` Linear weight over a patch flattened as `(ph, pw, c)` with ph = frequency,
            pw = time, c = 1 (einops `b c (h ph) (w pw) -> b (h w) (ph pw c)` on a `(B, 1, mel, time)` input).
    Returns:
        `[D, 1, ph, pw]`, the kernel of `Conv2d(1, D, kernel_size=stride=(ph, pw))` on `(B, 1, mel, time)`;
        its output flattened row-major gives the same frequency-major token order.
    """
    dim = weight.shape[0]
    return weight.reshape(dim, frequency_patch_size, time_patch_size, 1).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Key mapping of one encoder
# ----------------------------------------------------------------------------------------------------------------


def backbone_key_to_hf(key: str, modality: str) -> tuple[str, str] | None:
    """Map one released backbone key to the package's encoder key.

    Returns `(hf_key, style)` where style is `"train"`, `"eval"` or `"both"` (names the two styles share, such as
    `cls_token`), or None when the key has no target (for example a video tokenizer key in an audio file).
    """
    if key == "cls_token":
        return "embeddings.cls_token", "both"
    if key == "enc_pos_embed":
        return "embeddings.position_embeddings", "train"
    if key == "pos_embed":
        return "embeddings.position_embeddings", "eval"
    for name, style in (("encoder_norm", "train"), ("norm", "eval")):
        if key in (f"{name}.weight", f"{name}.bias"):
            return f"layernorm.{key.rsplit('.', 1)[1]}", style
    if key.startswith(("cuboid_embed.proj.", "patch_embed.proj.")):
        head, param = key.rsplit(".", 1)
        if param not in ("weight", "bias"):
            return None
        if head == "cuboid_embed.proj":
            # only the video training code calls its tokenizer a "cuboid" embedding
            return (f"embeddings.patch_embeddings.projection.{param}", "train") if modality == "video" else None
        # patch_embed.proj is the video *eval* name and the audio name in both styles
        style = "eval" if modality == "video" else "both"
        return f"embeddings.patch_embeddings.projection.{param}", style
    for regex, style in ((_TRAIN_BLOCK_RE, "train"), (_EVAL_BLOCK_RE, "eval")):
        match = regex.fullmatch(key)
        if match:
            index, part, param = match.groups()
            return f"encoder.layer.{index}.{BLOCK_RENAMES[part]}.{param}", style
    return None


def _patch_in_features(sd: Mapping[str, torch.Tensor]) -> int | None:
    for key in ("cuboid_embed.proj.weight", "patch_embed.proj.weight"):
        if key in sd and sd[key].ndim == 2:
            return int(sd[key].shape[1])
    return None


def _num_tokens(sd: Mapping[str, torch.Tensor]) -> int | None:
    for key in ("enc_pos_embed", "pos_embed"):
        if key in sd and sd[key].ndim == 3:
            return int(sd[key].shape[1])
    return None


def detect_backbone_modality(sd: Mapping[str, torch.Tensor], video_config=None, audio_config=None) -> tuple[str | None, str]:
    """Decide whether a backbone state dict is a video or an audio encoder.

    Evidence, strongest first: a `cuboid_embed.*` key (only the video training code has it); the tokenizer's input
    width (video `pt*ph*pw*3` = 3072, audio `ph*pw` = 64 at the released sizes, or the given configs' `patch_dim`);
    the position-embedding length (393 vs 561). Returns `(modality or None, evidence sentence)`.
    """
    if any(k.startswith("cuboid_embed.") for k in sd):
        return "video", "it has cuboid_embed.* keys (the video tokenizer's training name)"
    video_dim = video_config.patch_dim if video_config is not None else 3072
    audio_dim = audio_config.patch_dim if audio_config is not None else 64
    in_features = _patch_in_features(sd)
    if in_features is not None and video_dim != audio_dim:
        if in_features == video_dim:
            return "video", f"its patch_embed.proj.weight takes {in_features} inputs (a video tubelet)"
        if in_features == audio_dim:
            return "audio", f"its patch_embed.proj.weight takes {in_features} inputs (an audio patch)"
    tokens = _num_tokens(sd)
    video_tokens = video_config.num_patches + 1 if video_config is not None else 393
    audio_tokens = audio_config.num_patches + 1 if audio_config is not None else 561
    if tokens is not None and video_tokens != audio_tokens:
        if tokens == video_tokens:
            return "video", f"its position embedding has {tokens} positions (the video grid + CLS)"
        if tokens == audio_tokens:
            return "audio", f"its position embedding has {tokens} positions (the audio grid + CLS)"
    return None, "neither the tokenizer width nor the position-embedding length identifies the modality"


@dataclass
class _Report:
    """Problems gathered while converting, raised together so the user sees all of them at once."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def raise_if_any(self) -> None:
        if not (self.missing or self.unexpected or self.shapes or self.other):
            return
        lines = [f"Converting {self.source} failed:"]
        lines += [f"  {msg}" for msg in self.other]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)} target parameters that no source tensor fills):")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)} source tensors that map to no target):")
            lines += [f"    {k}" for k in self.unexpected]
        if self.shapes:
            lines.append(f"  shape mismatches ({len(self.shapes)}):")
            lines += [f"    {msg}" for msg in self.shapes]
        raise ConversionError("\n".join(lines))


def _article(modality: str) -> str:
    return f"an {modality}" if modality == "audio" else f"a {modality}"


def _shape(t) -> list[int]:
    return list(t.shape) if hasattr(t, "shape") else list(t)


def _patch_transform(modality: str, config) -> tuple[Transform, tuple[int, ...]]:
    """The weight permutation of the tokenizer and the released Linear weight shape it expects."""
    d = config.hidden_size
    if modality == "video":
        fn = lambda w: video_patch_weight_to_conv(w, config.tubelet_size, config.patch_size, config.num_channels)  # noqa: E731
    else:
        fn = lambda w: audio_patch_weight_to_conv(w, config.frequency_patch_size, config.time_patch_size)  # noqa: E731
    return fn, (d, config.patch_dim)


def _map_backbone(
    sd: Mapping[str, torch.Tensor], modality: str, config, report: _Report, src_prefix: str = "", dst_prefix: str = ""
) -> dict[str, tuple[str, torch.Tensor]]:
    """Rename (and permute) one encoder's tensors. Returns {hf_key: (source_key, tensor)}; problems go to report."""
    out: dict[str, tuple[str, torch.Tensor]] = {}
    styles: dict[str, list[str]] = {"train": [], "eval": []}
    patch_fn, patch_shape = _patch_transform(modality, config)
    for key, value in sd.items():
        mapped = backbone_key_to_hf(key, modality)
        if mapped is None:
            report.unexpected.append(src_prefix + key)
            continue
        target, style = mapped
        if style in styles:
            styles[style].append(key)
        if target == "embeddings.patch_embeddings.projection.weight":
            if tuple(value.shape) != patch_shape:
                report.shapes.append(
                    f"{src_prefix}{key}: source {_shape(value)} vs expected {list(patch_shape)} "
                    f"(a Linear over {modality} patches of {config.patch_dim} values, D={config.hidden_size})"
                )
                continue
            value = patch_fn(value)
        target = dst_prefix + target
        if target in out:
            report.other.append(
                f"{src_prefix}{key} and {src_prefix}{out[target][0]} both map to {target} (duplicate tensor)"
            )
            continue
        out[target] = (src_prefix + key, value)
    if styles["train"] and styles["eval"]:
        report.other.append(
            f"mixes training names ({styles['train'][:3]}...) and eval names ({styles['eval'][:3]}...); a released "
            "file uses one style"
        )
    return out


def _finish(
    mapped: dict[str, tuple[str, torch.Tensor]],
    expected: Mapping[str, torch.Size],
    report: _Report,
) -> dict[str, torch.Tensor]:
    """Check the mapped tensors against the target model's expected keys and shapes; raise all problems."""
    result: dict[str, torch.Tensor] = {}
    for target, (src, value) in mapped.items():
        if target not in expected:
            report.unexpected.append(f"{src} (-> {target}, which the target model does not have)")
            continue
        if tuple(value.shape) != tuple(expected[target]):
            report.shapes.append(f"{src} -> {target}: source {_shape(value)} vs expected {_shape(expected[target])}")
            continue
        result[target] = value
    report.missing.extend(sorted(k for k in expected if k not in mapped))
    report.raise_if_any()
    return result


def _expected_shapes(model_cls, config) -> dict[str, torch.Size]:
    """Keys and shapes of `model_cls(config).state_dict()`, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = model_cls(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_backbone_state_dict(
    sd: Mapping[str, torch.Tensor], modality: str, config, source: str = "backbone file"
) -> dict[str, torch.Tensor]:
    """One released backbone state dict -> the state dict of `XKDVideoModel` / `XKDAudioModel`.

    Args:
        sd: released tensors (training or eval names; no `module.` prefix).
        modality: `"video"` or `"audio"`.
        config: the `XKDVideoConfig` / `XKDAudioConfig` of the target encoder.
    Returns:
        {encoder key: tensor}, e.g. `embeddings.patch_embeddings.projection.weight` `[D, 3, 4, 16, 16]`.
    """
    from .modeling_xkd import XKDAudioModel, XKDVideoModel

    report = _Report(source)
    mapped = _map_backbone(sd, modality, config, report)
    model_cls = XKDVideoModel if modality == "video" else XKDAudioModel
    return _finish(mapped, _expected_shapes(model_cls, config), report)


def _block_keys(sd: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The transformer-block tensors of an encoder, keyed by their canonical `blocks.{i}.<part>` name."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest.startswith("encoder.blocks."):
            rest = rest[len("encoder."):]
        if _EVAL_BLOCK_RE.fullmatch(rest):
            out[rest] = value
    return out


def _blocks_identical(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """True when two encoders hold the same transformer blocks (same keys, shapes and values)."""
    if not a or a.keys() != b.keys():
        return False
    return all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _check_backbone_variant(
    video_sd: Mapping[str, torch.Tensor], audio_sd: Mapping[str, torch.Tensor], variant: str, role: str | None
) -> None:
    shared = _blocks_identical(_block_keys(video_sd), _block_keys(audio_sd))
    what = "identical" if shared else "different"
    problem = None
    if variant == "xkd" and shared:
        problem = (
            "XKD keeps separate video and audio encoders, but the two files hold identical encoder.blocks.* "
            "tensors, which is how XKD-MAS students and XKD-MATS teachers/students are saved (blocks shared "
            "between modalities). Use --variant xkd-mas or xkd-mats."
        )
    elif variant == "xkd-mats" and not shared:
        problem = (
            "XKD-MATS shares the transformer blocks of both towers (students and teachers), but the two files hold "
            "different encoder.blocks.* tensors: these are XKD files or XKD-MAS teacher files. Use --variant xkd "
            "or xkd-mas."
        )
    elif variant == "xkd-mas" and role == "teacher" and shared:
        problem = (
            "XKD-MAS teachers are separate per modality, but these teacher files hold identical encoder.blocks.* "
            "tensors, as XKD-MATS saves them. Use --variant xkd-mats."
        )
    elif variant == "xkd-mas" and role == "student" and not shared:
        problem = (
            "XKD-MAS students share one set of transformer blocks, but these student files hold different "
            "encoder.blocks.* tensors, as XKD saves them. Use --variant xkd."
        )
    if problem:
        raise ConversionError(f"Wrong variant: --variant {variant}, but the video and audio blocks are {what}. {problem}")


def convert_backbones(
    video_sd: Mapping[str, torch.Tensor],
    audio_sd: Mapping[str, torch.Tensor],
    config,
    *,
    video_source: str = "--video-checkpoint",
    audio_source: str = "--audio-checkpoint",
    role: str | None = None,
) -> dict[str, torch.Tensor]:
    """A released video backbone file plus an audio backbone file -> the state dict of `XKDModel(config)`.

    Checks, in order: each file's modality (a video file passed as the audio one, or vice versa, is named);
    that the pair fits `config.variant` (block sharing, see the module docstring); then every key and shape.

    Returns:
        {`video_model.<encoder key>` | `audio_model.<encoder key>`: tensor} covering every key of
        `XKDModel(config).state_dict()`.
    """
    from .modeling_xkd import XKDModel

    vcfg, acfg = config.video_config, config.audio_config
    for expected, sd, source in (("video", video_sd, video_source), ("audio", audio_sd, audio_source)):
        if "model" in sd and isinstance(sd["model"], dict):
            raise ConversionError(
                f"{source}: this is a full training checkpoint (it has a 'model' entry), not a backbone file; "
                "pass it as --full-checkpoint."
            )
        found, evidence = detect_backbone_modality(sd, vcfg, acfg)
        if found is not None and found != expected:
            raise ConversionError(
                f"Wrong modality: {source} should be {_article(expected)} backbone, but it is {_article(found)} backbone "
                f"({evidence}). Swap --video-checkpoint and --audio-checkpoint?"
            )
    _check_backbone_variant(video_sd, audio_sd, config.variant, role)

    report = _Report(f"{video_source} + {audio_source}")
    mapped = _map_backbone(video_sd, "video", vcfg, report, src_prefix=f"[{video_source}] ", dst_prefix="video_model.")
    mapped.update(
        _map_backbone(audio_sd, "audio", acfg, report, src_prefix=f"[{audio_source}] ", dst_prefix="audio_model.")
    )
    return _finish(mapped, _expected_shapes(XKDModel, config), report)


# ----------------------------------------------------------------------------------------------------------------
# Full checkpoint
# ----------------------------------------------------------------------------------------------------------------


def _strip_module_prefix(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Remove DDP's `module.` prefix; the released checkpoint has it on every key (or, from a 1-GPU run, on none)."""
    with_prefix = [k for k in sd if k.startswith("module.")]
    if with_prefix and len(with_prefix) != len(sd):
        odd = sorted(k for k in sd if not k.startswith("module."))
        raise ConversionError(f"{source}: some keys have the DDP 'module.' prefix and these do not: {odd}")
    return {k[len("module."):]: v for k, v in sd.items()} if with_prefix else dict(sd)


def _under_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a released state dict under `prefix` (e.g. `vid_teacher.backbone.`), prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_full_checkpoint_variant(model_sd: Mapping[str, torch.Tensor]) -> str:
    """Variant of a full checkpoint's model state dict (prefix already stripped), from block sharing."""
    students = _blocks_identical(
        _block_keys(model_sd, "vid_student.backbone."), _block_keys(model_sd, "aud_student.backbone.")
    )
    teachers = _blocks_identical(
        _block_keys(model_sd, "vid_teacher.backbone."), _block_keys(model_sd, "aud_teacher.backbone.")
    )
    if teachers and not students:
        raise ConversionError(
            "The teachers share their transformer blocks but the students do not: no XKD variant is built so "
            "(MATS shares both, MAS only the students)."
        )
    return "xkd-mats" if teachers else ("xkd-mas" if students else "xkd")


def _map_head(
    sd: Mapping[str, torch.Tensor], src: str, dst: str, num_layers: int, has_second_norm: bool, report: _Report,
    consumed: set[str],
) -> dict[str, tuple[str, torch.Tensor]]:
    """Projector head `<src>.mlp.*`, `<src>.last_layer.*` -> `<dst>.layers.k`, `.hidden_norms.k`, `.last_layer.*`.

    The released `DINOHead` lists Linear layers at `mlp.{3k}`, their LayerNorm at `mlp.{3k+1}` and GELU at
    `mlp.{3k+2}`. The hidden LayerNorms are one module (docs/architecture.md, "Paper vs released code"), so `mlp.1`
    and `mlp.4` are equal tensors: they are checked equal and loaded once into `hidden_norms.0`, unless the target
    keeps separate norms (`projector_share_hidden_norm=False`), in which case each goes to its own `hidden_norms.k`.
    """
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if not key.startswith(src + "."):
            continue
        rest = key[len(src) + 1:]
        if rest in ("last_layer.weight_g", "last_layer.weight_v"):
            out[f"{dst}.{rest}"] = (key, value)
            consumed.add(key)
            continue
        match = _HEAD_MLP_RE.fullmatch(rest)
        if not match:
            continue  # left unconsumed -> reported as unexpected by the caller
        index, param = int(match.group(1)), match.group(2)
        layer, slot = divmod(index, 3)
        if slot == 0 and layer < num_layers:
            out[f"{dst}.layers.{layer}.{param}"] = (key, value)
        elif slot == 1 and layer < num_layers - 1:
            if layer == 0 or has_second_norm:
                out[f"{dst}.hidden_norms.{layer}.{param}"] = (key, value)
            else:
                first = f"{src}.mlp.1.{param}"
                if first not in sd:
                    continue
                if sd[first].shape != value.shape or not torch.equal(sd[first], value):
                    report.other.append(
                        f"{key} differs from {first}: the released projector uses ONE LayerNorm after every hidden "
                        "layer, so these must be identical (a corrupted or non-released checkpoint?)"
                    )
        else:
            continue
        consumed.add(key)
    return out


def convert_full_checkpoint(checkpoint: Mapping, config, source: str = "--full-checkpoint") -> dict[str, torch.Tensor]:
    """The released `checkpoint.pth.tar` -> the state dict of `XKDForPretraining(config)`.

    Args:
        checkpoint: the loaded file (a dict with `'model'`), or its `'model'` state dict itself.
        config: `XKDConfig`; its `variant` must match the sharing found in the checkpoint.
    Returns:
        {XKDForPretraining key: tensor}. Mapping (m = vid|aud, M = video|audio):
        `m_teacher.backbone.*` -> `M_model.*`; `m_student.backbone.*` -> `M_student.*`;
        `m_teacher.head.*` -> `M_teacher_head.*`; `m_student.head.*` -> `M_student_head.*`;
        `m_ae.encoder.*` -> checked identical to `m_student.backbone.*` (the MAE encoder IS the student), consumed;
        `m_ae.mid_proj` -> `M_decoder.decoder_embed`; `m_ae.mask_token` -> `M_decoder.mask_token`;
        `m_ae.dec_pos_embed` -> `M_decoder.position_embeddings`; `m_ae.decoder.blocks.i` -> `M_decoder.layers.i`;
        `m_ae.out_proj` -> `M_decoder.decoder_pred` (values kept: its (pt, ph, pw, c) output order is the
        package's patch order too); `vt2as_ce_loss.center` -> `video_teacher_center`;
        `at2vs_ce_loss.center` -> `audio_teacher_center`.
    """
    from .modeling_xkd import XKDForPretraining

    model_sd = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(model_sd, Mapping) or not model_sd:
        raise ConversionError(f"{source}: expected a checkpoint dict with a non-empty 'model' state dict.")
    if "cls_token" in model_sd or "enc_pos_embed" in model_sd or "pos_embed" in model_sd:
        raise ConversionError(
            f"{source}: this is a single backbone file, not the full checkpoint.pth.tar; pass it as "
            "--video-checkpoint / --audio-checkpoint."
        )
    sd = _strip_module_prefix(model_sd, source)
    found = detect_full_checkpoint_variant(sd)
    if found != config.variant:
        raise ConversionError(
            f"Wrong variant: {source} was trained as {found} (video/audio student blocks "
            f"{'shared' if found != 'xkd' else 'separate'}, teacher blocks "
            f"{'shared' if found == 'xkd-mats' else 'separate'}), but --variant {config.variant} was given."
        )

    expected = _expected_shapes(XKDForPretraining, config)
    report = _Report(source)
    consumed: set[str] = set()
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    has_second_norm = any(".hidden_norms.1." in k for k in expected)
    for modality in MODALITIES:
        m = _SRC_PREFIX[modality]
        enc_cfg = config.video_config if modality == "video" else config.audio_config
        for role, dst in (("teacher", f"{modality}_model."), ("student", f"{modality}_student.")):
            prefix = f"{m}_{role}.backbone."
            part = _under_prefix(sd, prefix)
            sub = _Report(source)
            got = _map_backbone(part, modality, enc_cfg, sub, src_prefix=prefix, dst_prefix=dst)
            # unmapped backbone keys stay unconsumed and are reported by the sweep below
            report.shapes += sub.shapes
            report.other += sub.other
            mapped.update(got)
            consumed.update(prefix + k for k in part if backbone_key_to_hf(k, modality) is not None)
            mapped.update(
                _map_head(sd, f"{m}_{role}.head", f"{modality}_{role}_head", config.projector_num_layers,
                          has_second_norm, report, consumed)
            )
        # The MAE encoder is the student backbone module itself: its keys must repeat the student's tensors.
        ae_enc = f"{m}_ae.encoder."
        for key, value in sd.items():
            if not key.startswith(ae_enc):
                continue
            twin = f"{m}_student.backbone." + key[len(ae_enc):]
            if twin not in sd:
                continue  # no twin -> stays unconsumed -> unexpected
            if sd[twin].shape != value.shape or not torch.equal(sd[twin], value):
                report.other.append(
                    f"{key} differs from {twin}: the released MAE encoder is the student backbone (one module), "
                    "so these must be identical"
                )
            consumed.add(key)
        dec = f"{modality}_decoder."
        simple = {
            f"{m}_ae.mask_token": dec + "mask_token",
            f"{m}_ae.dec_pos_embed": dec + "position_embeddings",
            f"{m}_ae.mid_proj.weight": dec + "decoder_embed.weight",
            f"{m}_ae.mid_proj.bias": dec + "decoder_embed.bias",
            f"{m}_ae.out_proj.weight": dec + "decoder_pred.weight",
            f"{m}_ae.out_proj.bias": dec + "decoder_pred.bias",
        }
        for src_key, dst_key in simple.items():
            if src_key in sd:
                mapped[dst_key] = (src_key, sd[src_key])
                consumed.add(src_key)
        for key, value in sd.items():
            if key.startswith(f"{m}_ae.decoder."):
                match = _DECODER_BLOCK_RE.fullmatch(key[len(f"{m}_ae."):])
                if match:
                    index, part, param = match.groups()
                    mapped[f"{dec}layers.{index}.{BLOCK_RENAMES[part]}.{param}"] = (key, value)
                    consumed.add(key)
    for src_key, dst_key in (("vt2as_ce_loss.center", "video_teacher_center"),
                             ("at2vs_ce_loss.center", "audio_teacher_center")):
        if src_key in sd:
            mapped[dst_key] = (src_key, sd[src_key])
            consumed.add(src_key)
    report.unexpected += sorted(k for k in sd if k not in consumed)
    return _finish(mapped, expected, report)


# ----------------------------------------------------------------------------------------------------------------
# Config inference (for the CLI when no --config is given)
# ----------------------------------------------------------------------------------------------------------------


def _encoder_dims(sd: Mapping[str, torch.Tensor], source: str) -> dict[str, int]:
    if "cls_token" not in sd:
        raise ConversionError(f"{source}: no cls_token, so this is not a released XKD backbone.")
    blocks = _block_keys(sd)
    indices = {int(k.split(".")[1]) for k in blocks}
    if not indices:
        raise ConversionError(f"{source}: no transformer blocks (encoder.blocks.* / blocks.*) found.")
    fc1 = blocks.get("blocks.0.mlp.fc1.weight")
    hidden = int(sd["cls_token"].shape[-1])
    return {
        "hidden_size": hidden,
        "num_hidden_layers": max(indices) + 1,
        "intermediate_size": int(fc1.shape[0]) if fc1 is not None else 4 * hidden,
        # heads are not visible in the weights; the released ViT-B/ViT-L use 64-dim heads (12 / 16 heads)
        "num_attention_heads": max(1, hidden // 64),
    }


def _check_grid(sd, modality: str, cfg, source: str) -> None:
    tokens, width = _num_tokens(sd), _patch_in_features(sd)
    if tokens != cfg.num_patches + 1 or width != cfg.patch_dim:
        raise ConversionError(
            f"{source}: {modality} tokenizer width {width} / {tokens} positions do not match the released "
            f"pretraining input ({cfg.patch_dim} / {cfg.num_patches + 1}); pass --config with the matching sizes."
        )


def infer_config_from_backbones(video_sd, audio_sd, variant: str, base_config=None):
    """An `XKDConfig` for `variant` whose tower widths/depths follow the files.

    Hidden size, depth and MLP width are read from the tensors; heads assume 64-dim heads (ViT-B: 12,
    ViT-L: 16 — the AudioSet model's video tower is a ViT-L, paper Sec. 4). Input sizes stay at the released
    defaults (112 px, 32 frames, 80 x 448) and are checked against the tokenizer and position embedding.
    """
    from .configuration_xkd import XKDConfig

    base = base_config.to_dict() if base_config is not None else {}
    vdims = _encoder_dims(video_sd, "--video-checkpoint")
    adims = _encoder_dims(audio_sd, "--audio-checkpoint")
    if base_config is not None:  # a given config knows the head count, which the weights do not show
        vdims.pop("num_attention_heads")
        adims.pop("num_attention_heads")
    video_cfg = {**base.get("video_config", {}), **vdims}
    audio_cfg = {**base.get("audio_config", {}), **adims}
    base.update(video_config=video_cfg, audio_config=audio_cfg, variant=variant)
    for k in ("model_type", "transformers_version", "architectures"):
        base.pop(k, None)
    config = XKDConfig(**base)
    _check_grid(video_sd, "video", config.video_config, "--video-checkpoint")
    _check_grid(audio_sd, "audio", config.audio_config, "--audio-checkpoint")
    return config


def infer_config_from_full_checkpoint(checkpoint: Mapping, variant: str, base_config=None):
    """As `infer_config_from_backbones`, plus decoder and projector sizes read from the full checkpoint."""
    from .configuration_xkd import XKDConfig

    sd = _strip_module_prefix(checkpoint.get("model", checkpoint), "--full-checkpoint")
    video_sd, audio_sd = _under_prefix(sd, "vid_teacher.backbone."), _under_prefix(sd, "aud_teacher.backbone.")
    config = infer_config_from_backbones(video_sd, audio_sd, variant, base_config)
    values = config.to_dict()
    try:
        mid = sd["vid_ae.mid_proj.weight"]
        dec_blocks = {int(k.split(".")[3]) for k in sd if k.startswith("vid_ae.decoder.blocks.")}
        linear_idx = sorted(int(k.split(".")[3]) for k in sd if re.fullmatch(r"vid_teacher\.head\.mlp\.\d+\.weight", k)
                            and sd[k].ndim == 2)
        values.update(
            decoder_hidden_size=int(mid.shape[0]),
            decoder_num_hidden_layers=max(dec_blocks) + 1,
            decoder_intermediate_size=int(sd["vid_ae.decoder.blocks.0.mlp.fc1.weight"].shape[0]),
            projector_hidden_size=int(sd[f"vid_teacher.head.mlp.{linear_idx[0]}.weight"].shape[0]),
            projector_bottleneck_size=int(sd[f"vid_teacher.head.mlp.{linear_idx[-1]}.weight"].shape[0]),
            projector_output_size=int(sd["vid_teacher.head.last_layer.weight_v"].shape[0]),
            projector_num_layers=len(linear_idx),
        )
        if values["decoder_hidden_size"] % values["decoder_num_attention_heads"]:
            values["decoder_num_attention_heads"] = max(1, values["decoder_hidden_size"] // 32)
    except (KeyError, ValueError, IndexError) as err:
        raise ConversionError(f"--full-checkpoint: cannot read the decoder/projector sizes ({err!r}).") from err
    for k in ("model_type", "transformers_version", "architectures"):
        values.pop(k, None)
    return XKDConfig(**values)


# ----------------------------------------------------------------------------------------------------------------
# Building models
# ----------------------------------------------------------------------------------------------------------------


def _load_exactly(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` and then read every tensor back: a shared (tied) module that two different
    source tensors were written into would keep only the last one, and this catches it."""
    model.load_state_dict(dict(state), strict=True)
    live = model.state_dict()
    wrong = [k for k, v in state.items() if not torch.equal(live[k], v.to(live[k].dtype))]
    if wrong:
        raise ConversionError(
            f"{source}: after loading, these target tensors do not hold their source values (modules shared in "
            f"the target model received different source tensors; wrong --variant?): {wrong}"
        )


def build_model_from_backbones(
    video_path, audio_path, variant: str, config=None, *, role: str | None = None
):
    """Load two released backbone files and return `(XKDModel, info)` with the weights converted.

    `config`: an `XKDConfig` fixing every size (its variant is replaced by `variant`); None infers the tower sizes
    from the files (`infer_config_from_backbones`). `role`: 'teacher'/'student', else read from the file names.
    `info` records the sources (names, sha256, naming style, role) for the model card.
    """
    from .modeling_xkd import XKDModel

    video_sd = load_original_file(video_path)
    audio_sd = load_original_file(audio_path)
    check_state_dict_values(video_sd, f"--video-checkpoint {video_path}")
    check_state_dict_values(audio_sd, f"--audio-checkpoint {audio_path}")
    roles = {infer_role_from_filename(video_path), infer_role_from_filename(audio_path)} - {None}
    if role is None and len(roles) == 1:
        role = roles.pop()
    elif role is None and len(roles) > 1:
        warnings.warn(f"{video_path} and {audio_path}: one is a teacher file and the other a student file.")
    if config is None:
        config = infer_config_from_backbones(video_sd, audio_sd, variant)
    elif config.variant != variant:
        values = config.to_dict()
        for k in ("model_type", "transformers_version", "architectures"):
            values.pop(k, None)
        values["variant"] = variant
        config = type(config)(**values)
    state = convert_backbones(
        video_sd, audio_sd, config, video_source=f"--video-checkpoint {video_path}",
        audio_source=f"--audio-checkpoint {audio_path}", role=role,
    )
    model = XKDModel(config)
    _load_exactly(model, state, "backbone files")
    model.eval()
    info = {
        "kind": "backbones",
        "variant": variant,
        "role": role,
        "sources": {
            "video": {"file": Path(video_path).name, "sha256": _sha256(video_path)},
            "audio": {"file": Path(audio_path).name, "sha256": _sha256(audio_path)},
        },
    }
    return model, info


def build_pretraining_model_from_checkpoint(path, variant: str, config=None):
    """Load the released `checkpoint.pth.tar` and return `(XKDForPretraining, info)`; info has the epoch."""
    from .modeling_xkd import XKDForPretraining

    checkpoint = load_original_file(path)
    if "model" not in checkpoint:
        raise ConversionError(
            f"--full-checkpoint {path}: no 'model' entry; a backbone file goes to --video-checkpoint/--audio-checkpoint."
        )
    check_state_dict_values(checkpoint["model"], f"--full-checkpoint {path} ['model']")
    if config is None:
        config = infer_config_from_full_checkpoint(checkpoint, variant)
    state = convert_full_checkpoint(checkpoint, config, source=f"--full-checkpoint {path}")
    model = XKDForPretraining(config)
    _load_exactly(model, state, f"--full-checkpoint {path}")
    model.eval()
    epoch = checkpoint.get("epoch")
    info = {
        "kind": "full",
        "variant": variant,
        "role": "teacher",
        "epoch": int(epoch) if isinstance(epoch, (int, float)) or torch.is_tensor(epoch) else None,
        "sources": {"full": {"file": Path(path).name, "sha256": _sha256(path)}},
    }
    return model, info


# ----------------------------------------------------------------------------------------------------------------
# Writing and pushing
# ----------------------------------------------------------------------------------------------------------------


def save_folder_atomically(output_dir, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Run `write(tmp_dir)` into a fresh temporary folder next to `output_dir`, then move it into place.

    The temporary folder lives in the same parent so that `os.replace` is a rename on one file system. Until the
    rename, `output_dir` is untouched; if `write` raises, the temporary folder is removed and nothing else
    changes. An existing non-empty `output_dir` is replaced only with `overwrite=True` (the old one is renamed
    aside first and removed after the new one is in place).
    """
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"--output-dir {output_dir} exists and is not a folder.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(f"--output-dir {output_dir} exists and is not empty; pass --overwrite to replace it.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, output_dir, aside=output_dir.parent / f".{output_dir.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
    return output_dir


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")



# ----------------------------------------------------------------------------------------------------------------
# Whole conversion (what the CLI runs)
# ----------------------------------------------------------------------------------------------------------------


def save_processors(folder: Path) -> list[str]:
    """Write the media processors' configs into `folder` when the package has them; returns the files written.

    The processors live in other modules of the package (feature_extraction_xkd, video_processing_xkd) and may be
    absent in a partial install, so they are imported guarded and skipped with a printed note.
    """
    written: list[str] = []
    before = set(os.listdir(folder))
    for module, name in (("video_processing_xkd", "XKDVideoProcessor"), ("feature_extraction_xkd", "XKDFeatureExtractor")):
        try:
            mod = __import__(f"{__package__}.{module}", fromlist=[name])
            cls = getattr(mod, name)
        except (ImportError, AttributeError) as err:
            print(f"note: {name} is not available ({err}); its preprocessing config is not written.")
            continue
        cls().save_pretrained(str(folder))
    written = sorted(set(os.listdir(folder)) - before)
    return written


def _model_folder_writer(model, card_kwargs: dict, info: dict, with_processors: bool) -> Callable[[Path], None]:
    from .model_card import make_model_card

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        processors = save_processors(tmp) if with_processors else []
        card = make_model_card(config=model.config, has_processors=bool(processors), **card_kwargs)
        card.save(str(tmp / "README.md"))
        write_json(tmp / "conversion_info.json", {**info, "processor_files": processors})

    return write


def convert_to_folders(
    *,
    variant: str,
    output_dir,
    video_checkpoint=None,
    audio_checkpoint=None,
    full_checkpoint=None,
    pretraining_output_dir=None,
    export_teachers_dir=None,
    config=None,
    role: str | None = None,
    pretraining_dataset: str = "kinetics400",
    repo_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Convert released files into model folders; returns {"model" | "pretraining" | "teachers": folder}.

    * `video_checkpoint` + `audio_checkpoint` -> `output_dir`: an `XKDModel` folder (config.json,
      model.safetensors, processor configs, README.md, conversion_info.json).
    * `full_checkpoint` -> an `XKDForPretraining` folder, at `output_dir` when no backbone files are given, else at
      `pretraining_output_dir` (default `<output_dir>-pretraining`); `export_teachers_dir` additionally writes its
      teacher encoders as an `XKDModel` folder.
    Each folder is written to a temporary sibling and renamed into place only when complete.
    """
    if variant not in VARIANTS:
        raise ConversionError(f"--variant must be one of {VARIANTS}, got {variant!r}.")
    if (video_checkpoint is None) != (audio_checkpoint is None):
        raise ConversionError("--video-checkpoint and --audio-checkpoint go together: give both or neither.")
    if video_checkpoint is None and full_checkpoint is None:
        raise ConversionError("Nothing to convert: give --video-checkpoint and --audio-checkpoint, or --full-checkpoint.")
    output_dir = Path(output_dir)
    written: dict[str, Path] = {}
    card_common = {"variant": variant, "pretraining_dataset": pretraining_dataset}
    # Every output folder's preconditions before any (slow) conversion and before the first folder is written.
    targets: dict[str, Path] = {}
    if video_checkpoint is not None:
        targets["--output-dir"] = output_dir
    if full_checkpoint is not None:
        flag = "--output-dir" if video_checkpoint is None else "--pretraining-output-dir"
        targets[flag] = output_dir if video_checkpoint is None else Path(pretraining_output_dir or f"{output_dir}-pretraining")
        if export_teachers_dir is not None:
            targets["--export-teachers"] = Path(export_teachers_dir)
    elif export_teachers_dir is not None:
        raise ConversionError("--export-teachers needs --full-checkpoint.")
    check_output_folders(targets, overwrite)
    for folder in targets.values():
        remove_stale_temporary_folders(folder)

    # Convert everything in memory first, so that a bad input fails before any folder is written.
    jobs: list[tuple[str, Path, object, dict, dict, bool]] = []
    if video_checkpoint is not None:
        model, info = build_model_from_backbones(video_checkpoint, audio_checkpoint, variant, config, role=role)
        card = {**card_common, "model_id": repo_id or str(output_dir), "kind": "model", "role": info["role"],
                "sources": info["sources"]}
        jobs.append(("model", output_dir, model, card, info, True))
    if full_checkpoint is not None:
        pre_dir = output_dir if video_checkpoint is None else Path(pretraining_output_dir or f"{output_dir}-pretraining")
        pre_model, info = build_pretraining_model_from_checkpoint(full_checkpoint, variant, config)
        card = {**card_common, "model_id": repo_id or str(pre_dir), "kind": "pretraining", "role": None,
                "sources": info["sources"], "epoch": info["epoch"]}
        jobs.append(("pretraining", pre_dir, pre_model, card, info, True))
        if export_teachers_dir is not None:
            teachers = pre_model.export_teachers().eval()
            tcard = {**card_common, "model_id": str(export_teachers_dir), "kind": "model", "role": "teacher",
                     "sources": info["sources"], "epoch": info["epoch"]}
            jobs.append(("teachers", Path(export_teachers_dir), teachers, tcard, {**info, "kind": "teachers-from-full"},
                         True))
    for name, folder, model, card, info, with_processors in jobs:
        written[name] = save_folder_atomically(
            folder, _model_folder_writer(model, card, info, with_processors), overwrite=overwrite
        )
    return written
