"""Multi-process training on CPU: two gloo processes launched by torchrun stand in for two GPUs.

Each strategy must really run as two synchronised processes: world size 2 on both ranks, different data on each rank
(their local losses differ) yet identical adapter weights afterwards (only gradient synchronisation can do that),
and the same loss curve and weights as one process on the same global batch. Equal in exact arithmetic, not bitwise:
the ranks' partial sums are added in another order than in one process. Measured here: at most 4.8e-7 in the loss
(one float32 ulp at 4.85) and 3.3e-7 in any adapter weight after 4 AdamW steps; we allow 1e-5.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import kradapter  # noqa: F401
from _float_bounds import adamw_weight_bound, llama_reduction_length
from kradapter import dist as kdist

SCRIPT = Path(__file__).parent / "distributed" / "train_tiny.py"
TOL = 1e-5


def load_script():
    spec = importlib.util.spec_from_file_location("train_tiny", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny = load_script()
# One AdamW step per global batch at a constant learning rate (tests/_float_bounds.py derives the bound).
TINY_BOUND = adamw_weight_bound(
    [tiny.LR] * tiny.STEPS, llama_reduction_length(tiny.tiny_model().config, tiny.GLOBAL_BATCH * tiny.SEQ, tiny.SEQ)
)


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ...`` with this interpreter (python -m torch.distributed.run is
    the torchrun program)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def single_process():
    return tiny.train("single")


@pytest.mark.parametrize("strategy", tiny.STRATEGIES)
def test_two_processes_train_like_one(strategy, tmp_path, single_process):
    run = torchrun(str(SCRIPT), "--strategy", strategy, "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["local_losses"][0] != ranks[1]["local_losses"][0]  # each rank saw its own half of the batch
    adapters = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert adapters[0].keys() == single_process["adapter"].keys() and len(adapters[0]) == 8
    for name, weight in adapters[0].items():
        assert torch.equal(weight, adapters[1][name]), f"{name} differs between ranks"
        assert (weight - single_process["adapter"][name]).abs().max().item() < TOL, name
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert max(abs(a - b) for a, b in zip(ranks[0]["losses"], single_process["losses"])) < TOL
    assert all(w.abs().sum() > 0 for n, w in single_process["adapter"].items() if "kradapter_U" in n)  # U left 0

    # The adapter rank 0 saved loads in one process and holds the trained weights.
    loaded = PeftModel.from_pretrained(tiny.tiny_model(), tmp_path / "adapter")
    state = loaded.state_dict()
    for name, weight in adapters[0].items():
        assert torch.equal(state[name], weight), name


@pytest.mark.parametrize("method", ["sinlora", "kronlora"])
def test_fsdp1_saves_sinlora_and_kronlora_whole(method, tmp_path):
    """The FSDP1 save fix lives in the shared tuner: the other methods' adapters save whole too (PEFT alone selects
    nothing from module names that FSDP1's wrappers renamed), and reload exactly."""
    run = torchrun(str(SCRIPT), "--strategy", "fsdp1", "--method", method, "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr[-4000:]
    trained = torch.load(tmp_path / "rank0.pt")
    assert trained and all(w.numel() > 0 for w in trained.values())
    loaded = PeftModel.from_pretrained(tiny.tiny_model(), tmp_path / "adapter")
    state = loaded.state_dict()
    assert {n for n in state if f"{method}_" in n} == set(trained)
    for name, weight in trained.items():
        assert torch.equal(state[name], weight), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(*args: str, timeout: float = 240) -> list[tuple[int, str]]:
    """Two torchrun launchers as two one-process "nodes" meeting on the loopback address (c10d rendezvous): both
    started, both waited on by PID within `timeout`, both killed (their whole process groups) if either fails or
    the time runs out. Returns each launcher's (return code, stderr)."""
    port = free_port()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    launchers = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node_rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv-conf=join_timeout=60",  # a launcher whose peer never comes gives up after 60 s, not 600
            "--local_addr=127.0.0.1",
            *args,
        ]
        launchers.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
        )
    deadline = time.monotonic() + timeout
    results = []
    try:
        for launcher in launchers:
            _, err = launcher.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((launcher.returncode, err))
            if launcher.returncode != 0:
                break
    except subprocess.TimeoutExpired:
        results.append((None, f"timed out after {timeout} s"))
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and the worker it started
                launcher.wait()
    return results


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_nodes_train_like_one_process(strategy, tmp_path, single_process):
    """Two launchers on one machine stand in for two nodes (--nnodes=2, one process each): same checks as above."""
    results = two_nodes(str(SCRIPT), "--strategy", strategy, "--out", str(tmp_path))
    assert [code for code, _ in results] == [0, 0], results[-1][1][-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["local_losses"][0] != ranks[1]["local_losses"][0]
    adapters = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert adapters[0].keys() == single_process["adapter"].keys() and len(adapters[0]) == 8
    for name, weight in adapters[0].items():
        assert torch.equal(weight, adapters[1][name]), f"{name} differs between ranks"
        assert (weight - single_process["adapter"][name]).abs().max().item() <= TINY_BOUND, name
    loaded = PeftModel.from_pretrained(tiny.tiny_model(), tmp_path / "adapter").state_dict()
    for name, weight in adapters[0].items():
        assert torch.equal(loaded[name], weight), name


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny.tiny_model().save_pretrained(path)
    return path


def test_two_processes_train_the_cpu_packed_4bit_layout_like_one(tiny_llama_dir, tmp_path):
    """bitsandbytes' AVX512-BF16 CPU layout (forced in the launched script and here, on any CPU): the 4-bit base is
    repacked by an inference forward before training; DDP on two processes trains like one process, every layer back
    in the standard layout; afterwards a plain merge is refused with the reason and merge_requantized merges."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'kradapter[quant]')")
    from _bnb_cpu_layout import force_cpu_layout

    run = torchrun(str(SCRIPT), "--strategy", "ddp", "--out", str(tmp_path), "--base", str(tiny_llama_dir))
    assert run.returncode == 0, run.stderr[-4000:]
    with pytest.MonkeyPatch.context() as mp:
        force_cpu_layout(packed=True, setattr=mp.setattr)
        single = tiny.train("single", base=tiny_llama_dir)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in (*ranks, single):
        assert len(result["packed_before"]) == 14 and all(result["packed_before"])  # 7 linears x 2 layers
        assert not any(result["packed_after_training"])  # training went back to the standard layout
        assert all(result["packed_at_eval"])  # and bitsandbytes repacked at the next inference forward
        assert "merge_requantized" in result["merge_refusal"] and "merge_to_full_precision" in result["merge_refusal"]
        assert 0 < result["merged_max_difference"] < 0.2  # requantizing 4-bit loses a little, never garbage
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["local_losses"][0] != ranks[1]["local_losses"][0]
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert max(abs(a - b) for a, b in zip(ranks[0]["losses"], single["losses"])) < TOL
    adapters = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert adapters[0].keys() == single["adapter"].keys() and len(adapters[0]) == 8
    for name, weight in adapters[0].items():
        assert torch.equal(weight, adapters[1][name]), f"{name} differs between ranks"
        assert (weight - single["adapter"][name]).abs().max().item() < TOL, name
    assert all(w.abs().sum() > 0 for n, w in single["adapter"].items() if "kradapter_U" in n)


def test_world_size_that_does_not_divide_the_batch_is_one_clear_error():
    with pytest.raises(ValueError, match=r"global batch size 6 does not divide evenly over 4 processes"):
        kdist.local_batch_size(6, 4)
    assert kdist.local_batch_size(6, 3) == 2


def test_init_outside_torchrun_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="not launched by torchrun"):
        kdist.init_process_group()


# --- `kradapter train` itself under torchrun and accelerate launch (transformers' Trainer, use_cpu=True) --------------
TRAIN_ARGS = [
    "--max-steps",
    "3",
    "--batch-size",
    "4",
    "--logging-steps",
    "1",
    "--eval-batch-size",
    "16",
    "--max-new-tokens",
    "4",
    "--quiet",
]


@pytest.fixture(scope="module")
def commonsense(tmp_path_factory):
    from recipe_fixtures import commonsense_data, tiny_llama

    root = tmp_path_factory.mktemp("commonsense")
    return {"root": root, "model": tiny_llama(root), "data": commonsense_data(root)}


def cli_args(commonsense, out, quantize=None) -> list[str]:
    args = ["train", "--task", "commonsense", "--model", commonsense["model"], "--output-dir", str(out), *TRAIN_ARGS]
    for d in commonsense["data"]:
        args += ["--data", d]
    return args + (["--quantize", quantize] if quantize else [])


def one_process_result(commonsense, quantize):
    from kradapter.cli import main

    out = commonsense["root"] / f"single-{quantize}"
    assert main(cli_args(commonsense, out, quantize)) == 0
    return json.loads((out / "seeds" / "seed-0" / "result.json").read_text()), out


@pytest.mark.parametrize("launcher,quantize", [("torchrun", "4bit"), ("accelerate", None)])
def test_kradapter_train_on_two_processes_trains_like_one(commonsense, tmp_path, launcher, quantize):
    if quantize:
        pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'kradapter[quant]')")
    out = tmp_path / "run"
    if launcher == "torchrun":
        run = torchrun("-m", "kradapter", *cli_args(commonsense, out, quantize))
    else:  # accelerate launch's multi-process launcher is torchrun's; the Trainer's use_cpu=True makes it gloo
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "-m",
            "kradapter",
            *cli_args(commonsense, out, quantize),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.count("results: ") == 1  # only rank 0 prints

    result = json.loads((out / "seeds" / "seed-0" / "result.json").read_text())
    single, single_out = one_process_result(commonsense, quantize)
    assert result["processes"] == 2 and single["processes"] == 1
    assert result["max_weight_difference_across_ranks"] == 0.0  # both ranks hold the same adapter
    assert [h["step"] for h in result["train_loss_history"]] == [1, 2, 3]
    for got, want in zip(result["train_loss_history"], single["train_loss_history"]):
        assert abs(got["loss"] - want["loss"]) < TOL, (result["train_loss_history"], single["train_loss_history"])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staging")]  # no rank left files behind

    # The adapter loads in one process and holds what one process trains.
    from kradapter.train.tasks.commonsense import load_causal_lm

    loaded = PeftModel.from_pretrained(load_causal_lm(commonsense["model"], quantize), out)
    reference = PeftModel.from_pretrained(load_causal_lm(commonsense["model"], quantize), single_out)
    want = {k: v for k, v in reference.state_dict().items() if "kradapter_" in k}
    got = loaded.state_dict()
    assert len(want) == 8
    # The weight bound from the arithmetic (tests/_float_bounds.py): the Trainer's linear schedule over 3 steps from
    # the method's default rate, and the reductions of this model with sequences at most its context length. The
    # two runs differ in reduction order only (how the CPU's kernels block their sums included: 1.15e-05 on an
    # AVX512-BF16 CPU, 3.3e-7 on others).
    config = loaded.get_base_model().config
    lr, steps = result["learning_rate"], len(result["train_loss_history"])
    rates = [lr * (steps - t) / steps for t in range(steps)]
    seq_len = config.max_position_embeddings
    bound = adamw_weight_bound(rates, llama_reduction_length(config, result["batch_size"] * seq_len, seq_len))
    for name, weight in want.items():
        assert (got[name] - weight).abs().max().item() <= bound, name


def test_kradapter_train_refuses_a_world_size_that_does_not_divide_the_batch(
    commonsense, tmp_path, monkeypatch, capsys
):
    from kradapter.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the check comes before any process group is needed
    monkeypatch.setenv("RANK", "0")
    args = cli_args(commonsense, tmp_path / "run")
    args[args.index("--batch-size") + 1] = "3"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "kradapter train: error: global batch size 3 does not divide evenly over 2 processes; use a multiple of 2"
    )
    assert not (tmp_path / "run" / "seeds").exists()


# --- save_adapter's checks, in one process -----------------------------------------------------------------------
FIRST = "base_model.model.model.layers.0.self_attn.k_proj.kradapter_U.default"


def test_save_adapter_refuses_a_gathered_tensor_of_the_wrong_shape_and_writes_nothing(tmp_path, monkeypatch):
    model = tiny.tiny_peft_model()
    real = kdist.full_adapter_state_dict

    def emptied(wrapped):  # what an ungathered ZeRO-3 partition looks like
        return {**real(wrapped), FIRST: torch.empty(0)}

    monkeypatch.setattr(kdist, "full_adapter_state_dict", emptied)
    with pytest.raises(RuntimeError) as err:
        kdist.save_adapter(model, model, tmp_path / "adapter")
    assert str(err.value) == (
        f"the adapter save failed, nothing was saved: rank 0: tensor {FIRST} is gathered with shape (0,) but the "
        "model trains it with shape (8, 32)"
    )
    assert not list(tmp_path.rglob("*.safetensors"))


def test_save_adapter_refuses_a_file_missing_a_trained_tensor(tmp_path, monkeypatch):
    model = tiny.tiny_peft_model()
    save = model.save_pretrained

    def dropping(directory, state_dict):  # a save that silently leaves one tensor out
        save(directory, state_dict={k: v for k, v in state_dict.items() if k != FIRST})

    monkeypatch.setattr(model, "save_pretrained", dropping)
    with pytest.raises(RuntimeError, match=rf"rank 0: tensor {FIRST} was not written"):
        kdist.save_adapter(model, model, tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    monkeypatch.undo()  # unpatched: every tensor, whole
    kdist.save_adapter(model, model, tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny.tiny_model(), tmp_path / "adapter").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in kdist.full_adapter_state_dict(model).items())


def test_accelerate_deepspeed_options_are_read_from_the_environment(monkeypatch, tmp_path):
    from kradapter.zero import accelerate_deepspeed_config, check_deepspeed_config

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert accelerate_deepspeed_config() is None
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "nvme")
    config = accelerate_deepspeed_config()
    assert config == {"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}
    with pytest.raises(ValueError, match=r"offload_param\.device 'nvme' is not supported"):
        check_deepspeed_config(config)
    (tmp_path / "bad.json").write_text("[1]")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match=r"bad\.json: expected a JSON object, got list"):
        accelerate_deepspeed_config()
    root = Path(__file__).resolve().parents[1] / "examples" / "deepspeed"
    assert [check_deepspeed_config(root / f"zero{s}.json")["zero_optimization"]["stage"] for s in (2, 3)] == [2, 3]
