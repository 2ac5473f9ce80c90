"""Two third-party messages nobody using kradapter can act on, each silenced where it arises and nowhere else.

1. bitsandbytes (0.50, on CPUs with AVX512-BF16) logs "Failed to load CPU gemm_4bit_forward from kernels-community"
   while it is imported, which PEFT does whenever bitsandbytes is installed: it then uses its own CPU kernel, and
   the hub kernel it asks for cannot be fetched offline. A filter on that one logger drops that one record.
2. PEFT 0.21's PeftModel reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a
   FutureWarning on every get_peft_model / PeftModel.from_pretrained. `peft_deprecations_silenced()` ignores that
   one message around our own calls; a user's own code touching the attribute still gets the warning.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"
GRADIENT_CHECKPOINTING_MESSAGE = r"`is_gradient_checkpointing` is deprecated"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def install_bitsandbytes_filter() -> None:
    """Before bitsandbytes is imported (logging.getLogger returns the logger its module will use). Idempotent."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, _DropMessage) and f.prefix == BNB_KERNEL_MESSAGE for f in logger.filters):
        logger.addFilter(_DropMessage(BNB_KERNEL_MESSAGE))


@contextmanager
def peft_deprecations_silenced() -> Iterator[None]:
    """Around our get_peft_model / PeftModel.from_pretrained calls: ignore transformers' FutureWarning about the
    attribute PEFT reads; every other warning (including PEFT's about the config or the model) still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_MESSAGE, category=FutureWarning)
        yield
