"""Train a KRAdapter on a tiny Llama for a few steps under one multi-process strategy.

Launched by tests/test_distributed.py as ``torchrun --standalone --nproc_per_node=2 train_tiny.py --strategy S
--out DIR`` (S: ddp, fsdp1, fsdp2, accelerate); the test imports ``train`` from here for the single-process run.
Each rank writes DIR/rank{r}.json (world size, global and local loss per step) and DIR/rank{r}.pt (the full adapter
weights it ends with); rank 0 saves the adapter to DIR/adapter.

With ``--base DIR`` (a saved tiny Llama; strategy ddp) the base is loaded 4-bit and bitsandbytes is made to repack it
for AVX512-BF16 CPUs (tests/_bnb_cpu_layout.py, on any CPU) by one inference forward before the adapter is added:
training must take the repacked layers back to the standard layout, and the trained adapter must merge (requantized)
or refuse a plain merge with the reason; each rank writes what it saw of that to DIR/rank{r}.json too.

Data: STEPS global batches of GLOBAL_BATCH random token rows; at step t rank r takes rows [r*b, (r+1)*b) of batch t
(b = GLOBAL_BATCH / world size), which is also how Accelerate shards a DataLoader of batch size b. Every row has the
same length and no padding, so the mean of the ranks' mean losses is the global batch's mean loss, and the averaged
gradients equal the single-process gradient of that loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import kradapter  # noqa: F401  (registers KRAdapter with PEFT)
from kradapter import KRAdapterConfig, KronLoRAConfig, SinLoRAConfig
from kradapter import dist as kdist

STEPS, GLOBAL_BATCH, SEQ, VOCAB, LR = 4, 4, 16, 128, 1e-2
STRATEGIES = ("ddp", "fsdp1", "fsdp2", "accelerate")


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


# --method: the adapter trained; KRAdapter unless a test asks for another of ours (init_weights=False: both factors
# random, so a save that drops or zeroes a tensor shows)
METHODS = {
    "kradapter": lambda: KRAdapterConfig(target_modules=["k_proj", "v_proj"], alpha=1.0),
    "sinlora": lambda: SinLoRAConfig(target_modules=["k_proj", "v_proj"], r=4, init_weights=False),
    "kronlora": lambda: KronLoRAConfig(target_modules=["k_proj", "v_proj"], r=2, kron_shape=2, init_weights=False),
}


def tiny_peft_model(method: str = "kradapter"):
    return get_peft_model(tiny_model(), METHODS[method]())


def packed_4bit_peft_model(base: Path):
    """The tiny Llama saved at `base`, loaded 4-bit and repacked for CPU inference by one eval forward (the layout
    is forced by the caller), with the same adapter as tiny_peft_model."""
    from kradapter import quant

    model = LlamaForCausalLM.from_pretrained(base, quantization_config=quant.bnb_config("4bit"), device_map="cpu")
    with torch.no_grad():
        model.eval()(input_ids=torch.zeros(1, 4, dtype=torch.long))  # bitsandbytes repacks here
    torch.manual_seed(0)
    return get_peft_model(model, KRAdapterConfig(target_modules=["k_proj", "v_proj"], alpha=1.0))


def packed_layers(model) -> list[bool]:
    """For each bnb 4-bit layer of `model`: whether it is in the CPU-packed layout."""
    import bitsandbytes as bnb

    from kradapter import quant

    return [quant.is_cpu_packed(m.weight) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def merge_checks(peft_model) -> dict:
    """After training: an inference forward (bitsandbytes repacks again), a plain merge (refused, with the reason),
    then merge_requantized and how far the merged model's logits are from the unmerged ones."""
    from kradapter import quant

    x = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(2))
    peft_model.eval()
    with torch.no_grad():
        unmerged = peft_model(input_ids=x).logits
    packed_at_eval = packed_layers(peft_model)
    try:
        peft_model.merge_adapter()
        refusal = None
    except ValueError as err:
        refusal = str(err)
    quant.merge_requantized(peft_model)
    with torch.no_grad():
        merged = peft_model(input_ids=x).logits
    return {
        "packed_at_eval": packed_at_eval,
        "merge_refusal": refusal,
        "merged_max_difference": (merged - unmerged).abs().max().item(),
    }


def batches() -> torch.Tensor:
    return torch.randint(0, VOCAB, (STEPS, GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def train(
    strategy: str = "single", out: Path | None = None, base: Path | None = None, method: str = "kradapter"
) -> dict:
    """Run the few steps; returns (and on every rank writes) what the test compares."""
    import torch.distributed as dist

    peft_model = tiny_peft_model(method) if base is None else packed_4bit_peft_model(base)
    packed_before = packed_layers(peft_model) if base is not None else []
    rank, world_size = 0, 1
    if strategy == "accelerate":
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        # cpu=True: under torchrun a plain Accelerator() on a CPU machine runs unsynchronised copies.
        accelerator = Accelerator(cpu=True)
        if accelerator.distributed_type != DistributedType.MULTI_CPU:
            raise RuntimeError(f"Accelerate runs as {accelerator.distributed_type}, not MULTI_CPU")
        rank, world_size = accelerator.process_index, accelerator.num_processes
    elif strategy != "single":
        rank, world_size = kdist.init_process_group()
    local = kdist.local_batch_size(GLOBAL_BATCH, world_size)

    data = batches()
    if strategy == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(peft_model)
    elif strategy == "fsdp1":
        model = kdist.wrap_fsdp1(peft_model)
    elif strategy == "fsdp2":
        model = kdist.shard_fsdp2(peft_model)
    else:
        model = peft_model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    if strategy == "accelerate":
        loader = torch.utils.data.DataLoader(data.reshape(-1, SEQ), batch_size=local, shuffle=False)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        steps = iter(loader)
    else:
        steps = (batch[rank * local : (rank + 1) * local] for batch in data)

    losses, local_losses = [], []
    model.train()
    for x in steps:
        loss = model(input_ids=x, labels=x).loss
        if strategy == "accelerate":
            accelerator.backward(loss)
        else:
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        local_losses.append(loss.item())
        mean = loss.detach().clone()
        if world_size > 1:
            dist.all_reduce(mean)
        losses.append(mean.item() / world_size)

    adapter = kdist.full_adapter_state_dict(model)
    result = {
        "strategy": strategy,
        "rank": rank,
        "world_size": world_size,
        "losses": losses,
        "local_losses": local_losses,
    }
    if base is not None:
        result.update(packed_before=packed_before, packed_after_training=packed_layers(peft_model))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(adapter, out / f"rank{rank}.pt")
        kdist.save_adapter(peft_model, model, out / "adapter")
    if base is not None:
        result.update(merge_checks(peft_model))
    if out is not None:
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    kdist.finish()
    return {**result, "adapter": adapter}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=Path, help="a saved tiny Llama: load it 4-bit in the CPU-packed layout")
    parser.add_argument("--method", choices=sorted(METHODS), default="kradapter")
    args = parser.parse_args(argv)
    if args.base is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for _bnb_cpu_layout
        from _bnb_cpu_layout import force_cpu_layout

        force_cpu_layout(packed=True)  # before the model is built: Linear4bit reads the CPU check in __init__
    train(args.strategy, args.out, args.base, args.method)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
