"""One `kradapter train` run: prepare and check everything, optionally pick the learning rate on the validation
split, train each seed with transformers' Trainer (resumable, Ctrl-C safe), evaluate every test set, analyse
every adapted layer's update, and write the results atomically.

Layout of --output-dir DIR:
  DIR/metrics.json, DIR/summary.txt        the run's results, only when every seed finished
  DIR/per_example.json                      each accuracy-scored test example's correctness (0/1) per seed, in
                                            test order: what `kradapter compare` draws its intervals from
  DIR/adapter_config.json + weights         the first seed's adapter (PEFT save_pretrained), for `report`
  DIR/kradapter_run.json                    how to rebuild the base model
  DIR/seeds/seed-S/                         each seed's adapter, result.json and (while running) checkpoints-lr-X/
  DIR/lr-grid/lr-X/result.json              learning-rate selection runs (--lr-grid)
  DIR/run.json, DIR/.lock                   what run this directory holds; the lock of the run working in it
The results of DIR and of each seed directory are published as one set (kradapter.outdir): the names above are
links into DIR/.published -> .result-*, replaced in one step, so a kill never leaves a mix of old and new files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..dist import (
    gathered_trainable,
    is_main_process,
    local_batch_size,
    max_difference_across_ranks,
    world_size,
    write_adapter,
)
from ..io import check_writable_dir, read_json, staging_dir, write_json, write_text
from ..learning_rates import default_lr
from ..outdir import OutputLock, clean_interrupted, publish_version
from .baselines import BALANCED, group_baselines, not_above_majority
from .callbacks import DivergenceGuard, EffectiveRankCallback, GracefulInterrupt
from .checkpoints import StepTimer, drop_partial, explain_unloadable, latest_complete_checkpoint
from .deltas import adapter_deltas, spectral_means, spectral_table
from .interval_tables import PER_EXAMPLE
from .methods import (
    apply_method,
    budget_k1,
    check_method,
    full_deltas,
    peft_config,
    trainable_parameters,
    use_public_base_names,
)
from .metrics import CORRECT, group_means, mean_std, r_gen
from .options import check_options
from .progress import use_labelled_progress
from .tasks import task_module
from .tasks.base import Prepared

RUN_INFO = "kradapter_run.json"
RANK_POINTS = 20
MAX_SEEDS = 1000
FULL_DELTA = "full_delta.safetensors"
FULL_HEAD = "full_head.safetensors"
log = logging.getLogger(__name__)  # resume and clean-up notes; `kradapter train` shows them
log.addHandler(logging.NullHandler())  # a library: silent unless the application configures logging


class TrainingInterrupted(Exception):
    """Ctrl-C during training: a checkpoint was saved; rerunning the same command resumes from it."""


def parse_seeds(value: str) -> list[int]:
    """'5' -> seeds 0..4; '0,3,7' -> those seeds."""
    try:
        if "," in str(value):
            seeds = [int(s) for s in str(value).split(",") if s.strip()]
        else:
            count = int(value)
            if count > MAX_SEEDS:
                raise ValueError(f"--seeds {value!r}: each seed is a full training run; give at most {MAX_SEEDS}")
            seeds = list(range(count))
    except ValueError as err:
        if "--seeds" in str(err):
            raise
        raise ValueError(f"--seeds {value!r}: give a count (5) or a list (0,1,2)") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {value!r}: need at least one seed and no repeats")
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"--seeds {value!r}: {len(seeds)} seeds, each a full training run; give at most {MAX_SEEDS}")
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise ValueError(f"--seeds {value!r}: seed {bad[0]} is outside 0..2**32-1, the range numpy and torch accept")
    return seeds


def parse_lr_grid(value: str | None) -> list[float]:
    if not value:
        return []
    try:
        grid = [float(v) for v in value.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--lr-grid {value!r}: give comma-separated learning rates, e.g. 1e-4,3e-4,1e-3") from err
    if len(grid) < 2 or not all(math.isfinite(lr) and lr > 0 for lr in grid):
        raise ValueError(f"--lr-grid {value!r}: need at least two positive finite learning rates")
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

    save_file({k: v.contiguous().cpu() for k, v in full_deltas(model, reference).items()}, str(directory / FULL_DELTA))
    modules = dict(model.named_modules())
    head_state = {f"{h}.{k}": v.detach().contiguous().cpu() for h in head for k, v in modules[h].state_dict().items()}
    if head_state:
        save_file(head_state, str(directory / FULL_HEAD))


def train_seed(
    prepared: Prepared,
    args,
    method: str,
    lr: float,
    seed: int,
    seed_dir: Path,
    eval_sets: dict,
    save_adapter: bool = True,
    extra_callbacks=(),
) -> dict:
    """Train one seed (resuming from its newest complete checkpoint), evaluate, analyse, save. Returns its result
    dict. The seed's previous results (another learning rate) stay until the new ones replace them in one step."""
    from transformers import Trainer, TrainingArguments, set_seed

    result_path = seed_dir / "result.json"
    if result_path.exists():
        done = read_json(result_path)
        if done.get("learning_rate") == lr:
            if not args.keep_checkpoints and is_main_process():  # a kill after the publish left them
                shutil.rmtree(seed_dir / f"checkpoints-lr-{lr:g}", ignore_errors=True)
            return done
    set_seed(seed)
    model = prepared.build_model()
    model, reference = apply_method(
        model, method, prepared.targets, prepared.head, budget_k1(getattr(args, "budget", None))
    )
    trainable, total = trainable_parameters(model)
    batch_size, max_steps, epochs = training_size(args, prepared.defaults)
    steps_planned = max_steps or -(-len(prepared.train) // batch_size) * int(epochs)
    log_every = max(1, min(args.logging_steps, steps_planned))
    # Checkpoints are per learning rate: resuming restores the optimizer and schedule, which belong to one rate.
    ckpt_root = seed_dir / f"checkpoints-lr-{lr:g}"
    if is_main_process():
        for stale in seed_dir.glob("checkpoints-lr-*"):
            if stale != ckpt_root:
                shutil.rmtree(stale, ignore_errors=True)
    targs = TrainingArguments(
        output_dir=str(ckpt_root),
        max_steps=max_steps or -1,
        num_train_epochs=float(epochs),
        # --batch-size is the global batch: under torchrun each of the processes takes an equal share.
        per_device_train_batch_size=local_batch_size(batch_size, world_size()),
        learning_rate=lr,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=int(args.warmup_ratio * steps_planned),
        logging_steps=log_every,
        save_strategy="steps",
        save_steps=args.save_steps or max(1, steps_planned // 4),
        save_total_limit=1,
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        disable_tqdm=args.quiet,
        # --deepspeed; accelerate launch --use_deepspeed passes its config to the Trainer itself.
        deepspeed=getattr(args, "deepspeed", None),
    )
    timer = StepTimer()  # first: its step time excludes the other callbacks' work
    # ~20 points by default: enough for the effective rank to read as a curve (one SVD per layer each, cheap).
    rank_cb = EffectiveRankCallback(model, args.rank_every or max(1, steps_planned // RANK_POINTS), reference)
    interrupt = GracefulInterrupt()
    divergence = DivergenceGuard()
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=prepared.train,
        data_collator=prepared.collator,
        callbacks=[timer, rank_cb, interrupt, divergence, *extra_callbacks],
    )
    use_labelled_progress(trainer, f"{method} seed {seed} lr {lr:g}", show=not args.quiet)
    last, partial = latest_complete_checkpoint(ckpt_root)
    for path, reason in partial:
        log.warning("ignoring partial checkpoint %s (%s; a run was killed while saving it)", path, reason)
    if is_main_process():
        drop_partial(partial)
    if last is not None:
        log.warning("resuming seed %s from %s", seed, last)
    timer.restore(last)
    start_step = _checkpoint_step(last)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    saved_state = read_json(last / "trainer_state.json") if last is not None else {}
    if saved_state and start_step >= saved_state.get("max_steps", float("inf")):
        # Training had finished (a Ctrl-C during evaluation): load its weights; Trainer would run one more step.
        from transformers import TrainerState

        from .._compat import trainer_load_from_checkpoint

        with explain_unloadable(last):
            trainer_load_from_checkpoint(trainer, str(last))
        trainer.state = TrainerState.load_from_json(str(last / "trainer_state.json"))
    else:
        with interrupt, explain_unloadable(last):
            trainer.train(resume_from_checkpoint=str(last) if last else None)
    steps = trainer.state.global_step
    if divergence.diverged is not None:
        if is_main_process():  # checkpoints of a diverging run: a rerun must not resume from them
            shutil.rmtree(ckpt_root, ignore_errors=True)
        raise divergence.error(method, lr)
    if interrupt.requested:
        saved, _ = latest_complete_checkpoint(ckpt_root)
        finished = " (training had finished)" if steps >= trainer.state.max_steps else ""
        raise TrainingInterrupted(
            f"interrupted at step {steps} of {trainer.state.max_steps}{finished}; "
            f"checkpoint saved in {saved}; run the same command again to resume"
        )
    try:
        result = _evaluate_and_save(
            _SeedJob(prepared, args, method, lr, seed, seed_dir, eval_sets, save_adapter),
            _TrainedSeed(model, reference, trainer, timer, rank_cb, trainable, total, batch_size, last),
        )
    except KeyboardInterrupt:
        saved, _ = latest_complete_checkpoint(ckpt_root)
        where = (
            f"its trained weights are in checkpoint {saved}; run the same command again to evaluate them "
            "(without training again)"
            if saved
            else "no checkpoint of it is left; a rerun trains it again"
        )
        raise TrainingInterrupted(
            f"interrupted while evaluating seed {seed} after its {steps} training steps; no "
            f"result of this seed was written; {where}"
        ) from None
    if not args.keep_checkpoints and is_main_process():
        shutil.rmtree(ckpt_root, ignore_errors=True)
    del trainer, model
    return result


def training_size(args, defaults: dict) -> tuple[int, int | None, float]:
    """(batch size, max steps or None, epochs): the options given, else the task's defaults."""
    batch_size = args.batch_size if args.batch_size is not None else defaults.get("batch_size", 16)
    max_steps = args.max_steps if args.max_steps is not None else defaults.get("max_steps")
    epochs = args.epochs if args.epochs is not None else defaults.get("epochs", 3)
    return batch_size, max_steps, epochs


@dataclass(frozen=True)
class _SeedJob:
    """What one seed's run was asked to do."""

    prepared: Prepared
    args: argparse.Namespace
    method: str
    lr: float
    seed: int
    seed_dir: Path
    eval_sets: dict
    save_adapter: bool


@dataclass(frozen=True)
class _TrainedSeed:
    """What training one seed left: the model, its Trainer and the callbacks that measured it."""

    model: Any
    reference: dict | None  # full fine-tuning's frozen copy of W0 per target, else None
    trainer: Any
    timer: StepTimer
    rank_cb: EffectiveRankCallback
    trainable: int
    total: int
    batch_size: int
    resumed_from: Path | None


def _evaluate_and_save(job: _SeedJob, done: _TrainedSeed) -> dict:
    """Evaluate every set, analyse every adapted layer, and publish the adapter and result.json in one step."""
    prepared, model, reference, trainer, timer, rank_cb = (
        job.prepared,
        done.model,
        done.reference,
        done.trainer,
        done.timer,
        done.rank_cb,
    )
    peak_mb, memory_kind = _peak_memory_mb()
    if not rank_cb.history:  # no step ran in this session (resumed after training had finished)
        rank_cb.measure(trainer.state.global_step)
    scores, extra, correct = evaluate_sets(prepared, model, {"validation": prepared.validation, **job.eval_sets})
    with gathered_trainable(model):  # ZeRO-3 holds a partition of each parameter: whole for the analysis
        deltas = full_deltas(model, reference) if reference is not None else adapter_deltas(model)
        max_difference = max_difference_across_ranks(model)
    if not deltas:
        raise RuntimeError(f"method {job.method} left no adapted layer to analyse")  # a bug, not bad input
    spectral = spectral_table(deltas)
    # Time per epoch from the steps that were timed (all of them, across resumes), never from wall time that
    # includes loading a checkpoint.
    epochs_timed = timer.steps * done.batch_size / max(1, len(prepared.train))
    result = {
        "seed": job.seed,
        "learning_rate": job.lr,
        "scores": scores,
        "extra_scores": extra,
        # each test example's correctness (0/1, test order), accuracy-scored sets only; {} where none is
        CORRECT: {name: v for name, v in correct.items() if name in job.eval_sets},
        "trainable_params": done.trainable,
        "total_params": done.total,
        "steps": trainer.state.global_step,
        "batch_size": done.batch_size,
        "resumed_from": str(done.resumed_from.name) if done.resumed_from else None,
        "train_seconds": timer.seconds,
        "steps_timed": timer.steps,
        "epochs_timed": epochs_timed,
        "seconds_per_epoch": timer.seconds / epochs_timed if epochs_timed > 0 else None,
        # Beside it, what it is: this process's CPU seconds in the same steps, and the machine's load average at the
        # first and last timed step (a busy machine stretches wall time); epochs_timed < 1 means extrapolated.
        "train_cpu_seconds": timer.cpu_seconds,
        "cpu_seconds_per_epoch": timer.cpu_seconds / epochs_timed if epochs_timed > 0 else None,
        "load_average": [timer.load_first, timer.load_last],
        "peak_memory_mb": peak_mb,
        "memory_kind": memory_kind,
        "spectral": spectral,
        "effective_rank_history": rank_cb.history,
        "train_loss_history": [
            {"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h
        ],
        "processes": world_size(),
        # Under torchrun: how far any rank's trained weights are from rank 0's (0.0: the replicas stayed in sync).
        "max_weight_difference_across_ranks": max_difference,
    }
    # The adapter and result.json become the seed's results together, in one step.
    staging = staging_dir(job.seed_dir)
    if job.save_adapter:
        if reference is None:
            # Gathered (FSDP, ZeRO-3) and checked tensor by tensor; rank 0 writes, the others' staging is dropped.
            use_public_base_names(model)  # a base any machine can load, not this one's cache path
            write_adapter(model, trainer.model_wrapped, staging, save_embedding_layers=False)
        else:
            _save_full(model, reference, prepared.head, staging)
        write_json(
            staging / RUN_INFO,
            {**prepared.run_info, "method": job.method, "targets": prepared.targets, "head": prepared.head},
        )
    write_json(staging / "result.json", result)
    publish_version(staging, job.seed_dir)
    return result


def evaluate_sets(prepared: Prepared, model, sets: dict) -> tuple[dict, dict, dict]:
    """({set: primary score}, {set: {other score: value}}, {set: [0/1 per example]}): a task's evaluate returns a
    number or a dict of named scores holding its primary metric, and, for an accuracy, each example's
    correctness under CORRECT."""
    scores, extra, correct = {}, {}, {}
    for name, ds in sets.items():
        out = prepared.evaluate(model, ds)
        if isinstance(out, dict):
            out = dict(out)
            if CORRECT in out:
                correct[name] = out.pop(CORRECT)
            scores[name] = out[prepared.metric]
            extra[name] = {k: v for k, v in out.items() if k != prepared.metric}
        else:
            scores[name], extra[name] = out, {}
    return scores, extra, correct


def zero_shot_scores(prepared: Prepared, model, cache: Path | None) -> tuple[dict, dict]:
    """Scores (primary, other) of the untouched model on every set (cached: compare computes them once for all
    methods)."""
    key = {
        "task": prepared.task,
        "model": prepared.model_path,
        "data": prepared.data_args,
        "sizes": prepared.sizes,
        "run_info": prepared.run_info,
    }
    if cache is not None and cache.exists():
        stored = read_json(cache)
        if stored.get("key") == json.loads(json.dumps(key)) and "extra" in stored:
            return stored["scores"], stored["extra"]
    scores, extra, _ = evaluate_sets(prepared, model, {"validation": prepared.validation, **prepared.tests})
    if cache is not None:
        write_json(cache, {"key": key, "scores": scores, "extra": extra})
    return scores, extra


def choose_lr(prepared: Prepared, args, method: str, grid: list[float], seed: int, out: Path) -> tuple[float, dict]:
    """Train the first seed at each learning rate of the grid and keep the best validation score."""
    scores = {}
    for lr in grid:
        result = train_seed(prepared, args, method, lr, seed, out / "lr-grid" / f"lr-{lr:g}", {}, save_adapter=False)
        scores[f"{lr:g}"] = result["scores"]["validation"]
    best = max(grid, key=lambda lr: scores[f"{lr:g}"] if scores[f"{lr:g}"] is not None else float("-inf"))
    return best, {"grid": scores, "picked": best, "seed": seed, "metric": prepared.metric, "on": "validation"}


def _run_key(args, prepared: Prepared, method: str) -> dict:
    # Not the learning rate: each grid point and each seed records its own, so a grid can be extended later.
    return {
        "task": prepared.task,
        "method": method,
        "model": prepared.model_path,
        "data": prepared.data_args,
        "max_steps": args.max_steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "targets": prepared.targets,
        "sizes": prepared.sizes,
        "scoring": prepared.run_info.get("scoring"),
        "generation": prepared.run_info.get("generation"),  # beams and new tokens, where answers are generated
        "budget": getattr(args, "budget", None),
    }


def _check_output_dir(out: Path, key: dict) -> None:
    """Refuse to mix two different runs in one directory (resume only continues the same run)."""
    path = out / "run.json"
    if path.is_file():
        old = read_json(path).get("key", {})
        new = json.loads(json.dumps(key))
        diffs = [k for k in new if old.get(k) != new[k]]
        if diffs:
            k = diffs[0]
            raise ValueError(
                f"{out} holds a different run ({k}: {old.get(k)!r} there, {new[k]!r} now); "
                "use another --output-dir or delete it"
            )


def run(args: argparse.Namespace, extra_callbacks=()) -> dict:
    """Everything `kradapter train` does; returns the metrics dict also written to DIR/metrics.json."""
    check_method(args.method)
    budget_k1(getattr(args, "budget", None))  # an unknown budget word fails here, before anything loads
    check_options(args)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    task = task_module(args.task)
    seeds = parse_seeds(args.seeds)
    grid = parse_lr_grid(args.lr_grid)
    if args.lr is not None and grid:
        raise ValueError("give --lr or --lr-grid, not both")
    if getattr(args, "quantize", None):
        _check_quantize(args)
    _check_deepspeed(args)
    _check_scoring(args, task)
    out = Path(args.output_dir)
    fresh = not out.exists()
    check_writable_dir(out)
    with OutputLock(out, fresh=fresh):
        for path in clean_interrupted(out):
            log.warning("removed %s, left by an interrupted run", path)
        try:
            return _run_locked(args, task, seeds, grid, out, extra_callbacks)
        except KeyboardInterrupt:
            raise TrainingInterrupted(_interrupted_state(out)) from None


def _check_deepspeed(args) -> None:
    """Refuse an untested DeepSpeed setup (--deepspeed, or accelerate launch --use_deepspeed) before anything loads."""
    from ..zero import accelerate_deepspeed_config, check_deepspeed_config

    given = getattr(args, "deepspeed", None)
    config = given if given is not None else accelerate_deepspeed_config()
    if config is None:
        return
    config = check_deepspeed_config(config, quantize=getattr(args, "quantize", None))
    if args.method == "full" and config["zero_optimization"]["stage"] == 3:
        raise ValueError(
            "method full under DeepSpeed ZeRO-3 is not supported: its update is saved from every weight of the "
            "targets, which ZeRO-3 holds partitioned; use ZeRO-2 (examples/deepspeed/zero2.json)"
        )


def _interrupted_state(out: Path) -> str:
    """What a Ctrl-C outside the training loop leaves on disk, read from the disk."""
    done = sorted(p.parent.name for p in out.glob("seeds/seed-*/result.json"))
    checkpoints = sorted(str(p) for p in out.glob("*/*/checkpoints-lr-*/checkpoint-*"))
    published = (out / "metrics.json").exists()
    if not (done or checkpoints or published):
        return f"interrupted; nothing of this run was written to {out} yet"
    parts = (
        ([f"finished seeds: {', '.join(done)}"] if done else [])
        + ([f"checkpoints: {', '.join(checkpoints)}"] if checkpoints else [])
        + ([f"{out}/metrics.json holds the previous complete results"] if published else [])
    )
    return f"interrupted; {'; '.join(parts)}; run the same command again to resume"


def _run_locked(args, task, seeds, grid, out: Path, extra_callbacks) -> dict:
    prepared = task.prepare(args)
    local_batch_size(training_size(args, prepared.defaults)[0], world_size())  # splits evenly?
    method = args.method
    key = _run_key(args, prepared, method)
    _check_output_dir(out, key)

    # Check the method on the model before spending time on anything (unsupported layer types fail here), on the
    # untouched model prepare loaded, which then gives the zero-shot scores: one copy alive at a time.
    untouched = prepared.take_model()
    peft_config(method, untouched, prepared.targets, prepared.head, budget_k1(getattr(args, "budget", None)))
    write_json(out / "run.json", {"key": key})
    zero = zero_extra = None
    if prepared.zero_shot:
        cache = Path(args.zero_shot_cache) if args.zero_shot_cache else out / "zero_shot.json"
        zero, zero_extra = zero_shot_scores(prepared, untouched, cache)
    del untouched

    selection = None
    if grid:
        lr, selection = choose_lr(prepared, args, method, grid, seeds[0], out)
    else:
        lr = args.lr if args.lr is not None else default_lr(method)
    results = [
        train_seed(
            prepared, args, method, lr, s, out / "seeds" / f"seed-{s}", prepared.tests, extra_callbacks=extra_callbacks
        )
        for s in seeds
    ]
    metrics = aggregate(prepared, args, method, lr, selection, seeds, results, zero, zero_extra)

    # The first seed's adapter and the run's results become DIR's published results together, in one step; the
    # previous ones stay readable until then.
    staging = staging_dir(out)
    first = out / "seeds" / f"seed-{seeds[0]}"
    for item in first.iterdir() if is_main_process() else ():  # other ranks' staging is dropped unread
        if item.is_file() and not item.name.startswith(".") and item.name != "result.json":
            shutil.copy2(item, staging / item.name)
    write_json(staging / "metrics.json", metrics)
    per_example = per_example_record(prepared, seeds, results)
    if per_example is not None:
        write_json(staging / PER_EXAMPLE, per_example)
    write_text(staging / "summary.txt", format_summary(metrics))
    publish_version(staging, out)
    return metrics


def per_example_record(prepared: Prepared, seeds: list[int], results: list[dict]) -> dict | None:
    """DIR/per_example.json's content: {"seeds", "metric", "tests": {set: [[0/1 per example] per seed]}} for the
    test sets every seed recorded; None when none did (a non-accuracy metric, or seeds trained before the record
    existed: their result.json lacks it)."""
    if any(CORRECT not in r for r in results):
        return None
    names = [n for n in prepared.tests if all(n in r[CORRECT] for r in results)]
    if not names:
        return None
    return {
        "format": 1,
        "metric": prepared.metric,
        "seeds": seeds,
        "order": "each set's test order; rows: seeds as listed",
        "tests": {n: [[int(v) for v in r[CORRECT][n]] for r in results] for n in names},
    }


def _check_scoring(args, task) -> None:
    """--scoring: one clear error for a mode the task does not offer, before anything is loaded."""
    mode = getattr(args, "scoring", None)
    supported = getattr(task, "SCORING", ())
    if mode is not None and mode not in supported:
        offer = (
            f"supports {', '.join(supported)}"
            if supported
            else "has one way to score (its model's predicted class); --scoring applies to the commonsense task"
        )
        raise ValueError(f"--scoring {mode!r}: task {args.task!r} {offer}")


def _check_quantize(args) -> None:
    """--quantize: one clear error for a task, method or missing backend it cannot serve, before any loading."""
    from ..quant import bnb_config

    if args.task != "commonsense":
        raise ValueError(f"--quantize applies to the causal-LM task 'commonsense', not {args.task!r}")
    from ..specs import get_spec

    if get_spec(args.method).trains_base:
        raise ValueError("--quantize needs an adapter method: full fine-tuning cannot train quantized weights")
    bnb_config(args.quantize)  # raises when bitsandbytes is not installed


def _extra_blocks(prepared: Prepared, results: list[dict], name: str) -> dict:
    names = sorted({k for r in results for k in r.get("extra_scores", {}).get(name, {})})
    return {k: mean_std([r.get("extra_scores", {}).get(name, {}).get(k) for r in results]) for k in names}


def aggregate(prepared: Prepared, args, method, lr, selection, seeds, results, zero, zero_extra=None) -> dict:
    tests = {
        name: {
            "group": prepared.groups[name],
            **mean_std([r["scores"][name] for r in results]),
            "extra": _extra_blocks(prepared, results, name),
            "baseline": prepared.baselines.get(name),
        }
        for name in prepared.tests
    }
    per_seed_groups = [group_means(r["scores"], prepared.groups) for r in results]
    groups = {
        g: mean_std([pg[g] for pg in per_seed_groups])
        for g in ("ID", "NID", "OOD")
        if any(g in pg for pg in per_seed_groups)
    }
    per_seed_balanced = [
        group_means({n: v[BALANCED] for n, v in r.get("extra_scores", {}).items() if BALANCED in v}, prepared.groups)
        for r in results
    ]
    balanced_groups = {
        g: mean_std([pg.get(g) for pg in per_seed_balanced]) for g in groups if any(g in pg for pg in per_seed_balanced)
    }
    baselines = {"tests": prepared.baselines, "groups": group_baselines(prepared.baselines, prepared.groups)}
    zero_block, rgen = None, None
    if zero is not None:
        zero_groups = group_means(zero, prepared.groups)
        zero_extra = zero_extra or {}
        zero_block = {
            "tests": {n: zero[n] for n in prepared.tests},
            "validation": zero.get("validation"),
            "groups": zero_groups,
            "extra": {n: zero_extra.get(n, {}) for n in prepared.tests},
            "balanced_groups": group_means(
                {n: v[BALANCED] for n, v in zero_extra.items() if BALANCED in v and n in prepared.tests},
                prepared.groups,
            ),
        }
        rgen = mean_std([r_gen(pg, zero_groups) for pg in per_seed_groups])
    spectral_rows = [spectral_means(r["spectral"]) for r in results]
    first = results[0]
    return {
        "task": prepared.task,
        "method": method,
        "model": prepared.model_path,
        "data": prepared.data_args,
        "budget": getattr(args, "budget", None) or "low",
        "k1": budget_k1(getattr(args, "budget", None)),
        "seeds": seeds,
        "learning_rate": lr,
        "lr_selection": selection,
        "metric": prepared.metric,
        "trainable_params": first["trainable_params"],
        "total_params": first["total_params"],
        "targets": prepared.targets,
        "head": prepared.head,
        "sizes": prepared.sizes,
        "training": {"steps": first["steps"], "batch_size": first["batch_size"]},
        "validation": mean_std([r["scores"]["validation"] for r in results]),
        "tests": tests,
        "groups": groups,
        "balanced_groups": balanced_groups,
        "baselines": baselines,
        "not_above_majority": [name for name, _, _ in not_above_majority(tests, prepared.baselines)],
        "zero_shot": zero_block,
        "r_gen": rgen,
        "spectral": first["spectral"],
        "spectral_summary": {
            k: mean_std([row[k] for row in spectral_rows]) for k in ("effective_rank", "nuclear_norm", "frobenius_norm")
        },
        "effective_rank_history": first["effective_rank_history"],
        "efficiency": {
            "seconds_per_epoch": mean_std([r["seconds_per_epoch"] for r in results]),
            "train_seconds": mean_std([r["train_seconds"] for r in results]),
            "cpu_seconds_per_epoch": mean_std([r.get("cpu_seconds_per_epoch") for r in results]),
            "epochs_timed": mean_std([r.get("epochs_timed") for r in results]),
            # [min, max] of the load averages seen at the timed steps of every seed (None: not recorded)
            "load_average": _load_span(results),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in results),
            "memory_kind": first["memory_kind"],
        },
        "adapter": ".",
    }


def _load_span(results: list[dict]) -> list[float] | None:
    loads = [v for r in results for v in (r.get("load_average") or []) if v is not None]
    return [min(loads), max(loads)] if loads else None


def timing_note(efficiency: dict) -> str:
    """What a printed time per epoch is: wall clock of the training steps only, measured over whole epochs or
    extrapolated from part of one, the CPU seconds beside it, and the load average while it was measured."""
    epochs = (efficiency.get("epochs_timed") or {}).get("mean")
    kind = (
        "(wall clock of the training steps"
        if epochs is None
        else f"(wall clock of the training steps, {'measured over' if epochs >= 1 else 'extrapolated from'} "
        f"{epochs:.2g} epoch{'s' if epochs != 1 else ''}"
    )
    cpu = (efficiency.get("cpu_seconds_per_epoch") or {}).get("mean")
    if cpu is not None:
        kind += f"; CPU {cpu:.1f} s"
    load = efficiency.get("load_average")
    if load:
        kind += f"; load average {load[0]:g}" + (f"-{load[1]:g}" if load[1] != load[0] else "")
    return kind + ")"


def _pm(block: dict | None, digits: int = 3) -> str:
    if not block or block.get("mean") is None:
        return "n/a"
    return f"{block['mean']:.{digits}f} ± {block['std']:.{digits}f}"


def format_summary(m: dict) -> str:
    n = len(m["seeds"])
    lines = [
        f"kradapter train --task {m['task']} --method {m['method']}: {n} seed(s) {m['seeds']}, "
        f"lr {m['learning_rate']:g}, "
        f"{m['training']['steps']} steps of batch {m['training']['batch_size']}",
        f"model {m['model']}; trainable parameters {m['trainable_params']:,} of {m['total_params']:,} "
        f"({100 * m['trainable_params'] / max(1, m['total_params']):.2f}%) on {len(m['targets'])} target modules",
    ]
    if m.get("lr_selection"):
        sel = m["lr_selection"]
        grid = ", ".join(f"{k}: {v:.3f}" for k, v in sel["grid"].items())
        lines.append(f"learning rate picked on the validation split ({sel['metric']}): {sel['picked']:g}  [{grid}]")
    lines.append(
        f"{'test set':<24} {'group':<5} {m['metric'] + ' (mean ± std)':>24} {'balanced acc.':>16} "
        f"{'zero-shot':>10} {'majority':>9} {'chance':>7}"
    )
    zs = (m.get("zero_shot") or {}).get("tests", {})
    flagged = set(m.get("not_above_majority", []))
    for name, t in m["tests"].items():
        z = f"{zs[name]:.3f}" if name in zs else "-"
        bal = _pm((t.get("extra") or {}).get(BALANCED))
        base = t.get("baseline") or {}
        major = f"{base['majority']:.3f}" if base else "-"
        chance = f"{base['chance']:.3f}" if base else "-"
        mark = " (not above majority)" if name in flagged else ""
        lines.append(f"{name:<24} {t['group']:<5} {_pm(t):>24} {bal:>16} {z:>10} {major:>9} {chance:>7}{mark}")
    for name, t in m["tests"].items():
        others = {k: b for k, b in (t.get("extra") or {}).items() if k != BALANCED}
        if others:
            lines.append(f"{name}: " + ", ".join(f"{k} {_pm(b)}" for k, b in others.items()))
    groups = "  ".join(f"{g} {_pm(b)}" for g, b in m["groups"].items())
    lines.append(
        f"groups: {groups}   r_gen: "
        + (_pm(m["r_gen"], 2) if m.get("r_gen") else "n/a (no zero-shot baseline: the head is trained from scratch)")
    )
    s = m["spectral_summary"]
    lines.append(
        f"Delta W over {len(m['spectral'])} layers (means): effective rank {_pm(s['effective_rank'], 1)}, "
        f"nuclear {_pm(s['nuclear_norm'], 3)}, Frobenius {_pm(s['frobenius_norm'], 4)}"
    )
    e = m["efficiency"]
    lines.append(
        f"time per epoch {_pm(e['seconds_per_epoch'], 1)} s {timing_note(e)}; peak memory {e['peak_memory_mb']:.0f} MB "
        f"({e['memory_kind']})"
    )
    return "\n".join(lines) + "\n"
