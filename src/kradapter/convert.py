"""Turn an adapter into a plain PEFT LoRA adapter (what `kradapter convert` does), for servers that take LoRA only.

Every adapted layer's update Delta W (PEFT's additive delta, ``get_additive_delta``: W' = W + Delta W) is replaced
by its truncated SVD, B A with B = U_k S_k and A = V_k^T, at a fixed rank k or at the smallest k whose singular
values keep a share E of sum sigma^2 (PEFT's ``convert_to_lora`` rule). LoRA scaling is 1 (lora_alpha = r). What is
lost, per layer, is the SVD tail: ||Delta W - B A||_F / ||Delta W||_F = sqrt(1 - energy kept).

PEFT's own ``peft.convert_to_lora`` does the same SVD, and works on our Linear / Conv1D / MultiheadAttention layers
(methods/_delta_layer.py). This module does the SVD itself on the same deltas because it also writes convolutions
(LoRA's lora_A is a convolution with the base's kernel, lora_B a 1x1 one) and embeddings (LoRA names those factors
lora_embedding_A / B), keeps an attention's in- and out-projection at one rank (LoRA's MHA layer has one r), and
reports each layer's error and energy. Any PEFT method whose layers give an additive delta converts, ours and
PEFT's (LoRA at a lower rank, LoKr, ...).

The directory (adapter_config.json, adapter_model.safetensors, README.md) is written beside the destination,
loaded back onto the base with plain PEFT and compared with the source adapter on a few inputs, and renamed into
place in one step, as ``kradapter merge`` does (merge.py); the same lock refuses a second run into one --out.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .merge import check_out_dir, load_adapted, probe_inputs
from .methods._geometry import CONV_TYPES, to_matrix_layout
from .outdir import OutputLock, published_beside

WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel's module names and PEFT's saved keys start with it


@dataclass(frozen=True)
class LayerConversion:
    """One layer's conversion: the rank kept and what it costs."""

    name: str  # module path in the base model
    shape: tuple[int, int]  # (d_out, d_in) of the update matrix
    rank: int
    delta_norm: float  # ||Delta W||_F
    error_norm: float  # ||Delta W - B A||_F, with B and A in their saved dtype
    energy: float  # share of sum sigma^2 the kept singular values hold (1.0 for a zero update)

    @property
    def relative_error(self) -> float:
        """||Delta W - B A||_F / ||Delta W||_F (0.0 for a zero update)."""
        return self.error_norm / self.delta_norm if self.delta_norm > 0 else 0.0


@dataclass(frozen=True)
class Conversion:
    """A LoRA adapter made from a model's adapter: its config, its tensors (PEFT's saved keys) and the cost."""

    config: object  # peft.LoraConfig
    state_dict: dict[str, torch.Tensor]
    layers: tuple[LayerConversion, ...]

    @property
    def relative_error(self) -> float:
        """The whole update's relative Frobenius error: sqrt(sum error^2 / sum ||Delta W||^2) over layers."""
        total = sum(c.delta_norm**2 for c in self.layers)
        return math.sqrt(sum(c.error_norm**2 for c in self.layers) / total) if total > 0 else 0.0

    @property
    def energy(self) -> float:
        """Share of the whole update's sum sigma^2 (all layers) that the kept singular values hold."""
        total = sum(c.delta_norm**2 for c in self.layers)
        return sum(c.energy * c.delta_norm**2 for c in self.layers) / total if total > 0 else 1.0


@dataclass(frozen=True)
class ConvertResult:
    out_dir: Path
    conversion: Conversion
    max_output_diff: float | None  # largest |output| difference, reloaded LoRA vs source adapter (None: no probe)
    files: tuple[str, ...] = field(default=())
    bytes_on_disk: int = 0


