"""transformers conventions (issue 12): output layout of XKDModel, `get_*_features`, input embeddings for
`enable_input_require_grads` / PEFT / gradient checkpointing, and `torch.export` of the towers and heads.

The tester objects (tests/xkd_testers.py) build tiny configs and inputs (as transformers' `VideoMAEModelTester`
does); they are also what the check against transformers' own common tests uses (see docs/architecture.md).
"""

import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from transformers_xkd import (
    XKDAudioModel,
    XKDForAudioClassification,
    XKDForVideoClassification,
    XKDModel,
    XKDVideoModel,
)
from transformers_xkd.modeling_xkd import XKDModelOutput, XKDOutput
from xkd_testers import XKDAudioModelTester, XKDModelTester, XKDVideoModelTester


# ------------------------------------------------------------------------------------------------------------
# XKDModel output layout (tensors first, per-tower outputs last)
# ------------------------------------------------------------------------------------------------------------


def _xkd_model(seed=0):
    torch.manual_seed(seed)
    tester = XKDModelTester()
    config, inputs = tester.prepare_config_and_inputs_for_common()
    return XKDModel(config).eval(), inputs


@pytest.mark.parametrize("given", ["both", "video", "audio"])
def test_xkd_model_output_layout(given):
    model, inputs = _xkd_model()
    if given != "both":
        inputs = {k: v for k, v in inputs.items() if (k == "pixel_values") == (given == "video")}
    with torch.no_grad():
        out = model(**inputs)
        flat = model(**inputs, return_dict=False)
        video = model.video_model(inputs["pixel_values"]) if "pixel_values" in inputs else None
        audio = model.audio_model(inputs["input_values"]) if "input_values" in inputs else None
    assert isinstance(out, XKDOutput)
    expected_keys = {
        "both": ["video_embeds", "audio_embeds", "audio_visual_embeds", "video_model_output", "audio_model_output"],
        "video": ["video_embeds", "video_model_output"],
        "audio": ["audio_embeds", "audio_model_output"],
    }[given]
    assert list(out.keys()) == expected_keys
    # the first field is a tensor, not a nested output (indexing and unpacking give tensors)
    assert isinstance(out[0], torch.Tensor) and out[0].shape == (2, 32)
    first = video if given != "audio" else audio
    torch.testing.assert_close(out[0], first.pooler_output, atol=0, rtol=0)
    tower_key = f"{given if given != 'both' else 'video'}_model_output"
    assert isinstance(out[tower_key], XKDModelOutput)
    torch.testing.assert_close(out[tower_key].last_hidden_state, first.last_hidden_state, atol=0, rtol=0)
    # return_dict=False: a tuple of tensors and, last, the towers' own tuples
    assert isinstance(flat, tuple) and len(flat) == len(expected_keys)
    for a, b in zip(flat, out.to_tuple()):
        assert all(torch.equal(x, y) for x, y in zip(a, b)) if isinstance(a, tuple) else torch.equal(a, b)
    n_tensors = 3 if given == "both" else 1
    assert all(isinstance(t, torch.Tensor) for t in flat[:n_tensors])
    assert all(isinstance(t, tuple) and all(isinstance(x, torch.Tensor) for x in t) for t in flat[n_tensors:])
    if given == "both":
        torch.testing.assert_close(out.audio_embeds, audio.pooler_output, atol=0, rtol=0)
        fused = torch.cat([F.normalize(video.pooler_output, dim=-1), F.normalize(audio.pooler_output, dim=-1)], -1)
        torch.testing.assert_close(out.audio_visual_embeds, fused)
        torch.testing.assert_close(model.get_audio_visual_features(**inputs), fused)
    else:
        missing = "audio" if given == "video" else "video"
        assert getattr(out, f"{missing}_embeds") is None and getattr(out, f"{missing}_model_output") is None
        assert out.audio_visual_embeds is None
        with pytest.raises(KeyError):
            out[f"{missing}_embeds"]


def test_xkd_model_forward_passes_output_flags_to_both_towers():
    model, inputs = _xkd_model()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
    for tower, tester in ((out.video_model_output, XKDVideoModelTester()), (out.audio_model_output,
                                                                             XKDAudioModelTester())):
        assert len(tower.hidden_states) == tester.num_hidden_layers + 1
        assert len(tower.attentions) == tester.num_hidden_layers
        assert tower.attentions[0].shape == (2, tester.num_attention_heads, tester.seq_length, tester.seq_length)


