"""kradapter: Khatri-Rao adapters as a first-class PEFT method.

Importing this package registers every method it defines with PEFT, so ``peft.get_peft_model`` and
``peft.PeftModel.from_pretrained`` accept their configs in any process that ran ``import kradapter``.
A peft or transformers outside the tested ranges (``_compat.TESTED_RANGES``, as in pyproject) gets one warning.
"""

from importlib.metadata import PackageNotFoundError, version

from . import _quiet

_quiet.install_bitsandbytes_filter()  # before PEFT imports bitsandbytes (see _quiet)
_quiet.import_mkldnn_quietly()  # before bitsandbytes' torch.compile imports it (see _quiet)

from . import _compat, _peft_guards, _registry  # noqa: E402
from .methods.kradapter import KRAdapterConfig, KRAdapterLayer, KRAdapterModel
from .methods.kronlora import KronLoRAConfig, KronLoRAModel, quantize_kronlora_
from .methods.sinlora import SinLoRAConfig, SinLoRAModel
from .ops import khatri_rao, kradapter_delta, resolve_k
from .spectral import effective_rank, spectral_summary

try:
    __version__ = version("kradapter")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

_compat.warn_if_untested()
_registry.register("kradapter", KRAdapterConfig, KRAdapterModel)
_registry.register("sinlora", SinLoRAConfig, SinLoRAModel)
_registry.register("kronlora", KronLoRAConfig, KronLoRAModel)
_peft_guards.install()  # PeftModel.from_pretrained / load_adapter leave the model unchanged when they fail

__all__ = [
    "KRAdapterConfig",
    "KRAdapterLayer",
    "KRAdapterModel",
    "KronLoRAConfig",
    "KronLoRAModel",
    "SinLoRAConfig",
    "SinLoRAModel",
    "__version__",
    "effective_rank",
    "khatri_rao",
    "kradapter_delta",
    "quantize_kronlora_",
    "resolve_k",
    "spectral_summary",
]
