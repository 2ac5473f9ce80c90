"""The issue's targets checked against one run's numbers, and the printed table (the JSON file: kradapter.io)."""

from __future__ import annotations


def _target(name: str, value: float, limit: float, kind: str, paired: float | None = None) -> dict:
    """Judged on `value` (ratio of medians); `paired` (median of per-round ratios) is reported beside it."""
    if value is None:  # not measurable in this run (see pipeline.model_section)
        return {"target": name, "value": None, "paired": paired, "limit": limit, "kind": kind, "met": False}
    met = value <= limit if kind == "<=" else value >= limit
    return {"target": name, "value": value, "paired": paired, "limit": limit, "kind": kind, "met": bool(met)}


def evaluate_targets(results: dict) -> list[dict]:
    targets = []
    for row in results.get("layer", []):
        shape = f"{row['d_in']}x{row['d_out']}"
        r, p = row["ratios"], row["paired_ratios"]
        targets.append(
            _target(
                f"layer {shape}: fwd+bwd time / 3-GEMM limit", r["kradapter/3gemm"], 1.10, "<=", p["kradapter/3gemm"]
            )
        )
        targets.append(
            _target(
                f"layer {shape}: naive time / ours (speed-up)", r["naive/kradapter"], 1.3, ">=", p["naive/kradapter"]
            )
        )
    for row in results.get("saved", []):
        s = row["saved"]
        allowed = s["lora"]["total"] + s["kradapter_param_bytes"]
        targets.append(
            _target(
                f"layer {row['d_in']}x{row['d_out']}: saved bytes / (LoRA's + adapter params)",
                s["kradapter"]["total"] / allowed,
                1.0,
                "<=",
            )
        )
    if "model" in results:
        m = results["model"]
        targets.append(
            _target(
                "model: training step time KRAdapter / LoRA",
                m["ratios"]["kradapter/lora"],
                1.10,
                "<=",
                m["paired_ratios"]["kradapter/lora"],
            )
        )
        targets.append(
            _target(
                "model: peak memory KRAdapter / LoRA (whole process: weights + training)",
                m["memory_ratios"]["peak_kib kradapter/lora"],
                1.05,
                "<=",
            )
        )
        targets.append(
            _target(
                "model: peak memory KRAdapter / LoRA (training part only)",
                m["memory_ratios"]["training_kib kradapter/lora"],
                1.05,
                "<=",
            )
        )
    if "inference" in results:
        i = results["inference"]
        targets.append(
            _target(
                "inference: merged KRAdapter / base model",
                i["ratios"]["kradapter_merged/base"],
                1.02,
                "<=",
                i["paired_ratios"]["kradapter_merged/base"],
            )
        )
    return targets


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_report(results: dict) -> str:
    """Plain-text tables of everything measured: median seconds, ratios of medians, and paired ratios (median over
    rounds of the per-round ratio)."""
    lines = []
    mach = results["machine"]
    lines.append(
        f"machine: {mach['cpu']}, {mach['cpu_count']} CPUs, torch {mach['torch']} ({mach['torch_threads']} "
        f"threads), load average {results['load_average_start'][0]:.1f} -> "
        f"{results['load_average_end'][0]:.1f}"
    )
    if "layer" in results:
        lines += [
            "",
            f"(a) one layer, forward + backward at N = {results['layer'][0]['tokens']} tokens: median seconds",
            f"{'IN x OUT':<11}{'ours':>8}{'naive':>8}{'LoRA':>8}{'frozen':>8}{'3 GEMM':>8}  "
            f"{'ours/3GEMM':>10}{'(paired)':>9}{'naive/ours':>11}{'(paired)':>9}{'LoRA/3GEMM':>11}"
            f"{'ours/LoRA':>10}  LoRA r",
        ]
        for row in results["layer"]:
            t = {k: v["median_s"] for k, v in row["times"].items()}
            r, p = row["ratios"], row["paired_ratios"]
            lines.append(
                f"{row['d_in']}x{row['d_out']:<{10 - len(str(row['d_in']))}}"
                f"{t['kradapter']:>8.3f}{t['naive']:>8.3f}{t['lora']:>8.3f}{t['frozen']:>8.3f}"
                f"{t['3gemm']:>8.3f}  {r['kradapter/3gemm']:>10.3f}{p['kradapter/3gemm']:>9.3f}"
                f"{r['naive/kradapter']:>11.3f}{p['naive/kradapter']:>9.3f}"
                f"{r['lora/3gemm']:>11.3f}{r['kradapter/lora']:>10.3f}  {row['lora_rank']:>6}"
            )
    if "saved" in results:
        lines += [
            "",
            "(b) bytes saved for backward per layer (MiB; distinct storages; 'act' = not a parameter)",
            f"{'IN x OUT':<11}{'ours':>8}{'act':>7}{'LoRA':>8}{'act':>7}{'naive':>8}{'act':>7}{'frozen':>8}"
            f"{'act':>7}  {'adapter params':>14}",
        ]
        for row in results["saved"]:
            s = row["saved"]
            cells = "".join(
                f"{_mib(s[k]['total']):>8}{_mib(s[k]['activations']):>7}"
                for k in ("kradapter", "lora", "naive", "frozen")
            )
            lines.append(
                f"{row['d_in']}x{row['d_out']:<{10 - len(str(row['d_in']))}}{cells}  "
                f"{_mib(s['kradapter_param_bytes']):>14}"
            )
    if "model" in results:
        m = results["model"]
        c = m["config"]
        lines += [
            "",
            f"(c) training step, Llama-shaped (hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, "
            f"{c['num_attention_heads']} heads / {c['num_key_value_heads']} kv heads, vocab "
            f"{c['vocab_size']}), {m['tokens_per_step']} tokens, AdamW; k_proj, v_proj "
            f"{m['adapted']['shape_out_in'][1]}->{m['adapted']['shape_out_in'][0]}, LoRA r = "
            f"{m['adapted']['lora_rank']}",
            f"{'method':<11}{'trainable':>11}{'step s':>9}{'peak MiB':>10}{'train MiB':>10}{'saved act MiB':>14}",
        ]
        for name in ("kradapter", "lora", "full"):
            mem = m["memory_kib"][name]
            lines.append(
                f"{name:<11}{m['trainable'][name]:>11,}{m['times'][name]['median_s']:>9.3f}"
                f"{mem['peak_kib'] / 1024:>10.1f}{mem['training_kib'] / 1024:>10.1f}"
                f"{_mib(m['saved'][name]['activations']):>14}"
            )
        lines.append(
            f"step KRAdapter/LoRA {m['ratios']['kradapter/lora']:.3f} (paired "
            f"{m['paired_ratios']['kradapter/lora']:.3f}), full/LoRA {m['ratios']['full/lora']:.3f}; "
            f"peak KRAdapter/LoRA {_num(m['memory_ratios']['peak_kib kradapter/lora'])} "
            f"(training part {_num(m['memory_ratios']['training_kib kradapter/lora'])})"
        )
    if "inference" in results:
        i = results["inference"]
        t = {k: v["median_s"] for k, v in i["times"].items()}
        lines += [
            "",
            f"(d) inference, {i['tokens']} tokens, median seconds",
            f"base {t['base']:.3f}  merged KRAdapter {t['kradapter_merged']:.3f}  unmerged KRAdapter "
            f"{t['kradapter']:.3f}  unmerged LoRA {t['lora']:.3f}",
            f"merged/base {i['ratios']['kradapter_merged/base']:.3f} (paired "
            f"{i['paired_ratios']['kradapter_merged/base']:.3f}), unmerged KRAdapter/LoRA "
            f"{i['ratios']['kradapter/lora']:.3f} (paired {i['paired_ratios']['kradapter/lora']:.3f})",
        ]
    if results.get("targets"):
        lines += ["", "targets"]
        for t in results["targets"]:
            paired = "" if t.get("paired") is None else f", paired {t['paired']:.3f}"
            lines.append(
                f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {_num(t['value'])} "
                f"(target {t['kind']} {t['limit']}{paired})"
            )
    return "\n".join(lines)
