"""Outputs of a run: the JSON document, the printed table, and atomic file writes (temp name + os.replace)."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path in the destination's directory; on success rename it onto `path`, else delete it.

    A crash or Ctrl-C mid-write leaves the previous file (if any) untouched and no half-written one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would have
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    text = json.dumps(obj, indent=1, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    with atomic_path(path, ".safetensors") as tmp:
        save_file(tensors, str(tmp))


def check_writable_dir(out: str | os.PathLike) -> Path:
    """Create `out` if needed and prove a file can be written there; one clear error otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output dir {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"output dir {out} is not writable: {err.strerror or err}") from err
    return out


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("kradapter", "torch", "peft", "transformers", "safetensors", "numpy", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_table(doc: dict) -> str:
    """One block per target: each method's trainable count and metrics, in the run's method order."""
    cols = ("method", "trainable", "nuclear_err", "sq%LoRA", "frob_err", "rel_frob", "eff_rank", "seconds")
    lines = []
    for target, by_method in doc["results"].items():
        t = doc["targets"][target]
        lines.append(f"{target}  (target effective rank {t['effective_rank']:.1f}, rank bound {t['max_rank']})")
        lines.append("  " + " ".join(f"{c:>12}" for c in cols))
        for method, r in by_method.items():
            cells = (method, _fmt(r["trainable"], ","), _fmt(r["nuclear_error"], ".4f"),
                     _fmt(r["sq_nuclear_pct_of_lora"], ".1f"), _fmt(r["frobenius_error"], ".1f"),
                     _fmt(r["relative_frobenius_error"], ".3f"), _fmt(r["effective_rank"], ".1f"),
                     _fmt(r["seconds"], ".2f"))
            lines.append("  " + " ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)