def check_target(rank: int | None, energy: float | None) -> None:
    """Exactly one of rank (an int >= 1) and energy (in (0, 1])."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank (a fixed LoRA rank) and energy (a share of sum sigma^2 to keep)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank={rank!r}: the LoRA rank must be an integer >= 1")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy={energy!r}: the share of sum sigma^2 to keep must be in (0, 1]")


def energy_rank(S: torch.Tensor, energy: float) -> int:
    """The smallest k whose top-k singular values hold at least `energy` of sum sigma^2 (PEFT's convert_to_lora
    rule; 1 for a zero update)."""
    cs = torch.cumsum(S.double() ** 2, dim=0)
    return min(int(torch.searchsorted(cs, energy * cs[-1]).item()) + 1, S.numel())


def additive_matrix(layer: nn.Module, adapter_name: str, name: str) -> torch.Tensor:
    """The layer's update as a (d_out x d_in) matrix, from PEFT's get_additive_delta (base weight's layout)."""
    try:
        delta = layer.get_additive_delta(adapter_name)  # type: ignore[operator]
    except (NotImplementedError, AttributeError):
        raise ValueError(
            f"module '{name}' ({type(layer).__name__}) has no additive delta (PEFT's get_additive_delta), so its "
            "adapter cannot be written as a LoRA; only methods whose update is added to the weight convert"
        ) from None
    return to_matrix_layout(layer.get_base_layer(), delta.detach())


def _svd(delta: torch.Tensor):
    return torch.linalg.svd(delta.to(torch.promote_types(delta.dtype, torch.float32)), full_matrices=False)


def _lora_tensors(base: nn.Module, key: str, A: torch.Tensor, B: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """B A (d_out x k, k x d_in) in the layout of PEFT's LoRA layer for `base`, under its saved key names."""
    if isinstance(base, nn.Embedding):  # LoRA: Delta = (lora_embedding_B @ lora_embedding_A)^T
        return {f"{key}.lora_embedding_A": B.T.contiguous(), f"{key}.lora_embedding_B": A.T.contiguous()}
    if isinstance(base, CONV_TYPES):  # LoRA: lora_A convolves with the base's kernel size, lora_B is 1x1
        if base.groups != 1:
            raise ValueError(
                f"module '{name}' is a convolution with groups={base.groups}; PEFT's LoRA convolution has no "
                "groups in lora_A, so this update cannot be written as a LoRA"
            )
        ones = (1,) * (base.weight.dim() - 2)
        return {
            f"{key}.lora_A.weight": A.reshape(A.shape[0], *base.weight.shape[1:]).contiguous(),
            f"{key}.lora_B.weight": B.reshape(*B.shape, *ones).contiguous(),
        }
    return {f"{key}.lora_A.weight": A.contiguous(), f"{key}.lora_B.weight": B.contiguous()}


def _adapter_layers(peft_model: nn.Module, adapter_name: str) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    wrappers = [n for n, m in peft_model.named_modules() if isinstance(m, AuxiliaryTrainingWrapper)]
    layers = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, BaseTunerLayer) or any(name.startswith(f"{w}.") for w in wrappers):
            continue
        params = getattr(module, module.adapter_layer_names[0], {}) if module.adapter_layer_names else {}
        if adapter_name in params:
            layers.append((name, module))
    return layers


def _owner(name: str, names: set[str]) -> str | None:
    """For an attention's out_proj layer ('attn.base_layer.out_proj'), the attention layer holding it."""
    owner, sep, _ = name.partition(".base_layer.")
    return owner if sep and owner in names else None


@torch.no_grad()
def convert_model(
    peft_model: nn.Module,
    rank: int | None = None,
    energy: float | None = None,
    adapter_name: str = "default",
    base_name: str | None = None,
) -> Conversion:
    """The LoRA adapter that the truncated SVD of each layer's update makes: at `rank`, or at each layer's smallest
    rank keeping `energy` of sum sigma^2. Factors keep the adapter's dtype. Nothing is changed in `peft_model`.
    The config's base_model_name_or_path is the source adapter's, else `base_name`.

    Raises:
        ValueError: For a bad rank or energy (a rank above a layer's smaller side names the layer), a layer
            without an additive delta, or a layer LoRA cannot represent (a grouped convolution).
    """
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    check_target(rank, energy)
    layers = _adapter_layers(peft_model, adapter_name)
    if not layers:
        raise ValueError(f"the model has no adapter layers for adapter '{adapter_name}'; nothing to convert")
    names = {n for n, _ in layers}
    by_name = dict(layers)
    bases = [m.get_base_layer() for _, m in layers]
    from ._compat import Conv1D

    if any(isinstance(b, Conv1D) for b in bases) and any(isinstance(b, nn.MultiheadAttention) for b in bases):
        # PEFT's LoRA flips its config's fan_in_fan_out to True at the first Conv1D, and an attention's out_proj
        # created after that would read its factors transposed
        raise ValueError(
            "this adapter holds both transformers Conv1D and nn.MultiheadAttention layers, which one PEFT LoRA "
            "config cannot load correctly (fan_in_fan_out); convert an adapter on only one of the two kinds"
        )

    def chosen_rank(name: str, shape: tuple[int, ...], S: torch.Tensor) -> int:
        if rank is None:
            return energy_rank(S, energy)  # type: ignore[arg-type]
        if rank > S.numel():
            d_out, d_in = shape
            raise ValueError(
                f"rank {rank} is above the smaller side of module '{name.removeprefix(PREFIX)}' ({d_out} x "
                f"{d_in}); choose --rank <= {S.numel()} (or --energy)"
            )
        return rank

    # LoRA's MultiheadAttention gives its out_proj the attention's rank: a pair takes the larger of its two ranks.
    forced: dict[str, int] = {}
    for name, _ in layers:
        child = next((n for n in names if _owner(n, names) == name), None)
        if child is not None:
            ranks = []
            for n in (name, child):
                delta = additive_matrix(by_name[n], adapter_name, n)
                ranks.append(chosen_rank(n, tuple(delta.shape), _svd(delta)[1]))
            forced[name] = forced[child] = max(ranks)

    state: dict[str, torch.Tensor] = {}
    results: list[LayerConversion] = []
    for name, module in layers:
        delta = additive_matrix(module, adapter_name, name)
        U, S, Vh = _svd(delta)
        k = forced.get(name) or chosen_rank(name, tuple(delta.shape), S)
        B = (U[:, :k] * S[:k]).to(delta.dtype)
        A = Vh[:k].to(delta.dtype)
        state.update(_lora_tensors(module.get_base_layer(), name, A, B, name))
        err = torch.linalg.matrix_norm(delta.double() - B.double() @ A.double()).item()
        total = float((S.double() ** 2).sum())
        kept = float((S[:k].double() ** 2).sum()) / total if total > 0 else 1.0
        results.append(LayerConversion(name.removeprefix(PREFIX), tuple(delta.shape), k, math.sqrt(total), err, kept))

    source = peft_model.peft_config[adapter_name]  # type: ignore[index]
    # The rest of the saved adapter (modules_to_save heads, trainable tokens) is method-independent: kept as is.
    for key, value in get_peft_model_state_dict(
        peft_model, adapter_name=adapter_name, save_embedding_layers=False
    ).items():
        if not any(key.startswith(f"{n}.") for n in names):
            state[key] = value.detach()

    targets = {r.name: r.rank for r in results if _owner(PREFIX + r.name, names) is None}
    r = Counter(targets.values()).most_common(1)[0][0]
    pattern = {n: k for n, k in targets.items() if k != r}

    config = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=sorted(targets),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        fan_in_fan_out=all(isinstance(b, Conv1D) for b in bases),
        modules_to_save=_copied(getattr(source, "modules_to_save", None)),
        base_model_name_or_path=source.base_model_name_or_path or base_name,
        revision=source.revision,
        task_type=source.task_type,
        inference_mode=True,
    )
    if getattr(source, "trainable_token_indices", None) is not None:
        config.trainable_token_indices = source.trainable_token_indices
    return Conversion(config, state, tuple(results))


