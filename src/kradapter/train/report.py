"""Spectral report of a saved adapter directory: effective rank, nuclear and Frobenius norms of every adapted
layer's Delta W. Works on `kradapter train` outputs (any method, full fine-tuning included) and on adapters saved
by PEFT for its own methods (the base model is then read from adapter_config.json or given with --base)."""

from __future__ import annotations

from pathlib import Path

from .deltas import adapter_deltas, spectral_means, spectral_table
from ..io import read_json
from .runner import FULL_DELTA, RUN_INFO

AUTO_CLASSES = {
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


def _base_model(directory: Path, base: str | None, config):
    if (directory / RUN_INFO).exists():
        from .tasks import task_module

        run_info = read_json(directory / RUN_INFO)
        if base:
            run_info["model"] = base
        return task_module(run_info["task"]).rebuild(run_info), run_info.get("method")
    import transformers

    path = base or config.base_model_name_or_path
    if not path:
        raise ValueError(f"{directory}/adapter_config.json names no base model; pass --base PATH")
    auto = getattr(transformers, AUTO_CLASSES.get(str(config.task_type), "AutoModel"))
    try:
        return auto.from_pretrained(path), None
    except Exception as err:
        raise ValueError(f"base model '{path}' of {directory} does not load: {str(err).splitlines()[0]}") from err


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

        from .._quiet import peft_deprecations_silenced

        config = PeftConfig.from_pretrained(str(directory))
        model, method = _base_model(directory, base, config)
        with peft_deprecations_silenced():
            model = PeftModel.from_pretrained(model, str(directory))
        deltas = adapter_deltas(model)
        method = method or str(config.peft_type).split(".")[-1].lower()
    else:
        raise ValueError(f"{directory} holds no adapter: expected adapter_config.json (PEFT) or {FULL_DELTA} "
                         "(full fine-tuning from kradapter train)")
    if not deltas:
        raise ValueError(f"{directory}: the adapter adapts no layer")
    table = spectral_table(deltas)
    return {"directory": str(directory), "method": method, "spectral": table, "means": spectral_means(table)}
