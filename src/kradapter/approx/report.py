"""Outputs of a run: the JSON document's library versions and the printed table (files: kradapter.io)."""

from __future__ import annotations

import math
import platform


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("kradapter", "torch", "peft", "transformers", "safetensors", "numpy", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


TABLE_NOTE = (
    "nuclear_err compares sorted singular values only (does the update have the target's spectrum?); frob_err\n"
    "compares entries (is it the target?). A full-rank update can match a flat spectrum while its entries stay\n"
    "far off, so KRAdapter's nuclear error can be well below LoRA's while its Frobenius error is about equal.\n"
    "sq%LoRA / sqF%LoRA: the squared error as % of LoRA's."
)


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_table(doc: dict) -> str:
    """One block per target: each method's trainable count and metrics, in the run's method order."""
    cols = ("method", "trainable", "nuclear_err", "sq%LoRA", "frob_err", "sqF%LoRA", "rel_frob", "eff_rank", "seconds")
    lines = []
    for target, by_method in doc["results"].items():
        t = doc["targets"][target]
        lines.append(f"{target}  (target effective rank {t['effective_rank']:.1f}, rank bound {t['max_rank']})")
        lines.append("  " + " ".join(f"{c:>12}" for c in cols))
        for method, r in by_method.items():
            cells = (
                method,
                _fmt(r["trainable"], ","),
                _fmt(r["nuclear_error"], ".4f"),
                _fmt(r["sq_nuclear_pct_of_lora"], ".1f"),
                _fmt(r["frobenius_error"], ".1f"),
                _fmt(r.get("sq_frobenius_pct_of_lora"), ".1f"),
                _fmt(r["relative_frobenius_error"], ".3f"),
                _fmt(r["effective_rank"], ".1f"),
                _fmt(r["seconds"], ".2f"),
            )
            lines.append("  " + " ".join(f"{c:>12}" for c in cells))
    lines.append(TABLE_NOTE)
    return "\n".join(lines)
