"""Library functions leave process-wide state to their callers: torch's global RNG, logging verbosity, thread
counts; and files are skipped only on a non-zero rank of a real process group."""

from __future__ import annotations

import torch
from transformers.utils import logging as hf_logging

from kradapter import dist as kdist
from kradapter.approx.methods import build
from kradapter.bench.layers import build_layers
from kradapter.io import read_json, write_json


def test_rank_without_a_process_group_still_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not torch.distributed.is_initialized()
    assert kdist.is_main_process()
    write_json(tmp_path / "m.json", {"a": 1})
    assert read_json(tmp_path / "m.json") == {"a": 1}


def test_seeded_builders_leave_the_global_rng_and_logging_alone():
    torch.manual_seed(123)
    state, verbosity, threads = torch.get_rng_state(), hf_logging.get_verbosity(), torch.get_num_threads()
    first = build("kradapter", torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), seed=3)
    layers = build_layers(6, 8, "sqrt", seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert hf_logging.get_verbosity() == verbosity and torch.get_num_threads() == threads
    # and the seed still decides the init: the same call gives the same adapter, whatever the global RNG holds
    torch.manual_seed(999)
    again = build("kradapter", torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first.params, again.params))
    assert torch.equal(build_layers(6, 8, "sqrt", seed=5)["frozen"].proj.weight, layers["frozen"].proj.weight)
