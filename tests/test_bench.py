"""`kradapter bench` at toy sizes: the pipeline runs end to end and writes valid JSON; bad input fails early."""

import json

import pytest
import torch

from kradapter.bench import BenchOptions, count_units, run_bench
from kradapter.bench.layers import build_layers, kradapter_count, lora_rank_at_budget
from kradapter.bench.memory import saved_bytes
from kradapter.cli import main

TINY_MODEL = [
    "--hidden",
    "32",
    "--layers",
    "1",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--intermediate",
    "48",
    "--vocab",
    "64",
    "--batch",
    "2",
    "--seq",
    "8",
]


def test_lora_rank_matches_kradapter_budget():
    assert kradapter_count(1024, 768, "sqrt") == 49152  # n = 768, k1 = k2 = 32
    assert lora_rank_at_budget(1024, 768, "sqrt") == 28  # 28 * 1792 = 50176 >= 49152 > 27 * 1792
    for d_out, d_in in [(256, 1024), (4096, 1024), (3072, 768)]:
        r = lora_rank_at_budget(d_out, d_in, "sqrt")
        assert r * (d_in + d_out) >= kradapter_count(d_out, d_in, "sqrt") > (r - 1) * (d_in + d_out)


def test_layer_variants_and_saved_bytes():
    modules = build_layers(24, 40, "sqrt", seed=0)
    x = torch.randn(16, 24, requires_grad=True)
    saved = {name: saved_bytes(lambda m=m: m(x), m.parameters()) for name, m in modules.items()}
    ours_params = sum(p.numel() * 4 for p in modules["kradapter"].parameters() if p.requires_grad)
    assert saved["kradapter"]["total"] <= saved["lora"]["total"] + ours_params
    assert saved["kradapter"]["activations"] == x.numel() * 4  # only x itself
    assert saved["naive"]["activations"] >= saved["kradapter"]["activations"] + 24 * 40 * 4  # Delta W kept
    assert saved["frozen"]["activations"] == 0  # a frozen layer needs only its weight for dX
    out = {name: m(x) for name, m in modules.items()}
    torch.testing.assert_close(out["kradapter"], out["naive"])  # the two KRAdapter paths agree


def test_bench_cli_quick_run_writes_valid_json(tmp_path, capsys):
    args = [
        "bench",
        "--out",
        str(tmp_path),
        "--tokens",
        "32",
        "--shapes",
        "16x24,24x16",
        "--repeats",
        "2",
        "--model-repeats",
        "1",
        "--memory-steps",
        "1",
        "--memory-one-process",
        *TINY_MODEL,
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "(a) one layer" in printed and "(d) inference" in printed and "targets" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no temp file left behind
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {"machine", "options", "layer", "saved", "model", "inference", "targets"} <= set(data)
    assert [(r["d_in"], r["d_out"]) for r in data["layer"]] == [(16, 24), (24, 16)]
    for row in data["layer"]:
        assert set(row["times"]) == {"kradapter", "naive", "lora", "frozen", "3gemm"}
        assert all(len(t["samples_s"]) == 2 and t["median_s"] > 0 for t in row["times"].values())
        assert set(row["paired_ratios"]) == set(row["ratios"]) >= {"kradapter/3gemm", "naive/kradapter"}
    model = data["model"]
    assert set(model["memory_kib"]) == {"kradapter", "lora", "full"}
    # --memory-one-process: later methods may reuse memory the first one freed (0 KiB more), so only the first
    # measured (kradapter) must show growth; none can be negative.
    assert model["memory_kib"]["kradapter"]["peak_kib"] > 0
    assert all(v["peak_kib"] >= 0 and v["training_kib"] >= 0 for v in model["memory_kib"].values())
    assert {v["source"] for v in model["memory_kib"].values()} == {"peak RSS (VmHWM)"}  # CPU: the process's RSS
    assert model["trainable"]["full"] > model["trainable"]["lora"] >= model["trainable"]["kradapter"] > 0
    assert {"kradapter_merged/base", "kradapter/lora"} <= set(data["inference"]["ratios"])
    assert all(isinstance(t["met"], bool) for t in data["targets"])


def test_progress_calls_match_count_units():
    opts = BenchOptions(sections=("layer", "saved"), tokens=8, shapes=((8, 12),), repeats=3)
    labels = []
    results = run_bench(opts, labels.append)
    assert len(labels) == count_units(opts) == 4
    assert set(results) >= {"layer", "saved", "targets"} and "model" not in results


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shapes", "1024by768"], "is not IN x OUT"),
        (["--sections", "layer,speed"], "unknown bench section"),
        (["--repeats", "0"], "repeats must be an int >= 1"),
        (["--heads", "3"], "must divide by heads"),
        (["--k1", "cubic"], "not a budget word"),
        (["--device", "gpu0"], "is not a torch device"),
        (["--device", "meta"], "the bench runs on cpu or cuda"),
        *([(["--device", "cuda"], "torch.cuda.is_available() is False")] if not torch.cuda.is_available() else []),
    ],
)
def test_bench_bad_input_fails_before_any_work(tmp_path, capsys, extra, message):
    assert main(["bench", "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bench_out_must_be_a_directory(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep")
    assert main(["bench", "--out", str(f), "--sections", "saved", "--shapes", "8x8", "--tokens", "4"]) == 2
    assert "is not a directory" in capsys.readouterr().err and f.read_text() == "keep"


def test_a_memory_figure_of_zero_gives_no_ratio_and_an_unmet_target():
    from kradapter.bench.report import evaluate_targets, format_report

    results = {
        "machine": {"cpu": "x", "cpu_count": 1, "torch": "t", "torch_threads": 1},
        "load_average_start": (0.0, 0.0, 0.0),
        "load_average_end": (0.0, 0.0, 0.0),
        "model": {
            "ratios": {"kradapter/lora": 1.0, "full/lora": 2.0},
            "paired_ratios": {"kradapter/lora": 1.0},
            "memory_ratios": {"peak_kib kradapter/lora": 1.0, "training_kib kradapter/lora": None},
        },
    }
    targets = evaluate_targets(results)
    unmeasured = [t for t in targets if "training part" in t["target"]]
    assert unmeasured == [
        {"target": unmeasured[0]["target"], "value": None, "paired": None, "limit": 1.05, "kind": "<=", "met": False}
    ]
    results["targets"] = targets
    assert "n/a" in format_report({k: v for k, v in results.items() if k != "model"})
