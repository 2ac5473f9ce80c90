"""Multi-process training of a PEFT model: join torchrun's process group, shard with FSDP, save the adapter.

torchrun (or ``accelerate launch``) starts one process per device and describes the group in the environment
(RANK, WORLD_SIZE, MASTER_ADDR, ...). A KRAdapter model needs nothing special under DDP; under FSDP the frozen base
and the trainable adapter parameters share a wrapped unit, which FSDP2 handles per parameter and FSDP1 only with
``use_orig_params=True``. Saving must gather the sharded adapter first: ``full_adapter_state_dict`` does that for
any wrapper and gathers only the trainable parameters, never the frozen base.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun or ``accelerate launch`` (``RANK`` and ``WORLD_SIZE`` are set).

    Returns:
        True when both environment variables are present.
    """
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank() -> int:
    """This process's rank: from the process group once joined, else from torchrun's environment (0 alone).

    Returns:
        The rank, 0 in a single process.
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    """The number of processes: from the process group once joined, else from ``WORLD_SIZE`` (1 alone).

    Returns:
        The world size, 1 in a single process.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """False only on a non-zero rank of a joined process group: the one process that writes files and prints.

    Returns:
        True outside a process group (a process with RANK set but no group writes: it is alone as far as anyone
        can know), else True on rank 0 only.
    """
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def is_launcher_rank0() -> bool:
    """Like [`is_main_process`][kradapter.dist.is_main_process], also before the group is joined: False on a
    non-zero rank of a joined group, or of a launch (torchrun / accelerate) that set RANK and WORLD_SIZE > 1.

    For what happens before the Trainer joins the group (the output directory's lock and its clean-up), which
    rank 0 alone must do for all ranks.

    Returns:
        Whether this process acts for all ranks.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0


def init_process_group(expected_world_size: int | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA).

    A run that silently fell back to independent single processes would train unsynchronised copies, so this
    refuses to run outside torchrun instead.

    Args:
        expected_world_size: If given, the number of processes the group must have.

    Returns:
        ``(rank, world_size)`` of this process.

    Raises:
        RuntimeError: If not launched by torchrun / ``accelerate launch``, or if the group's size is not
            ``expected_world_size``.
    """
    if not launched_by_torchrun():
        raise RuntimeError("not launched by torchrun or accelerate launch: RANK and WORLD_SIZE are not set")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    size = dist.get_world_size()
    if expected_world_size is not None and size != expected_world_size:
        raise RuntimeError(f"expected {expected_world_size} processes, but the process group has {size}")
    return dist.get_rank(), size


def local_batch_size(global_batch: int, world_size: int) -> int:
    """The per-process batch; the global batch must split evenly so every step sees exactly ``global_batch``.

    Args:
        global_batch: The batch size of one optimizer step over all processes.
        world_size: The number of processes.

    Returns:
        ``global_batch // world_size``.

    Raises:
        ValueError: If either is below 1 or ``world_size`` does not divide ``global_batch``.
    """
    if global_batch < 1 or world_size < 1 or global_batch % world_size:
        raise ValueError(
            f"global batch size {global_batch} does not divide evenly over {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    return global_batch // world_size


def decoder_layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The repeated block classes of a transformers model (its ``_no_split_modules``): FSDP's wrapping units.

    Args:
        model: A transformers model (or a PEFT model around one).

    Returns:
        The classes of the model's modules named in any ``_no_split_modules``.

    Raises:
        ValueError: If the model declares no such classes; pass ``layer_classes`` to the wrappers then.
    """
    from ._compat import no_split_modules

    names: set[str] = set()
    for module in model.modules():
        names.update(no_split_modules(module))
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not classes:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__} (no _no_split_modules); pass layer classes"
        )
    return classes


def shard_fsdp2(model: nn.Module, layer_classes: set[type[nn.Module]] | None = None, mesh=None) -> nn.Module:
    """FSDP2: ``fully_shard`` every decoder layer, then the whole model, in place.

    Args:
        model: The (PEFT) model to shard.
        layer_classes: The block classes to shard one by one; default
            [`decoder_layer_classes(model)`][kradapter.dist.decoder_layer_classes].
        mesh: The device mesh passed to ``fully_shard`` (default: all processes).

    Returns:
        ``model`` itself, now sharded.

    Raises:
        ValueError: If ``layer_classes`` is not given and the model's decoder layers cannot be found.
    """
    from torch.distributed.fsdp import fully_shard

    wrap_types = tuple(layer_classes or decoder_layer_classes(model))
    for module in list(model.modules()):
        if isinstance(module, wrap_types):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def wrap_fsdp1(model: nn.Module, layer_classes: set[type[nn.Module]] | None = None) -> nn.Module:
    """FSDP1 with one unit per decoder layer.

    ``use_orig_params=True`` lets frozen base weights and trainable adapter weights share a unit; ``device_id`` is
    given explicitly because FSDP1 refuses CPU when guessing.

    Args:
        model: The (PEFT) model to wrap.
        layer_classes: The block classes that become FSDP units; default
            [`decoder_layer_classes(model)`][kradapter.dist.decoder_layer_classes].

    Returns:
        The ``FullyShardedDataParallel`` wrapper.

    Raises:
        ValueError: If ``layer_classes`` is not given and the model's decoder layers cannot be found.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return FullyShardedDataParallel(
        model,
        auto_wrap_policy=ModuleWrapPolicy(layer_classes or decoder_layer_classes(model)),
        use_orig_params=True,
        device_id=device,
    )


