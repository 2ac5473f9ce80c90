"""Memory accounting that means something on a CPU.

saved_bytes: what autograd keeps for backward during a forward, through torch.autograd.graph.saved_tensors_hooks,
counted once per distinct storage and split into parameter storages (alive anyway) and the rest (activations:
what the graph adds). It is exact and independent of the allocator.

peak_rss: training runs in a fresh process (memory_worker.py) with glibc told to mmap every allocation of 64 KiB
or more, so freed tensors go back to the OS and the resident set follows live memory; the peak is the kernel's
high-water mark (VmHWM, reset through /proc/self/clear_refs before the measured span).

On a GPU the training memory is the GPU's, so the worker reports CUDA's allocator instead: torch.cuda.memory_allocated
before and after building the model, and torch.cuda.max_memory_allocated over the steps (peak stats reset first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import torch


def saved_bytes(forward: Callable[[], torch.Tensor], parameters) -> dict:
    """Bytes of distinct storages autograd saves for backward while `forward()` runs; the graph is then freed."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in parameters}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    in_params = sum(n for ptr, n in storages.items() if ptr in param_ptrs)
    total = sum(storages.values())
    return {"total": total, "parameters": in_params, "activations": total - in_params, "storages": len(storages)}


def read_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)


def cuda_allocated_kib(device, peak: bool = False) -> int:
    """KiB the CUDA caching allocator holds in tensors on `device` now, or at its peak since the last reset."""
    read = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
    return read(device) // 1024


def reset_cuda_peak(device) -> None:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)


def peak_rss_in_subprocess(methods: list[str], options: dict) -> dict:
    """Run memory_worker for the methods in one fresh Python process and return what it measured (KiB)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "kradapter.bench.memory_worker", json.dumps(options), *methods]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"peak-memory process for {', '.join(methods)} failed: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
