"""Data files in the benchmarks' public formats, read through `datasets`, checked before any training.

`--data` entries name a role and a path: ``train=F``, ``validation=F``, ``test=F`` (an in-distribution test set
called "test"), or ``id:NAME=F``, ``nid:NAME=F``, ``ood:NAME=F`` for named test sets in the ID / near-ID / OOD
groups of the paper's tables. F is a .json/.jsonl/.csv/.tsv/.parquet file or an imagefolder directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

GROUPS = {"id": "ID", "nid": "NID", "ood": "OOD"}
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class DataSpec:
    role: str  # "train", "validation" or "test"
    name: str  # test-set name ("train"/"validation" for those roles)
    group: str  # "ID", "NID" or "OOD" for tests; "" otherwise
    path: Path


def parse_data_args(items: Sequence[str] | None) -> list[DataSpec]:
    """Parse --data entries; errors name the entry and the expected form."""
    specs: list[DataSpec] = []
    for item in items or []:
        key, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(
                f"--data {item!r}: expected ROLE=PATH with ROLE train, validation, test, id:NAME, nid:NAME or ood:NAME"
            )
        key = key.strip()
        if key in ("train", "validation"):
            specs.append(DataSpec(key, key, "", Path(path)))
        elif key == "test":
            specs.append(DataSpec("test", "test", "ID", Path(path)))
        elif ":" in key and key.split(":", 1)[0].lower() in GROUPS and key.split(":", 1)[1]:
            group, name = key.split(":", 1)
            specs.append(DataSpec("test", name, GROUPS[group.lower()], Path(path)))
        else:
            raise ValueError(
                f"--data {item!r}: unknown role {key!r}; use train, validation, test, id:NAME, nid:NAME or ood:NAME"
            )
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"--data: {', '.join(dupes)} given more than once")
    for spec in specs:
        if not spec.path.exists():
            raise FileNotFoundError(f"--data {spec.name}: {spec.path} does not exist")
    return specs


def spec_args(specs: Sequence[DataSpec]) -> list[str]:
    """The --data entries that reproduce `specs` (how defaults are spelled out in metrics.json)."""
    return [f"{s.role if s.role != 'test' else s.group.lower() + ':' + s.name}={s.path}" for s in specs]


def load_file(path: str | Path):
    """One file (or imagefolder directory) as a `datasets.Dataset`."""
    from datasets import load_dataset

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        return load_dataset("imagefolder", data_dir=str(path), split="train", keep_in_memory=True)
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(
            f"{path}: unsupported data format {path.suffix!r}; use one of "
            f"{', '.join(sorted(BUILDERS))} or an imagefolder directory"
        )
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True, **kwargs)
    except Exception as err:  # datasets raises many types for malformed files; name the file once
        raise ValueError(f"{path}: could not be read as {builder}: {err}") from err


def require_columns(ds, path: str | Path, needed: Iterable[str]) -> None:
    """One error naming the file, the first missing column and the columns found."""
    found = list(ds.column_names)
    for column in needed:
        if column not in found:
            raise ValueError(f"{path}: missing column '{column}' (columns found: {', '.join(found) or 'none'})")


def check_labels(values: Iterable, classes: Sequence, path: str | Path, column: str) -> None:
    """Every label must be one of the class list; name the first that is not, and where."""
    allowed = set(classes)
    for row, value in enumerate(values):
        if value not in allowed:
            shown = ", ".join(map(str, classes[:20])) + (", ..." if len(classes) > 20 else "")
            raise ValueError(
                f"{path}: row {row} has label {value!r} in column '{column}', not one of the classes [{shown}]"
            )


def subsample(ds, n: int | None, seed: int):
    """At most n rows, chosen with a fixed seed (the whole set when n is None or larger)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def split_off(ds, n: int, seed: int):
    """(rest, held_out) with n held-out rows chosen with a fixed seed: the validation split when none is given."""
    if n <= 0 or len(ds) < 2:
        raise ValueError(
            f"cannot carve a validation split of {n} rows from {len(ds)} training rows; pass --data validation=FILE"
        )
    if n >= len(ds):
        raise ValueError(
            f"--val-size {n}: the training data has {len(ds)} rows; hold out at most {len(ds) - 1} so that "
            "training keeps at least one (or pass --data validation=FILE)"
        )
    parts = ds.train_test_split(test_size=n, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
