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
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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

    Works for a plain model, DDP, FSDP1, FSDP2 and a DeepSpeed engine (ZeRO-3 partitions are gathered), and
    gathers only the trainable parameters, never the frozen base. A collective under FSDP and ZeRO-3: every rank
    must call it.

    Args:
        model: The model as trained (plain, wrapped by DDP / FSDP, or a DeepSpeed engine).

    Returns:
        Parameter name -> full tensor on the CPU.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = unwrap_deepspeed(model)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if any(_zero3_partitioned(p) for _, p in trainable):
        with gathered_trainable(model):
            return {_unwrapped_name(model, n): p.detach().clone().cpu() for n, p in trainable}
    options = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
    state = get_model_state_dict(model, options=options)
    # ignore_frozen_params drops frozen parameters but not the entries a layer adds beside them in its state dict
    # (bitsandbytes' 4-bit quantization state: "<name>.weight.absmax", ...): drop those too.
    frozen = {_unwrapped_name(model, n) for n, p in model.named_parameters() if not p.requires_grad}
    # Full state dicts hold plain tensors (the type allows any state value).
    return {k: cast(torch.Tensor, v).detach().cpu() for k, v in state.items() if not _beside(k, frozen)}


@contextmanager
def gathered_trainable(model: nn.Module) -> Iterator[None]:
    """Within it, every trainable parameter DeepSpeed ZeRO-3 partitions is whole on every rank (read only); a no-op
    for any other model. A collective under ZeRO-3: every rank must enter it.

    Args:
        model: The model as trained (a DeepSpeed engine, or the module it trains).

    Yields:
        Nothing; the parameters are partitioned again on leaving.
    """
    params = [p for p in unwrap_deepspeed(model).parameters() if p.requires_grad and _zero3_partitioned(p)]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def unwrap_deepspeed(model: nn.Module) -> nn.Module:
    """The module a DeepSpeed engine trains (``engine.module``), or ``model`` itself when it is no engine.

    Args:
        model: A model, or the engine ``deepspeed.initialize`` (or the Trainer) returned.

    Returns:
        The module whose parameter names carry no ``module.`` prefix of the engine.
    """
    deepspeed = sys.modules.get("deepspeed")  # an engine exists only where deepspeed was imported
    engine = getattr(getattr(deepspeed, "runtime", None), "engine", None)
    if engine is not None and isinstance(model, engine.DeepSpeedEngine):
        return cast(nn.Module, model.module)
    return model


def _zero3_partitioned(param: torch.Tensor) -> bool:
    """Whether DeepSpeed ZeRO-3 manages this parameter (it then holds only this rank's partition, or nothing)."""
    return hasattr(param, "ds_id")


def adapter_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """The full shape of every trainable parameter, keyed as in the unwrapped model, read from the model itself.

    Independent of any gathering: under ZeRO-3 a parameter's data is empty but DeepSpeed records its shape
    (``ds_shape``); FSDP1 keeps a parameter as a flat shard and records its shape in the flat parameter; an FSDP2
    parameter (a DTensor) reports its full shape. Not a collective.

    Args:
        model: The model as trained (plain, wrapped by DDP / FSDP, or a DeepSpeed engine).

    Returns:
        Parameter name -> full shape.
    """
    model = unwrap_deepspeed(model)
    fsdp1 = _fsdp1_shapes(model)
    shapes = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            shape = getattr(param, "ds_shape", None) or fsdp1.get(id(param)) or param.shape
            shapes[_unwrapped_name(model, name)] = torch.Size(shape)
    return shapes


