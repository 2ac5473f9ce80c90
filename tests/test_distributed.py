"""Multi-process training on CPU: two gloo processes launched by torchrun stand in for two GPUs.

Each strategy must really run as two synchronised processes: world size 2 on both ranks, different data on each rank
(their local losses differ) yet identical adapter weights afterwards (only gradient synchronisation can do that),
and the same loss curve and weights as one process on the same global batch. Equal in exact arithmetic, not bitwise:
the ranks' partial sums are added in another order than in one process. Measured here: at most 4.8e-7 in the loss
(one float32 ulp at 4.85) and 3.3e-7 in any adapter weight after 4 AdamW steps; we allow 1e-5.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import kradapter  # noqa: F401
from kradapter import dist as kdist

SCRIPT = Path(__file__).parent / "distributed" / "train_tiny.py"
TOL = 1e-5


def load_script():
    spec = importlib.util.spec_from_file_location("train_tiny", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny = load_script()


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


def test_world_size_that_does_not_divide_the_batch_is_one_clear_error():
    with pytest.raises(ValueError, match=r"global batch size 6 does not divide evenly over 4 processes"):
        kdist.local_batch_size(6, 4)
    assert kdist.local_batch_size(6, 3) == 2


def test_init_outside_torchrun_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="not launched by torchrun"):
        kdist.init_process_group()
