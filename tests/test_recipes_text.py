"""`kradapter train --task text/glue`, `report`, resume and Ctrl-C, bad inputs: tiny BERT, project-made data."""

from __future__ import annotations

import json
import os
import signal

import pytest
from transformers import TrainerCallback

from kradapter.train.runner import TrainingInterrupted, run
from recipe_fixtures import sentiment_rows, text_data, tiny_bert, train_args, write_jsonl


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    return tiny_bert(tmp), text_data(tmp), tmp


def test_text_kradapter_two_seeds_metrics_schema_and_report(bert, tmp_path, capsys):
    model, data, _ = bert
    out = tmp_path / "run"
    m = run(train_args("text", out, model=model, data=data, seeds="2"))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["method"] == "kradapter" and saved["metric"] == "accuracy"
    assert set(saved["tests"]) == {"test", "shifted"}
    assert saved["tests"]["test"]["group"] == "ID" and saved["tests"]["shifted"]["group"] == "OOD"
    for t in saved["tests"].values():
        assert len(t["per_seed"]) == 2 and 0.0 <= t["mean"] <= 1.0 and t["std"] >= 0.0
    assert set(saved["groups"]) == {"ID", "OOD"}
    assert saved["zero_shot"] is None and saved["r_gen"] is None  # fresh head: no zero-shot baseline
    # key and value of both layers are adapted (the paper's default) and each has a spectral row
    assert sorted(saved["spectral"]) == sorted(
        f"bert.encoder.layer.{i}.attention.self.{kv}" for i in (0, 1) for kv in ("key", "value")
    )
    for row in saved["spectral"].values():
        assert row["effective_rank"] > 1.0 and row["nuclear_norm"] > row["frobenius_norm"] > 0
        assert row["shape"] == [32, 32]
    assert saved["effective_rank_history"] and saved["effective_rank_history"][-1][0] == 4
    assert saved["efficiency"]["seconds_per_epoch"]["mean"] > 0 and saved["efficiency"]["peak_memory_mb"] > 0
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert (out / "seeds" / "seed-1" / "adapter_model.safetensors").exists()
    assert "accuracy" in (out / "summary.txt").read_text()
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".staging-*"))
    assert not list((out / "seeds" / "seed-0").glob("checkpoints*"))  # removed once the seed finished
    assert m["tests"] == saved["tests"]

    # the report command rebuilds the base model and reproduces the run's spectral numbers
    from kradapter.cli import main

    assert main(["report", str(out), "--json", str(tmp_path / "report.json")]) == 0
    printed = capsys.readouterr().out
    assert "bert.encoder.layer.1.attention.self.value" in printed and "mean over 4 layers" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    for name, row in saved["spectral"].items():
        assert report["spectral"][name]["effective_rank"] == pytest.approx(row["effective_rank"], rel=1e-5)


def test_lora_and_full_fine_tuning(bert, tmp_path):
    model, data, _ = bert
    lora = run(train_args("text", tmp_path / "lora", model=model, data=data, method="lora", max_steps=3))
    kr = run(train_args("text", tmp_path / "kr", model=model, data=data, max_steps=3))
    r = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["r"]
    # budget matched: LoRA's rank is chosen so its parameter count is close to KRAdapter's
    assert abs(lora["trainable_params"] - kr["trainable_params"]) <= 4 * 64 + 100
    for row in lora["spectral"].values():
        assert row["effective_rank"] <= r + 0.01  # a rank-r update (float32 noise adds no effective rank)
    assert min(row["effective_rank"] for row in kr["spectral"].values()) > r + 1  # KRAdapter's is higher
    full = run(train_args("text", tmp_path / "full", model=model, data=data, method="full", max_steps=3))
    assert (tmp_path / "full" / "full_delta.safetensors").exists()
    assert set(full["spectral"]) == set(kr["spectral"])
    from kradapter.train.report import spectral_report

    rep = spectral_report(tmp_path / "full")
    assert rep["method"] == "full"
    for name, row in full["spectral"].items():
        assert rep["spectral"][name]["frobenius_norm"] == pytest.approx(row["frobenius_norm"], rel=1e-5)


