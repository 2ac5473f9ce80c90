"""kradapter.outdir: a result set switches in one step; leftovers of interrupted publishes are removed."""

from __future__ import annotations

import os

from kradapter.io import staging_dir
from kradapter.outdir import CURRENT, clean_interrupted, current_version, publish_version


def _publish(dest, files: dict):
    stage = staging_dir(dest)
    for name, text in files.items():
        (stage / name).write_text(text)
    publish_version(stage, dest)


def test_publish_switches_the_whole_set_and_drops_the_old_one(tmp_path):
    _publish(tmp_path, {"metrics.json": "old", "adapter.bin": "old", "only_old.txt": "x"})
    first = current_version(tmp_path)
    _publish(tmp_path, {"metrics.json": "new", "adapter.bin": "new"})
    assert (tmp_path / "metrics.json").read_text() == "new" and (tmp_path / "adapter.bin").read_text() == "new"
    assert not os.path.lexists(tmp_path / "only_old.txt") and not first.exists()
    assert os.readlink(tmp_path / "metrics.json") == f"{CURRENT}/metrics.json"
    assert current_version(tmp_path).stat().st_mode & 0o055 == 0o055 & ~_umask()  # not mkdtemp's 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_plain_files_of_an_older_layout_become_the_new_set(tmp_path):
    (tmp_path / "metrics.json").write_text("legacy")
    _publish(tmp_path, {"metrics.json": "new"})
    assert (tmp_path / "metrics.json").is_symlink() and (tmp_path / "metrics.json").read_text() == "new"


def test_clean_interrupted_removes_leftovers_and_keeps_the_live_set(tmp_path):
    _publish(tmp_path, {"metrics.json": "live"})
    (tmp_path / ".staging-abc").mkdir()
    (tmp_path / ".result-dead").mkdir()
    (tmp_path / ".metrics.json.x1.tmp").write_text("half")
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / ".result.json.y.tmp").write_text("half")
    os.symlink(f"{CURRENT}/summary.txt", tmp_path / "summary.txt")  # made before a switch that never came
    removed = {p.name for p in clean_interrupted(tmp_path)}
    assert removed == {".staging-abc", ".result-dead", ".metrics.json.x1.tmp", ".result.json.y.tmp", "summary.txt"}
    assert (tmp_path / "metrics.json").read_text() == "live"
