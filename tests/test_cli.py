"""Command lines (issues 11 and 16): repeated --set flags add up and conflicting ones are refused; every bad value
is named with its key, value and expected type before the data is read; the launcher's mixed precision;
--max-steps 0; run folders never mixed (fresh run into a run, --overwrite, shape-changing --resume, clip index
fingerprint, corrupt latest checkpoint); resume reads no pickle; exit statuses and their last line; the
downstream scripts' exit-2 cases (single class, undecodable clip, folder without config, bad --set value).

Pure functions are tested in process; the runs are subprocesses (as users run them), with --max-steps 0 where
only the set-up matters, so that this file stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import pickle
import subprocess
import sys

import pytest
import torch

from transformers_xkd.pretraining import load_config, parse_overrides
from transformers_xkd.pretraining.config import ConfigError
from transformers_xkd.pretraining.run_folder import (
    CorruptCheckpointError,
    RunFolderError,
    UnsafeCheckpointError,
    check_run_folder,
    clear_run_folder,
    resumable_checkpoint,
    shape_changes,
    verify_checkpoint,
)
from transformers_xkd.pretraining.trainer import _launcher_chose_precision, resolve_mixed_precision

from media_utils import write_media

pytest.importorskip("accelerate")
av = pytest.importorskip("av")

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "training" / "configs" / "tiny.yaml")
ACCELERATE = str(pathlib.Path(sys.executable).parent / "accelerate")


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="true",
               PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _run(args, timeout=300):
    return subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _script(name: str):
    path = {"pretrain": "training/pretrain.py", "finetune": "training/finetune.py",
            "linear_eval": "training/linear_eval.py"}[name]
    spec = importlib.util.spec_from_file_location(f"cli_{name}", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _last_line(text: str) -> str:
    return [line for line in text.strip().splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("cli_clips")
    for i in range(4):
        write_media(root / f"clip{i}.mp4", duration=2.0, freq=300.0 + 100 * i)
    return root


# ----------------------------------------------------------------------------------------------------------------
# --set: repeated flags add up, conflicts and bad values are named (issue 16.1, 11.5)
# ----------------------------------------------------------------------------------------------------------------


def test_repeated_set_flags_all_apply_and_a_conflict_is_refused():
    parser_args = ["--config", TINY, "--train-data", "x", "--output-dir", "y",
                   "--set", "train.per_device_batch_size=3", "--set", "data.num_workers=0", "train.lr=2e-4"]
    module = _script("pretrain")
    seen = {}

    def fake_load_config(path, overrides):
        seen["overrides"] = list(overrides)
        raise ValueError("stop here")

    module.load_config = fake_load_config
    assert module.main(parser_args) == 2
    assert seen["overrides"] == ["train.per_device_batch_size=3", "data.num_workers=0", "train.lr=2e-4"]
    config = load_config(TINY, seen["overrides"])
    assert (config["train"]["per_device_batch_size"], config["data"]["num_workers"], config["train"]["lr"]) == (
        3, 0, 2e-4)

    assert parse_overrides(["train.lr=1e-3", "train.lr=0.001"]) == {"train": {"lr": 1e-3}}  # same value: fine
    twice = r"--set train\.lr is given twice with different values \('1e-3' and '2e-3'\)"
    with pytest.raises(ConfigError, match=twice):
        parse_overrides(["train.lr=1e-3", "train.lr=2e-3"])
    with pytest.raises(ConfigError, match="overlap"):
        parse_overrides(["model.video_config={hidden_size: 8}", "model.video_config.hidden_size=16"])


@pytest.mark.parametrize("item, expected", [
    ("train.epochs=-1", "--set train.epochs=-1: expected a number > 0"),
    ("train.betas=0.9", r"--set train.betas=0.9: expected a list of 2 numbers in \[0, 1\)"),
    ("train.betas=[0.9,1.5]", r"--set train.betas=\[0.9, 1.5\]: expected a list of 2 numbers in \[0, 1\)"),
    ("train.per_device_batch_size=2.5", "--set train.per_device_batch_size=2.5: expected an integer >= 1"),
    ("train.mixed_precision=fp32", '--set train.mixed_precision="fp32": expected one of "no", "bf16", "fp16"'),
    ("augment.video_local.flip_p=1.5", r"--set augment.video_local.flip_p=1.5: expected a number in \[0, 1\]"),
    ("train.warmup_epochs=20", "--set train.warmup_epochs=20: expected at most train.epochs=8"),
    ("model.projector_output_size=big", '--set model.projector_output_size="big": expected an integer'),
    ("model.video_config.hidden_size=1.5", "--set model.video_config.hidden_size=1.5: expected an integer"),
    ("data.scan=maybe", '--set data.scan="maybe": expected true or false'),
])
def test_bad_values_name_key_value_and_expected_type(item, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(TINY, [item])


def test_bad_value_in_a_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -5\n")
    with pytest.raises(ConfigError, match=rf"{bad}: train.epochs=-5: expected a number > 0"):
        load_config(str(bad))


def test_set_error_comes_before_the_data_scan_and_survives_the_launcher(tmp_path, capsys):
    """Through `accelerate launch` the status becomes 1; the script's last line still states 2 and the cause.
    The data path does not exist: the configuration error must come first."""
    out = tmp_path / "run"
    result = _run([ACCELERATE, "launch", "-q", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
                   "no", "--dynamo_backend", "no", "training/pretrain.py", "--config", TINY, "--train-data",
                   str(tmp_path / "no_such_data"), "--output-dir", str(out), "--set", "train.epochs=-1"])
    assert result.returncode == 1  # accelerate's own status for any failure
    assert _last_line(result.stderr).startswith("training/pretrain.py: exit status 2 (bad arguments, configuration")
    assert "train.epochs=-1: expected a number > 0" in _last_line(result.stderr)
    assert "no_such_data" not in result.stderr and not out.exists()
    # without the launcher the status itself comes through (in process: the same main())
    with pytest.raises(SystemExit) as exit_info:
        _script("pretrain").main(["--config", TINY, "--train-data", str(tmp_path), "--output-dir", str(out),
                                  "--max-steps", "-1"])
    assert exit_info.value.code == 2 and "--max-steps: expected an integer >= 0" in capsys.readouterr().err
    assert _script("pretrain").main(["--config", TINY, "--train-data", str(tmp_path), "--output-dir", str(out),
                                     "--set", "train.lr=1e-3", "--set", "train.lr=2e-3"]) == 2
    assert "train.lr is given twice" in _last_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------------------------------------------
# Mixed precision: the launcher's explicit choice wins, loudly (issue 16.2)
# ----------------------------------------------------------------------------------------------------------------


def test_mixed_precision_resolution_rules(monkeypatch, tmp_path):
    assert resolve_mixed_precision("bf16", None, False) == ("bf16", "train.mixed_precision")
    assert resolve_mixed_precision("bf16", "bf16", True)[0] == "bf16"
    value, why = resolve_mixed_precision("bf16", "no", True)
    assert value == "no" and "overrides train.mixed_precision=bf16" in why
    value, why = resolve_mixed_precision("bf16", "no", False)  # the launcher's default, nothing chosen
    assert value == "bf16" and "default" in why

    import accelerate.commands.config as accelerate_config

    monkeypatch.setattr(accelerate_config, "default_config_file", str(tmp_path / "none.yaml"))
    launch = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--num_processes", "1"]
    script = ["training/pretrain.py", "--config", "x.yaml"]
    assert _launcher_chose_precision(launch + ["--mixed_precision", "no"] + script, "training/pretrain.py")
    assert _launcher_chose_precision(launch + ["--mixed_precision=fp16"] + script, "training/pretrain.py")
    assert _launcher_chose_precision(launch + ["--config_file", "c.yaml"] + script, "training/pretrain.py")
    assert not _launcher_chose_precision(launch + script, "training/pretrain.py")
    # a flag of the script itself is not the launcher's
    assert not _launcher_chose_precision(launch + script + ["--mixed_precision", "no"], "training/pretrain.py")
    (tmp_path / "default.yaml").write_text("mixed_precision: fp16\n")  # `accelerate config` chose it
    monkeypatch.setattr(accelerate_config, "default_config_file", str(tmp_path / "default.yaml"))
    assert _launcher_chose_precision(launch + script, "training/pretrain.py")


def test_launcher_precision_wins_and_max_steps_zero_runs_no_step(clips, tmp_path):
    """`accelerate launch --mixed_precision no` with train.mixed_precision=bf16 trains in fp32 and says so;
    --max-steps 0 sets everything up and runs no step (no checkpoint, no export). Two --set flags both apply."""
    out = tmp_path / "run"
    result = _run([ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "training/pretrain.py", "--config", TINY, "--train-data", str(clips),
                   "--output-dir", str(out), "--max-steps", "0", "--set", "train.mixed_precision=bf16",
                   "--set", "checkpoint.every_steps=1", "data.num_workers=0"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 0 steps" in result.stdout
    records = [json.loads(line) for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()]
    setup = next(r for r in records if r.get("event") == "setup")
    assert setup["mixed_precision"] == "no"
    assert "overrides train.mixed_precision=bf16" in setup["mixed_precision_source"]
    assert "overrides train.mixed_precision=bf16" in result.stderr  # the log line is a warning
    assert not any("loss" in r for r in records)
    assert not (out / "checkpoints").exists() and not (out / "pretraining").exists()
    saved = json.loads((out / "pretraining_config.json").read_text())
    assert saved["checkpoint"]["every_steps"] == 1 and saved["data"]["num_workers"] == 0

    # the folder now holds a run: a fresh run into it is refused (exit 2) before anything is written
    before = sorted(p.name for p in out.rglob("*"))
    again = _run([sys.executable, "training/pretrain.py", "--config", TINY, "--train-data", str(clips),
                  "--output-dir", str(out), "--max-steps", "0"])
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--overwrite" in again.stderr
    assert _last_line(again.stderr).startswith("training/pretrain.py: exit status 2")
    assert sorted(p.name for p in out.rglob("*")) == before
    # --overwrite replaces that run's files only
    (out / "notes.txt").write_text("mine")
    replaced = _run([sys.executable, "training/pretrain.py", "--config", TINY, "--train-data", str(clips),
                     "--output-dir", str(out), "--max-steps", "0", "--overwrite"])
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "--overwrite: deleted" in replaced.stderr and (out / "notes.txt").read_text() == "mine"
    saved = json.loads((out / "pretraining_config.json").read_text())
    assert saved["checkpoint"]["every_steps"] == 4  # tiny.yaml's, not the replaced run's --set value
    assert [json.loads(line).get("event") for line in (out / "logs" / "train_log.jsonl").read_text().splitlines()
            ].count("setup") == 1  # a fresh log, not appended to the old one


# ----------------------------------------------------------------------------------------------------------------
# Run folders (issue 11.4)
# ----------------------------------------------------------------------------------------------------------------


def test_run_folder_rules_and_overwrite_keeps_foreign_files(tmp_path):
    out = tmp_path / "out"
    check_run_folder(str(out), resume=False, overwrite=False)  # absent: fine
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    check_run_folder(str(out), resume=False, overwrite=False)  # no run files: fine
    (out / "checkpoints" / "step-00000002").mkdir(parents=True)
    (out / "pretraining_config.json").write_text("{}")
    with pytest.raises(RunFolderError, match="already holds a run .*checkpoints, pretraining_config.json"):
        check_run_folder(str(out), resume=False, overwrite=False)
    check_run_folder(str(out), resume=True, overwrite=False)
    with pytest.raises(RunFolderError, match="exclude each other"):
        check_run_folder(str(out), resume=True, overwrite=True)
    assert clear_run_folder(str(out)) == ["checkpoints", "pretraining_config.json"]
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_resume_with_a_shape_change_is_refused_before_anything_is_written(tmp_path, clips):
    from transformers_xkd.pretraining import run_pretraining

    config = load_config(TINY)
    assert shape_changes(config["model"], load_config(TINY, ["model.video_teacher_temperature=0.05"])["model"]) == []
    changed = load_config(TINY, ["model.projector_output_size=128"])
    diff = shape_changes(config["model"], changed["model"])
    assert "audio_teacher_center: (1, 64) -> (1, 128)" in diff and diff[-1] == "... and 5 more"

    out = tmp_path / "run"
    out.mkdir()
    saved = json.dumps(config, indent=2)
    (out / "pretraining_config.json").write_text(saved)
    before = sorted(p.name for p in out.rglob("*"))
    shapes = r"changes parameter shapes .*audio_teacher_center: \(1, 64\) -> \(1, 128\)"
    with pytest.raises(RunFolderError, match=shapes):
        run_pretraining(changed, str(clips), str(out), resume=True)
    assert (out / "pretraining_config.json").read_text() == saved
    assert sorted(p.name for p in out.rglob("*")) == before


def test_clip_index_is_fingerprinted_by_its_source(tmp_path, clips, caplog):
    from transformers_xkd.pretraining.data import ClipIndexMismatchError, load_or_scan

    index = str(tmp_path / "clip_index.json")
    first = load_or_scan(_source(clips), index, 1.1, 1)
    assert len(first.kept) == 4 and first.fingerprint
    assert load_or_scan(_source(clips), index, 1.1, 1).fingerprint == first.fingerprint  # reused as is
    other = tmp_path / "other"
    other.mkdir()
    write_media(other / "x.mp4", duration=2.0)
    with pytest.raises(ClipIndexMismatchError, match="clip index .* was made from folder .*--resume needs the same"):
        load_or_scan(_source(other), index, 1.1, 1, on_mismatch="refuse")
    with caplog.at_level(logging.WARNING, logger="transformers_xkd.pretraining"):
        rebuilt = load_or_scan(_source(other), index, 1.1, 1)
    assert [os.path.basename(p) for p in rebuilt.kept] == ["x.mp4"] and "rescanning" in caplog.text
    # same files, other scan setting: also a different index
    with pytest.raises(ClipIndexMismatchError, match="other files or scan settings"):
        load_or_scan(_source(other), index, 0.5, 1, on_mismatch="refuse")


def _source(folder):
    from transformers_xkd.pretraining import resolve_source

    return resolve_source(str(folder))


def _fake_checkpoint(folder: pathlib.Path, step: int) -> pathlib.Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.ones(4)}, str(folder / "model.safetensors"))
    torch.save({"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.95), "params": [0]}]},
               folder / "optimizer.bin")
    torch.save({"random_state": (3, tuple(range(5)), None), "torch_manual_seed": torch.get_rng_state()},
               folder / "random_states_0.pkl")
    (folder / "trainer_state.json").write_text(json.dumps({"step": step, "micro_batches": step}))
    (folder / "checkpoint_complete.json").write_text(json.dumps({"step": step}))
    return folder


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the planted payload
def test_checkpoint_files_are_read_only_through_safe_paths(tmp_path, caplog):
    old = _fake_checkpoint(tmp_path / "step-00000002", 2)
    new = _fake_checkpoint(tmp_path / "step-00000004", 4)
    verify_checkpoint(str(new))
    assert resumable_checkpoint([(2, str(old)), (4, str(new))]) == str(new)

    # truncated latest: fall back to the previous complete one, with a warning naming it
    data = (new / "model.safetensors").read_bytes()
    (new / "model.safetensors").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="transformers_xkd.pretraining"):
        assert resumable_checkpoint([(2, str(old)), (4, str(new))]) == str(old)
    assert "step-00000004 is corrupt" in caplog.text and "model.safetensors" in caplog.text
    with pytest.raises(CorruptCheckpointError, match="no readable checkpoint"):
        resumable_checkpoint([(4, str(new))])

    # a payload in a weights-only file: refused, naming the file, nothing runs
    marker = tmp_path / "PWNED"
    (old / "optimizer.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"optimizer\.bin holds pickled objects"):
        resumable_checkpoint([(2, str(old))])
    assert not marker.exists()
    # an unknown kind of file is refused too
    fresh = _fake_checkpoint(tmp_path / "step-00000006", 6)
    (fresh / "custom.npy").write_bytes(b"x")
    with pytest.raises(UnsafeCheckpointError, match=r"unexpected file .*custom\.npy"):
        verify_checkpoint(str(fresh))


# ----------------------------------------------------------------------------------------------------------------
# Downstream command lines (issue 11.7, 16.1)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """root/{train,test}/{a,b}/clip.mp4 plus a one-class root and a root holding an undecodable clip."""
    root = tmp_path_factory.mktemp("labelled")
    for split in ("train", "test"):
        for k, name in enumerate(("a", "b")):
            (root / "two" / split / name).mkdir(parents=True)
            write_media(root / "two" / split / name / f"{name}.mp4", duration=1.5, freq=300.0 + 400 * k)
        (root / "one" / split / "a").mkdir(parents=True)
        write_media(root / "one" / split / "a" / "a.mp4", duration=1.5)
        for name in ("a", "b"):
            (root / "broken" / split / name).mkdir(parents=True)
            write_media(root / "broken" / split / name / f"{name}.mp4", duration=1.5)
    (root / "broken" / "train" / "b" / "bad.mp4").write_bytes(b"not a video" * 50)
    model = root / "model"
    from transformers_xkd import XKDModel
    from xkd_testers import XKDModelTester

    XKDModel(XKDModelTester().get_config()).save_pretrained(model)
    (root / "no_config").mkdir()
    return root


def _downstream(name, argv, capsys):
    rc = _script(name).main(argv)
    return rc, capsys.readouterr().err


def test_linear_eval_exit_2_cases(labelled, tmp_path, capsys):
    base = ["--dataset", "folder", "--modality", "video"]
    rc, err = _downstream("linear_eval", ["--checkpoint", str(labelled / "model"), *base,
                                          "--data-root", str(labelled / "one")], capsys)
    assert rc == 2 and "1 class ['a']" in err and "at least two classes" in err and "Traceback" not in err
    rc, err = _downstream("linear_eval", ["--checkpoint", str(labelled / "model"), *base,
                                          "--data-root", str(labelled / "broken")], capsys)
    assert rc == 2 and "bad.mp4" in err and "cannot be decoded" in err
    rc, err = _downstream("linear_eval", ["--checkpoint", str(labelled / "no_config"), *base,
                                          "--data-root", str(labelled / "two")], capsys)
    assert rc == 2 and "no_config" in err and "no config.json" in err
    assert _last_line(err).startswith("training/linear_eval.py: exit status 2")
    (tmp_path / "file").write_text("x")
    rc, err = _downstream("linear_eval", ["--checkpoint", str(labelled / "model"), *base,
                                          "--data-root", str(labelled / "two"), "--output-dir",
                                          str(tmp_path / "file")], capsys)
    assert rc == 2 and "is not a folder" in err


def test_finetune_set_flags_add_up_and_bad_values_exit_2(labelled, tmp_path, capsys):
    module = _script("finetune")
    args = module.build_parser().parse_args([
        "--pretrained", "p", "--dataset", "folder", "--data-root", "d", "--output-dir", "o",
        "--set", "lr=1e-4", "--set", "epochs=2", "layer_decay=0.5", "--train-arg", "max_steps=3",
        "--train-arg", "use_cpu=true"])
    assert args.overrides == ["lr=1e-4", "epochs=2", "layer_decay=0.5"]
    assert args.train_args == ["max_steps=3", "use_cpu=true"]
    from transformers_xkd.downstream.runner import parse_key_values

    assert parse_key_values(args.overrides, "--set") == {"lr": 1e-4, "epochs": 2, "layer_decay": 0.5}

    base = ["--pretrained", str(labelled / "model"), "--dataset", "folder", "--data-root", str(labelled / "two"),
            "--output-dir", str(tmp_path / "ft")]
    for extra, message in [
        (["--set", "lr=fast"], "--set lr='fast': expected a number > 0"),
        (["--set", "lr=1e-4", "--set", "lr=2e-4"], "--set lr is given twice with different values"),
        (["--set", "layer_decy=0.5"], "unknown recipe key (did you mean 'layer_decay'?)"),
        (["--train-arg", "max_steps=two"], "--train-arg max_steps='two': expected an integer"),
        (["--train-arg", "max_step=2"], "not a TrainingArguments field (did you mean 'max_steps'?)"),
    ]:
        rc, err = _downstream("finetune", base + extra, capsys)
        assert rc == 2 and message in err, (extra, err)
        assert not (tmp_path / "ft").exists()  # refused before anything (data, model, folder) is touched
    rc, err = _downstream("finetune", ["--pretrained", str(labelled / "no_config"), *base[2:]], capsys)
    assert rc == 2 and "no config.json" in err
    rc, err = _downstream("finetune", [*base[:5], str(labelled / "one"), *base[6:]], capsys)
    assert rc == 2 and "at least two classes" in err
    rc, err = _downstream("finetune", [*base[:5], str(labelled / "broken"), *base[6:]], capsys)
    assert rc == 2 and "bad.mp4" in err
