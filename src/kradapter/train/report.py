"""Spectral report of a saved adapter directory: effective rank, nuclear and Frobenius norms of every adapted
layer's Delta W. Works on `kradapter train` outputs (any method, full fine-tuning included) and on adapters saved
by PEFT for its own methods (the base model is then read from adapter_config.json or given with --base)."""

from __future__ import annotations

from pathlib import Path

from ..io import read_json
from ..specs import spec_for_config
from .deltas import adapter_deltas, spectral_means, spectral_table
from .runner import FULL_DELTA, RUN_INFO

AUTO_CLASSES = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


# Tried in this order when adapter_config.json names no task_type: the first whose modules hold every saved tensor.
CANDIDATE_CLASSES = (
    "AutoModel",
    "AutoModelForSequenceClassification",
    "AutoModelForCausalLM",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForSeq2SeqLM",
    "AutoModelForImageClassification",
    "AutoModelForMaskedLM",
)


def _saved_keys(directory: Path) -> list[str]:
    """The tensor names in the adapter's weights file (what the loaded model must hold, every one)."""
    from .._peft_guards import weights_file

    path, problem = weights_file(directory)
    if problem:
        raise ValueError(f"cannot report on {directory}: {path} is {problem}")
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as f:
                return list(f.keys())
        except Exception as err:  # safetensors has its own error types
            raise ValueError(f"cannot report on {directory}: {path} is unreadable ({err})") from err
    import torch

    return list(torch.load(path, map_location="cpu", weights_only=True))


def _unmatched(keys: list[str], model, prefix: str) -> list[str]:
    """Saved keys with no place in `model`: an adapter tensor needs its module, any other tensor its parameter."""
    modules = {name for name, _ in model.named_modules()}
    tensors = set(model.state_dict())
    missing = []
    for key in keys:
        name = key.removeprefix("base_model.model.")
        parts = name.split(".")
        cut = next((i for i, part in enumerate(parts) if prefix and part.startswith(prefix)), None)
        if not (".".join(parts[:cut]) in modules if cut is not None else name in tensors):
            missing.append(key)
    return missing


def _model_class(path: str, config, keys: list[str]):
    """The transformers auto class for `path` whose model has a place for every saved key (checked on the meta
    device, so nothing is loaded): the task_type's class, else the first candidate that fits."""
    import torch
    import transformers

    from .._compat import PEFT_TYPE_TO_PREFIX_MAPPING

    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(config.peft_type, "")
    try:
        model_config = transformers.AutoConfig.from_pretrained(path)
    except Exception as err:
        raise ValueError(f"base model '{path}' does not load: {str(err).splitlines()[0]}") from err
    task = str(config.task_type).split(".")[-1] if config.task_type else None
    names = [AUTO_CLASSES[task]] if task in AUTO_CLASSES else list(CANDIDATE_CLASSES)
    best = None
    for name in names:
        auto = getattr(transformers, name)
        try:
            with torch.device("meta"):
                probe = auto.from_config(model_config)
        except (ValueError, KeyError, TypeError):  # this architecture has no such head
            continue
        missing = _unmatched(keys, probe, prefix)
        if not missing:
            return auto
        if best is None or len(missing) < len(best[1]):
            best = (name, missing)
    tried = best[0] if best else ", ".join(names)
    shown = best[1] if best else keys
    raise ValueError(
        f"the adapter's saved tensors fit no model class of '{path}' ({tried} lacks "
        f"{len(shown)} of them: {', '.join(shown[:5])}{' ...' if len(shown) > 5 else ''}); "
        "pass the base model it was trained on with --base"
    )


def _base_model(directory: Path, base: str | None, config, keys: list[str]):
    if (directory / RUN_INFO).exists():
        from .tasks import task_module

        run_info = read_json(directory / RUN_INFO)
        if base:
            run_info["model"] = base
        return task_module(run_info["task"]).rebuild(run_info), run_info.get("method")
    if base:
        path = base
    else:  # an offline default is recorded under its public name: load its local copy
        from .defaults.models import local_copy

        path = local_copy(config.base_model_name_or_path) or config.base_model_name_or_path
    if not path:
        raise ValueError(f"{directory}/adapter_config.json names no base model; pass --base PATH")
    auto = _model_class(path, config, keys)
    try:
        return auto.from_pretrained(path), None
    except Exception as err:
        raise ValueError(f"base model '{path}' of {directory} does not load: {str(err).splitlines()[0]}") from err


def _check_all_loaded(directory: Path, peft_model, keys: list[str]) -> None:
    """Refuse to analyse an adapter whose saved tensors did not all land in the model, with their values."""
    from peft.utils import get_peft_model_state_dict

    from .._peft_guards import weights_file

    loaded = get_peft_model_state_dict(peft_model)
    missing = [k for k in keys if k not in loaded]
    if not missing:
        from safetensors import safe_open

        path, _ = weights_file(directory)
        if path.endswith(".safetensors"):
            with safe_open(path, "pt") as f:
                missing = [k for k in keys if not (f.get_tensor(k).to(loaded[k].dtype) == loaded[k].cpu()).all()]
    if missing:
        raise ValueError(
            f"{directory}: {len(missing)} saved tensors were not loaded into the model: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
            "pass the base model it was trained on with --base"
        )


def spectral_report(directory: str | Path, base: str | None = None) -> dict:
    """{"directory", "method", "spectral": {layer: {...}}, "means": {...}}."""
    import kradapter  # noqa: F401  registers kradapter's methods with PEFT before loading

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {directory} does not exist")
    if (directory / FULL_DELTA).exists():
        from safetensors.torch import load_file

        deltas = {k: v.reshape(v.shape[0], -1).float() for k, v in load_file(str(directory / FULL_DELTA)).items()}
        method = "full"
    elif (directory / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        config = PeftConfig.from_pretrained(str(directory))
        keys = _saved_keys(directory)
        model, method = _base_model(directory, base, config, keys)
        model = PeftModel.from_pretrained(model, str(directory))
        _check_all_loaded(directory, model, keys)
        deltas = adapter_deltas(model)
        spec = spec_for_config(config)
        method = method or (spec.name if spec else str(config.peft_type).split(".")[-1].lower())
    else:
        raise ValueError(
            f"{directory} holds no adapter: expected adapter_config.json (PEFT) or {FULL_DELTA} "
            "(full fine-tuning from kradapter train)"
        )
    if not deltas:
        raise ValueError(f"{directory}: the adapter adapts no layer")
    table = spectral_table(deltas)
    return {"directory": str(directory), "method": method, "spectral": table, "means": spectral_means(table)}
