"""Figures laid out like the paper's Figures 1, 4 and 5, written atomically (matplotlib's Agg canvas, no pyplot)."""

from __future__ import annotations

import os

import numpy as np

from ..io import atomic_path

PREVIEW = 128  # the paper shows 128 x 128 matrices (appendix C.3)


def _figure(width: float, height: float, dpi: int = 90):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def _save(fig, path: str | os.PathLike) -> None:
    """PNG with a 256-colour palette: matrices of noise make true-colour PNGs of several MB, this ~4x smaller."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    image = Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    with atomic_path(path, ".png") as tmp:
        image.save(tmp, format="PNG", optimize=True)


def _colors(methods: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _sqrt_axis(ax) -> None:
    ax.set_yscale("function", functions=(lambda y: np.sqrt(np.clip(y, 0, None)), np.square))


def figure1(doc: dict, previews: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Row 1 the targets, row 2 squared nuclear error as % of LoRA's (absolute error over each bar), row 3 the
    singular value spectra of target and reconstructions on a square-root scale."""
    targets = list(doc["results"])
    methods = list(doc["config"]["methods"])
    colors = _colors(methods)
    fig = _figure(2.6 * len(targets) + 0.5, 8.0)
    axes = fig.subplots(3, len(targets), squeeze=False)
    for col, target in enumerate(targets):
        ax = axes[0, col]
        ax.imshow(previews[target], cmap="RdBu_r", interpolation="nearest")
        ax.set_title(target, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])

        ax = axes[1, col]
        rows = doc["results"][target]
        shown = [m for m in methods if rows[m]["sq_nuclear_pct_of_lora"] is not None]
        pct = [rows[m]["sq_nuclear_pct_of_lora"] for m in shown]
        bars = ax.bar(range(len(shown)), pct, color=[colors[m] for m in shown])
        for bar, m in zip(bars, shown):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{rows[m]['nuclear_error']:.3g}",
                    ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(range(len(shown)), shown, rotation=90, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylim(0, max(pct + [100.0]) * 1.35)
        if col == 0:
            ax.set_ylabel("sq. nuclear error, % of LoRA", fontsize=8)

        ax = axes[2, col]
        spectra = doc["spectra"][target]
        ax.plot(doc["targets"][target]["spectrum"], color="black", lw=2.0, label="target")
        for m in methods:
            if spectra[m] is not None:  # None: the fit diverged
                ax.plot(spectra[m], color=colors[m], lw=1.0, label=m)
        _sqrt_axis(ax)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("index", fontsize=8)
        if col == 0:
            ax.set_ylabel("singular value (sqrt scale)", fontsize=8)
    axes[2, -1].legend(fontsize=6, loc="upper right")
    d_out, d_in = doc["config"]["size"]
    fig.suptitle(f"Approximating {d_out} x {d_in} targets at KRAdapter's parameter budget "
                 f"({doc['config']['iters']} AdamW steps, seed {doc['seed']})", fontsize=11)
    _save(fig, path)


def figure5(targets: dict[str, np.ndarray], recons: dict[str, dict[str, np.ndarray]], methods: list[str],
            path: str | os.PathLike) -> None:
    """Per target (row): the target, then for each method its reconstruction and the |error| map."""
    ncols = 1 + 2 * len(methods)
    fig = _figure(1.05 * ncols, 1.15 * len(targets) + 0.6, dpi=80)
    axes = fig.subplots(len(targets), ncols, squeeze=False)
    for row, (name, t) in enumerate(targets.items()):
        lim = float(np.abs(t).max()) or 1.0
        cells = [("target", t, "RdBu_r", -lim, lim)]
        for m in methods:
            r = recons[name][m]
            cells.append((m, r, "RdBu_r", -lim, lim))
            cells.append((f"|err| {m}", np.abs(t - r), "magma", 0.0, lim))
        for col, (title, img, cmap, lo, hi) in enumerate(cells):
            ax = axes[row, col]
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=6)
        axes[row, 0].set_ylabel(name, fontsize=7)
    size = next(iter(targets.values())).shape
    fig.suptitle(f"{size[0]} x {size[1]} reconstructions and |error| maps (error colour scale = target's max)",
                 fontsize=9)
    _save(fig, path)


def figure4(doc: dict, path: str | os.PathLike) -> None:
    """Per shape: normalised singular values of the Khatri-Rao and Kronecker products (effective ranks in the
    legend); last panel: rank of U ⊙ V against n (Theorem 3.1)."""
    shapes = doc["shapes"]
    fig = _figure(3.0 * (len(shapes) + 1), 3.2)
    axes = fig.subplots(1, len(shapes) + 1, squeeze=False)[0]
    for ax, row in zip(axes, shapes):
        for key, color in (("khatri_rao", "tab:red"), ("kronecker", "tab:blue")):
            s = np.asarray(row[key]["spectrum"])
            ax.plot(s / s[0], color=color, label=f"{key} (eff. rank {row[key]['effective_rank']:.0f})")
        ax.set_yscale("log")
        ax.set_title(f"{row['shape'][0]} x {row['shape'][1]}: params KR {row['khatri_rao']['params']:,}, "
                     f"Kron {row['kronecker']['params']:,}", fontsize=8)
        ax.set_xlabel("index", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("singular value / largest", fontsize=8)
    ax = axes[-1]
    th = doc["theorem"]
    ns = [p["n"] for p in th["points"]]
    ax.plot(ns, [p["rank_khatri_rao"] for p in th["points"]], "o-", color="tab:red", label="rank(U ⊙ V)")
    ax.plot(ns, [p["rank_lora"] for p in th["points"]], "s-", color="tab:gray", label="rank(Uᵀ V) (LoRA)")
    ax.plot(ns, [min(n, th["k"] ** 2) for n in ns], "k--", lw=0.8, label="min(n, k²)")
    ax.set_title(f"Theorem 3.1, k = {th['k']}", fontsize=9)
    ax.set_xlabel("n", fontsize=8)
    ax.set_ylabel("rank", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    _save(fig, path)


def preview(m, size: int = PREVIEW) -> np.ndarray:
    """The first `size` rows and columns (the paper's choice for real targets in Figure 5)."""
    return m[: min(size, m.shape[0]), : min(size, m.shape[1])].detach().cpu().numpy()
