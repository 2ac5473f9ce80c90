"""GPU paths (marked `gpu`; skipped without CUDA): run them with `python -m pytest -m gpu tests` on a CUDA machine.

The bench on CUDA synchronises its timings and reports CUDA's peak allocation; KRAdapter on a CUDA Llama trains,
saves and reloads through transformers like on CPU, with the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

import kradapter
from _kradapter_models import tiny_llama
from kradapter.cli import main

pytestmark = pytest.mark.gpu


def test_bench_on_cuda_reports_cuda_peak_memory(tmp_path, capsys):
    args = [
        "bench",
        "--out",
        str(tmp_path),
        "--device",
        "cuda",
        "--tokens",
        "64",
        "--shapes",
        "32x48,48x32",
        "--repeats",
        "2",
        "--hidden",
        "64",
        "--layers",
        "1",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--intermediate",
        "96",
        "--vocab",
        "128",
        "--batch",
        "1",
        "--seq",
        "16",
        "--model-repeats",
        "2",
        "--memory-steps",
        "1",
    ]
    assert main(args) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["machine"]["device"] == "cuda" and data["machine"]["gpu"]
    for method, mem in data["model"]["memory_kib"].items():
        assert mem["source"] == "cuda max_memory_allocated", method
        assert mem["peak_kib"] > 0 and mem["peak_kib"] >= mem["model_kib"], method
    assert all(t["median_s"] > 0 for row in data["layer"] for t in row["times"].values())


def test_kradapter_on_cuda_matches_cpu_and_round_trips(tmp_path):
    config = dict(target_modules=["q_proj", "k_proj", "v_proj"], init_weights=False, alpha=0.5)
    ids = torch.arange(12).reshape(1, 12)
    cpu = tiny_llama(seed=0)
    torch.manual_seed(1)
    cpu.add_adapter(kradapter.KRAdapterConfig(**config))
    gpu = tiny_llama(seed=0).cuda()
    torch.manual_seed(1)
    gpu.add_adapter(kradapter.KRAdapterConfig(**config))
    with torch.no_grad():
        torch.testing.assert_close(
            gpu(input_ids=ids.cuda()).logits.cpu(), cpu(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )

    gpu.train()
    loss = gpu(input_ids=ids.cuda(), labels=ids.cuda()).loss
    loss.backward()
    grads = [p.grad for n, p in gpu.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and g.is_cuda and torch.isfinite(g).all() for g in grads)

    gpu.eval()
    gpu.save_pretrained(tmp_path / "adapter")
    fresh = tiny_llama(seed=0).cuda()
    fresh.load_adapter(str(tmp_path / "adapter"), adapter_name="default")
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids.cuda()).logits, gpu(input_ids=ids.cuda()).logits, rtol=0, atol=0)
