"""One `kradapter train` run: prepare and check everything, optionally pick the learning rate on the validation
split, train each seed with transformers' Trainer (resumable, Ctrl-C safe), evaluate every test set, analyse
every adapted layer's update, and write the results atomically.

Layout of --output-dir DIR:
  DIR/metrics.json, DIR/summary.txt        written last, only when every seed finished
  DIR/adapter_config.json + weights         the first seed's adapter (PEFT save_pretrained), for `report`
  DIR/kradapter_run.json                    how to rebuild the base model
  DIR/seeds/seed-S/                         each seed's adapter, result.json and (while running) checkpoints-lr-X/
  DIR/lr-grid/lr-X/result.json              learning-rate selection runs (--lr-grid)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

from ..dist import is_main_process, local_batch_size, max_difference_across_ranks, world_size
from .callbacks import EffectiveRankCallback, GracefulInterrupt
from .deltas import adapter_deltas, spectral_means, spectral_table
from ..io import publish_dir, read_json, staging_dir, write_json, write_text
from .methods import apply_method, check_method, full_deltas, trainable_parameters
from .metrics import group_means, mean_std, r_gen
from .tasks import task_module
from .tasks.base import Prepared

# Other methods: 1e-3. Methods want different rates: tune them (--lr-grid). KRAdapter at its default alpha 0.1 was
# best at 1e-2 (image) and 3e-2 (text) where LoRA was best at 3e-3 on both (benchmarks/RECIPES.md).
DEFAULT_LR = {"kradapter": 1e-2, "full": 1e-4}
RUN_INFO = "kradapter_run.json"
FULL_DELTA = "full_delta.safetensors"
FULL_HEAD = "full_head.safetensors"


class TrainingInterrupted(Exception):
    """Ctrl-C during training: a checkpoint was saved; rerunning the same command resumes from it."""


def default_lr(method: str) -> float:
    return DEFAULT_LR.get(method, 1e-3)


def parse_seeds(value: str) -> list[int]:
    """'5' -> seeds 0..4; '0,3,7' -> those seeds."""
    try:
        if "," in str(value):
            seeds = [int(s) for s in str(value).split(",") if s.strip()]
        else:
            seeds = list(range(int(value)))
    except ValueError as err:
        raise ValueError(f"--seeds {value!r}: give a count (5) or a list (0,1,2)") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {value!r}: need at least one seed and no repeats")
    return seeds


def parse_lr_grid(value: str | None) -> list[float]:
    if not value:
        return []
    try:
        grid = [float(v) for v in value.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--lr-grid {value!r}: give comma-separated learning rates, e.g. 1e-4,3e-4,1e-3") from err
    if len(grid) < 2 or any(lr <= 0 for lr in grid):
        raise ValueError(f"--lr-grid {value!r}: need at least two positive learning rates")
    return grid


def _peak_memory_mb() -> tuple[float, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda max allocated"
    # ru_maxrss is in KiB on Linux, bytes on macOS; the whole process's peak, base model included.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, "process peak RSS"


def _checkpoint_step(path: str | None) -> int:
    if not path:
        return 0
    state = Path(path, "trainer_state.json")
    return int(read_json(state).get("global_step", 0)) if state.exists() else 0


def _save_full(model, reference, head: list[str], directory: Path) -> None:
    """Full fine-tuning has no adapter: save Delta W = W - W0 of the targets and the trained head."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous().cpu() for k, v in full_deltas(model, reference).items()},
              str(directory / FULL_DELTA))
    modules = dict(model.named_modules())
    head_state = {f"{h}.{k}": v.detach().contiguous().cpu() for h in head for k, v in modules[h].state_dict().items()}
    if head_state:
        save_file(head_state, str(directory / FULL_HEAD))