def test_report_reads_a_plain_peft_adapter(bert, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from kradapter.cli import main

    model_path, _, _ = bert
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=["query"], init_lora_weights=False, task_type="SEQ_CLS")
    )
    peft_model.save_pretrained(tmp_path / "peft_lora")
    assert main(["report", str(tmp_path / "peft_lora")]) == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.0.attention.self.query" in out and "method lora" in out


def test_glue_regression_and_matthews(bert, tmp_path):
    model, _, tmp = bert
    rows = [{"sentence1": r["text"], "sentence2": r["text"], "label": r["score"]} for r in sentiment_rows(40, 0)]
    train = write_jsonl(tmp_path / "stsb_train.jsonl", rows)
    test = write_jsonl(tmp_path / "stsb_dev.jsonl", rows[:12])
    m = run(
        train_args(
            "glue",
            tmp_path / "stsb",
            model=model,
            data=[f"train={train}", f"test={test}"],
            glue_task="stsb",
            max_steps=2,
        )
    )
    assert m["metric"] == "pearson" and -1.0 <= m["tests"]["test"]["mean"] <= 1.0
    cola = [{"sentence": r["text"], "label": int(r["label"] == "positive")} for r in sentiment_rows(30, 0)]
    train = write_jsonl(tmp_path / "cola_train.jsonl", cola)
    m = run(
        train_args(
            "glue",
            tmp_path / "cola",
            model=model,
            data=[f"train={train}", f"test={train}"],
            glue_task="cola",
            max_steps=2,
        )
    )
    assert m["metric"] == "matthews"
    # intervals are of accuracies only: a Matthews-scored run records no per-example correctness
    assert not (tmp_path / "cola" / "per_example.json").exists()
    assert json.loads((tmp_path / "cola" / "seeds" / "seed-0" / "result.json").read_text())["correct"] == {}


def test_text_regression_trains_and_scores_with_its_own_metrics(bert, tmp_path):
    """`--task text --regression` once died after training: accuracy of real-valued predictions is undefined."""
    model, data, _ = bert
    m = run(
        train_args("text", tmp_path / "reg", model=model, data=data, regression=True, label_column="score", max_steps=2)
    )
    assert m["metric"] == "pearson" and -1.0 <= m["tests"]["test"]["mean"] <= 1.0
    saved = json.loads((tmp_path / "reg" / "metrics.json").read_text())
    assert saved["metric"] == "pearson" and saved["tests"]["test"]["extra"]["mse"]["mean"] >= 0.0


