"""DeepSpeed ZeRO configs kradapter supports, checked before any training starts.

Tested (tests/test_deepspeed.py, on CPU with two processes): ZeRO stage 2 and 3 with the configs in
examples/deepspeed, through ``deepspeed.initialize``, transformers' Trainer and ``kradapter train``. Everything
else is refused with the reason rather than run untested: other stages, offloading the optimizer or the parameters
(DeepSpeed's CPU optimizer ops and their NVMe / CPU paths), and a bitsandbytes-quantized base (ZeRO-3 partitions
every parameter, including the packed 4-bit weights whose quantization state lives beside them; QLoRA + ZeRO needs
``bnb_4bit_quant_storage`` and a GPU, neither tested here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SUPPORTED_STAGES = (2, 3)


def check_deepspeed_config(config: dict | str | os.PathLike, quantize: str | None = None) -> dict:
    """Refuse a DeepSpeed config kradapter has not tested, with the reason.

    Args:
        config: The config (a dict, or the path of its JSON file), as given to the Trainer's ``deepspeed=``.
        quantize: The base's quantization (``"4bit"``, ``"8bit"``), or None for a float base.

    Returns:
        The config as a dict.

    Raises:
        ValueError: If the file cannot be read as a JSON object, or names a ZeRO stage other than 2 or 3, an
            offload device other than ``none``, or ``quantize`` is set.
    """
    if not isinstance(config, dict):
        config = _read(config)
    zero: Any = config.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if stage not in SUPPORTED_STAGES:
        raise ValueError(
            f"DeepSpeed zero_optimization.stage {stage!r} is not supported: kradapter is tested with ZeRO stage 2 "
            "and 3 (examples/deepspeed/zero2.json, zero3.json)"
        )
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none")
        if str(device).lower() != "none":
            raise ValueError(
                f"DeepSpeed zero_optimization.{key}.device {device!r} is not supported: offloading is not tested "
                "with kradapter (the adapter's optimizer state is small; leave it on the device)"
            )
    if quantize:
        raise ValueError(
            f"DeepSpeed ZeRO-{stage} with a {quantize} bitsandbytes base is not supported: ZeRO partitions the "
            "packed quantized weights apart from their quantization state, and this is not tested with kradapter; "
            "train a quantized base with torchrun / DDP instead (docs/guides/scale-out.md)"
        )
    return config


def accelerate_deepspeed_config() -> dict | None:
    """The DeepSpeed config ``accelerate launch --use_deepspeed`` hands the training process, or None outside it.

    Accelerate passes it in the environment: the config file (``--deepspeed_config_file``), or the stage and offload
    devices given as options.

    Returns:
        The config file's contents, or a config built from the options, or None when DeepSpeed is not in use.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and path.lower() != "none":
        return _read(path)
    zero: dict[str, Any] = {"stage": int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))}
    for key, env in (
        ("offload_optimizer", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
        ("offload_param", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"),
    ):
        if env in os.environ:
            zero[key] = {"device": os.environ[env]}
    return {"zero_optimization": zero}


def _read(path: str | os.PathLike) -> dict:
    """A JSON object from `path`, or one ValueError naming the file."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"DeepSpeed config {path}: cannot read it as JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"DeepSpeed config {path}: expected a JSON object, got {type(config).__name__}")
    return config
