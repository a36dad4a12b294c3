"""The atomic write-then-rename helper: a complete file or the old one, never a truncated one."""

import os

import pytest

from transformers_xkd.utils_io import atomic_path, atomic_write_bytes, atomic_write_text, replace_folder


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "index.json"
    target.write_text("old")
    atomic_write_text(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    atomic_write_bytes(target, b"\x00\x01", fsync=True)
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path)) == ["index.json"]


def test_atomic_path_failure_keeps_old_file_and_removes_temporary(tmp_path):
    target = tmp_path / "cache.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target, suffix=".npz") as tmp:
            assert tmp.endswith(".npz") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["cache.npz"]


def test_replace_folder_swaps_a_whole_folder_and_removes_the_old_one(tmp_path):
    final, staged, aside = tmp_path / "ckpt", tmp_path / ".tmp-ckpt", tmp_path / ".old-ckpt"
    staged.mkdir()
    (staged / "model.safetensors").write_bytes(b"new")
    replace_folder(staged, final, aside)  # nothing there yet: a plain move
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and (final / "model.safetensors").read_bytes() == b"new"
    staged.mkdir()
    (staged / "config.json").write_text("{}")
    replace_folder(staged, final, aside)  # the old folder goes aside, then away; no file of it survives
    assert sorted(os.listdir(tmp_path)) == ["ckpt"] and sorted(os.listdir(final)) == ["config.json"]