def _copied(value):
    return sorted(value) if isinstance(value, (set, list, tuple)) else value


# --- loading the base and adapter, probing outputs -----------------------------------------------------------------
def _diffusers_class(base: str):
    """The diffusers model class a base directory's config names (``_class_name``), or None for transformers."""
    config = Path(base, "config.json")
    if not config.is_file():
        return None
    name = json.loads(config.read_text()).get("_class_name")
    if not name:
        return None
    import diffusers

    return getattr(diffusers, name, None)


def load_source(base: str, adapter_dir: str) -> nn.Module:
    """The source adapter on its base as a PeftModel: transformers bases as `merge` loads them, diffusers models
    (a config.json naming ``_class_name``) through their class."""
    cls = _diffusers_class(base)
    if cls is None:
        return load_adapted(base, adapter_dir)[0]
    from peft import PeftConfig, PeftModel

    import kradapter  # noqa: F401  (registers our methods with PEFT)

    if not Path(adapter_dir, "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: not a saved PEFT adapter directory")
    PeftConfig.from_pretrained(adapter_dir)
    model = cls.from_pretrained(base, torch_dtype=torch.float32).eval()
    try:
        return PeftModel.from_pretrained(model, adapter_dir).eval()
    except RuntimeError as err:
        raise ValueError(f"adapter {adapter_dir} does not fit base {base}: {err}") from None


