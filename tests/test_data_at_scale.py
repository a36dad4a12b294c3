"""Training at scale (issue 14): prepared shards, a manifest instead of a scan, streaming from local disk and HTTP.

All media is written by the tests (tiny 2 s clips); the HTTP server binds 127.0.0.1 and serves byte ranges.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import torch

from transformers_xkd.decoding_xkd import MediaReader, decode_media
from transformers_xkd.pretraining import ShardedEpochSampler, XKDPretrainingDataset, collate_clips, load_config
from transformers_xkd.pretraining.data import load_or_scan, resolve_source
from transformers_xkd.pretraining.prepare import PrepareSettings, prepare_shards, shard_index_path
from transformers_xkd.pretraining.shards import ShardClipSource, load_manifest
from transformers_xkd.pretraining.trainer import clip_settings, latest_checkpoint

from media_utils import write_media

av = pytest.importorskip("av")

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = str(REPO / "training" / "configs" / "tiny.yaml")
SETTINGS = PrepareSettings(short_side=32, gop_seconds=0.5, crf=18)
NUM_GOOD = 4


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("raw")
    for i in range(NUM_GOOD):  # 2 s, 64x48, 25 fps mpeg4 + AAC, a different tone each
        write_media(root / f"clip{i}.mp4", duration=2.0, freq=300.0 + 100 * i)
    (root / "broken.mp4").write_bytes(b"not a video at all" * 30)
    write_media(root / "silent.mp4", audio=False)
    return root


@pytest.fixture(scope="module")
def shards(raw, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    out = tmp_path_factory.mktemp("shards")
    source = resolve_source(str(raw))
    entries = [(source.name(i), source.media(i)) for i in source.items]
    summary = prepare_shards(entries, str(out), SETTINGS, clips_per_shard=2, num_workers=2, progress=False)
    return out, summary


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (http.server itself ignores Range), as object stores serve them."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if not match or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(f.read(end - start + 1))


@pytest.fixture(scope="module")
def http_url(shards):
    pytest.importorskip("aiohttp", reason="fsspec's http reader needs aiohttp (pip install transformers-xkd[stream])")
    folder = str(shards[0])

    def handler(*args, **kwargs):
        return _RangeHandler(*args, directory=folder, **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _tar_members(path) -> dict:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


# ----------------------------------------------------------------------------------------------------------------
# Preparation
# ----------------------------------------------------------------------------------------------------------------


def test_prepared_clips_decode_and_their_metadata_agrees(raw, shards):
    out, summary = shards
    assert summary["shards_total"] == 3 and summary["shards_built"] == 3 and summary["clips"] == NUM_GOOD
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["clips"]["key"]) == NUM_GOOD
    members = {}
    for t in manifest["tars"]:
        members.update(_tar_members(out / t))
    for key in manifest["clips"]["key"]:
        meta = json.loads(members[key + ".json"])
        with MediaReader(members[key + ".mkv"]) as reader:
            info = reader.info
            decoded = reader.read(frame_times=np.arange(int(meta["streams"]["video"]["frames"])) / meta["fps"],
                                  audio_window=(0.0, None), sampling_rate=16000)
        original = meta["original"]
        assert (original["width"], original["height"], original["fps"]) == (64, 48, 25.0)
        assert (info.width, info.height) == (meta["streams"]["video"]["width"], meta["streams"]["video"]["height"])
        assert min(info.width, info.height) == SETTINGS.short_side and info.width == 42  # 64 * 32/48 -> even 42
        assert info.native_fps == pytest.approx(meta["fps"]) and meta["fps"] == 25.0  # native rate kept
        assert info.native_sampling_rate == 16000 and info.num_channels == 1 and info.audio_codec == "flac"
        assert meta["streams"]["video"]["frames"] == 50 and meta["video_duration"] == pytest.approx(2.0)
        assert len(decoded.audio) - decoded.num_padded_samples == meta["streams"]["audio"]["samples"]
        assert decoded.num_padded_frames == 0
        # the prepared audio is the decoder's 16 kHz waveform of the original rounded to 16 bits (FLAC: lossless)
        reference = decode_media(raw / os.path.basename(meta["source"]), decode_video=False).audio
        n = meta["streams"]["audio"]["samples"]
        expected = np.clip(np.round(reference[:n].astype(np.float64) * 32768), -32768, 32767) / 32768
        np.testing.assert_allclose(decoded.audio[:n].astype(np.float64), expected, atol=1e-9)


def test_broken_inputs_are_reported_by_name_and_skipped(shards):
    _, summary = shards
    failed = sorted(os.path.basename(f["source"]) for f in summary["failures"])
    assert failed == ["broken.mp4", "silent.mp4"]
    silent = next(f for f in summary["failures"] if f["source"].endswith("silent.mp4"))
    assert "audio" in silent["error"]


def test_rerun_skips_finished_shards_and_rebuilds_only_an_unfinished_one(raw, shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(shards[0], out)
    source = resolve_source(str(raw))
    entries = [(source.name(i), source.media(i)) for i in source.items]
    stamps = {t: os.stat(out / t).st_mtime_ns for t in ("shard-000000.tar", "shard-000002.tar")}
    again = prepare_shards(entries, str(out), SETTINGS, clips_per_shard=2, progress=False)
    assert again["shards_built"] == 0 and again["shards_skipped"] == 3
    os.remove(shard_index_path(str(out), 1))  # as if killed after the tar, before its index (the done marker)
    (out / "manifest.json").unlink()
    again = prepare_shards(entries, str(out), SETTINGS, clips_per_shard=2, progress=False)
    assert again["shards_built"] == 1 and again["shards_skipped"] == 2 and again["manifest"]
    assert {t: os.stat(out / t).st_mtime_ns for t in stamps} == stamps
    assert len(load_manifest(str(out)).items) == NUM_GOOD


def test_machines_split_the_shards_and_the_last_one_writes_the_manifest(raw, tmp_path):
    source = resolve_source(str(raw))
    entries = [(source.name(i), source.media(i)) for i in source.items][:NUM_GOOD]
    first = prepare_shards(entries, str(tmp_path), SETTINGS, clips_per_shard=1, shard_index=0, num_shards=2,
                           progress=False)
    assert first["shards_built"] == 2 and first["manifest"] is None
    assert sorted(p.name for p in tmp_path.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000002.tar"]
    second = prepare_shards(entries, str(tmp_path), SETTINGS, clips_per_shard=1, shard_index=1, num_shards=2,
                            progress=False)
    assert second["shards_built"] == 2 and second["manifest"]
    with pytest.raises(ValueError, match="shard-index"):
        prepare_shards(entries, str(tmp_path), SETTINGS, shard_index=2, num_shards=2, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Reading shards: local, glob, HTTP
# ----------------------------------------------------------------------------------------------------------------


def test_local_manifest_glob_and_http_give_the_same_clip_bytes(shards, http_url):
    out, _ = shards
    local = resolve_source(str(out))
    globbed = resolve_source(str(out / "shard-*.tar"))
    remote = resolve_source(f"{http_url}/manifest.json")
    assert all(isinstance(s, ShardClipSource) for s in (local, globbed, remote))
    assert len(local.items) == len(globbed.items) == len(remote.items) == NUM_GOOD
    manifest = json.loads((out / "manifest.json").read_text())
    members = {}
    for t in manifest["tars"]:
        members.update(_tar_members(out / t))
    for i, key in enumerate(manifest["clips"]["key"]):
        expected = members[key + ".mkv"]  # read independently with tarfile
        assert local.media(i) == expected and globbed.media(i) == expected and remote.media(i) == expected
    # no scan: the report comes from the manifest's durations
    report = load_or_scan(remote, None, min_duration=1.1, num_workers=1)
    assert report.kept == list(range(NUM_GOOD)) and report.durations[0][0] == pytest.approx(2.0)


def test_samples_from_http_shards_equal_samples_from_local_shards(shards, http_url):
    config = load_config(TINY)
    from transformers_xkd.pretraining import build_model_config

    settings = clip_settings(config, build_model_config(config))
    local = resolve_source(str(shards[0]))
    remote = resolve_source(f"{http_url}/")
    a = XKDPretrainingDataset(local, local.items, settings, seed=3)[(1, 2)]
    b = XKDPretrainingDataset(remote, remote.items, settings, seed=3)[(1, 2)]
    assert not a["failed"] and not b["failed"]
    assert a["video"].shape[-2:] == (settings.short_side, round(42 * settings.short_side / 32)) or \
        min(a["video"].shape[-2:]) == settings.short_side
    for name in ("video", "input_values", "local_input_values", "local_video_starts"):
        assert torch.equal(a[name], b[name]), name


def test_ranks_and_workers_see_every_clip_once_per_epoch_and_resume_exactly(shards, http_url):
    config = load_config(TINY)
    from transformers_xkd.pretraining import build_model_config

    settings = clip_settings(config, build_model_config(config))
    source = resolve_source(f"{http_url}/manifest.json")
    dataset = XKDPretrainingDataset(source, source.items, settings, seed=0)

    def run(rank, epoch, start_batch=0):
        sampler = ShardedEpochSampler(len(dataset), batch_size=1, num_replicas=2, rank=rank, seed=0)
        sampler.set_position(epoch, start_batch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=sampler, collate_fn=collate_clips,
                                             num_workers=2)
        return list(loader)

    straight = {rank: run(rank, epoch=1) for rank in (0, 1)}
    seen = sorted(int(b["indices"][0]) for rank in (0, 1) for b in straight[rank])
    assert seen == list(range(NUM_GOOD))
    assert not any(b["failed"] for rank in (0, 1) for b in straight[rank])
    resumed = run(1, epoch=1, start_batch=1)  # position (epoch 1, micro-batch 1), as a checkpoint stores it
    assert len(resumed) == len(straight[1]) - 1
    for x, y in zip(resumed, straight[1][1:]):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["input_values"], y["input_values"])


def test_bad_manifest_and_truncated_shard_have_clear_errors(shards, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an XKD shard manifest"):
        resolve_source(str(tmp_path / "manifest.json"))
    with pytest.raises(ValueError, match="no manifest.json"):
        load_manifest(str(tmp_path / "nothing"))
    copy = tmp_path / "cut"
    shutil.copytree(shards[0], copy)
    with open(copy / "shard-000000.tar", "r+b") as f:
        f.truncate(1024)
    source = resolve_source(str(copy))
    with pytest.raises(OSError, match="shorter than its manifest"):
        source.media(0)  # clip0 is the only clip of shard 0 (broken.mp4 came first and failed)


# ----------------------------------------------------------------------------------------------------------------
# End to end: training from shards, N steps straight == N/2 + resume + N/2 (N = 2: each run starts a process)
# ----------------------------------------------------------------------------------------------------------------


def _pretrain(data, out, *extra):
    cmd = [sys.executable, str(REPO / "training" / "pretrain.py"), "--config", TINY, "--train-data", data,
           "--output-dir", str(out), "--set", "train.per_device_batch_size=2", "checkpoint.every_steps=1",
           "data.num_workers=0", *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_training_from_http_shards_resumes_exactly(shards, http_url, tmp_path):
    from safetensors.torch import load_file

    url = f"{http_url}/manifest.json"
    straight = _pretrain(url, tmp_path / "straight", "--max-steps", "2")
    assert straight.returncode == 0, straight.stderr[-4000:]
    half = _pretrain(url, tmp_path / "resumed", "--max-steps", "1")
    assert half.returncode == 0, half.stderr[-4000:]
    rest = _pretrain(url, tmp_path / "resumed", "--max-steps", "2", "--resume")
    assert rest.returncode == 0, rest.stderr[-4000:]

    def final(folder):
        ckpt = pathlib.Path(latest_checkpoint(str(folder / "checkpoints")))
        return load_file(str(ckpt / "model.safetensors"))

    a, b = final(tmp_path / "straight"), final(tmp_path / "resumed")
    assert a.keys() == b.keys() and a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:5]}"


def test_prepare_data_command_line_from_a_list_writes_a_failure_report(raw, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_data_cli", REPO / "training" / "prepare_data.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    listing = tmp_path / "train.txt"
    listing.write_text(f"{raw / 'clip0.mp4'} label_a\n{raw / 'broken.mp4'} label_b\n")
    out = tmp_path / "out"
    code = cli.main(["--input", str(listing), "--output", str(out), "--short-side", "32", "--fps", "8",
                     "--num-workers", "1", "--no-progress"])
    assert code == 0
    failures = json.loads((out / "failures-0-of-1.json").read_text())
    assert [os.path.basename(f["source"]) for f in failures] == ["broken.mp4"]
    assert "broken.mp4" in capsys.readouterr().err
    source = load_manifest(str(out))
    with MediaReader(source.media(0)) as reader:
        assert reader.info.native_fps == 8.0 and reader.info.height == 32
    assert cli.main(["--input", str(listing), "--output", str(out), "--fps", "zero"]) == 2


def test_float_audio_option_stores_the_decoders_waveform_bit_for_bit(raw):
    from transformers_xkd.pretraining.prepare import transcode_clip

    data, meta = transcode_clip(raw / "clip1.mp4", PrepareSettings(short_side=32, audio_codec="pcm_f32le"))
    stored = decode_media(data, decode_video=False).audio
    reference = decode_media(raw / "clip1.mp4", decode_video=False).audio
    n = meta["streams"]["audio"]["samples"]
    assert n == 32000 and np.array_equal(stored[:n], reference[:n])
    with pytest.raises(ValueError, match="audio_codec"):
        PrepareSettings(audio_codec="mp3").validate()


def test_only_shard_sources_are_routed_to_the_shard_reader(raw, shards):
    from transformers_xkd.pretraining.shards import looks_like_shards

    assert looks_like_shards(str(shards[0])) and looks_like_shards(str(shards[0] / "manifest.json"))
    assert looks_like_shards("https://example.org/k400/manifest.json") and looks_like_shards("s3://bucket/k400/")
    assert looks_like_shards("hf://datasets/owner/name/manifest.json") and looks_like_shards("/x/shard-*.tar")
    assert not looks_like_shards(str(raw)) and not looks_like_shards("hf://owner/name")
    assert not looks_like_shards("owner/name") and not looks_like_shards(str(raw / "train.txt"))


def test_startup_benchmark_needs_no_scan_and_keeps_the_right_clips(tmp_path):
    """benchmarks/data_at_scale.py's start-up section on a small generated manifest (timings are not asserted)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_at_scale_bench", REPO / "benchmarks" / "data_at_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.startup(3000, str(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())["clips"]
    expected = sum(v > 1.1 and a > 1.1 for v, a in zip(manifest["video_duration"], manifest["audio_duration"]))
    assert out["clips"] == 3000 and out["kept"] == expected and 0 < expected < 3000
    index = json.loads((tmp_path / "clip_index.json").read_text())
    assert index["total"] == 3000 and len(index["kept"]) == expected
    for key in ("load_manifest_s", "filter_and_write_index_s", "total_s", "total_cpu_s", "resume_reload_index_s"):
        assert out[key] >= 0, key


