"""Saved folders carry their code: they load with trust_remote_code in a process without the package."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from transformers_xkd import XKDForPretraining, XKDForVideoClassification, XKDModel
from xkd_testers import XKDModelTester

model_tester = XKDModelTester()

LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["transformers_xkd"] = None  # the package must not be importable here
    import json, torch
    from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForVideoClassification
    root, out = sys.argv[1], sys.argv[2]
    results = {}
    for kind, auto in [("model", AutoModel), ("pretraining", AutoModelForPreTraining),
                       ("video-classification", AutoModelForVideoClassification)]:
        folder = f"{root}/{kind}"
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        torch.manual_seed(1)
        cfg = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        video_cfg = getattr(cfg, "video_config", cfg)
        x = torch.randn(1, video_cfg.num_frames, 3, video_cfg.image_size, video_cfg.image_size)
        with torch.no_grad():
            if kind == "model":
                y = model.get_video_features(x).pooler_output
            elif kind == "pretraining":
                y = model.video_model(x).pooler_output
            else:
                y = model(x).logits
        results[kind] = {"module": type(model).__module__, "class": type(model).__name__,
                         "values": y.flatten().tolist()}
    json.dump(results, open(out, "w"))
    """
)


def _build(kind):
    torch.manual_seed(0)
    config = model_tester.get_config()
    if kind == "model":
        return XKDModel(config).eval()
    if kind == "pretraining":
        return XKDForPretraining(config).eval()
    video_config = config.video_config
    video_config.id2label = {0: "a", 1: "b", 2: "c"}
    return XKDForVideoClassification(video_config).eval()


def _video_output(kind, model, x):
    with torch.no_grad():
        if kind == "model":
            return model.get_video_features(x).pooler_output
        if kind == "pretraining":
            return model.video_model(x).pooler_output
        return model(x).logits


def test_trust_remote_code_without_the_package(tmp_path):
    kinds = ["model", "pretraining", "video-classification"]
    models = {kind: _build(kind) for kind in kinds}
    for kind, model in models.items():
        folder = tmp_path / kind
        model.save_pretrained(folder)
        assert (folder / "modeling_xkd.py").exists() and (folder / "configuration_xkd.py").exists()
        assert "auto_map" in json.loads((folder / "config.json").read_text())

    script = tmp_path / "load.py"
    script.write_text(LOADER)
    result_file = tmp_path / "result.json"
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(result_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(result_file.read_text())
    for kind, model in models.items():
        result = results[kind]
        assert "transformers_modules" in result["module"], kind  # the copied code, not the installed package
        assert result["class"] == type(model).__name__
        vc = model_tester.get_config().video_config
        torch.manual_seed(1)
        x = torch.randn(1, vc.num_frames, 3, vc.image_size, vc.image_size)
        expected = _video_output(kind, model, x)
        # Same code in another process: only the thread split of the float32 kernels can differ (~1e-7 on values
        # of magnitude ~1); a mis-copied module is off by O(1).
        torch.testing.assert_close(torch.tensor(result["values"]), expected.flatten(), atol=1e-5, rtol=1e-5)
