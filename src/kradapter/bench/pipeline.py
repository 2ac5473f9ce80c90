"""Runs the sections of `kradapter bench` in order and returns one JSON-ready dict. Never prints: progress goes
to the `progress(label)` callback, once per unit counted by count_units."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable

import torch

from . import layers, model
from .memory import peak_rss_in_subprocess, saved_bytes
from .options import BenchOptions
from .report import evaluate_targets
from .timing import interleaved_times, summarize


def count_units(opts: BenchOptions) -> int:
    """How many progress ticks [`run_bench`][kradapter.bench.run_bench] will report for these options.

    Args:
        opts: The benchmark's options.

    Returns:
        The number of units.
    """
    n = 0
    if "layer" in opts.sections:
        n += len(opts.shapes) * opts.repeats
    if "saved" in opts.sections:
        n += len(opts.shapes)
    if "model" in opts.sections:
        n += opts.model_repeats + (1 if opts.memory_one_process else len(model.TRAIN_METHODS))
    if "inference" in opts.sections:
        n += opts.model_repeats
    return n


def machine_info(device: str = "cpu") -> dict:
    import peft
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None,
    }


def _ratios(samples: dict[str, list[float]], pairs: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Ratios of medians, and paired ratios: the median over rounds of a/b within each round (the two ran seconds
    apart, so a slow spell of the shared machine mostly cancels)."""
    medians = {name: statistics.median(s) for name, s in samples.items()}
    ratio = {f"{a}/{b}": medians[a] / medians[b] for a, b in pairs}
    paired = {f"{a}/{b}": statistics.median([x / y for x, y in zip(samples[a], samples[b])]) for a, b in pairs}
    return ratio, paired


def layer_section(opts: BenchOptions, tick: Callable[[str], None]) -> tuple[list, list]:
    timed, saved = [], []
    for d_in, d_out in opts.shapes:
        label = f"layer {d_in}x{d_out}"
        candidates, modules, x = layers.layer_case(d_in, d_out, opts.tokens, opts.k1, opts.seed, opts.device)
        info = {
            "d_in": d_in,
            "d_out": d_out,
            "tokens": opts.tokens,
            "kradapter_trainable": layers.trainable_count(modules["kradapter"]),
            "lora_rank": layers.lora_rank_at_budget(d_out, d_in, opts.k1),
            "lora_trainable": layers.trainable_count(modules["lora"]),
        }
        if "saved" in opts.sections:
            per = {name: saved_bytes(lambda m=m, x=x: m(x), m.parameters()) for name, m in modules.items()}
            per["kradapter_param_bytes"] = layers.adapter_bytes(modules["kradapter"])
            per["lora_param_bytes"] = layers.adapter_bytes(modules["lora"])
            saved.append({**info, "saved": per})
            tick(f"saved {d_in}x{d_out}")
        if "layer" in opts.sections:
            samples = interleaved_times(
                candidates, opts.repeats, opts.warmup, on_round=lambda label=label: tick(label), device=opts.device
            )
            ratios, paired = _ratios(
                samples,
                [
                    ("kradapter", "3gemm"),
                    ("naive", "kradapter"),
                    ("lora", "3gemm"),
                    ("naive", "3gemm"),
                    ("frozen", "3gemm"),
                    ("kradapter", "lora"),
                ],
            )
            timed.append(
                {
                    **info,
                    "times": {name: summarize(s) for name, s in samples.items()},
                    "ratios": ratios,
                    "paired_ratios": paired,
                }
            )
        del candidates, modules, x
    return timed, saved


def model_section(opts: BenchOptions, tick: Callable[[str], None]) -> dict:
    models = model.training_models(opts)
    ids = model.make_batch(opts)
    saved = {}
    for name, m in models.items():
        m.train()
        saved[name] = saved_bytes(lambda m=m: m(input_ids=ids, labels=ids).loss, m.parameters())
    steps = {name: model.train_step(m, ids) for name, m in models.items()}
    samples = interleaved_times(
        steps, opts.model_repeats, max(opts.warmup, 1), on_round=lambda: tick("train steps"), device=opts.device
    )
    ratios, paired = _ratios(samples, [("kradapter", "lora"), ("full", "lora"), ("kradapter", "full")])
    result = {
        "config": model.llama_config(opts).to_dict(),
        "adapted": {
            "modules": model.TARGETS,
            "shape_out_in": list(model.kv_shape(opts)),
            "lora_rank": models["lora"].peft_config["default"].r,
        },
        "tokens_per_step": opts.batch * opts.seq,
        "trainable": {name: layers.trainable_count(m) for name, m in models.items()},
        "saved": saved,
        "times": {name: summarize(s) for name, s in samples.items()},
        "ratios": ratios,
        "paired_ratios": paired,
    }
    del steps, models
    memory = {}
    groups = [list(model.TRAIN_METHODS)] if opts.memory_one_process else [[name] for name in model.TRAIN_METHODS]
    for names in groups:  # by default a fresh process each, so no method inherits another's allocations
        memory.update(peak_rss_in_subprocess(names, opts.to_dict()))
        tick(f"peak memory {', '.join(names)}")
    result["memory_kib"] = memory
    # None when LoRA's figure is 0: a tiny model measured in one process can reuse memory freed by the previous one.
    result["memory_ratios"] = {
        f"{kind} kradapter/lora": memory["kradapter"][kind] / memory["lora"][kind] if memory["lora"][kind] > 0 else None
        for kind in ("peak_kib", "training_kib")
    }
    return result


def inference_section(opts: BenchOptions, tick: Callable[[str], None]) -> dict:
    models = model.inference_models(opts)
    ids = model.make_batch(opts)
    runs = {name: model.forward_only(m, ids) for name, m in models.items()}
    samples = interleaved_times(
        runs, opts.model_repeats, max(opts.warmup, 1), on_round=lambda: tick("inference"), device=opts.device
    )
    ratios, paired = _ratios(
        samples, [("kradapter_merged", "base"), ("kradapter", "lora"), ("kradapter", "base"), ("lora", "base")]
    )
    return {
        "tokens": opts.batch * opts.seq,
        "times": {name: summarize(s) for name, s in samples.items()},
        "ratios": ratios,
        "paired_ratios": paired,
    }


def run_bench(opts: BenchOptions, progress: Callable[[str], None] | None = None) -> dict:
    """Run the selected bench sections and return their measurements (the library never prints; the CLI does).

    torch's thread count is the caller's (the CLI sets ``--threads``; memory workers set their own).

    Args:
        opts: What to run; validated first.
        progress: Called with a label after each unit of work (see
            [`count_units`][kradapter.bench.count_units]).

    Returns:
        ``bench.json``'s content: machine, options, load averages, and one entry per section run.

    Raises:
        ValueError: If an option is invalid (before any work).
    """
    opts.validate()
    tick = progress or (lambda label: None)
    results: dict = {
        "machine": machine_info(opts.device),
        "options": opts.to_dict(),
        "load_average_start": os.getloadavg(),
    }
    if "layer" in opts.sections or "saved" in opts.sections:
        timed, saved = layer_section(opts, tick)
        if timed:
            results["layer"] = timed
        if saved:
            results["saved"] = saved
    if "model" in opts.sections:
        results["model"] = model_section(opts, tick)
    if "inference" in opts.sections:
        results["inference"] = inference_section(opts, tick)
    results["load_average_end"] = os.getloadavg()
    results["targets"] = evaluate_targets(results)
    return results
