"""DeepSpeed ZeRO-2 and ZeRO-3 on CPU: two gloo processes under torchrun, with the configs shipped in
examples/deepspeed (ZeRO-3's persistence thresholds at 0, so that the tiny model's parameters really are
partitioned).

One launch (tests/distributed/train_deepspeed.py) trains KRAdapter with ``deepspeed.initialize`` under ZeRO-2 and
ZeRO-3 and Kron-LoRA with transformers' Trainer under ZeRO-3. Each must train like one process without DeepSpeed
(within the reduction-order bound of tests/_float_bounds.py), hold the same adapter on both ranks, and save through
``kradapter.dist.save_adapter`` an adapter that reloads to exactly the trained weights.

DeepSpeed builds a small shared-memory op with the C++ compiler on first use (28-73 s, more on a busy machine):
it is cached in pytest's cache directory (or $TORCH_EXTENSIONS_DIR when set) and built once.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import kradapter  # noqa: F401
from _float_bounds import adamw_weight_bound, llama_reduction_length, relative_error
from kradapter import dist as kdist

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'kradapter[deepspeed]')")
if shutil.which(os.environ.get("CXX", "c++")) is None:
    pytest.skip("no C++ compiler: DeepSpeed builds its CPU communication op with it", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed" / "train_deepspeed.py"
CONFIGS = ROOT / "examples" / "deepspeed"
sys.path.insert(0, str(SCRIPT.parent))
import train_deepspeed as ds  # noqa: E402
import train_tiny as tiny  # noqa: E402

RUNS = {  # name: (api, config, method)
    "zero2-initialize-kradapter": ("initialize", "zero2.json", "kradapter"),
    "zero3-initialize-kradapter": ("initialize", "zero3.json", "kradapter"),
    "zero3-trainer-kronlora": ("trainer", "zero3.json", "kronlora"),
}
# Both references take one AdamW step per global batch at a constant learning rate.
REDUCTION_LENGTH = llama_reduction_length(tiny.tiny_model().config, tiny.GLOBAL_BATCH * tiny.SEQ, tiny.SEQ)
BOUND = adamw_weight_bound([tiny.LR] * tiny.STEPS, REDUCTION_LENGTH)


@pytest.fixture(scope="module")
def launched(tmp_path_factory, pytestconfig):
    out = tmp_path_factory.mktemp("deepspeed")
    env = dict(os.environ)
    cache = getattr(pytestconfig, "cache", None)  # absent under -p no:cacheprovider: build in the run's temp dir
    built = cache.mkdir("torch_extensions") if cache is not None else tmp_path_factory.mktemp("torch_extensions")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(built))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    for name, (api, config, method) in RUNS.items():
        cmd += ["--case", api, str(CONFIGS / config), method, name]
    run = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-6000:]
    return out


@pytest.fixture(scope="module")
def references():
    """One process, no DeepSpeed: train_tiny's loop for `initialize`, the plain Trainer for `trainer`."""
    single = tiny.train("single")
    _, model, losses = ds.trainer_run("kronlora")
    return {
        "initialize": single,
        "trainer": {"losses": losses, "adapter": kdist.full_adapter_state_dict(model)},
    }


