"""Smoke test of benchmarks/run.py (over transformers_xkd.benchmarking): the CPU suite at the smallest sizes writes a
JSON with every field.

Speed is the benchmark's business, not the test suite's: nothing here asserts a timing or a goal's outcome, only
that each measurement was taken and reported (a section silently dropped, or a field renamed, fails here).
"""

import importlib.util
import json
import math
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load_runner():
    spec = importlib.util.spec_from_file_location("xkd_benchmarks_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_stats(stats, where):
    for key in ("median_s", "min_s", "max_s", "iqr_s", "n", "times_s"):
        assert key in stats, f"{where}: missing {key}"
    assert stats["n"] >= 1 and len(stats["times_s"]) == stats["n"], where
    assert 0 < stats["min_s"] <= stats["median_s"] <= stats["max_s"], f"{where}: {stats}"


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    runner = _load_runner()
    out_dir = tmp_path_factory.mktemp("bench")
    res = runner.main(["--suite", "cpu", "--smoke", "--out-dir", str(out_dir)])
    return runner, res, out_dir


def test_smoke_writes_json_and_markdown(smoke_results):
    runner, res, out_dir = smoke_results
    stem = f"cpu-{res['device']}-smoke"
    on_disk = json.loads((out_dir / f"{stem}.json").read_text())
    for key in ("schema_version", "suite", "smoke", "device", "device_name", "created", "env", "settings",
                "encoder_inference", "pretraining_step", "log_mel", "data_path", "goals", "not_run",
                "section_seconds", "total_seconds"):
        assert key in on_disk, f"missing top-level field {key}"
    assert on_disk["suite"] == "cpu" and on_disk["smoke"] is True
    assert on_disk["device"] and "/" not in on_disk["device"] and " " not in on_disk["device"]
    for key in ("torch", "transformers", "threads", "cpus", "load_before", "load_after"):
        assert key in on_disk["env"], f"env.{key}"
    assert any("GPU" in item for item in on_disk["not_run"]), "the CPU suite must say the GPU suite was not run"
    md = (out_dir / f"{stem}.md").read_text()
    for heading in ("Encoder inference", "Pretraining step", "Log-mel extraction", "Data path", "Goals"):
        assert heading in md, f"markdown lacks the {heading} section"


def test_encoder_section_covers_the_matrix(smoke_results):
    _, res, _ = smoke_results
    enc = res["encoder_inference"]
    settings = res["settings"]
    cells = {(r["modality"], r["attn"], r["dtype"], r["batch"]) for r in enc["results"]}
    expected = {(m, a, d, b) for m in ("video", "audio") for a in ("sdpa", "eager") for d in ("fp32", "bf16")
                for b in settings["batches"]}
    assert cells == expected
    for r in enc["results"]:
        where = f"encoder {r['modality']} {r['attn']} {r['dtype']} b{r['batch']}"
        _check_stats(r["xkd"], where + " xkd")
        _check_stats(r["peer_stats"], where + " peer")
        for key in ("xkd_clips_per_s", "peer_clips_per_s", "throughput_ratio"):
            assert _is_number(r[key]) and r[key] > 0, f"{where}: {key}"
    for modality, peer in (("video", "VideoMAEModel"), ("audio", "ASTModel")):
        meta = enc["models"][modality]
        assert meta["peer_name"] == peer
        # the peers are configured to the same patch-token count as XKD
        assert meta["xkd_patch_tokens"] == meta["peer_patch_tokens"] > 0
    assert enc["models"]["audio"]["peer_geometry"]["num_patch_tokens"] == enc["models"]["audio"]["xkd_patch_tokens"]
    assert _is_number(enc["min_throughput_ratio"]) and _is_number(enc["geomean_throughput_ratio"])


def test_pretraining_section(smoke_results):
    _, res, _ = smoke_results
    pre = res["pretraining_step"]
    for variant in ("full", "mae", "full_ckpt"):
        r = pre["results"][variant]
        _check_stats(r["step"], f"pretraining {variant}")
        assert _is_number(r["clips_per_s"]) and _is_number(r["peak_memory_mb"])
    for key in ("ratio_full_over_mae", "ratio_checkpointing_over_full", "memory_checkpointing_over_full"):
        assert _is_number(pre[key]) and pre[key] > 0, key
    flops = pre["flops"]
    assert flops["analytic"]["full"] > flops["analytic"]["mae"] > 0
    assert flops["counted_fwd_bwd"]["full"] > flops["counted_fwd_bwd"]["mae"] > 0
    assert pre["mfu"] is None  # no GPU: MFU is not invented on a CPU
    assert _is_number(pre["cpu_matmul_peak_tflops"]) and _is_number(pre["fraction_of_matmul_peak"])


def test_pretraining_analytic_flops_match_the_flop_counter():
    # The MFU of the gpu suite rests on the analytic count; torch's FlopCounterMode counts the same step from the
    # executed matmuls. They must agree closely (the analytic count omits only elementwise work).
    import torch

    from transformers_xkd.benchmarking.pretraining_step import (
        analytic_step_flops, counted_step_flops, make_step, pretraining_batch, pretraining_config,
    )

    cfg = pretraining_config("tiny", "eager")  # torch counts eager attention's matmuls, not CPU sdpa
    batch = pretraining_batch(cfg, 2, torch.device("cpu"))
    for variant in ("full", "mae"):
        _, step = make_step(variant, cfg, batch, torch.device("cpu"), "fp32", None)
        counted = counted_step_flops(step)
        analytic = analytic_step_flops(cfg, 2)[variant]
        assert abs(counted - analytic) / counted < 0.03, (variant, counted, analytic)


def test_log_mel_section(smoke_results):
    _, res, _ = smoke_results
    lm = res["log_mel"]
    assert [r["batch"] for r in lm["results"]] == list(res["settings"]["logmel_batches"])
    for r in lm["results"]:
        for key in ("xkd", "xkd_1_thread", "librosa"):
            _check_stats(r[key], f"log-mel b{r['batch']} {key}")
        assert _is_number(r["speedup"]) and _is_number(r["max_abs_diff"])
        assert r["output_shape"][1:] == [448, 80]


def test_data_path_section(smoke_results):
    _, res, _ = smoke_results
    dp = res["data_path"]
    for key in ("pipeline", "augmentation_status", "clip_seconds", "measured_on", "groups", "skipped_files"):
        assert key in dp, key
    synthetic = [g for name, g in dp["groups"].items() if name.startswith("synthetic")]
    assert synthetic and synthetic[0]["files"], "the synthetic clips are always measured"
    for group in dp["groups"].values():
        for name, f in group.get("files", {}).items():
            for key in ("decode", "sample_and_audio", "augment_per_clip", "total"):
                assert key in f["median_s"], f"{name}: {key}"
            assert _is_number(f["clips_per_s"]) and f["clips_per_s"] > 0


def test_goals_are_all_stated(smoke_results):
    _, res, _ = smoke_results
    names = [g["name"] for g in res["goals"]]
    assert len(names) == 7, names  # the data path is judged with and without augmentation on the core
    for g in res["goals"]:
        assert set(g) >= {"name", "target", "measured", "met", "note"}
        assert g["met"] in (True, False, None)


def test_gpu_suite_code_path_runs_on_cpu(tmp_path):
    # No GPU in CI: the gpu suite's own choices (bf16 autocast training, MFU bookkeeping) still run, on the CPU.
    runner = _load_runner()
    res = runner.main(["--suite", "gpu", "--device", "cpu", "--smoke", "--sections", "pretrain",
                       "--out-dir", str(tmp_path)])
    pre = res["pretraining_step"]
    assert pre["dtype"] == "bf16"
    assert _is_number(pre["ratio_full_over_mae"])
    assert (tmp_path / f"gpu-{res['device']}-smoke.json").exists()


def test_ast_geometry_matches_token_counts():
    from transformers_xkd.benchmarking.encoders import ast_geometry

    g = ast_geometry(80, 560, 448)
    assert g["num_patch_tokens"] == 560 == g["frequency_patches"] * g["time_patches"]
    assert (80 - 16) // g["frequency_stride"] + 1 == g["frequency_patches"]
    assert (g["max_length"] - 16) // g["time_stride"] + 1 == g["time_patches"]


def test_one_machine_description_for_both_benchmarks():
    # benchmarks/run.py (device names) and the learning benchmark (results' "machine") read the same helper
    from transformers_xkd.benchmarking import harness
    from transformers_xkd.benchmarking import learning as learning_benchmark

    assert learning_benchmark.machine_description is harness.machine_description
    description = harness.machine_description()
    assert description.startswith(harness.cpu_name() + ", ")
    assert f", {harness.usable_cpus()} CPU cores" in description


def test_memory_child_measures_one_variant_with_this_checkout():
    import torch

    import transformers_xkd
    from transformers_xkd.benchmarking.pretraining_step import _memory_child_command, child_memory

    threads = torch.get_num_threads()
    try:
        mem = child_memory("mae", "tiny", "sdpa", "fp32", 2)
    finally:
        torch.set_num_threads(threads)
    assert mem["peak_rss_mb"] >= mem["rss_before_steps_mb"] > 0
    cmd, env = _memory_child_command("full_ckpt", "tiny", "sdpa", "fp32", 2)
    assert cmd[1:3] == ["-m", "transformers_xkd.benchmarking.pretraining_step"] and "full_ckpt" in cmd
    # the child imports the package this process imported (a checkout's src/), not another installed copy
    assert env["PYTHONPATH"].split(":")[0] == str(pathlib.Path(transformers_xkd.__file__).resolve().parents[1])


def test_command_line_names_bad_arguments(tmp_path):
    runner = _load_runner()
    with pytest.raises(SystemExit, match="--sections: unknown \\['lgomel'\\]"):
        runner.main(["--sections", "logmel,lgomel", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--media .*not a folder"):
        runner.main(["--sections", "data", "--media", str(tmp_path / "missing"), "--out-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written
