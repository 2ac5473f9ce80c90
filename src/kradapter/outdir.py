"""An output directory that one run owns at a time and whose results switch from old to new in one step.

Lock: DIR/.lock, held with flock while a run works in DIR (the kernel drops it when the process dies, so a lock
left by a killed run never blocks the next one); the holder's pid is written inside for the error message.

Publish: a finished result set is written aside (DIR/.staging-*), renamed to DIR/.result-*, and made current by
replacing one symlink, DIR/.published, in one os.replace. The names users open (DIR/metrics.json,
DIR/adapter_model.safetensors, ...) are fixed symlinks into DIR/.published/, so a reader sees the whole old or the
whole new result set, never a mix; the old set is deleted only after the switch. A kill at any point leaves either
set whole; `clean_interrupted` removes what such a kill left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from .dist import is_launcher_rank0, is_main_process

CURRENT = ".published"
LOCK = ".lock"


class OutputDirBusy(ValueError):
    """Another live process holds the output directory."""


class OutputLock:
    """`with OutputLock(dir):` one run per directory; a second one gets OutputDirBusy naming the holder's pid.

    beside=True locks a destination that does not exist yet and must appear in one rename (`merge`, `convert`
    --out): the lock file is DIR's sibling .NAME.lock, removed on release; a locker re-checks after flock that the
    file it holds is still the one at that path, so a release never lets two runs in. `option` names the argument
    to change in the error. ``fresh`` (not beside): the caller made `directory` for this run (default: it does not
    exist yet); a fresh directory that a failed run leaves holding nothing but the lock is removed."""

    def __init__(
        self,
        directory: str | os.PathLike,
        beside: bool = False,
        option: str = "--output-dir",
        fresh: bool | None = None,
    ):
        self.directory = Path(directory)
        self.beside = beside
        self.option = option
        self.path = self.directory.parent / f".{self.directory.name}.lock" if beside else self.directory / LOCK
        self._fd: int | None = None
        self._fresh = fresh
        self._created = False

    def __enter__(self) -> OutputLock:
        if not is_launcher_rank0():  # under torchrun rank 0 holds it for all ranks, group joined or not
            return self
        if not self.beside:
            self._created = not self.directory.exists() if self._fresh is None else self._fresh
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                if not _try_flock(fd):
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    raise OutputDirBusy(
                        f"output dir {self.directory} is in use by another kradapter run (pid {holder}); "
                        f"wait for it to finish or use another {self.option}"
                    )
                if self.beside and not _same_file(fd, self.path):  # its holder removed it as we opened it
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            if self.beside:  # removed while held: a waiter that opened it sees it gone and opens a new one
                self.path.unlink(missing_ok=True)
            else:  # the file stays: unlinking it would let two runs lock two different files
                os.ftruncate(self._fd, 0)
                if self._created and exc[0] is not None:
                    self._remove_if_untouched()  # still holding the lock: no other run can be working here
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def _remove_if_untouched(self) -> None:
        """A run refused before writing anything (an option checked against the data) leaves no directory
        behind that it created; anything else in it (partial results, checkpoints) stays for the next run."""
        try:
            if [p.name for p in self.directory.iterdir()] == [LOCK]:
                self.path.unlink()
                self.directory.rmdir()
        except OSError:
            pass


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def new_dir_mode() -> int:
    """The mode os.mkdir gives a new directory under this process's umask (mkdtemp gives 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def give_usual_permissions(directory: str | os.PathLike) -> None:
    """Give `directory`, and every directory and file under it, the mode a new one gets under the umask:
    mkdtemp makes 0700 directories and safetensors writes 0600 files, which another user (a server) cannot read."""
    dir_mode = new_dir_mode()
    file_mode = dir_mode & 0o666
    os.chmod(directory, dir_mode)
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames:
            if not os.path.islink(os.path.join(dirpath, name)):
                os.chmod(os.path.join(dirpath, name), dir_mode)
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):
                os.chmod(os.path.join(dirpath, name), file_mode)


