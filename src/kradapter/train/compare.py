"""`kradapter compare`: several methods on one task, each in its own process (so peak memory is that method's),
then the paper-style table (ID, NID, OOD, r_gen, effective rank, norms, time per epoch, peak memory) and a plot.
Each method's run lives in DIR/METHOD and resumes like `kradapter train`; the zero-shot scores are computed once.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

from ..io import read_json, save_figure, write_json, write_text
from .methods import check_method
from ..learning_rates import default_lr


def parse_methods(value: str) -> list[str]:
    methods = [m.strip() for m in value.split(",") if m.strip()]
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"--methods {value!r}: give distinct comma-separated methods, e.g. kradapter,lora,full")
    for m in methods:
        check_method(m)
    return methods


def parse_lr_map(value: str | None, methods: list[str]) -> dict[str, float]:
    """'3e-3' (every method) or 'kradapter=3e-3,lora=1e-3' (others keep their default)."""
    lrs = {m: default_lr(m) for m in methods}
    if not value:
        return lrs
    try:
        if "=" not in value:
            return {m: float(value) for m in methods}
        for item in value.split(","):
            name, _, lr = item.partition("=")
            name = name.strip()
            if name not in methods:
                raise ValueError(f"--lr {value!r}: {name!r} is not one of --methods ({', '.join(methods)})")
            lrs[name] = float(lr)
    except ValueError as err:
        if "--lr" in str(err):
            raise
        raise ValueError(f"--lr {value!r}: give one rate or METHOD=RATE pairs, e.g. kradapter=3e-3,lora=1e-3") from err
    return lrs


def parse_lr_grid_map(value: str | None, methods: list[str]) -> dict[str, str | None]:
    """'1e-4,1e-3' (every method) or 'kradapter=1e-3:3e-3,lora=3e-4:1e-3' (others: no grid) -> train's --lr-grid."""
    if not value:
        return {m: None for m in methods}
    if "=" not in value:
        return {m: value for m in methods}
    grids: dict[str, str | None] = {m: None for m in methods}
    for item in value.split(","):
        name, _, lrs = item.partition("=")
        name = name.strip()
        if name not in methods:
            raise ValueError(f"--lr-grid {value!r}: {name!r} is not one of --methods ({', '.join(methods)})")
        grids[name] = ",".join(lrs.split(":"))
    return grids


