"""What every task hands the runner, and the checks shared by tasks (model loading, target modules)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class Prepared:
    """A task ready to train: everything was loaded and validated, no training has started."""

    task: str
    model_path: str
    build_model: Callable[[], nn.Module]  # a fresh base model (call after seeding: heads are initialised here)
    # One task base: prepare() loads the model once (to resolve targets) and hands it over as `loaded`.
    train: Any  # datasets.Dataset, already tokenised / transformed
    validation: Any
    tests: dict[str, Any]
    groups: dict[str, str]  # test name -> "ID" | "NID" | "OOD"
    collator: Callable
    # Primary metric of a model on one prepared set: a number, or a dict of named scores holding `metric`
    # (e.g. also "balanced_accuracy", "acc_norm").
    evaluate: Callable[[nn.Module, Any], float | dict]
    metric: str
    targets: list[str]  # full module names to adapt
    head: list[str] = field(default_factory=list)  # module names trained and saved besides the adapters
    zero_shot: bool = False  # the untouched model is a meaningful baseline (gives r_gen)
    run_info: dict = field(default_factory=dict)  # enough to rebuild the base model for `kradapter report`
    sizes: dict = field(default_factory=dict)  # rows per split, for the summary
    defaults: dict = field(default_factory=dict)  # task defaults: max_steps, epochs, batch_size, lr per method
    data_args: list = field(default_factory=list)  # the --data entries this run used (defaults spelled out)
    # test name -> {"majority", "chance", "majority_balanced"} (train/baselines.py), for accuracy-scored sets
    baselines: dict = field(default_factory=dict)
    loaded: nn.Module | None = field(default=None, repr=False)  # the untouched model prepare read targets from

    def take_model(self) -> nn.Module:
        """The untouched base model prepare loaded, handed over once (later calls build a fresh one): the runner
        checks the method and scores zero-shot on it, so a run loads the model once per seed plus once, and never
        holds two copies."""
        model, self.loaded = self.loaded, None
        return model if model is not None else self.build_model()


def load_or_explain(what: str, path: str, loader: Callable[[], Any]) -> Any:
    """Run a from_pretrained-style loader; any failure becomes one ValueError naming the path."""
    try:
        return loader()
    except Exception as err:  # transformers raises OSError, ValueError, KeyError... for unusable paths
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what} '{path}' does not load: {first}") from err


def resolve_targets(
    model: nn.Module, requested: list[str] | None, defaults: list[str], where: str = "", kinds: tuple[type, ...] = ()
) -> list[str]:
    """Full names of the modules to adapt. `requested` entries are module-name suffixes (PEFT's rule: a name
    equal to the entry or ending in '.entry') or, when they contain regex characters, full-name regexes. Each
    entry must match at least one module, or the error lists modules that could be meant."""
    entries = requested if requested else defaults
    if not entries:
        raise ValueError(f"no default target modules for this model{where}; pass --target-modules")
    names = [n for n, m in model.named_modules() if n and (not kinds or isinstance(m, kinds))]
    chosen: list[str] = []
    for entry in entries:
        if is_pattern(entry):
            hits = [n for n in names if re.fullmatch(entry, n)]
        else:
            hits = [n for n in names if n == entry or n.endswith("." + entry)]
        if not hits:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
            shown = ", ".join(leaves[:30]) + (", ..." if len(leaves) > 30 else "")
            raise ValueError(
                f"target module '{entry}' matches no module of the model{where}; "
                f"adaptable module names include: {shown}"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def is_pattern(entry: str) -> bool:
    """A --target-modules entry with regex characters is a full-name regex; any other is a name suffix."""
    return any(c in entry for c in "*[]()|\\^$+?")


def split_csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def model_device(model: nn.Module):
    return next(model.parameters()).device


def batched(model: nn.Module, ds, collator: Callable, batch_size: int, step: Callable, desc: str) -> list:
    """Run `step(model, batch)` over `ds` in batches with no gradients and the model in eval mode (restored
    after); returns the concatenated list of step outputs."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = model_device(model)
    outputs: list = []
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collator)
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                outputs.extend(step(model, batch))
    finally:
        model.train(was_training)
    return outputs