def test_a_datasets_source_with_bytes_is_prepared(raw, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"video": [(raw / f"clip{i}.mp4").read_bytes() for i in range(2)], "label": [0, 1]}
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))
    source = resolve_source(str(folder))
    entries = [(source.name(i), source.media(i)) for i in source.items]
    summary = prepare_shards(entries, str(tmp_path / "out"), SETTINGS, clips_per_shard=8, progress=False)
    assert summary["clips"] == 2 and not summary["failures"]
    shards_source = load_manifest(str(tmp_path / "out"))
    assert shards_source.sources == ["row 0", "row 1"]
    with MediaReader(shards_source.media(1)) as reader:
        assert reader.info.has_video and reader.info.has_audio and reader.info.height == SETTINGS.short_side


def test_a_bug_while_preparing_stops_the_run_and_leaves_no_tar(tmp_path, monkeypatch):
    """Bad input is reported per clip; a programming error is not swallowed as a "failed clip" (a NameError used to
    turn every clip into a failure with a warning), and the half-written tar is removed."""
    from transformers_xkd.pretraining import prepare

    def broken(media, settings):
        raise TypeError("a bug")

    monkeypatch.setattr(prepare, "transcode_clip", broken)
    with pytest.raises(TypeError, match="a bug"):
        prepare.build_shard(str(tmp_path), 0, [("clip.mp4", b"not read")], SETTINGS)
    assert os.listdir(tmp_path) == []

    def bad_input(media, settings):
        raise prepare.MediaDecodingError("clip.mp4", "not a readable media file")

    monkeypatch.setattr(prepare, "transcode_clip", bad_input)
    index = prepare.build_shard(str(tmp_path), 0, [("clip.mp4", b"not read")], SETTINGS)
    assert index["clips"] == [] and index["failures"][0]["source"] == "clip.mp4"
    assert "not a readable media file" in index["failures"][0]["error"]