# ------------------------------------------------------------------------------------------------------------
# get_video_features / get_audio_features: BaseModelOutputWithPooling, as CLIP / CLAP
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_get_features_return_base_model_output_with_pooling(modality):
    model, inputs = _xkd_model()
    model.set_attn_implementation("eager")
    name = "pixel_values" if modality == "video" else "input_values"
    tester = XKDVideoModelTester() if modality == "video" else XKDAudioModelTester()
    tower = model.video_model if modality == "video" else model.audio_model
    get = model.get_video_features if modality == "video" else model.get_audio_features
    x = inputs[name]
    with torch.no_grad():
        plain = get(x)
        full = get(x, output_hidden_states=True, output_attentions=True)
        as_tuple = get(x, return_dict=False)
        reference = tower(x)
    assert type(plain) is BaseModelOutputWithPooling
    assert plain.hidden_states is None and plain.attentions is None
    torch.testing.assert_close(plain.pooler_output, reference.pooler_output, atol=0, rtol=0)
    torch.testing.assert_close(plain.last_hidden_state, reference.last_hidden_state, atol=0, rtol=0)
    assert plain.pooler_output.shape == (2, tester.hidden_size)
    assert len(full.hidden_states) == tester.num_hidden_layers + 1
    assert len(full.attentions) == tester.num_hidden_layers
    assert full.hidden_states[0].shape == (2, tester.seq_length, tester.hidden_size)
    torch.testing.assert_close(full.pooler_output, plain.pooler_output, atol=0, rtol=0)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[1], plain.pooler_output, atol=0, rtol=0)
    # the flags and return_dict also come from the configs, as everywhere in transformers
    model.config.return_dict = False
    getattr(model.config, f"{modality}_config").output_hidden_states = True
    with torch.no_grad():
        from_config = get(x)
    assert isinstance(from_config, tuple) and len(from_config) == 3
    assert len(from_config[2]) == tester.num_hidden_layers + 1


# ------------------------------------------------------------------------------------------------------------
# Input embeddings: a tensor, so enable_input_require_grads / PEFT / gradient checkpointing work
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [XKDVideoModel, XKDAudioModel, XKDForVideoClassification,
                                 XKDForAudioClassification, XKDModel])
def test_input_embeddings_return_a_tensor(cls):
    if cls is XKDModel:
        model, inputs = _xkd_model()
        x = inputs["pixel_values"]
    elif cls in (XKDVideoModel, XKDForVideoClassification):
        tester = XKDVideoModelTester()
        model, x = cls(tester.get_config()), tester.pixel_values()
    else:
        tester = XKDAudioModelTester()
        model, x = cls(tester.get_config()), tester.input_values()
    embed = model.get_input_embeddings()
    tokens = embed(x)
    assert isinstance(tokens, torch.Tensor) and tokens.shape[-1] == 32
    assert tokens.shape[1] == math.prod(embed.patch_grid(x))
    assert embed.weight is embed.projection.weight  # generic code reads get_input_embeddings().weight


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_enable_input_require_grads_with_frozen_model_and_gradient_checkpointing(use_reentrant):
    """The PEFT recipe: everything frozen but one inner layer, gradient checkpointing on. With reentrant
    checkpointing the frozen patch embedding must make its output require grad, or no gradient reaches the
    trainable layer."""
    tester = XKDVideoModelTester()
    torch.manual_seed(0)
    config = tester.get_config()
    config.classifier_dropout = 0.0  # same forward in both models (train mode)
    reference = XKDForVideoClassification(config).train()
    model = XKDForVideoClassification(config).train()
    model.load_state_dict(reference.state_dict())
    x, labels = tester.pixel_values(), tester.labels()
    for m in (reference, model):
        m.requires_grad_(False)
        m.video_model.encoder.layer[1].mlp.fc1.requires_grad_(True)
    model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    model.enable_input_require_grads()
    assert model.video_model.encoder.layer[0].gradient_checkpointing
    reference(x, labels=labels).loss.backward()
    model(x, labels=labels).loss.backward()
    grad, expected = model.video_model.encoder.layer[1].mlp.fc1.weight.grad, \
        reference.video_model.encoder.layer[1].mlp.fc1.weight.grad
    assert grad is not None and expected.abs().sum() > 0
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)
    assert model.video_model.embeddings.patch_embeddings.projection.weight.grad is None  # still frozen


@pytest.mark.parametrize("method", [XKDVideoModel.forward, XKDAudioModel.forward, XKDModel.forward,
                                    XKDForVideoClassification.forward, XKDForAudioClassification.forward,
                                    XKDModel.get_video_features, XKDModel.get_audio_features])