def _probe(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """A few fixed inputs: token ids or images for transformers models, (sample, timestep, text states) for a
    diffusers UNet; None for a model we do not know how to call."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "cross_attention_dim") and hasattr(config, "in_channels"):  # a diffusers UNet
        g = torch.Generator().manual_seed(0)
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        cross = config.cross_attention_dim
        cross = cross if isinstance(cross, int) else cross[0]
        return {
            "sample": torch.randn(2, config.in_channels, size, size, generator=g),
            "timestep": torch.tensor([1, 10]),
            "encoder_hidden_states": torch.randn(2, 4, cross, generator=g),
        }
    try:
        return probe_inputs(config)
    except (AttributeError, TypeError):
        return None


def _outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(**{k: v.to(device) for k, v in inputs.items()})
    for attr in ("logits", "sample", "last_hidden_state"):
        if hasattr(out, attr):
            out = getattr(out, attr)
            break
    return out.float().cpu()


# --- the directory -------------------------------------------------------------------------------------------------
def card(conversion: Conversion, source_dir: str, source_type: str, how: str, diff: float | None) -> str:
    """README.md of a converted adapter: what it was made from, how to load it without kradapter, the cost."""
    cfg = conversion.config
    base = getattr(cfg, "base_model_name_or_path", None) or "<base model>"
    lines = ["---"]
    if getattr(cfg, "base_model_name_or_path", None):
        lines.append(f"base_model: {base}")
    lines += [
        "library_name: peft",
        "tags:",
        "- lora",
        "- peft",
        "- kradapter-convert",
        "---",
        "",
        f"# LoRA converted from the {source_type} adapter `{Path(source_dir).name}`",
        "",
        f"A plain PEFT LoRA adapter made by `kradapter convert {how}` from the {source_type} adapter in "
        f"`{source_dir}`: each layer's update is replaced by its truncated SVD (B = U_k S_k, A = V_k^T, "
        "lora_alpha = r, so the LoRA scale is 1). It loads without kradapter:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModel  # the base's own class",
        "",
        f'model = PeftModel.from_pretrained(AutoModel.from_pretrained("{base}"), "<this directory>")',
        "```",
        "",
        'or `model.load_adapter("<this directory>")` in transformers, or for a diffusers model '
        '`unet.load_lora_adapter("<this directory>", weight_name="adapter_model.safetensors", '
        'prefix="base_model.model")`.',
        "",
        f"Whole update: energy kept {conversion.energy:.4f}, relative Frobenius error {conversion.relative_error:.4f}"
        + (
            f"; largest output difference from the source adapter on probe inputs {diff:.3g}."
            if diff is not None
            else "."
        ),
        "",
        "| layer | update shape | rank | energy kept | relative error |",
        "|---|---|---|---|---|",
    ]
    for c in conversion.layers:
        lines.append(f"| {c.name} | {c.shape[0]} x {c.shape[1]} | {c.rank} | {c.energy:.4f} | {c.relative_error:.4f} |")
    return "\n".join(lines) + "\n"


def convert_to_dir(
    base: str,
    adapter_dir: str,
    out_dir: str | os.PathLike,
    rank: int | None = None,
    energy: float | None = None,
) -> ConvertResult:
    """Convert the adapter in `adapter_dir` (on `base`) to a plain PEFT LoRA directory `out_dir` (new or empty).

    Exactly one of rank (fixed, at most each layer's smaller side) and energy (share of sum sigma^2 kept per
    layer, in (0, 1]). Nothing is written unless the whole conversion succeeds and the written adapter loads back
    onto the base with plain PEFT, whole.
    """
    check_target(rank, energy)
    with OutputLock(out_dir, beside=True, option="--out"):
        out = check_out_dir(out_dir)
        adapted = load_source(base, adapter_dir)
        inputs = _probe(adapted.get_base_model())
        with torch.no_grad():
            reference = _outputs(adapted, inputs) if inputs is not None else None
        conversion = convert_model(adapted, rank=rank, energy=energy, base_name=str(base))
        source_type = str(getattr(adapted.peft_config["default"].peft_type, "value", "adapter"))
        how = f"--rank {rank}" if rank is not None else f"--energy {energy}"
        with published_beside(out, "converting") as tmp:
            from safetensors.torch import save_file

            save_file(conversion.state_dict, str(tmp / WEIGHTS), metadata={"format": "pt"})
            conversion.config.save_pretrained(str(tmp))  # type: ignore[attr-defined]
            diff = _check_loads(adapted, tmp, conversion, inputs, reference)
            (tmp / "README.md").write_text(card(conversion, str(adapter_dir), source_type, how, diff))
    files = tuple(sorted(p.name for p in out.iterdir()))
    return ConvertResult(out, conversion, diff, files, sum(p.stat().st_size for p in out.iterdir()))


@torch.no_grad()
def _check_loads(adapted, directory: Path, conversion: Conversion, inputs, reference) -> float | None:
    """Load the written LoRA onto the same base (the source adapter unloaded, nothing merged) with plain PEFT;
    every saved tensor must land. Returns the largest output difference from the source adapter."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    base = adapted.unload()
    lora = PeftModel.from_pretrained(base, str(directory)).eval()
    loaded = get_peft_model_state_dict(lora)
    missing = sorted(set(conversion.state_dict) - set(loaded))
    if missing:
        raise RuntimeError(f"the written LoRA did not load whole: {len(missing)} tensors missing, e.g. {missing[0]}")
    if reference is None:
        return None
    return (_outputs(lora, inputs) - reference).abs().max().item()
