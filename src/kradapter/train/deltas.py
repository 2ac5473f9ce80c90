"""Delta W of every adapted layer, and its spectral summary (the columns of the paper's Tables 2, 4 and 10).

Each method's update is its spec's ``delta`` (kradapter.specs): the change the layer really applies, as a
d_out x d_in matrix (a conv kernel flattened to out x rest) -- for DoRA its merged weight minus W0, not B A. The
approximation benchmark reads the same function. Full fine-tuning's update is W - W0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..spectral import spectral_summary


def short_name(name: str) -> str:
    for prefix in ("base_model.model.", "base_model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


@torch.no_grad()
def adapter_deltas(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """{layer name: Delta W as a 2-D matrix} for every PEFT tuner layer holding `adapter_name` (default: the
    active adapter), each from its method's spec (a method no spec describes: its layer's get_delta_weight)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ..specs import MethodSpec, spec_for_config

    configs = getattr(model, "peft_config", {})
    generic = MethodSpec()
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        names = [adapter_name] if adapter_name else list(module.active_adapters)
        for adapter in names:
            if adapter not in getattr(module, module.adapter_layer_names[0], {}):
                continue
            spec = spec_for_config(configs[adapter]) if adapter in configs else None
            out[short_name(name)] = (spec or generic).delta(module, adapter).detach().float()
            break
    return out


def spectral_table(deltas: dict[str, torch.Tensor]) -> dict[str, dict]:
    """{layer: {effective_rank, nuclear_norm, frobenius_norm, rank, shape}}; refuses a non-finite update."""
    bad = [name for name, delta in deltas.items() if not bool(torch.isfinite(delta).all())]
    if bad:
        raise ValueError(
            f"Delta W of {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} holds NaN or Inf values (training "
            "diverged?); no spectral report of a non-finite update"
        )
    table = {}
    for name, delta in deltas.items():
        row = spectral_summary(delta)
        row["shape"] = list(delta.shape)
        table[name] = row
    return table


def spectral_means(table: dict[str, dict]) -> dict[str, float]:
    """Means over layers (what the paper's tables report per model)."""
    if not table:
        return {}
    keys = ("effective_rank", "nuclear_norm", "frobenius_norm")
    return {k: float(np.mean([row[k] for row in table.values()])) for k in keys} | {"layers": len(table)}


def format_spectral_table(table: dict[str, dict]) -> str:
    width = max([len("layer")] + [len(n) for n in table])
    lines = [f"{'layer':<{width}} {'shape':>11} {'eff. rank':>9} {'of':>5} {'nuclear':>10} {'Frobenius':>10}"]
    for name, row in table.items():
        shape = "x".join(map(str, row["shape"]))
        lines.append(
            f"{name:<{width}} {shape:>11} {row['effective_rank']:>9.1f} {min(row['shape']):>5} "
            f"{row['nuclear_norm']:>10.4f} {row['frobenius_norm']:>10.4f}"
        )
    means = spectral_means(table)
    if means:
        lines.append(
            f"{'mean over ' + str(means['layers']) + ' layers':<{width}} {'':>11} "
            f"{means['effective_rank']:>9.1f} {'':>5} {means['nuclear_norm']:>10.4f} "
            f"{means['frobenius_norm']:>10.4f}"
        )
    return "\n".join(lines)
