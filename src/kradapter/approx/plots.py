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
    """Row 1 the targets, row 2 squared nuclear error as % of LoRA's (bars, each bar's value beside its method's
    name under the axis) with the squared Frobenius error as % of LoRA's (black diamonds), row 3 the singular value
    spectra of target and reconstructions on a square-root scale."""
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
        ax.bar(range(len(shown)), pct, color=[colors[m] for m in shown])
        frob = [rows[m].get("sq_frobenius_pct_of_lora") for m in shown]
        ax.plot(
            [i for i, f in enumerate(frob) if f is not None],
            [f for f in frob if f is not None],
            "kD",
            ms=4,
            label="sq. Frobenius error, % of LoRA",
        )
        ax.axhline(100.0, color="gray", lw=0.6, ls=":")
        # each bar's value goes in its tick label, where no diamond can sit on it
        ax.set_xticks(range(len(shown)), [f"{m} {v:.0f}" for m, v in zip(shown, pct)], rotation=90, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylim(0, max(pct + [f for f in frob if f is not None] + [100.0]) * 1.3)
        if col == 0:
            ax.set_ylabel("sq. nuclear error (bars), % of LoRA", fontsize=8)
            ax.legend(fontsize=6, loc="upper left", handletextpad=0.2, borderpad=0.3)

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
    fig.suptitle(
        f"Approximating {d_out} x {d_in} targets at KRAdapter's parameter budget "
        f"({doc['config']['iters']} AdamW steps, seed {doc['seed']})\nbars: squared nuclear error (singular "
        "values only), diamonds: squared Frobenius error (entries), both as % of LoRA's; a full-rank\n"
        "update can match a target's spectrum without matching its entries",
        fontsize=10,
    )
    _save(fig, path)


def figure5(
    targets: dict[str, np.ndarray],
    recons: dict[str, dict[str, np.ndarray]],
    methods: list[str],
    path: str | os.PathLike,
) -> None:
    """Per target, two rows: the target and each method's reconstruction, then each method's |error| map. Every
    panel has its own colour scale and colour bar: reconstructions are often much smaller than the target (high
    Frobenius error), and on the target's scale they would be blank."""
    ncols = 1 + len(methods)
    fig = _figure(1.75 * ncols, 3.4 * len(targets) + 0.5, dpi=100)
    axes = fig.subplots(2 * len(targets), ncols, squeeze=False)
    for t_index, (name, t) in enumerate(targets.items()):
        top, bottom = axes[2 * t_index], axes[2 * t_index + 1]
        _panel(fig, top[0], t, "RdBu_r", f"{name}: target", symmetric=True)
        bottom[0].axis("off")
        bottom[0].text(
            0.5,
            0.5,
            f"{name}\n|target - reconstruction|\nper method (right)",
            ha="center",
            va="center",
            fontsize=8,
            transform=bottom[0].transAxes,
        )
        for col, m in enumerate(methods, start=1):
            r = recons[name][m]
            _panel(fig, top[col], r, "RdBu_r", m, symmetric=True)
            _panel(fig, bottom[col], np.abs(t - r), "magma", f"|err| {m}", symmetric=False)
    size = next(iter(targets.values())).shape
    fig.suptitle(
        f"{size[0]} x {size[1]} targets, reconstructions and |error| maps (each panel on its own colour "
        "scale, shown by its bar)",
        fontsize=11,
    )
    _save(fig, path)


def _panel(fig, ax, img: np.ndarray, cmap: str, title: str, symmetric: bool) -> None:
    from matplotlib.ticker import MaxNLocator

    # The 99.5th percentile, not the max, sets the scale: one outlier would otherwise wash the panel out.
    hi = float(np.percentile(np.abs(img), 99.5)) or float(np.abs(img).max()) or 1.0
    shown = ax.imshow(img, cmap=cmap, vmin=-hi if symmetric else 0.0, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=6)
    bar.locator = MaxNLocator(3)
    bar.update_ticks()


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
        ax.set_title(
            f"{row['shape'][0]} x {row['shape'][1]}: params KR {row['khatri_rao']['params']:,}, "
            f"Kron {row['kronecker']['params']:,}",
            fontsize=8,
        )
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