def test_forward_kwargs_are_typed_transformers_kwargs(method):
    import inspect
    import typing

    from transformers.utils import TransformersKwargs

    kwargs = inspect.signature(method).parameters["kwargs"]
    assert kwargs.kind is inspect.Parameter.VAR_KEYWORD
    assert typing.get_args(kwargs.annotation) == (TransformersKwargs,)


# ------------------------------------------------------------------------------------------------------------
# torch.export of the towers and heads, static and dynamic batch
# ------------------------------------------------------------------------------------------------------------


def _export_cases():
    vt, at = XKDVideoModelTester(), XKDAudioModelTester()
    return {
        "video_model": (XKDVideoModel, vt, "pixel_values", "last_hidden_state"),
        "audio_model": (XKDAudioModel, at, "input_values", "last_hidden_state"),
        "video_classification": (XKDForVideoClassification, vt, "pixel_values", "logits"),
        "audio_classification": (XKDForAudioClassification, at, "input_values", "logits"),
    }


def _inputs(tester, batch_size):
    if isinstance(tester, XKDVideoModelTester):
        return tester.pixel_values(batch_size)
    return tester.input_values(batch_size)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_batch"])
@pytest.mark.parametrize("case", list(_export_cases()))
def test_torch_export(case, dynamic):
    cls, tester, name, key = _export_cases()[case]
    torch.manual_seed(0)
    model = cls(tester.get_config()).eval()
    x = _inputs(tester, 2)
    dynamic_shapes = {name: {0: torch.export.Dim("batch", min=1, max=64)}} if dynamic else None
    program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes)
    exported = program.module()
    with torch.no_grad():
        for batch in ((1, 2, 5) if dynamic else (2,)):
            x = _inputs(tester, batch)
            got, expected = exported(x), model(x)
            assert type(got) is type(expected)
            torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)
            if key == "last_hidden_state":
                torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)
    if not dynamic:
        with pytest.raises(Exception):  # the static program is specialised to batch 2
            exported(_inputs(tester, 3))


# ------------------------------------------------------------------------------------------------------------
# PEFT / LoRA
# ------------------------------------------------------------------------------------------------------------


def _lora_classifier(tmp_path, num_labels=3):
    """A saved tiny video encoder, loaded as a classifier with a fresh head (as fine-tuning starts)."""
    tester = XKDVideoModelTester(num_labels=num_labels)
    torch.manual_seed(0)
    XKDVideoModel(tester.get_config()).save_pretrained(tmp_path / "pretrained")
    model = XKDForVideoClassification.from_pretrained(tmp_path / "pretrained", num_labels=num_labels,
                                                      classifier_dropout=0.0)
    return tester, model


def test_lora_trainable_parameters_are_the_adapters_and_the_head(tmp_path):
    pytest.importorskip("peft", reason="LoRA needs the optional `peft` extra (scripts/setup.sh installs it)")
    from transformers_xkd.downstream.lora import LoraSettings, apply_lora, count_parameters

    tester, model = _lora_classifier(tmp_path)
    _, total_before = count_parameters(model)
    peft_model = apply_lora(model, LoraSettings(rank=4, alpha=8))
    d, i, r, layers = tester.hidden_size, tester.intermediate_size, 4, tester.num_hidden_layers
    # r * (in + out) per adapted Linear: qkv (d -> 3d), proj (d -> d), fc1 (d -> i), fc2 (i -> d); head in full
    per_block = r * (d + 3 * d) + r * (d + d) + r * (d + i) + r * (i + d)
    head = d * tester.num_labels + tester.num_labels
    trainable, _ = count_parameters(peft_model)
    assert trainable == layers * per_block + head == 3171
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "classifier" in n for n in names)
    assert not any("projection" in n or "lora_" in n and "layernorm" in n for n in names)
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" not in n
               and "modules_to_save" not in n) == total_before


def test_lora_rejects_targets_that_match_nothing(tmp_path):
    pytest.importorskip("peft", reason="LoRA needs the optional `peft` extra (scripts/setup.sh installs it)")
    from transformers_xkd.downstream.lora import LoraSettings, apply_lora

    _, model = _lora_classifier(tmp_path)
    with pytest.raises(ValueError, match=r"\['query'\] match no Linear layer .*'fc1'"):
        apply_lora(model, LoraSettings(target_modules=("qkv", "query")))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoraSettings(rank=0)