def test_metrics_match_their_definitions():
    from kradapter.train.metrics import matthews, mse, pearson, r_gen

    assert matthews([1, 1, 0, 0], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert matthews([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(-1.0)
    # sklearn's value for this case: (TP*TN - FP*FN) / sqrt(...) with TP=2, TN=1, FP=1, FN=0
    assert matthews([1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx((2 * 1 - 1 * 0) / (3 * 2 * 2 * 1) ** 0.5)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # cov / (std std) by hand: x - mean = (-1, 0, 1), y - mean = (-13/6, -1/6, 14/6)
    assert pearson([1, 2, 3], [2, 4, 6.5]) == pytest.approx((27 / 6) / ((2 * (169 + 1 + 196) / 36) ** 0.5))
    assert mse([1, 2, 3], [2, 4, 6.5]) == pytest.approx((1 + 4 + 12.25) / 3)
    assert r_gen({"ID": 0.8, "OOD": 0.6}, {"ID": 0.6, "OOD": 0.5}) == pytest.approx(0.5)
    assert r_gen({"ID": 0.6, "OOD": 0.6}, {"ID": 0.6, "OOD": 0.5}) is None


class _CtrlCAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_leaves_a_checkpoint_and_no_results_then_resumes(bert, tmp_path):
    model, data, _ = bert
    out = tmp_path / "run"
    args = train_args("text", out, model=model, data=data, max_steps=6, save_steps=100)
    with pytest.raises(TrainingInterrupted, match="resume"):
        run(args, extra_callbacks=[_CtrlCAt(2)])
    checkpoints = list((out / "seeds" / "seed-0").glob("checkpoints-lr-*/checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "adapter_model.safetensors").exists()
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 2 <= stopped_at < 6
    assert not (out / "metrics.json").exists() and not (out / "seeds" / "seed-0" / "result.json").exists()
    # the checkpoint is a loadable PEFT adapter
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(model, num_labels=3)
    loaded = PeftModel.from_pretrained(base, str(checkpoints[0]))
    assert sum("kradapter_U" in n for n, _ in loaded.named_parameters()) == 4
    m = run(train_args("text", out, model=model, data=data, max_steps=6, save_steps=100))
    history_steps = [h[0] for h in m["effective_rank_history"]]
    assert min(history_steps) > stopped_at  # resumed: no step before the checkpoint was run again
    assert m["training"]["steps"] == 6 and (out / "metrics.json").exists()


def test_output_dir_of_another_run_is_refused(bert, tmp_path):
    model, data, _ = bert
    run(train_args("text", tmp_path / "run", model=model, data=data, max_steps=1))
    with pytest.raises(ValueError, match="holds a different run"):
        run(train_args("text", tmp_path / "run", model=model, data=data, max_steps=1, method="lora"))


def test_lr_grid_picks_on_validation(bert, tmp_path):
    model, data, _ = bert
    m = run(train_args("text", tmp_path / "run", model=model, data=data, max_steps=2, lr_grid="1e-4,1e-2"))
    sel = m["lr_selection"]
    assert set(sel["grid"]) == {"0.0001", "0.01"} and sel["picked"] in (1e-4, 1e-2)
    assert m["learning_rate"] == sel["picked"]
    assert sel["grid"][f"{sel['picked']:g}"] == max(sel["grid"].values())
    # extending the grid reuses the points already trained; the seeds follow the new pick
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "lr-grid").glob("*/result.json")}
    m2 = run(train_args("text", tmp_path / "run", model=model, data=data, max_steps=2, lr_grid="1e-4,1e-2,3e-1"))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert set(m2["lr_selection"]["grid"]) == {"0.0001", "0.01", "0.3"}
    assert m2["learning_rate"] == m2["lr_selection"]["picked"]
    seed = json.loads((tmp_path / "run" / "seeds" / "seed-0" / "result.json").read_text())
    assert seed["learning_rate"] == m2["learning_rate"]


@pytest.mark.parametrize("case", ["missing_column", "bad_label", "model", "target", "method", "task", "role"])
def test_bad_input_fails_before_training_with_one_clear_error(bert, tmp_path, case, capsys):
    from kradapter.cli import main

    model, data, _ = bert
    out = tmp_path / "run"
    argv = ["train", "--task", "text", "--model", model, "--output-dir", str(out), "--max-steps", "1", "--quiet"]
    if case == "missing_column":
        bad = write_jsonl(tmp_path / "bad.jsonl", [{"sentence": "a", "label": "positive"}])
        argv += ["--data", data[0], "--data", f"test={bad}"]
        expect = [str(bad), "missing column 'text'", "columns found: sentence, label"]
    elif case == "bad_label":
        bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "good day", "label": "ecstatic"}])
        argv += ["--data", data[0], "--data", f"test={bad}"]
        expect = [str(bad), "'ecstatic'", "not one of the classes", "negative, neutral, positive"]
    elif case == "model":
        argv[argv.index(model)] = str(tmp_path / "no-such-model")
        argv += ["--data", data[0], "--data", data[1]]
        expect = ["no-such-model", "does not load"]
    elif case == "target":
        argv += ["--data", data[0], "--data", data[1], "--target-modules", "key,qkv_proj"]
        expect = ["target module 'qkv_proj'", "matches no module", "value"]
    elif case == "method":
        argv += ["--data", data[0], "--data", data[1], "--method", "superlora"]
        expect = ["unknown method 'superlora'", "kradapter", "lora"]
    elif case == "task":
        argv[argv.index("text")] = "vision"
        with pytest.raises(SystemExit):
            main(argv)
        assert "invalid choice: 'vision'" in capsys.readouterr().err
        return
    else:
        argv += ["--data", "dev=" + data[0].split("=", 1)[1]]
        expect = ["unknown role 'dev'"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for piece in expect:
        assert piece in err, (piece, err)
    assert not (out / "seeds").exists()  # nothing trained
