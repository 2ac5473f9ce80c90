"""Atomic writes and the cache directory. Every file a run writes goes to a temporary name in the same directory
and is renamed into place, so an interrupted run never leaves a half-written result behind."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..dist import is_main_process


def cache_dir(*parts: str) -> Path:
    """~/.cache/kradapter/... (or $KRADAPTER_CACHE/...): where offline defaults are built once and reused."""
    root = os.environ.get("KRADAPTER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kradapter"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) on a temporary file next to `path`, then rename it into place. Under torchrun only
    rank 0 writes (every rank computes the same results)."""
    path = Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> Path:
    text = json.dumps(_json_safe(data), indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_figure(fig, path: str | Path) -> Path:
    """matplotlib figure -> PNG, atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def publish_dir(src: str | Path, dest: str | Path) -> None:
    """Move every file of a finished temporary directory into `dest`, one os.replace per file, so `dest` holds
    either the old or the new version of each file, never a partial one. Under torchrun only rank 0 publishes;
    the other ranks' staging directories are dropped."""
    src, dest = Path(src), Path(dest)
    if not is_main_process():
        shutil.rmtree(src, ignore_errors=True)
        return
    for item in sorted(src.rglob("*")):
        if item.is_file():
            target = dest / item.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item, target)
    shutil.rmtree(src, ignore_errors=True)


def staging_dir(dest: str | Path) -> Path:
    """A fresh temporary directory next to `dest` (same filesystem, so publish_dir's renames are atomic)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=dest))