def train_seed(prepared: Prepared, args, method: str, lr: float, seed: int, seed_dir: Path,
               eval_sets: dict, save_adapter: bool = True, extra_callbacks=()) -> dict:
    """Train one seed (resuming from its last checkpoint), evaluate, analyse, save. Returns its result dict."""
    from transformers import Trainer, TrainingArguments, set_seed

    from .._compat import get_last_checkpoint
    from ..bench.timing import synchronize

    result_path = seed_dir / "result.json"
    if result_path.exists():
        done = read_json(result_path)
        if done.get("learning_rate") == lr:
            return done
        if is_main_process():  # trained at another learning rate (the grid picked a new one): train again
            shutil.rmtree(seed_dir, ignore_errors=True)
    set_seed(seed)
    model = prepared.build_model()
    model, reference = apply_method(model, method, prepared.targets, prepared.head)
    trainable, total = trainable_parameters(model)
    defaults = prepared.defaults
    batch_size = args.batch_size or defaults.get("batch_size", 16)
    max_steps = args.max_steps if args.max_steps is not None else defaults.get("max_steps")
    epochs = args.epochs if args.epochs is not None else defaults.get("epochs", 3)
    steps_planned = max_steps or -(-len(prepared.train) // batch_size) * int(epochs)
    log_every = max(1, min(args.logging_steps, steps_planned))
    # Checkpoints are per learning rate: resuming restores the optimizer and schedule, which belong to one rate.
    ckpt_root = seed_dir / f"checkpoints-lr-{lr:g}"
    if is_main_process():
        for stale in seed_dir.glob("checkpoints-lr-*"):
            if stale != ckpt_root:
                shutil.rmtree(stale, ignore_errors=True)
    targs = TrainingArguments(
        output_dir=str(ckpt_root), max_steps=max_steps or -1, num_train_epochs=float(epochs),
        # --batch-size is the global batch: under torchrun each of the processes takes an equal share.
        per_device_train_batch_size=local_batch_size(batch_size, world_size()),
        learning_rate=lr, weight_decay=0.0, lr_scheduler_type="linear",
        warmup_steps=int(args.warmup_ratio * steps_planned), logging_steps=log_every, save_strategy="steps",
        save_steps=args.save_steps or max(1, steps_planned // 4), save_total_limit=1, seed=seed, data_seed=seed,
        use_cpu=not torch.cuda.is_available(), report_to="none", remove_unused_columns=False,
        label_names=["labels"], dataloader_num_workers=0, disable_tqdm=args.quiet,
    )
    rank_cb = EffectiveRankCallback(model, args.rank_every or log_every, reference)
    interrupt = GracefulInterrupt()
    trainer = Trainer(model=model, args=targs, train_dataset=prepared.train, data_collator=prepared.collator,
                      callbacks=[rank_cb, interrupt, *extra_callbacks])
    last = get_last_checkpoint(str(ckpt_root)) if ckpt_root.is_dir() else None
    start_step = _checkpoint_step(last)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    synchronize()  # CUDA runs asynchronously: the clock must cover the kernels, not just their launch
    t0 = time.perf_counter()
    with interrupt:
        trainer.train(resume_from_checkpoint=last)
    synchronize()
    train_seconds = time.perf_counter() - t0
    if interrupt.requested:
        saved = get_last_checkpoint(str(ckpt_root))
        raise TrainingInterrupted(f"interrupted at step {trainer.state.global_step}; checkpoint saved in {saved}; "
                                  "run the same command again to resume")
    steps_run = trainer.state.global_step - start_step
    epochs_run = steps_run * batch_size / max(1, len(prepared.train))
    peak_mb, memory_kind = _peak_memory_mb()

    scores = {"validation": prepared.evaluate(model, prepared.validation)}
    for name, ds in eval_sets.items():
        scores[name] = prepared.evaluate(model, ds)
    deltas = full_deltas(model, reference) if reference is not None else adapter_deltas(model)
    if not deltas:
        raise RuntimeError(f"method {method} left no adapted layer to analyse")  # a bug, not bad input
    spectral = spectral_table(deltas)
    result = {
        "seed": seed, "learning_rate": lr, "scores": scores, "trainable_params": trainable, "total_params": total,
        "steps": trainer.state.global_step, "batch_size": batch_size,
        "train_seconds": train_seconds, "steps_timed": steps_run, "epochs_timed": epochs_run,
        "seconds_per_epoch": train_seconds / epochs_run if epochs_run > 0 else None,
        "peak_memory_mb": peak_mb, "memory_kind": memory_kind,
        "spectral": spectral, "effective_rank_history": rank_cb.history,
        "train_loss_history": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
        "processes": world_size(),
        # Under torchrun: how far any rank's trained weights are from rank 0's (0.0: the replicas stayed in sync).
        "max_weight_difference_across_ranks": max_difference_across_ranks(model),
    }
    if save_adapter:
        staging = staging_dir(seed_dir)
        if reference is None:
            model.save_pretrained(str(staging))
        else:
            _save_full(model, reference, prepared.head, staging)
        write_json(staging / RUN_INFO, {**prepared.run_info, "method": method, "targets": prepared.targets,
                                        "head": prepared.head})
        publish_dir(staging, seed_dir)
    write_json(result_path, result)
    if not args.keep_checkpoints and is_main_process():
        shutil.rmtree(ckpt_root, ignore_errors=True)
    del trainer, model
    return result


def zero_shot_scores(prepared: Prepared, model, cache: Path | None) -> dict:
    """Scores of the untouched model on every set (cached: compare computes them once for all methods)."""
    key = {"task": prepared.task, "model": prepared.model_path, "data": prepared.data_args, "sizes": prepared.sizes,
           "run_info": prepared.run_info}
    if cache is not None and cache.exists():
        stored = read_json(cache)
        if stored.get("key") == json.loads(json.dumps(key)):
            return stored["scores"]
    scores = {"validation": prepared.evaluate(model, prepared.validation)}
    for name, ds in prepared.tests.items():
        scores[name] = prepared.evaluate(model, ds)
    if cache is not None:
        write_json(cache, {"key": key, "scores": scores})
    return scores


def choose_lr(prepared: Prepared, args, method: str, grid: list[float], seed: int, out: Path) -> tuple[float, dict]:
    """Train the first seed at each learning rate of the grid and keep the best validation score."""
    scores = {}
    for lr in grid:
        result = train_seed(prepared, args, method, lr, seed, out / "lr-grid" / f"lr-{lr:g}", {},
                            save_adapter=False)
        scores[f"{lr:g}"] = result["scores"]["validation"]
    best = max(grid, key=lambda lr: (scores[f"{lr:g}"] if scores[f"{lr:g}"] is not None else float("-inf")))
    return best, {"grid": scores, "picked": best, "seed": seed, "metric": prepared.metric, "on": "validation"}


def _run_key(args, prepared: Prepared, method: str) -> dict:
    # Not the learning rate: each grid point and each seed records its own, so a grid can be extended later.
    return {"task": prepared.task, "method": method, "model": prepared.model_path, "data": prepared.data_args,
            "max_steps": args.max_steps, "epochs": args.epochs,
            "batch_size": args.batch_size, "targets": prepared.targets, "sizes": prepared.sizes}


def _check_output_dir(out: Path, key: dict) -> None:
    """Refuse to mix two different runs in one directory (resume only continues the same run)."""
    path = out / "run.json"
    if path.is_file():
        old = read_json(path).get("key", {})
        new = json.loads(json.dumps(key))
        diffs = [k for k in new if old.get(k) != new[k]]
        if diffs:
            k = diffs[0]
            raise ValueError(f"{out} holds a different run ({k}: {old.get(k)!r} there, {new[k]!r} now); "
                             "use another --output-dir or delete it")


def run(args: argparse.Namespace, extra_callbacks=()) -> dict:
    """Everything `kradapter train` does; returns the metrics dict also written to DIR/metrics.json."""
    from transformers import set_seed

    check_method(args.method)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    task = task_module(args.task)
    seeds = parse_seeds(args.seeds)
    grid = parse_lr_grid(args.lr_grid)
    if args.lr is not None and grid:
        raise ValueError("give --lr or --lr-grid, not both")
    if getattr(args, "quantize", None):
        _check_quantize(args)
    prepared = task.prepare(args)
    local_batch_size(args.batch_size or prepared.defaults.get("batch_size", 16), world_size())  # splits evenly?
    method = args.method
    out = Path(args.output_dir)
    key = _run_key(args, prepared, method)
    _check_output_dir(out, key)

    # Check the method on the model before spending time on anything (unsupported layer types fail here).
    set_seed(seeds[0])
    probe = prepared.build_model()
    zero_probe = prepared.build_model() if prepared.zero_shot else None
    apply_method(probe, method, prepared.targets, prepared.head)
    del probe
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "run.json", {"key": key})
    zero = None
    if zero_probe is not None:
        cache = Path(args.zero_shot_cache) if args.zero_shot_cache else out / "zero_shot.json"
        zero = zero_shot_scores(prepared, zero_probe, cache)
        del zero_probe

    selection = None
    if grid:
        lr, selection = choose_lr(prepared, args, method, grid, seeds[0], out)
    else:
        lr = args.lr if args.lr is not None else default_lr(method)
    results = [train_seed(prepared, args, method, lr, s, out / "seeds" / f"seed-{s}", prepared.tests,
                          extra_callbacks=extra_callbacks) for s in seeds]
    metrics = aggregate(prepared, args, method, lr, selection, seeds, results, zero)

    # The first seed's adapter goes to DIR itself, file by file, then the results.
    staging = staging_dir(out)
    first = out / "seeds" / f"seed-{seeds[0]}"
    for item in first.iterdir():
        if item.is_file() and item.name != "result.json":
            shutil.copy2(item, staging / item.name)
    publish_dir(staging, out)
    write_json(out / "metrics.json", metrics)
    write_text(out / "summary.txt", format_summary(metrics))
    return metrics


def _check_quantize(args) -> None:
    """--quantize: one clear error for a task, method or missing backend it cannot serve, before any loading."""
    from ..quant import bnb_config

    if args.task != "commonsense":
        raise ValueError(f"--quantize applies to the causal-LM task 'commonsense', not {args.task!r}")
    if args.method == "full":
        raise ValueError("--quantize needs an adapter method: full fine-tuning cannot train quantized weights")
    bnb_config(args.quantize)  # raises when bitsandbytes is not installed


def aggregate(prepared: Prepared, args, method, lr, selection, seeds, results, zero) -> dict:
    tests = {name: {"group": prepared.groups[name], **mean_std([r["scores"][name] for r in results])}
             for name in prepared.tests}
    per_seed_groups = [group_means(r["scores"], prepared.groups) for r in results]
    groups = {g: mean_std([pg[g] for pg in per_seed_groups]) for g in ("ID", "NID", "OOD")
              if any(g in pg for pg in per_seed_groups)}
    zero_block, rgen = None, None
    if zero is not None:
        zero_groups = group_means(zero, prepared.groups)
        zero_block = {"tests": {n: zero[n] for n in prepared.tests}, "validation": zero.get("validation"),
                      "groups": zero_groups}
        rgen = mean_std([r_gen(pg, zero_groups) for pg in per_seed_groups])
    spectral_rows = [spectral_means(r["spectral"]) for r in results]
    first = results[0]
    return {
        "task": prepared.task, "method": method, "model": prepared.model_path, "data": prepared.data_args,
        "seeds": seeds, "learning_rate": lr, "lr_selection": selection, "metric": prepared.metric,
        "trainable_params": first["trainable_params"], "total_params": first["total_params"],
        "targets": prepared.targets, "head": prepared.head, "sizes": prepared.sizes,
        "training": {"steps": first["steps"], "batch_size": first["batch_size"]},
        "validation": mean_std([r["scores"]["validation"] for r in results]),
        "tests": tests, "groups": groups, "zero_shot": zero_block, "r_gen": rgen,
        "spectral": first["spectral"],
        "spectral_summary": {k: mean_std([row[k] for row in spectral_rows])
                             for k in ("effective_rank", "nuclear_norm", "frobenius_norm")},
        "effective_rank_history": first["effective_rank_history"],
        "efficiency": {
            "seconds_per_epoch": mean_std([r["seconds_per_epoch"] for r in results]),
            "train_seconds": mean_std([r["train_seconds"] for r in results]),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in results),
            "memory_kind": first["memory_kind"],
        },
        "adapter": ".",
    }


