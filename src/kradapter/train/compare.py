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
from ..learning_rates import default_lr
from .baselines import BALANCED
from .interval_tables import check_interval, interval_tables
from .methods import budget_k1, check_method
from .uncertainty import DEFAULT_SAMPLES


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


def _child(train, arg_dict: dict) -> None:
    """One method's `kradapter train` (``train``: the CLI's train command, handed down), in a fresh process."""
    args = argparse.Namespace(**arg_dict)
    try:
        code = train(args)
    except (ValueError, TypeError, FileNotFoundError, KeyError, ImportError) as err:
        print(f"kradapter compare ({args.method}): error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)


def parse_budgets(value: str) -> list[str]:
    """'low,medium,high' -> the budget words, each checked (one error naming an unknown one)."""
    words = [w.strip() for w in value.split(",") if w.strip()]
    if not words or len(set(words)) != len(words):
        raise ValueError(f"--budgets {value!r}: give distinct comma-separated budgets, e.g. low,medium,high")
    for word in words:
        budget_k1(word)
    return words


def run_methods(
    args: argparse.Namespace,
    methods: list[str],
    lrs: dict[str, float],
    grids: dict,
    out: Path,
    train,
    budget: str | None = None,
    zero_cache: Path | None = None,
) -> int:
    # Not fork: a parent that already ran torch (thread pools, CUDA) can deadlock its forked children. A fork
    # server imports the heavy libraries once, in a clean process, and forks each method's run from it.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["kradapter.train.commands", "kradapter.train.runner"])
    else:
        ctx = multiprocessing.get_context("spawn")
    for method in methods:
        child = dict(
            vars(args),
            method=method,
            lr=None if grids[method] else lrs[method],
            lr_grid=grids[method],
            output_dir=str(out / method),
            zero_shot_cache=str(zero_cache or out / "zero_shot.json"),
            budget=budget,
        )
        child.pop("run", None)
        child.pop("budgets", None)
        print(f"== {method} ==", flush=True)
        proc = ctx.Process(target=_child, args=(train, child))
        proc.start()
        interrupted = False
        while True:
            try:
                proc.join()
                break
            except KeyboardInterrupt:  # the child got the same Ctrl-C: let it save its checkpoint
                interrupted = True
        if interrupted or proc.exitcode == 130:
            print(
                f"kradapter compare: interrupted during {method}; run the same command again to resume", file=sys.stderr
            )
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


GROUPS = ("ID", "NID", "OOD")
FLAG = "†"  # a score that does not beat the majority-class rate of its set (or group)


def _balanced_groups(metrics: dict[str, dict]) -> list[str]:
    return [g for g in GROUPS if any(g in (m.get("balanced_groups") or {}) for m in metrics.values())]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _flagged(block, majority) -> str:
    cell = _cell(block)
    if majority is not None and block and block.get("mean") is not None and block["mean"] <= majority + 1e-12:
        return cell + FLAG
    return cell


def baseline_rows(first: dict, n_cols: int, bal: list[str]) -> list[list[str]]:
    """The majority-class and chance rows (group means of the test sets' rates), when the task gives them."""
    groups = (first.get("baselines") or {}).get("groups") or {}
    if not groups:
        return []
    tests = first["baselines"]["tests"]
    rows = []
    for kind, label, bal_key in (("majority", "majority class", "majority_balanced"), ("chance", "chance", "chance")):
        bal_cells = []
        for g in bal:  # a constant answer's balanced accuracy is 1/K; a uniform guess's is the chance rate too
            vals = [tests[n][bal_key] for n, t in first["tests"].items() if t["group"] == g and n in tests]
            bal_cells.append(_pct(sum(vals) / len(vals)) if vals else "-")
        rows.append(
            [label, "-", "-", *[_pct(groups.get(g, {}).get(kind)) for g in GROUPS], *bal_cells]
            + ["-"] * (n_cols - 6 - len(bal))
        )
    return rows


def _untuned(method: str, lr: float) -> str:
    """A rate not picked on validation says so, and whether it is the method's documented default."""
    return " (default, untuned)" if lr == default_lr(method) else " (set, untuned)"


def comparison_rows(metrics: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    bal = _balanced_groups(metrics)
    header = [
        "method",
        "trainable",
        "lr",
        "ID",
        "NID",
        "OOD",
        *[f"{g} bal." for g in bal],
        "r_gen",
        "eff. rank",
        "nuclear",
        "Frobenius",
        "s/epoch",
        "cpu x",
        "peak MB",
    ]
    rows = []
    first = next(iter(metrics.values()))
    group_major = {g: b.get("majority") for g, b in ((first.get("baselines") or {}).get("groups") or {}).items()}
    rows += baseline_rows(first, len(header), bal)
    zero = first.get("zero_shot")
    if zero:
        g, zb = zero["groups"], zero.get("balanced_groups") or {}
        rows.append(
            ["zero-shot", "0", "-"] + [_pct(g.get(k)) for k in GROUPS] + [_pct(zb.get(k)) for k in bal] + ["n/a"] * 7
        )
    base_time = None
    for method, m in metrics.items():
        spe = m["efficiency"]["seconds_per_epoch"]["mean"]
        # the ratio from CPU seconds: the runs are one after another, and CPU time stretches far less than wall
        # time when the machine is busy (older runs without CPU seconds fall back to wall time)
        cpe = (m["efficiency"].get("cpu_seconds_per_epoch") or {}).get("mean") or spe
        base_time = base_time or cpe
        s = m["spectral_summary"]
        lr = f"{m['learning_rate']:g}" + ("*" if m.get("lr_selection") else _untuned(method, m["learning_rate"]))
        rows.append(
            [
                method,
                f"{m['trainable_params']:,}",
                lr,
                *[_flagged(m["groups"].get(k), group_major.get(k)) for k in GROUPS],
                *[_cell((m.get("balanced_groups") or {}).get(k)) for k in bal],
                _cell(m.get("r_gen"), 1.0, 2),
                _cell(s["effective_rank"], 1.0, 1),
                _cell(s["nuclear_norm"], 1.0, 3),
                _cell(s["frobenius_norm"], 1.0, 4),
                f"{spe:.1f}" if spe else "-",
                f"{cpe / base_time:.2f}" if cpe and base_time else "-",
                f"{m['efficiency']['peak_memory_mb']:.0f}",
            ]
        )
    return header, rows


def format_table(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]  # rows may be empty
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def per_test_rows(metrics: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """The per-test-set table (the paper's Table 3 layout: one column per test set, then the groups)."""
    first = next(iter(metrics.values()))
    names = list(first["tests"])
    header = ["method"] + [f"{n} ({first['tests'][n]['group']})" for n in names]
    rows = []
    tests_base = (first.get("baselines") or {}).get("tests") or {}
    if tests_base:
        for kind, label in (("majority", "majority class"), ("chance", "chance")):
            rows.append([label] + [_pct(tests_base.get(n, {}).get(kind)) for n in names])
    zero = first.get("zero_shot")
    if zero:
        rows.append(["zero-shot"] + [_pct(zero["tests"][n]) for n in names])
    for method, m in metrics.items():
        rows.append([method] + [_flagged(m["tests"][n], tests_base.get(n, {}).get("majority")) for n in names])
    return header, rows


def per_test_extra_rows(metrics: dict[str, dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """One per-test-set table per other score the task reports (balanced accuracy, acc_norm...)."""
    first = next(iter(metrics.values()))
    names = list(first["tests"])
    kinds = sorted({k for m in metrics.values() for t in m["tests"].values() for k in (t.get("extra") or {})})
    tests_base = (first.get("baselines") or {}).get("tests") or {}
    tables = []
    for kind in kinds:
        header = ["method"] + [f"{n} ({first['tests'][n]['group']})" for n in names]
        rows = []
        if kind == BALANCED and tests_base:
            rows.append(["majority class"] + [_pct(tests_base.get(n, {}).get("majority_balanced")) for n in names])
            rows.append(["chance"] + [_pct(tests_base.get(n, {}).get("chance")) for n in names])
        zero = first.get("zero_shot")
        if zero and zero.get("extra"):
            rows.append(["zero-shot"] + [_pct(zero["extra"].get(n, {}).get(kind)) for n in names])
        for method, m in metrics.items():
            rows.append([method] + [_cell((m["tests"][n].get("extra") or {}).get(kind)) for n in names])
        tables.append((kind, header, rows))
    return tables


def majority_flags(metrics: dict[str, dict]) -> list[str]:
    """One line per method that does not beat the majority-class rate on some test set."""
    lines = []
    for method, m in metrics.items():
        base = (m.get("baselines") or {}).get("tests") or {}
        bad = [f"{n} ({_cell(m['tests'][n])} vs {_pct(base[n]['majority'])})" for n in m.get("not_above_majority", [])]
        if bad:
            lines.append(f"{FLAG} {method} does not beat the majority-class rate on: " + ", ".join(bad))
    return lines


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
        label = (
            method
            if len(m["seeds"]) == len(next(iter(metrics.values()))["seeds"])
            else f"{method} ({len(m['seeds'])} seed(s))"
        )
        ax1.bar(x + i * width, means, width, yerr=stds if len(m["seeds"]) > 1 else None, label=label, capsize=3)
    zero = next(iter(metrics.values())).get("zero_shot")
    if zero:
        for j, g in enumerate(groups):
            if g in zero["groups"]:
                ax1.hlines(
                    100 * zero["groups"][g],
                    j - 0.1,
                    j + 0.9,
                    colors="k",
                    linestyles="dashed",
                    label="zero-shot" if j == 0 else None,
                )
    # What a constant answer scores: a bar at the majority line is not a result (the table flags it too).
    base_groups = (next(iter(metrics.values())).get("baselines") or {}).get("groups") or {}
    for kind, style, color in (("majority", "dotted", "tab:red"), ("chance", "dashdot", "tab:gray")):
        drawn = False
        for j, g in enumerate(groups):
            rate = (base_groups.get(g) or {}).get(kind)
            if rate is not None:
                label = f"{'majority class' if kind == 'majority' else 'chance'}" if not drawn else None
                ax1.hlines(100 * rate, j - 0.1, j + 0.9, colors=color, linestyles=style, label=label)
                drawn = True
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
    if ax2.get_legend_handles_labels()[1]:  # runs from before the history was recorded have none
        ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def summarise(
    out: Path, methods: list[str], command: str, dirs: dict[str, Path] | None = None, samples: int = DEFAULT_SAMPLES
) -> str:
    """Tables and plot of the methods' runs (in DIR/METHOD, or where `dirs` says), written to DIR; with 95%
    intervals and paired differences (``samples`` bootstrap draws) where the runs recorded per-example results."""
    run_dirs = {m: (dirs or {}).get(m, out / m) for m in methods}
    metrics = {m: read_json(run_dirs[m] / "metrics.json") for m in methods}
    unc = interval_tables(metrics, run_dirs, samples)
    first = metrics[methods[0]]
    header, rows = comparison_rows(metrics)
    t_header, t_rows = per_test_rows(metrics)
    extra_tables = per_test_extra_rows(metrics)
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
    ]
    for kind, e_header, e_rows in extra_tables:
        lines += [f"{kind} x 100:", format_table(e_header, e_rows), ""]
    unc_tables = [
        ("95% intervals x 100", unc["table"]),
        ("paired differences x 100 (first method - second, same seeds and examples)", unc["pairwise_table"]),
    ]
    for title, t in unc_tables:
        if t["rows"]:  # one method has no pairs
            lines += [f"{title}:", format_table(t["header"], t["rows"]), ""]
    notes = [
        "eff. rank / nuclear / Frobenius: means over adapted layers of Delta W; s/epoch: wall seconds of the "
        "training steps per epoch (extrapolated where a run trained less than one epoch); cpu x: this process's "
        f"CPU seconds per epoch relative to {methods[0]}'s, the methods run one after another; peak MB: "
        f"{first['efficiency']['memory_kind']}.",
        *load_caveat(metrics),
    ]
    if (first.get("baselines") or {}).get("tests"):
        notes.append(
            "majority class: accuracy of always giving a set's most frequent answer; chance: of a uniform "
            "guess; bal.: balanced accuracy (mean recall over classes; a constant answer gets 1/K); "
            f"{FLAG}: not above the majority-class rate."
        )
    notes += majority_flags(metrics)
    for method in methods:
        sel = metrics[method].get("lr_selection")
        if sel:
            notes.append(
                f"lr* {method}: picked {sel['picked']:g} on the validation split from "
                + ", ".join(f"{k} -> {100 * v:.1f}" for k, v in sel["grid"].items())
            )
    notes += unc["notes"]
    lines += notes
    text = "\n".join(lines) + "\n"
    md_extra = []
    for kind, e_header, e_rows in extra_tables:
        md_extra += [f"{kind} x 100:", "", format_table(e_header, e_rows, markdown=True), ""]
    for title, t in unc_tables:
        md_extra += [f"{title}:", "", format_table(t["header"], t["rows"], markdown=True), ""]
    md = (
        "\n".join(
            [
                f"`{command}`",
                "",
                lines[0],
                "",
                format_table(header, rows, markdown=True),
                "",
                format_table(t_header, t_rows, markdown=True),
                "",
                *md_extra,
                *notes,
            ]
        )
        + "\n"
    )
    write_text(out / "comparison.txt", text)
    write_text(out / "comparison.md", md)
    write_json(
        out / "comparison.json",
        {
            "command": command,
            "methods": methods,
            "table": {"header": header, "rows": rows},
            "per_test": {"header": t_header, "rows": t_rows},
            "per_test_extra": {k: {"header": h, "rows": r} for k, h, r in extra_tables},
            "not_above_majority": {m: metrics[m].get("not_above_majority", []) for m in methods},
            "intervals": {k: v for k, v in unc.items() if k != "notes"},
        },
    )
    plot(metrics, out / "comparison.png")
    return text


def budget_rows(runs: dict[str, dict[str, dict]]) -> tuple[list[str], list[list[str]]]:
    """runs[budget][method] = metrics -> one row per method and budget: trainable count and group scores."""
    first = next(iter(next(iter(runs.values())).values()))
    groups = [g for g in GROUPS if g in first["groups"]]
    header = [
        "method",
        "budget",
        "k1",
        "trainable",
        *groups,
        *[f"{g} bal." for g in groups if g in (first.get("balanced_groups") or {})],
    ]
    rows = []
    methods = list(next(iter(runs.values())))
    for method in methods:
        for budget, by_method in runs.items():
            m = by_method[method]
            if method == "full" and budget != next(iter(runs)):
                continue  # one size: listed once
            rows.append(
                [
                    method,
                    "-" if method == "full" else budget,
                    "-" if method == "full" else m.get("k1", "-"),
                    f"{m['trainable_params']:,}",
                    *[_cell(m["groups"].get(g)) for g in groups],
                    *[
                        _cell((m.get("balanced_groups") or {}).get(g))
                        for g in groups
                        if g in (first.get("balanced_groups") or {})
                    ],
                ]
            )
    return header, rows


def plot_budgets(runs: dict[str, dict[str, dict]], path: Path) -> None:
    """Score against trainable parameters, one line per method, one panel per test-set group (Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(next(iter(runs.values())).values()))
    groups = [g for g in GROUPS if g in first["groups"]]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for method in next(iter(runs.values())):
            points = sorted(
                {
                    (
                        by[method]["trainable_params"],
                        100 * by[method]["groups"][group]["mean"],
                        100 * (by[method]["groups"][group]["std"] or 0),
                    )
                    for by in runs.values()
                }
            )
            ax.errorbar(
                [p[0] for p in points],
                [p[1] for p in points],
                yerr=[p[2] for p in points],
                marker="o",
                capsize=3,
                label=method,
            )
        major = ((first.get("baselines") or {}).get("groups") or {}).get(group, {}).get("majority")
        if major is not None:
            ax.axhline(100 * major, color="k", linestyle="dashed", linewidth=1, label="majority class")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(f"{first['metric']} (%)")
        ax.set_title(f"{group} (mean ± std over seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def run_budgets(args, methods, lrs, grids, out: Path, budgets: list[str], command: str, train) -> int:
    """Every method at every budget (full fine-tuning, which has one size, once), then the ablation table and plot."""
    runs: dict[str, dict[str, dict]] = {}
    first_dir = out / f"budget-{budgets[0]}"
    for budget in budgets:
        sub = out / f"budget-{budget}"
        sub.mkdir(parents=True, exist_ok=True)
        these = [m for m in methods if m != "full" or budget == budgets[0]]
        print(f"=== budget {budget} (KRAdapter k1 = {budget_k1(budget)}) ===", flush=True)
        code = run_methods(args, these, lrs, grids, sub, train, budget, zero_cache=out / "zero_shot.json")
        if code:
            return code
        dirs = {m: (sub if m in these else first_dir) / m for m in methods}
        print(summarise(sub, methods, command, dirs, samples=check_interval(args)[1]), end="")
        runs[budget] = {m: read_json(dirs[m] / "metrics.json") for m in methods}
    header, rows = budget_rows(runs)
    first = next(iter(runs[budgets[0]].values()))
    intro = (
        f"budget ablation: task {first['task']}, metric {first['metric']} x 100, {len(first['seeds'])} seed(s), "
        f"{first['training']['steps']} steps of batch {first['training']['batch_size']}; budgets "
        + ", ".join(f"{b} = KRAdapter k1 {budget_k1(b)}" for b in budgets)
        + ", comparators matched to it"
    )
    write_text(out / "budgets.txt", intro + "\n\n" + format_table(header, rows) + "\n")
    write_text(
        out / "budgets.md",
        (f"`{command}`\n\n" if command else "") + intro + "\n\n" + format_table(header, rows, markdown=True) + "\n",
    )
    write_json(
        out / "budgets.json",
        {"command": command, "budgets": budgets, "methods": methods, "table": {"header": header, "rows": rows}},
    )
    plot_budgets(runs, out / "budgets.png")
    print("\n" + intro + "\n\n" + format_table(header, rows))
    print(
        f"written: {out}/budgets.txt, budgets.md, budgets.json, budgets.png (and each budget's comparison in "
        f"{out}/budget-WORD/)"
    )
    return 0


def _check_before_writing(args: argparse.Namespace, lrs: dict[str, float], grids: dict[str, str | None]) -> None:
    """What each method's `kradapter train` would refuse, refused once before the comparison writes anything."""
    import math

    from .options import check_options
    from .runner import parse_lr_grid, parse_seeds

    check_options(args)
    parse_seeds(args.seeds)
    for method, lr in lrs.items():
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"--lr {args.lr!r}: the learning rate of {method} must be positive and finite, got {lr}")
    for method, grid in grids.items():
        try:
            parse_lr_grid(grid)
        except ValueError as err:
            raise ValueError(f"{err} (for {method})") from None


def run(args: argparse.Namespace, train) -> int:
    """`kradapter compare`: ``train`` is the function that runs one method's `kradapter train` (the CLI passes its
    own, so this module does not import the CLI)."""
    methods = parse_methods(args.methods)
    budgets = parse_budgets(args.budgets) if getattr(args, "budgets", None) else None
    lrs = parse_lr_map(args.lr, methods)
    grids = parse_lr_grid_map(args.lr_grid, methods)
    _, samples = check_interval(args)  # bootstrap, the one method: before anything trains
    both = [m for m in methods if grids[m] and args.lr and ("=" not in args.lr or f"{m}=" in args.lr)]
    if both:
        raise ValueError(f"--lr and --lr-grid both set a learning rate for {', '.join(both)}")
    _check_before_writing(args, lrs, grids)
    out = Path(args.output_dir or f"runs/compare-{args.task}")
    out.mkdir(parents=True, exist_ok=True)
    command = "kradapter " + " ".join(sys.argv[1:]) if sys.argv[0].endswith(("kradapter", "__main__.py")) else ""
    if budgets:
        return run_budgets(args, methods, lrs, grids, out, budgets, command, train)
    code = run_methods(args, methods, lrs, grids, out, train)
    if code:
        return code
    print(summarise(out, methods, command, samples=samples), end="")
    print(f"written: {out}/comparison.txt, comparison.md, comparison.json, comparison.png")
    return 0


def load_caveat(metrics: dict) -> list[str]:
    """One line with the load average each method's timed steps saw, and a warning when it changed by more than
    half a core between methods: wall-time comparisons across them then mean little."""
    spans = {m: (v["efficiency"].get("load_average") or None) for m, v in metrics.items()}
    seen = {m: s for m, s in spans.items() if s}
    if not seen:
        return []
    line = "load average during timed steps: " + ", ".join(
        f"{m} {s[0]:g}" + (f"-{s[1]:g}" if s[1] != s[0] else "") for m, s in seen.items()
    )
    low = min(s[0] for s in seen.values())
    high = max(s[1] for s in seen.values())
    if high - low > 0.5:
        line += f"; the load changed ({low:g} to {high:g}): compare times with care, or rerun on an idle machine"
    return [line]