def full_adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) trainable parameters, keyed as in the unwrapped model, on every rank.

    Works for a plain model, DDP, FSDP1 and FSDP2, and gathers only the trainable parameters, never the frozen base.
    A collective under FSDP: every rank must call it.

    Args:
        model: The model as trained (plain, or wrapped by DDP / FSDP).

    Returns:
        Parameter name -> full tensor on the CPU.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
    state = get_model_state_dict(model, options=options)
    # ignore_frozen_params drops frozen parameters but not the entries a layer adds beside them in its state dict
    # (bitsandbytes' 4-bit quantization state: "<name>.weight.absmax", ...): drop those too.
    frozen = {_unwrapped_name(model, n) for n, p in model.named_parameters() if not p.requires_grad}
    # Full state dicts hold plain tensors (the type allows any state value).
    return {k: cast(torch.Tensor, v).detach().cpu() for k, v in state.items() if not _beside(k, frozen)}


_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _unwrapped_name(model: nn.Module, name: str) -> str:
    """A parameter name of a (DDP / FSDP-wrapped) model as the unwrapped model, and its full state dict, name it."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name.removeprefix("module.") if isinstance(model, nn.parallel.DistributedDataParallel) else name


def _beside(key: str, names: set[str]) -> bool:
    """Whether a state-dict key is an entry under one of `names` ("a.weight.absmax" under "a.weight")."""
    while "." in key:
        key = key.rsplit(".", 1)[0]
        if key in names:
            return True
    return False


def save_adapter(peft_model: nn.Module, wrapped: nn.Module, out_dir: str | os.PathLike) -> None:
    """Save the adapter of ``peft_model`` (trained as ``wrapped``) from rank 0, as PEFT's ``save_pretrained`` does.

    Every rank must call it. Files are written to a temporary directory beside ``out_dir`` and moved into place
    one by one, so an interrupted save never leaves a half-written file under its final name; a barrier follows.

    Args:
        peft_model: The unwrapped PEFT model (its config and ``save_pretrained``).
        wrapped: The same model as trained (DDP / FSDP wrapper, or ``peft_model`` itself).
        out_dir: The adapter directory to write.

    Raises:
        RuntimeError: If PEFT wrote fewer tensors than the model trains (a wrapper PEFT cannot see through);
            nothing is moved into ``out_dir`` then.
    """
    state_dict = full_adapter_state_dict(wrapped)
    if not dist.is_initialized() or dist.get_rank() == 0:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out_dir.parent))
        try:
            cast(Any, peft_model).save_pretrained(tmp, state_dict=state_dict)
            _check_saved(tmp, state_dict)
            for path in tmp.rglob("*"):
                if path.is_file():
                    target = out_dir / path.relative_to(tmp)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


def _check_saved(directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """PEFT picks adapter tensors by module name and can silently pick too few from a wrapped model: count them."""
    from safetensors import safe_open

    written = 0
    for path in directory.rglob("adapter_model.safetensors"):
        with safe_open(path, "pt") as f:
            written += len(list(f.keys()))
    if written < len(state_dict):
        raise RuntimeError(
            f"the adapter save wrote {written} tensors but the model trains {len(state_dict)}; nothing was saved "
            f"(is the model wrapped in a way PEFT cannot see through?)"
        )


def max_difference_across_ranks(model: nn.Module) -> float | None:
    """Largest |difference| between this rank's trainable parameters and rank 0's, maximised over ranks.

    0.0 proves the replicas are in sync; unsynchronised copies would differ. A collective: every rank must call it.

    Args:
        model: The model whose trainable parameters to compare.

    Returns:
        The difference, or None when not distributed.
    """
    if world_size() == 1 or not dist.is_initialized():
        return None
    params = [p.detach().float().reshape(-1) for p in model.parameters() if p.requires_grad]
    flat = torch.cat(params) if params else torch.zeros(1)
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    difference = (flat - reference).abs().max()
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return difference.item()


def finish() -> None:
    """End a distributed run cleanly: a barrier, then destroy the group (gloo teardown can abort without both)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
