"""Files every command writes, written atomically, and the cache directory.

Every file goes to a temporary name in its destination's directory and is renamed into place (os.replace), so an
interrupted run leaves the previous file (if any) untouched and never a half-written one. Under torchrun only rank 0
writes: every rank computes the same results.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .dist import is_main_process


def cache_dir(*parts: str) -> Path:
    """The cache directory, created: where offline defaults and derived data are built once and reused.

    ``$KRADAPTER_CACHE/...``, else ``$XDG_CACHE_HOME/kradapter/...``, else ``~/.cache/kradapter/...``.

    Args:
        *parts: Subdirectories below the cache root.

    Returns:
        The directory's path.
    """
    root = os.environ.get("KRADAPTER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kradapter"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on any error (Ctrl-C too) delete it.

    Args:
        path: The final file name.
        suffix: A file-type ending the temporary name keeps, for writers that insist on one (``".png"``,
            ``".safetensors"``).

    Yields:
        The temporary path to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = "") -> Path:
    """Call ``write(tmp_path)``, then rename the result onto ``path`` (rank 0 only; other ranks write nothing).

    Args:
        path: The final file name.
        write: Writes the file's content to the path it is given.
        suffix: As in [`atomic_path`][kradapter.io.atomic_path].

    Returns:
        ``path``.
    """
    path = Path(path)
    if is_main_process():
        with atomic_path(path, suffix) as tmp:
            write(tmp)
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


def write_json(path: str | os.PathLike, data: Any) -> Path:
    # Serialised before the temporary file exists: an unserialisable value fails with nothing touched.
    """Write ``data`` as indented JSON, atomically; NaN and infinities become ``null`` so every reader can parse it.

    The text is serialised before the temporary file exists: an unserialisable value fails with nothing touched.

    Args:
        path: The final file name.
        data: JSON-serialisable data.

    Returns:
        ``path``.
    """
    text = json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8), atomically.

    Args:
        path: The final file name.
        text: The content.

    Returns:
        ``path``.
    """
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (UTF-8).

    Args:
        path: The file.

    Returns:
        The parsed data.
    """
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG, atomically.

    Args:
        fig: The ``matplotlib.figure.Figure``.
        path: The final file name.
        dpi: The resolution.

    Returns:
        ``path``.
    """
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"), ".png")


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as a safetensors file, atomically.

    Args:
        tensors: Name -> tensor.
        path: The final file name.
        metadata: String metadata stored in the file's header.

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), ".safetensors")


def check_writable_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and prove a file can be written there: one clear error otherwise, before any work.

    Args:
        out: The output directory.

    Returns:
        ``out`` as a ``Path``.

    Raises:
        ValueError: If ``out`` exists and is not a directory, or it cannot be created or written.
    """
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


def staging_dir(dest: str | os.PathLike) -> Path:
    """A fresh temporary directory inside ``dest`` (same filesystem, so ``publish_dir``'s renames are atomic).

    Args:
        dest: The directory the results will be published into; created if needed.

    Returns:
        The staging directory's path.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=dest))


def publish_dir(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move every file of a finished staging directory into ``dest``, one ``os.replace`` per file.

    ``dest`` then holds either the old or the new version of each file, never a partial one. Other ranks' staging
    directories are dropped.

    Args:
        src: The staging directory (removed afterwards).
        dest: The destination directory.
    """
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
