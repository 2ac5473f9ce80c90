"""What converting a trained adapter to plain LoRA costs: accuracy in and out of domain of each adapter of a
`kradapter compare` run, unconverted and converted (kradapter.convert.convert_model: truncated SVD of each layer's
update) at several ranks and energies, and the bytes on disk of each.

    python benchmarks/convert_study.py --runs runs/convert-study --ranks 8,32,128 --energies 0.9,0.99 \\
        --max-eval-examples 400 --out benchmarks/convert/text-1seed.json

--runs is the output dir of `kradapter compare --task text ...` (one seed); the test sets are rebuilt with that
task's defaults and --max-eval-examples, so pass the value the compare run used. Each converted LoRA is written to a
temporary directory (adapter_config.json + adapter_model.safetensors, as `kradapter convert` writes them), loaded
with plain PEFT onto a fresh base, merged (the same function, evaluated faster) and evaluated; its size is that of
those two files. The unconverted adapter is evaluated the same way.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def _dir_bytes(directory: Path, names=("adapter_config.json", "adapter_model.safetensors")) -> int:
    return sum((directory / n).stat().st_size for n in names if (directory / n).exists())


def _prepared(task: str, max_eval: int):
    from kradapter.cli import _load_commands, build_parser
    from kradapter.train.tasks import task_module

    _load_commands()
    args = build_parser().parse_args(["train", "--task", task, "--max-eval-examples", str(max_eval), "--quiet"])
    return task_module(task).prepare(args)


def _scores(prepared, model) -> dict[str, float]:
    """The primary metric on each test set, of the adapter merged into its base (the same function, faster)."""
    model = model.merge_and_unload().eval()
    out = {}
    with torch.no_grad():
        for name, ds in prepared.tests.items():
            value = prepared.evaluate(model, ds)
            out[f"{name} ({prepared.groups[name]})"] = value[prepared.metric] if isinstance(value, dict) else value
    return out


def study(runs: Path, ranks: list[int], energies: list[float], max_eval: int, methods: list[str] | None = None) -> dict:
    from peft import PeftModel
    from safetensors.torch import save_file

    import kradapter  # noqa: F401  (registers the methods)
    from kradapter.convert import convert_model

    prepared = None
    rows = []
    for seed_dir in sorted(runs.glob("*/seeds/seed-*")):
        info = json.loads((seed_dir / "kradapter_run.json").read_text())
        if prepared is None:
            prepared = _prepared(info["task"], max_eval)
        method = info["method"]
        if methods and method not in methods:
            continue
        torch.manual_seed(0)
        adapted = PeftModel.from_pretrained(prepared.build_model(), str(seed_dir)).eval()
        targets = [{"rank": r} for r in ranks] + [{"energy": e} for e in energies]
        conversions = [convert_model(adapted, **target) for target in targets]  # before scoring merges `adapted`
        rows.append(
            {
                "method": method,
                "form": "unconverted",
                "rank": None,
                "bytes": _dir_bytes(seed_dir),
                "scores": _scores(prepared, adapted),
            }
        )
        print(rows[-1], flush=True)
        for target, conversion in zip(targets, conversions):
            with tempfile.TemporaryDirectory() as tmp:
                save_file(conversion.state_dict, f"{tmp}/adapter_model.safetensors", metadata={"format": "pt"})
                conversion.config.save_pretrained(tmp)
                torch.manual_seed(0)
                lora = PeftModel.from_pretrained(prepared.build_model(), tmp).eval()
                ranks_used = sorted({c.rank for c in conversion.layers})
                rows.append(
                    {
                        "method": method,
                        "form": f"LoRA rank {target['rank']}"
                        if "rank" in target
                        else f"LoRA energy {target['energy']}",
                        "rank": ranks_used if len(ranks_used) > 1 else ranks_used[0],
                        "mean_rank": sum(c.rank for c in conversion.layers) / len(conversion.layers),
                        "relative_error": conversion.relative_error,
                        "energy_kept": conversion.energy,
                        "bytes": _dir_bytes(Path(tmp)),
                        "scores": _scores(prepared, lora),
                    }
                )
            print(rows[-1], flush=True)
    return {"runs": str(runs), "max_eval_examples": max_eval, "rows": rows}


def table(result: dict) -> str:
    """The study as a markdown table."""
    sets = list(result["rows"][0]["scores"])
    head = ["method", "form", "rank (mean)", "rel. error", "energy kept", *sets, "bytes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        rank = "-" if r["rank"] is None else f"{r['mean_rank']:.1f}"
        err = "-" if "relative_error" not in r else f"{r['relative_error']:.3f}"
        kept = "-" if "energy_kept" not in r else f"{r['energy_kept']:.3f}"
        scores = [f"{100 * r['scores'][s]:.1f}" for s in sets]
        lines.append("| " + " | ".join([r["method"], r["form"], rank, err, kept, *scores, f"{r['bytes']:,}"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path)
    parser.add_argument("--ranks", default="8,32,128")
    parser.add_argument("--energies", default="0.9,0.99")
    parser.add_argument("--max-eval-examples", type=int, default=400)
    parser.add_argument("--methods", default="", help="only these methods of the run (comma-separated)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",") if r]
    energies = [float(e) for e in args.energies.split(",") if e]
    methods = [m for m in args.methods.split(",") if m]
    result = study(args.runs, ranks, energies, args.max_eval_examples, methods)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