def _child(arg_dict: dict) -> None:
    """One method's `kradapter train`, in a fresh process."""
    from .commands import run_train

    args = argparse.Namespace(**arg_dict)
    try:
        code = run_train(args)
    except (ValueError, TypeError, FileNotFoundError, KeyError, ImportError) as err:
        print(f"kradapter compare ({args.method}): error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)


def run_methods(args: argparse.Namespace, methods: list[str], lrs: dict[str, float], grids: dict, out: Path) -> int:
    # Not fork: a parent that already ran torch (thread pools, CUDA) can deadlock its forked children. A fork
    # server imports the heavy libraries once, in a clean process, and forks each method's run from it.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["kradapter.train.commands", "kradapter.train.runner"])
    else:
        ctx = multiprocessing.get_context("spawn")
    for method in methods:
        child = dict(vars(args), method=method, lr=None if grids[method] else lrs[method], lr_grid=grids[method],
                     output_dir=str(out / method), zero_shot_cache=str(out / "zero_shot.json"))
        child.pop("run", None)
        print(f"== {method} ==", flush=True)
        proc = ctx.Process(target=_child, args=(child,))
        proc.start()
        interrupted = False
        while True:
            try:
                proc.join()
                break
            except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save its checkpoint
                interrupted = True
        if interrupted or proc.exitcode == 130:
            print(f"kradapter compare: interrupted during {method}; run the same command again to resume",
                  file=sys.stderr)
            return 130
        if proc.exitcode != 0:
            print(f"kradapter compare: {method} failed (exit code {proc.exitcode})", file=sys.stderr)
            return proc.exitcode or 1
    return 0


def _cell(block, scale: float = 100.0, digits: int = 1) -> str:
    if not block or block.get("mean") is None:
        return "-"
    if len(block.get("per_seed", [])) > 1:
        return f"{scale * block['mean']:.{digits}f} ± {scale * block['std']:.{digits}f}"
    return f"{scale * block['mean']:.{digits}f}"


def _untuned(method: str, lr: float) -> str:
    """A rate not picked on validation says so, and whether it is the method's documented default."""
    return " (default, untuned)" if lr == default_lr(method) else " (set, untuned)"


def comparison_rows(metrics: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "trainable", "lr", "ID", "NID", "OOD", "r_gen", "eff. rank", "nuclear", "Frobenius",
              "s/epoch", "time x", "peak MB"]
    rows = []
    first = next(iter(metrics.values()))
    zero = first.get("zero_shot")
    if zero:
        g = zero["groups"]
        rows.append(["zero-shot", "0", "-"] + [f"{100 * g[k]:.1f}" if k in g else "-" for k in ("ID", "NID", "OOD")]
                    + ["n/a"] * 7)
    base_time = None
    for method, m in metrics.items():
        spe = m["efficiency"]["seconds_per_epoch"]["mean"]
        base_time = base_time or spe
        s = m["spectral_summary"]
        lr = f"{m['learning_rate']:g}" + ("*" if m.get("lr_selection") else _untuned(method, m["learning_rate"]))
        rows.append([
            method, f"{m['trainable_params']:,}", lr,
            *[_cell(m["groups"].get(k)) for k in ("ID", "NID", "OOD")],
            _cell(m.get("r_gen"), 1.0, 2),
            _cell(s["effective_rank"], 1.0, 1), _cell(s["nuclear_norm"], 1.0, 3), _cell(s["frobenius_norm"], 1.0, 4),
            f"{spe:.1f}" if spe else "-", f"{spe / base_time:.2f}" if spe and base_time else "-",
            f"{m['efficiency']['peak_memory_mb']:.0f}",
        ])
    return header, rows


def format_table(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def per_test_rows(metrics: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The per-test-set table (the paper's Table 3 layout: one column per test set, then the groups)."""
    first = next(iter(metrics.values()))
    names = list(first["tests"])
    header = ["method"] + [f"{n} ({first['tests'][n]['group']})" for n in names]
    rows = []
    zero = first.get("zero_shot")
    if zero:
        rows.append(["zero-shot"] + [f"{100 * zero['tests'][n]:.1f}" for n in names])
    for method, m in metrics.items():
        rows.append([method] + [_cell(m["tests"][n]) for n in names])
    return header, rows


def _seed_caption(metrics: dict[str, dict]) -> str:
    """Say what the bars are: a mean ± std needs two seeds or more, and methods may have run different counts."""
    counts = sorted({len(m["seeds"]) for m in metrics.values()})
    if counts == [1]:
        return "test-set groups (1 seed: no error bars)"
    n = str(counts[0]) if len(counts) == 1 else "-".join(map(str, (counts[0], counts[-1])))
    return f"test-set groups (mean ± std over {n} seeds)"


def plot(metrics: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    groups = [g for g in ("ID", "NID", "OOD") if any(g in m["groups"] for m in metrics.values())]
    width = 0.8 / max(1, len(metrics))
    x = np.arange(len(groups))
    for i, (method, m) in enumerate(metrics.items()):
        means = [100 * (m["groups"].get(g, {}).get("mean") or 0) for g in groups]
        stds = [100 * (m["groups"].get(g, {}).get("std") or 0) for g in groups]
        label = method if len(m["seeds"]) == len(next(iter(metrics.values()))["seeds"]) else \
            f"{method} ({len(m['seeds'])} seed(s))"
        ax1.bar(x + i * width, means, width, yerr=stds if len(m["seeds"]) > 1 else None, label=label, capsize=3)
    zero = next(iter(metrics.values())).get("zero_shot")
    if zero:
        for j, g in enumerate(groups):
            if g in zero["groups"]:
                ax1.hlines(100 * zero["groups"][g], j - 0.1, j + 0.9, colors="k", linestyles="dashed",
                           label="zero-shot" if j == 0 else None)
    ax1.set_xticks(x + width * (len(metrics) - 1) / 2, groups)
    ax1.set_ylabel(f"{next(iter(metrics.values()))['metric']} (%)")
    ax1.set_title(_seed_caption(metrics))
    ax1.legend(fontsize=8)
    for method, m in metrics.items():
        hist = m.get("effective_rank_history") or []
        if hist:
            ax2.plot([h[0] for h in hist], [h[1] for h in hist], marker=".", label=method)
    ax2.set_xlabel("training step")
    ax2.set_ylabel("mean effective rank of Delta W")
    ax2.set_title("effective rank as training goes (first seed)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def summarise(out: Path, methods: list[str], command: str) -> str:
    metrics = {m: read_json(out / m / "metrics.json") for m in methods}
    first = metrics[methods[0]]
    header, rows = comparison_rows(metrics)
    t_header, t_rows = per_test_rows(metrics)
    seeds = first["seeds"]
    lines = [
        f"task {first['task']}, model {first['model']}, metric {first['metric']} x 100, "
        f"{len(seeds)} seed(s) {seeds}, {first['training']['steps']} steps of batch {first['training']['batch_size']}, "
        f"sizes {first['sizes']}",
        "",
        format_table(header, rows),
        "",
        format_table(t_header, t_rows),
        "",
        "eff. rank / nuclear / Frobenius: means over adapted layers of Delta W; time x: seconds per epoch relative "
        f"to {methods[0]} in this run; peak MB: {first['efficiency']['memory_kind']}.",
    ]
    grids = [(m, metrics[m]["lr_selection"]) for m in methods if metrics[m].get("lr_selection")]
    for method, sel in grids:
        lines.append(f"lr* {method}: picked {sel['picked']:g} on the validation split from "
                     + ", ".join(f"{k} -> {100 * v:.1f}" for k, v in sel["grid"].items()))
    text = "\n".join(lines) + "\n"
    md = "\n".join([f"`{command}`", "", lines[0], "", format_table(header, rows, markdown=True), "",
                    format_table(t_header, t_rows, markdown=True), "", *lines[6:]]) + "\n"
    write_text(out / "comparison.txt", text)
    write_text(out / "comparison.md", md)
    write_json(out / "comparison.json", {"command": command, "methods": methods, "table": {"header": header, "rows": rows},
                                         "per_test": {"header": t_header, "rows": t_rows}})
    plot(metrics, out / "comparison.png")
    return text


def run(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods)
    lrs = parse_lr_map(args.lr, methods)
    grids = parse_lr_grid_map(args.lr_grid, methods)
    both = [m for m in methods if grids[m] and args.lr and ("=" not in args.lr or f"{m}=" in args.lr)]
    if both:
        raise ValueError(f"--lr and --lr-grid both set a learning rate for {', '.join(both)}")
    out = Path(args.output_dir or f"runs/compare-{args.task}")
    out.mkdir(parents=True, exist_ok=True)
    code = run_methods(args, methods, lrs, grids, out)
    if code:
        return code
    command = "kradapter " + " ".join(sys.argv[1:]) if sys.argv[0].endswith(("kradapter", "__main__.py")) else ""
    print(summarise(out, methods, command), end="")
    print(f"written: {out}/comparison.txt, comparison.md, comparison.json, comparison.png")
    return 0
