"""Train an adapter on the tiny Llama of train_tiny.py under DeepSpeed ZeRO-2 or ZeRO-3, on CPU (gloo).

Launched by tests/test_deepspeed.py as ``torchrun --standalone --nproc_per_node=2 train_deepspeed.py --config
examples/deepspeed/zeroN.json --api initialize|trainer --method M --out DIR``:
- ``initialize``: ``deepspeed.initialize`` with a torch AdamW, on exactly train_tiny's data split and steps, so
  the test compares against ``train_tiny.train("single")``;
- ``trainer``: transformers' Trainer with ``deepspeed=config, use_cpu=True``; the test compares against
  ``trainer_run(method)`` of this file in one process without DeepSpeed.
The shipped config is used as is, its "auto" values filled in here as the Trainer fills them, except the ZeRO-3
persistence thresholds, set to 0: by default ZeRO-3 keeps parameters below 1e5 elements whole on every rank,
which is every parameter of a tiny model, and nothing would be partitioned.

Each rank writes DIR/rank{r}.json (losses, how many parameters were partitioned, how many fused-path calls ran)
and DIR/rank{r}.pt (its full adapter); rank 0 saves the adapter to DIR/adapter through kradapter.dist.save_adapter,
given the engine. Then a second save with one tensor of rank 1 emptied (as an ungathered ZeRO-3 partition is) must
fail on both ranks with the same message, written to DIR/rank{r}.json, and leave DIR/broken empty.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import train_tiny as tiny  # noqa: E402

import kradapter  # noqa: E402, F401
from kradapter import KRAdapterConfig, KronLoRAConfig, SinLoRAConfig  # noqa: E402
from kradapter import dist as kdist  # noqa: E402
from kradapter.methods.kradapter.layer import KRAdapterLayer  # noqa: E402

TARGETS = ["k_proj", "v_proj"]
METHODS = {
    "kradapter": lambda: KRAdapterConfig(target_modules=TARGETS, alpha=1.0),
    "kronlora": lambda: KronLoRAConfig(target_modules=TARGETS, r=4),
    "sinlora": lambda: SinLoRAConfig(target_modules=TARGETS, r=4),
}
FUSED_CALLS = [0]


def count_fused_calls() -> None:
    """Count the KRAdapter layers' fused-path calls (the path falls back to the plain one where it must)."""
    fused = KRAdapterLayer.fused_forward

    def counted(layer, x, name):
        FUSED_CALLS[0] += 1
        return fused(layer, x, name)

    KRAdapterLayer.fused_forward = staticmethod(counted)


def peft_model(method: str):
    from peft import get_peft_model

    return get_peft_model(tiny.tiny_model(), METHODS[method]())  # as train_tiny.tiny_peft_model for KRAdapter


def filled_config(path: Path, micro_batch: int) -> dict:
    """The shipped config with its "auto" values as the Trainer fills them for this run (float32, no clipping, as
    train_tiny's loop), and ZeRO-3's persistence thresholds at 0."""
    config = json.loads(path.read_text())
    auto = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": tiny.GLOBAL_BATCH,
        "gradient_clipping": 0.0,
    }
    config.update({k: v for k, v in auto.items() if config.get(k) == "auto"})
    config["bf16"] = {"enabled": False}
    if config["zero_optimization"]["stage"] == 3:
        config["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_model_persistence_threshold=0)
    return config


def partitioned(model) -> list[bool]:
    """Per trainable parameter: whether this rank holds less than all of it (a ZeRO-3 partition)."""
    return [p.numel() == 0 for p in model.parameters() if p.requires_grad]


def train_initialize(method: str, config: dict) -> tuple[object, object, list[float], list[float]]:
    """deepspeed.initialize on train_tiny's data split: (engine, peft model, global losses, local losses)."""
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = peft_model(method)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tiny.LR)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    local = kdist.local_batch_size(tiny.GLOBAL_BATCH, world_size)
    losses, local_losses = [], []
    engine.train()
    for batch in tiny.batches():
        x = batch[rank * local : (rank + 1) * local]
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        engine.step()
        local_losses.append(loss.item())
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world_size)
    return engine, model, losses, local_losses


def trainer_run(method: str, config: dict | None = None, out: Path | None = None):
    """transformers' Trainer on train_tiny's batches (in order, one global batch per step): (trainer, model,
    losses). With `config`, under DeepSpeed; without, the one-process reference."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    world_size = kdist.world_size()
    rows = tiny.batches().reshape(-1, tiny.SEQ)
    data = Dataset.from_dict({"input_ids": rows.tolist(), "labels": rows.tolist()}).with_format("torch")
    model = peft_model(method)
    args = TrainingArguments(
        output_dir=str(out or Path("unused")),
        per_device_train_batch_size=kdist.local_batch_size(tiny.GLOBAL_BATCH, world_size),
        max_steps=tiny.STEPS,
        learning_rate=tiny.LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        deepspeed=config,
        seed=0,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer, model, losses


def broken_save(model, engine, out: Path) -> str | None:
    """save_adapter with one tensor emptied on rank 1 only: the error it raises on this rank (None: no error)."""
    real = kdist.full_adapter_state_dict

    def emptied(wrapped):
        state = real(wrapped)
        if kdist.rank() == 1:
            name = sorted(state)[0]
            state[name] = torch.empty(0)
        return state

    kdist.full_adapter_state_dict = emptied
    try:
        kdist.save_adapter(model, engine, out)
    except RuntimeError as err:
        return str(err)
    finally:
        kdist.full_adapter_state_dict = real
    return None


def run_one(api: str, config_path: Path, method: str, out: Path) -> None:
    """One training run; writes out/rank{r}.json, out/rank{r}.pt and (rank 0) out/adapter."""
    out.mkdir(parents=True, exist_ok=True)
    FUSED_CALLS[0] = 0
    config = filled_config(config_path, kdist.local_batch_size(tiny.GLOBAL_BATCH, kdist.world_size()))
    if api == "initialize":
        engine, model, losses, local_losses = train_initialize(method, config)
    else:
        trainer, model, losses = trainer_run(method, config, out / "trainer")
        engine, local_losses = trainer.model_wrapped, []
    rank = kdist.rank()
    result = {
        "rank": rank,
        "world_size": kdist.world_size(),
        "engine": type(engine).__name__,
        "losses": losses,
        "local_losses": local_losses,
        "partitioned": partitioned(model),
        "fused_calls": FUSED_CALLS[0],
    }
    torch.save(kdist.full_adapter_state_dict(engine), out / f"rank{rank}.pt")
    kdist.save_adapter(model, engine, out / "adapter")
    result["broken_save_error"] = broken_save(model, engine, out / "broken")
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--case",
        nargs=4,
        action="append",
        required=True,
        metavar=("API", "CONFIG", "METHOD", "NAME"),
        help="initialize|trainer, a shipped config, a method, the run's directory name under --out (repeatable; "
        "the runs share one launch: DeepSpeed's import and process group are paid once)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    count_fused_calls()
    # The Trainer's DeepSpeed config is process-global (transformers builds later models under zero.Init): last.
    for api, config, method, name in sorted(args.case, key=lambda r: r[0] == "trainer"):
        run_one(api, Path(config), method, args.out / name)
    kdist.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
