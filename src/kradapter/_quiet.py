"""Third-party messages nobody using kradapter can act on, each silenced where it arises and nowhere else.

1. bitsandbytes (0.50, on CPUs with AVX512-BF16) logs "Failed to load CPU gemm_4bit_forward from kernels-community"
   while it is imported: it then uses its own CPU kernel, and the hub kernel it asks for cannot be fetched offline.
   A filter on that one logger drops that one record.
2. transformers >= 5.25 installs `kernels`, whose hub helper logs "Skipping publisher trust check for
   'kernels-community/quantization-bitsandbytes' ..." when bitsandbytes asks for that kernel offline. A filter on
   that logger drops the record for that one repository.
3. PEFT >= 0.22 imports bitsandbytes at the first LoRA layer, not at `import peft`; bitsandbytes' `torch.compile`
   decorators import torch's inductor, which imports `torch.utils.mkldnn`, whose classes use the deprecated
   `torch.jit.script_method`: 14 DeprecationWarnings from torch's own code. `import kradapter` imports that one torch
   module with that one message ignored, so it is never raised later; any other warning still shows.
"""

from __future__ import annotations

import logging
import warnings

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
KERNELS_HUB_LOGGER = "kernels._internals.hf_hub"
KERNELS_TRUST_MESSAGE = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"
SCRIPT_METHOD_MESSAGE = r"`torch\.jit\.script_method` is deprecated"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _drop(logger_name: str, prefix: str) -> None:
    logger = logging.getLogger(logger_name)  # the logger its module will use, whether imported yet or not
    if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(_DropMessage(prefix))


def install_bitsandbytes_filter() -> None:
    """Before bitsandbytes is imported. Idempotent."""
    _drop(BNB_CPU_LOGGER, BNB_KERNEL_MESSAGE)
    _drop(KERNELS_HUB_LOGGER, KERNELS_TRUST_MESSAGE)


def import_mkldnn_quietly() -> None:
    """Import torch.utils.mkldnn (0.1 s) with its script_method deprecation ignored; a no-op once imported."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SCRIPT_METHOD_MESSAGE, category=DeprecationWarning)
        import torch.utils.mkldnn  # noqa: F401