def _fsdp1_shapes(model: nn.Module) -> dict[int, torch.Size]:
    """id(original parameter) -> its shape, for the parameters FSDP1 (use_orig_params=True) holds as flat shards."""
    shapes: dict[int, torch.Size] = {}
    for module in model.modules():
        flat = getattr(getattr(module, "_handle", None), "flat_param", None)
        params, recorded = getattr(flat, "_params", None), getattr(flat, "_shapes", None)
        if params is not None and recorded is not None:
            shapes.update({id(p): torch.Size(s) for p, s in zip(params, recorded)})
    return shapes


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
    one by one, so an interrupted save never leaves a half-written file under its final name. Every tensor is
    checked against the shape of the parameter it saves (see
    [`write_adapter`][kradapter.dist.write_adapter]); a failure on any rank is raised on every rank.

    Args:
        peft_model: The unwrapped PEFT model (its config and ``save_pretrained``).
        wrapped: The same model as trained (DDP / FSDP wrapper, DeepSpeed engine, or ``peft_model`` itself).
        out_dir: The adapter directory to write.

    Raises:
        RuntimeError: On every rank, naming the rank and the tensor, if a tensor was gathered or written with
            another shape than its parameter's or not written at all; nothing is moved into ``out_dir`` then.
    """
    out_dir = Path(out_dir)
    tmp = None
    if is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out_dir.parent))
    try:
        write_adapter(peft_model, wrapped, tmp)
        _agree(_attempt(lambda: _move_files(tmp, out_dir) if tmp is not None else None))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def write_adapter(
    peft_model: nn.Module, wrapped: nn.Module, directory: str | os.PathLike | None, **save_kwargs: Any
) -> None:
    """Gather the adapter of ``peft_model`` (trained as ``wrapped``) and write it with PEFT's ``save_pretrained``
    into ``directory`` on rank 0, checked tensor by tensor. Every rank must call it; it ends with every rank.

    The check: each trainable parameter is gathered whole (its shape is the one the model records, see
    [`adapter_shapes`][kradapter.dist.adapter_shapes]), PEFT selects a tensor for it, and the file holds that
    tensor with that shape. A (0,)-shaped tensor from an ungathered ZeRO-3 partition, or a key PEFT could not
    match (a wrapper's prefix), therefore fails instead of writing an empty adapter.

    Args:
        peft_model: The unwrapped PEFT model (its config and ``save_pretrained``).
        wrapped: The same model as trained (DDP / FSDP wrapper, DeepSpeed engine, or ``peft_model`` itself).
        directory: Where rank 0 writes (ignored on the other ranks; may be None there).
        **save_kwargs: More keywords for PEFT's ``save_pretrained`` (e.g. ``save_embedding_layers=False``).

    Raises:
        RuntimeError: On every rank, with one message naming the rank and the tensor, if any rank failed.
    """
    expected = adapter_shapes(wrapped)
    state: dict[str, torch.Tensor] = {}

    def gather() -> None:
        state.update(full_adapter_state_dict(wrapped))
        for name, shape in expected.items():
            got = state.get(name)
            if got is None or got.shape != shape:
                have = "missing" if got is None else f"gathered with shape {tuple(got.shape)}"
                raise RuntimeError(f"tensor {name} is {have} but the model trains it with shape {tuple(shape)}")

    _agree(_attempt(gather))

    def write() -> None:
        if directory is None:
            raise ValueError("rank 0 was given no directory to write the adapter into")
        cast(Any, peft_model).save_pretrained(directory, state_dict=state, **save_kwargs)
        _check_saved(peft_model, Path(directory), expected)

    _agree(_attempt(write) if is_main_process() else None)


def _attempt(step) -> str | None:
    """Run `step`; its error as one line naming this rank, or None."""
    try:
        step()
    except Exception as err:  # reported on every rank by _agree
        kind = "" if isinstance(err, RuntimeError) else f"{type(err).__name__}: "
        return f"rank {rank()}: {kind}{err}"
    return None


def _agree(failure: str | None) -> None:
    """A collective: every rank learns whether any rank failed (so none is left waiting at a later barrier) and
    raises the first failure's message; outside a process group, raise this process's failure."""
    failures = [failure]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        failures = [None] * dist.get_world_size()
        dist.all_gather_object(failures, failure)
    reported = [f for f in failures if f is not None]
    if reported:
        raise RuntimeError(f"the adapter save failed, nothing was saved: {reported[0]}")


def _move_files(src: Path, dest: Path) -> None:
    """Move every file under `src` into `dest`, one ``os.replace`` each."""
    for path in src.rglob("*"):
        if path.is_file():
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


def _check_saved(peft_model: nn.Module, directory: Path, expected: dict[str, torch.Size]) -> None:
    """Every trainable parameter is in the written file under the key PEFT gives it, with its full shape.

    PEFT picks adapter tensors by name and silently picks none from keys it cannot match: the keys it must write
    come from running its own selection on shape-only (meta) stand-ins of the parameters.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    names = {}  # id(stand-in) -> parameter name
    stand_ins = {}
    for name, shape in expected.items():
        stand_ins[name] = torch.empty(shape, device="meta")
        names[id(stand_ins[name])] = name
    model = cast(Any, peft_model)
    for adapter in model.peft_config:
        selected = get_peft_model_state_dict(
            model, state_dict=stand_ins, adapter_name=adapter, save_embedding_layers=False
        )
        if not selected:
            continue
        path = directory / ("" if adapter == "default" else adapter) / "adapter_model.safetensors"
        if not path.is_file():
            raise RuntimeError(f"adapter {adapter}: no {path.name} was written")
        with safe_open(str(path), "pt") as f:
            written = {key: torch.Size(f.get_slice(key).get_shape()) for key in f.keys()}
        for key, stand_in in selected.items():
            name = names[id(stand_in)]
            if key not in written:
                raise RuntimeError(f"tensor {name} was not written (PEFT's key {key})")
            if written[key] != stand_in.shape:
                raise RuntimeError(
                    f"tensor {name} was written with shape {tuple(written[key])} but the model trains it with "
                    f"shape {tuple(stand_in.shape)}"
                )
        for name in expected.keys() - {names[id(v)] for v in selected.values()}:
            if name.endswith(f".{adapter}") or f".{adapter}." in name:
                raise RuntimeError(f"tensor {name} is trained but PEFT does not save it (a wrapper's key prefix?)")


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