@pytest.mark.parametrize("name", RUNS)
def test_zero_trains_like_one_process_on_both_ranks(launched, references, name):
    api, config, method = RUNS[name]
    ranks = [json.loads((launched / name / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["engine"] == "DeepSpeedEngine" for r in ranks)
    # ZeRO-3 holds a partition of every trainable parameter (thresholds at 0); ZeRO-2 keeps them whole.
    assert all(all(r["partitioned"]) if config == "zero3.json" else not any(r["partitioned"]) for r in ranks)
    if method == "kradapter":
        # The fused path runs where the base layer is a plain Linear; ZeRO-3 hooks every module (its parameters are
        # gathered in the hook), and the fused path falls back to the plain one by itself.
        assert all(r["fused_calls"] > 0 if config == "zero2.json" else r["fused_calls"] == 0 for r in ranks)
        assert ranks[0]["local_losses"][0] != ranks[1]["local_losses"][0]  # each rank saw its own half

    reference = references[api]
    adapters = [torch.load(launched / name / f"rank{r}.pt") for r in (0, 1)]
    assert adapters[0].keys() == reference["adapter"].keys() and len(adapters[0]) >= 8
    for key, weight in adapters[0].items():
        assert torch.equal(weight, adapters[1][key]), f"{key} differs between ranks"
        assert weight.shape == reference["adapter"][key].shape
        assert (weight - reference["adapter"][key]).abs().max().item() <= BOUND, key
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == tiny.STEPS
    # The first loss comes before any update: equal up to the forward's reduction-order error (the later ones also
    # move with the weights' difference, checked above).
    first = reference["losses"][0]
    assert abs(ranks[0]["losses"][0] - first) <= relative_error(REDUCTION_LENGTH) * abs(first)

    # The adapter rank 0 saved loads in one process and holds exactly the trained weights (whole under ZeRO-3).
    base = tiny.tiny_model()
    loaded = PeftModel.from_pretrained(base, launched / name / "adapter").state_dict()
    for key, weight in adapters[0].items():
        assert torch.equal(loaded[key], weight), key


def test_a_save_failing_on_one_rank_fails_on_every_rank_with_one_message(launched):
    """Rank 1 gathers one tensor empty (as an ungathered ZeRO-3 partition is): both ranks raise the same error,
    naming rank 1 and the tensor, none waits at a barrier, and nothing is written."""
    for name in RUNS:
        errors = [json.loads((launched / name / f"rank{r}.json").read_text())["broken_save_error"] for r in (0, 1)]
        assert errors[0] == errors[1] and errors[0] is not None
        assert errors[0].startswith("the adapter save failed, nothing was saved: rank 1: ")
        assert "is gathered with shape (0,) but the model trains it with shape" in errors[0]
        assert not list((launched / name / "broken").glob("*.safetensors"))


# --- `kradapter train` under accelerate launch --use_deepspeed (ZeRO-3), and the setups it refuses ----------------
TRAIN_ARGS = ["--max-steps", "3", "--batch-size", "4", "--logging-steps", "1", "--eval-batch-size", "16"]
TRAIN_ARGS += ["--max-new-tokens", "4", "--quiet"]


@pytest.fixture(scope="module")
def commonsense(tmp_path_factory):
    from recipe_fixtures import commonsense_data, tiny_llama

    root = tmp_path_factory.mktemp("commonsense")
    return {"root": root, "model": tiny_llama(root), "data": commonsense_data(root)}


def train_args(commonsense, out) -> list[str]:
    args = ["train", "--task", "commonsense", "--model", commonsense["model"], "--output-dir", str(out), *TRAIN_ARGS]
    for d in commonsense["data"]:
        args += ["--data", d]
    return args


def test_kradapter_train_under_accelerate_deepspeed_zero3_trains_like_one_process(commonsense, tmp_path, pytestconfig):
    from kradapter.cli import main

    config = json.loads((CONFIGS / "zero3.json").read_text())
    config["zero_optimization"].update(stage3_param_persistence_threshold=0, stage3_model_persistence_threshold=0)
    (tmp_path / "zero3.json").write_text(json.dumps(config))
    env = dict(os.environ)
    cache = getattr(pytestconfig, "cache", None)
    built = cache.mkdir("torch_extensions") if cache is not None else tmp_path / "torch_extensions"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(built))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--deepspeed_config_file"]
    cmd += [str(tmp_path / "zero3.json"), "--num_processes", "2", "-m", "kradapter", *train_args(commonsense, out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-6000:]
    assert run.stdout.count("results: ") == 1  # only rank 0 prints

    single_out = tmp_path / "single"
    assert main(train_args(commonsense, single_out)) == 0
    result = json.loads((out / "seeds" / "seed-0" / "result.json").read_text())
    single = json.loads((single_out / "seeds" / "seed-0" / "result.json").read_text())
    assert result["processes"] == 2 and result["max_weight_difference_across_ranks"] == 0.0
    assert result["spectral"].keys() == single["spectral"].keys()  # every layer analysed whole under ZeRO-3

    from safetensors.torch import load_file
    from transformers import AutoConfig

    got, want = load_file(out / "adapter_model.safetensors"), load_file(single_out / "adapter_model.safetensors")
    assert got.keys() == want.keys() and len(want) == 8
    # As in tests/test_distributed.py's accelerate run: the linear schedule over 3 steps, sequences at most the
    # model's context length.
    model_config = AutoConfig.from_pretrained(commonsense["model"])
    lr, steps, seq_len = result["learning_rate"], 3, model_config.max_position_embeddings
    rates = [lr * (steps - t) / steps for t in range(steps)]
    bound = adamw_weight_bound(rates, llama_reduction_length(model_config, 4 * seq_len, seq_len))
    for key, weight in want.items():
        assert got[key].shape == weight.shape
        assert (got[key] - weight).abs().max().item() <= bound, key


@pytest.mark.parametrize(
    "zero,extra,reason",
    [
        ({"stage": 1}, [], "zero_optimization.stage 1 is not supported: kradapter is tested with ZeRO stage 2 and 3"),
        (
            {"stage": 3, "offload_optimizer": {"device": "cpu"}},
            [],
            "zero_optimization.offload_optimizer.device 'cpu' is not supported: offloading is not tested",
        ),
        ({"stage": 3}, ["--quantize", "4bit"], "DeepSpeed ZeRO-3 with a 4bit bitsandbytes base is not supported"),
        ({"stage": 3}, ["--method", "full"], "method full under DeepSpeed ZeRO-3 is not supported"),
    ],
)
def test_kradapter_train_refuses_an_untested_deepspeed_setup_before_training(
    commonsense, tmp_path, capsys, zero, extra, reason
):
    from kradapter.cli import main

    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": zero}))
    assert main([*train_args(commonsense, tmp_path / "run"), "--deepspeed", str(config), *extra]) == 2
    err = capsys.readouterr().err
    assert reason in err, err
    assert not (tmp_path / "run" / "seeds").exists()