def test_lora_training_save_load_and_merge(tmp_path):
    pytest.importorskip("peft", reason="LoRA needs the optional `peft` extra (scripts/setup.sh installs it)")
    from transformers import AutoModelForVideoClassification

    from transformers_xkd.downstream.lora import LoraSettings, apply_lora, load_adapter, merge_adapter, save_adapter

    tester, model = _lora_classifier(tmp_path)
    frozen_qkv = model.video_model.encoder.layer[0].attention.qkv.weight.detach().clone()
    peft_model = apply_lora(model, LoraSettings(rank=4, alpha=8)).train()
    x, labels = tester.pixel_values(), tester.labels()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(8):
        loss = peft_model(pixel_values=x, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    base_qkv = peft_model.get_base_model().video_model.encoder.layer[0].attention.qkv.base_layer.weight
    torch.testing.assert_close(base_qkv, frozen_qkv, atol=0, rtol=0)  # only the adapters moved
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(pixel_values=x).logits

    save_adapter(peft_model, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    reloaded = load_adapter(tmp_path / "adapter")  # the base checkpoint comes from the adapter config
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, expected, atol=0, rtol=0)

    merged = merge_adapter(reloaded, tmp_path / "merged")
    assert type(merged) is XKDForVideoClassification
    assert not any("lora" in k or "base_layer" in k or "modules_to_save" in k for k in merged.state_dict())
    plain = AutoModelForVideoClassification.from_pretrained(tmp_path / "merged").eval()
    assert type(plain) is XKDForVideoClassification
    with torch.no_grad():
        got = plain(x).logits
    # W + (alpha / r) B A folded once: float32 rounding of a 32-wide sum
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# The shared tower body and tower config: same state-dict keys and config fields as before the refactor
# ------------------------------------------------------------------------------------------------------------

# Written by the code before the towers shared `_XKDTowerModel` / `_XKDTowerConfig` (one block, tiny sizes).
_TOWER_KEYS_BEFORE = [
    "embeddings.cls_token", "embeddings.patch_embeddings.projection.bias",
    "embeddings.patch_embeddings.projection.weight", "embeddings.position_embeddings",
    "encoder.layer.0.attention.proj.bias", "encoder.layer.0.attention.proj.weight",
    "encoder.layer.0.attention.qkv.weight", "encoder.layer.0.layernorm_after.bias",
    "encoder.layer.0.layernorm_after.weight", "encoder.layer.0.layernorm_before.bias",
    "encoder.layer.0.layernorm_before.weight", "encoder.layer.0.mlp.fc1.bias", "encoder.layer.0.mlp.fc1.weight",
    "encoder.layer.0.mlp.fc2.bias", "encoder.layer.0.mlp.fc2.weight", "layernorm.bias", "layernorm.weight",
]
_COMMON_CONFIG_KEYS_BEFORE = [
    "_name_or_path", "architectures", "attention_probs_dropout_prob", "chunk_size_feed_forward",
    "classifier_dropout", "dtype", "hidden_act", "hidden_dropout_prob", "hidden_size", "id2label",
    "initializer_range", "intermediate_size", "is_encoder_decoder", "label2id", "layer_norm_eps", "model_type",
    "num_attention_heads", "num_hidden_layers", "output_attentions", "output_hidden_states", "problem_type",
    "qkv_bias", "return_dict",
]


@pytest.mark.parametrize("tester_cls", [XKDVideoModelTester, XKDAudioModelTester])
def test_tower_state_dict_keys_and_config_fields_are_unchanged(tester_cls):
    tester = tester_cls(num_hidden_layers=1)
    config = tester.get_config()
    model = (XKDVideoModel if tester_cls is XKDVideoModelTester else XKDAudioModel)(config)
    assert sorted(model.state_dict()) == _TOWER_KEYS_BEFORE
    own = (["image_size", "num_channels", "num_frames", "patch_size", "tubelet_size"]
           if tester_cls is XKDVideoModelTester else
           ["frequency_patch_size", "max_length", "num_mel_bins", "time_patch_size"])
    keys = sorted(k for k in type(config)().to_dict() if k != "transformers_version")
    assert keys == sorted(_COMMON_CONFIG_KEYS_BEFORE + own)
    # per-tower defaults that differ stay per tower (released heads: video dropout 0.5, audio none)
    assert type(config)().classifier_dropout == (0.5 if tester_cls is XKDVideoModelTester else 0.0)


def test_tests_take_testers_from_xkd_testers_not_conftest():
    # conftest holds fixtures only; importing it as a module runs it a second time under another name
    tests = pathlib.Path(__file__).resolve().parent
    offenders = [p.name for p in sorted(tests.glob("*.py"))
                 if any(line.strip().startswith(("from conftest import", "import conftest"))
                        for line in p.read_text().splitlines())]
    assert offenders == []
