"""kradapter.io: every file a command writes appears whole or not at all."""

import json

import pytest

from kradapter.io import (
    atomic_path,
    cache_dir,
    check_writable_dir,
    publish_dir,
    save_safetensors,
    staging_dir,
    write_json,
)


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"old": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            tmp.write_text('{"half": ')
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_unserialisable_json_fails_before_anything_is_written(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, {"old": 1})
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_non_finite_numbers_are_written_as_null(tmp_path):
    path = write_json(tmp_path / "sub" / "m.json", {"a": float("nan"), "b": [1.5, float("inf")], 3: -float("inf")})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5, None], "3": None}


def test_written_files_get_the_permissions_open_would_give(tmp_path):
    path = write_json(tmp_path / "m.json", {})
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others (mkstemp alone would make it 0600)


def test_publish_dir_moves_a_finished_staging_directory_into_place(tmp_path):
    dest = tmp_path / "adapter"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    stage = staging_dir(dest)
    (stage / "nested").mkdir()
    (stage / "nested" / "w.txt").write_text("new")
    (stage / "old.txt").write_text("replaced")
    publish_dir(stage, dest)
    assert (dest / "nested" / "w.txt").read_text() == "new" and (dest / "old.txt").read_text() == "replaced"
    assert not stage.exists()


def test_safetensors_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    t = torch.arange(6.0).reshape(2, 3)
    path = save_safetensors({"delta": t}, tmp_path / "cache" / "d.safetensors")
    assert torch.equal(load_file(path)["delta"], t)
    assert [p.name for p in path.parent.iterdir()] == ["d.safetensors"]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KRADAPTER_CACHE", str(tmp_path / "c"))
    assert cache_dir("models") == tmp_path / "c" / "models" and (tmp_path / "c" / "models").is_dir()
    monkeypatch.delenv("KRADAPTER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "kradapter"


def test_check_writable_dir_names_the_problem(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        check_writable_dir(blocker)
    assert blocker.read_text() == "keep"
    assert check_writable_dir(tmp_path / "new" / "dir").is_dir()