def make_temp_dir_beside(dest: str | os.PathLike, purpose: str) -> Path:
    """A new directory next to `dest` (so it can become `dest` in one rename), with mkdir's usual permissions.

    Called while holding ``OutputLock(dest, beside=True)``: no other live run writes into `dest`, so an earlier
    ``.NAME.PURPOSE-*`` directory there is a killed run's half-written output, removed first."""
    import glob

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}.{purpose}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{purpose}-", dir=dest.parent))
    os.chmod(tmp, new_dir_mode())
    return tmp


@contextlib.contextmanager
def published_beside(dest: str | os.PathLike, purpose: str) -> Iterator[Path]:
    """``with published_beside(out, "merging") as tmp:`` write into `tmp`; when the block ends normally, `tmp` gets
    the usual permissions and becomes `out` (new or empty) in one rename; when it raises, `tmp` is removed and
    `out` is untouched. Hold ``OutputLock(out, beside=True)`` around it."""
    dest = Path(dest)
    tmp = make_temp_dir_beside(dest, purpose)
    try:
        yield tmp
        give_usual_permissions(tmp)
        if dest.exists():
            dest.rmdir()  # empty (the caller checked); rename cannot replace a directory
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _try_flock(fd: int) -> bool:
    """True when this process now holds the lock. Without flock (some network filesystems, Windows) the pid
    inside decides: a live other process holds it, a dead one's lock is stale."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except (ImportError, OSError):
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return not (text.isdigit() and int(text) != os.getpid() and _alive(int(text)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _symlink_replace(target: str, path: Path) -> None:
    """Point `path` at `target` in one step (a new link under a temporary name, renamed over `path`)."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.link.tmp"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_stable_link(path: Path) -> bool:
    return path.is_symlink() and os.readlink(path) == f"{CURRENT}/{path.name}"


def current_version(directory: str | os.PathLike) -> Path | None:
    """The DIR/.result-* directory DIR/.published points at, if any."""
    link = Path(directory) / CURRENT
    if not link.is_symlink():
        return None
    return Path(directory) / os.readlink(link)


def publish_version(staging: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Make the finished directory `staging` (inside `dest`) the current result set of `dest` in one step."""
    staging, dest = Path(staging), Path(dest)
    if not is_main_process():
        shutil.rmtree(staging, ignore_errors=True)
        return
    version = dest / f".result-{uuid.uuid4().hex[:12]}"
    os.rename(staging, version)
    give_usual_permissions(version)  # mkdtemp made it 0700, safetensors its files 0600
    names = sorted(p.name for p in version.iterdir())
    for name in names:  # new names: links that dangle (read as absent) until the switch
        if not os.path.lexists(dest / name):
            _symlink_replace(f"{CURRENT}/{name}", dest / name)
    old = current_version(dest)
    _symlink_replace(version.name, dest / CURRENT)  # the switch
    for name in names:  # plain files of a directory written before results were versioned: one rename each
        path = dest / name
        if not _is_stable_link(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            _symlink_replace(f"{CURRENT}/{name}", path)
    for path in dest.iterdir():  # names the old set had and the new one does not
        if _is_stable_link(path) and not path.exists():
            path.unlink()
    if old is not None and old.resolve() != version.resolve():
        shutil.rmtree(old, ignore_errors=True)


def clean_interrupted(root: str | os.PathLike) -> list[Path]:
    """Remove what interrupted writes and publishes left under `root` (call it holding the lock): staging
    directories, result sets that never became current, temporary files, links into a set that does not exist.
    Returns what was removed."""
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir() or not is_launcher_rank0():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        live = current_version(here)
        for name in list(dirnames) + filenames:
            path = here / name
            stale = (
                name.startswith(".staging-")
                or name.endswith(".tmp")
                and name.startswith(".")
                or name.startswith(".result-")
                and (live is None or path.resolve() != live.resolve())
                or _is_stable_link(path)
                and not path.exists()
            )
            if not stale:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith((".result-", ".staging-")) and (here / d).exists() and not (here / d).is_symlink()
        ]
    return removed