def _pm(block: dict | None, digits: int = 3) -> str:
    if not block or block.get("mean") is None:
        return "n/a"
    return f"{block['mean']:.{digits}f} ± {block['std']:.{digits}f}"


def format_summary(m: dict) -> str:
    n = len(m["seeds"])
    lines = [
        f"kradapter train --task {m['task']} --method {m['method']}: {n} seed(s) {m['seeds']}, lr {m['learning_rate']:g}, "
        f"{m['training']['steps']} steps of batch {m['training']['batch_size']}",
        f"model {m['model']}; trainable parameters {m['trainable_params']:,} of {m['total_params']:,} "
        f"({100 * m['trainable_params'] / max(1, m['total_params']):.2f}%) on {len(m['targets'])} target modules",
    ]
    if m.get("lr_selection"):
        sel = m["lr_selection"]
        grid = ", ".join(f"{k}: {v:.3f}" for k, v in sel["grid"].items())
        lines.append(f"learning rate picked on the validation split ({sel['metric']}): {sel['picked']:g}  [{grid}]")
    lines.append(f"{'test set':<24} {'group':<5} {m['metric'] + ' (mean ± std)':>24} {'zero-shot':>10}")
    zs = (m.get("zero_shot") or {}).get("tests", {})
    for name, t in m["tests"].items():
        z = f"{zs[name]:.3f}" if name in zs else "-"
        lines.append(f"{name:<24} {t['group']:<5} {_pm(t):>24} {z:>10}")
    groups = "  ".join(f"{g} {_pm(b)}" for g, b in m["groups"].items())
    lines.append(f"groups: {groups}   r_gen: " + (_pm(m["r_gen"], 2) if m.get("r_gen") else
                                                  "n/a (no zero-shot baseline: the head is trained from scratch)"))
    s = m["spectral_summary"]
    lines.append(f"Delta W over {len(m['spectral'])} layers (means): effective rank {_pm(s['effective_rank'], 1)}, "
                 f"nuclear {_pm(s['nuclear_norm'], 3)}, Frobenius {_pm(s['frobenius_norm'], 4)}")
    e = m["efficiency"]
    lines.append(f"time per epoch {_pm(e['seconds_per_epoch'], 1)} s; peak memory {e['peak_memory_mb']:.0f} MB "
                 f"({e['memory_kind']})")
    return "\n".join(lines) + "\n"
