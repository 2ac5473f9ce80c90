"""The uncertainty part of `kradapter compare`: each method's 95% interval per test-set group (and per test set
where a group has several), each pair's paired difference with its interval, p-value and verdict, read from the
runs' per_example.json (statistics: uncertainty.py). Runs without that file get a note instead, never an error."""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import numpy as np

from ..io import read_json
from .uncertainty import DEFAULT_SAMPLES, DEFAULT_SEED, INTERVAL_METHODS, RESAMPLING, paired_difference, score_interval

PER_EXAMPLE = "per_example.json"  # beside each run's metrics.json (runner.py writes it)
NO_RECORD = "no per-example results: rerun for intervals"
GROUPS = ("ID", "NID", "OOD")
NEEDED_FORMULA = (
    "needs: seed x example pairs n for which 1.96 * sd / sqrt(n) < |difference|, i.e. n = floor((1.96 sd / "
    "|difference|)^2) + 1, sd the standard deviation of the paired per-(seed, example) differences (normal "
    "approximation; ignores the correlation of one seed's examples)"
)


def check_interval(args: argparse.Namespace) -> tuple[str, int]:
    """(--interval, --bootstrap-samples) of a Namespace (argparse already checked the command line's; a Namespace
    built in code gets the same one-line error)."""
    method = getattr(args, "interval", None) or INTERVAL_METHODS[0]
    if method not in INTERVAL_METHODS:
        raise ValueError(f"--interval {method!r}: unknown interval method; accepted: {', '.join(INTERVAL_METHODS)}")
    samples = getattr(args, "bootstrap_samples", None) or DEFAULT_SAMPLES
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 100:
        raise ValueError(f"--bootstrap-samples must be an integer >= 100, got {samples!r}")
    return method, samples


def load_records(dirs: dict[str, Path], metrics: dict[str, dict]) -> dict[str, dict | None]:
    """Each method's per_example.json as {"seeds", "tests": {set: seeds x examples array}}, or None when absent
    or not matching its metrics.json (another run's file)."""
    records: dict[str, dict | None] = {}
    for method, directory in dirs.items():
        path = directory / PER_EXAMPLE
        if not path.is_file():
            records[method] = None
            continue
        raw = read_json(path)
        seeds, sizes = raw.get("seeds"), metrics[method].get("sizes") or {}
        tests = {n: np.asarray(v, dtype=np.float64) for n, v in (raw.get("tests") or {}).items()}
        fits = seeds == metrics[method]["seeds"] and all(
            t.ndim == 2 and t.shape[0] == len(seeds) and t.shape[1] == sizes.get(n, t.shape[1])
            for n, t in tests.items()
        )
        records[method] = {"seeds": seeds, "tests": tests} if fits and tests else None
    return records


def units(first: dict) -> list[tuple[str, list[str]]]:
    """(label, test sets) for each group, then each set of a group that has several."""
    by_group = {g: [n for n, t in first["tests"].items() if t["group"] == g] for g in GROUPS}
    out = [(g, names) for g, names in by_group.items() if names]
    out += [(f"{n} ({g})", [n]) for g, names in by_group.items() if len(names) > 1 for n in names]
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _span(iv) -> str:
    return f"[{_pct(iv.low)}, {_pct(iv.high)}]"


def _verdict(iv) -> str:
    if iv.separated:
        return "separated"
    if iv.needed_n is None:
        return "not separated at this size (no difference observed)"
    return f"not separated at this size (needs ~{iv.needed_n:,} seed x example pairs; now {iv.n_now:,})"


def _rows_of(record: dict, seeds: list[int], names: list[str]) -> list[np.ndarray] | None:
    if any(n not in record["tests"] for n in names):
        return None
    index = [record["seeds"].index(s) for s in seeds]
    return [record["tests"][n][index] for n in names]


def interval_tables(metrics: dict[str, dict], dirs: dict[str, Path], samples: int, seed: int = DEFAULT_SEED) -> dict:
    """Everything compare prints and saves about uncertainty: {"table", "pairwise_table" ({header, rows}),
    "per_method", "pairwise" (numbers), "notes" (lines)}."""
    first = next(iter(metrics.values()))
    records = load_records(dirs, metrics)
    unit_list = units(first)
    header = ["method", *[label for label, _ in unit_list]]
    rows, per_method = [], {}
    for method, record in records.items():
        if record is None:
            per_method[method] = None
            rows.append([method] + [NO_RECORD] + ["-"] * (len(unit_list) - 1))
            continue
        cells, per_method[method] = [], {}
        for label, names in unit_list:
            mats = _rows_of(record, record["seeds"], names)
            if mats is None:
                cells.append("-")
                continue
            iv = score_interval(mats, samples, seed)
            per_method[method][label] = {"estimate": iv.estimate, "low": iv.low, "high": iv.high}
            cells.append(f"{_pct(iv.estimate)} {_span(iv)}")
        rows.append([method, *cells])
    p_header = ["pair", "set", "difference", "95% interval", "p", "verdict"]
    p_rows, pairwise = [], []
    for a, b in combinations(list(records), 2):
        ra, rb = records[a], records[b]
        if ra is None or rb is None:
            p_rows.append([f"{a} - {b}", "-", "-", "-", "-", NO_RECORD])
            continue
        common = [s for s in ra["seeds"] if s in rb["seeds"]]
        for label, names in unit_list:
            xa, xb = _rows_of(ra, common, names), _rows_of(rb, common, names)
            if not common or xa is None or xb is None or any(x.shape != y.shape for x, y in zip(xa, xb)):
                why = "no common seeds" if not common else "not the same test examples"
                p_rows.append([f"{a} - {b}", label, "-", "-", "-", f"not paired: {why}"])
                continue
            iv = paired_difference(xa, xb, samples, seed)
            pairwise.append(
                {
                    "a": a,
                    "b": b,
                    "set": label,
                    "seeds": common,
                    "difference": iv.estimate,
                    "low": iv.low,
                    "high": iv.high,
                    "p": iv.p_value,
                    "separated": iv.separated,
                    "needed_pairs": iv.needed_n,
                    "pairs_now": iv.n_now,
                }
            )
            p_text = f"{iv.p_value:.3g}" if iv.p_value > 0 else f"< {1 / samples:.2g}"
            p_rows.append([f"{a} - {b}", label, f"{100 * iv.estimate:+.1f}", _span(iv), p_text, _verdict(iv)])
    notes = [f"intervals x 100: {RESAMPLING}; {samples} draws, seed {seed}.", NEEDED_FORMULA + "."]
    notes += [
        f"{m}: {NO_RECORD} (its seeds were trained before runs recorded per-example correctness: rerun into a new "
        "--output-dir; or its metric is not an accuracy)"
        for m, r in records.items()
        if r is None
    ]
    return {
        "table": {"header": header, "rows": rows},
        "pairwise_table": {"header": p_header, "rows": p_rows},
        "per_method": per_method,
        "pairwise": pairwise,
        "notes": notes,
        "method": INTERVAL_METHODS[0],
        "samples": samples,
        "seed": seed,
        "resampling": RESAMPLING,
        "needed": NEEDED_FORMULA,
    }
