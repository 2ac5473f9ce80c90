"""Time the default `kradapter approx` run (all targets, all methods, 1024 x 768, 100 iterations).

Prints wall-clock, the CPU time of the run (user + sys of the child process), the load average before and after
(the machine may be shared with other jobs), and a same-run baseline: the wall time of 200 single-thread float32
(1024 x 768) @ (768 x 768) matmuls measured just before and just after, so runs on differently loaded machines can
be compared as a ratio. Extra arguments go to `kradapter approx` (e.g. --workers 1).

    python benchmarks/time_approx.py --out runs/approx
"""

import os
import resource
import subprocess
import sys
import time

import torch


def baseline_seconds() -> float:
    torch.set_num_threads(1)
    a, b = torch.randn(1024, 768), torch.randn(768, 768)
    start = time.perf_counter()
    for _ in range(200):
        a @ b
    return time.perf_counter() - start


def main() -> int:
    args = sys.argv[1:] or ["--out", "runs/approx"]
    load_before = os.getloadavg()
    base_before = baseline_seconds()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kradapter", "approx", *args], stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    base_after = baseline_seconds()
    load_after = os.getloadavg()
    print(proc.stdout)
    if proc.returncode:
        print(f"kradapter approx failed with exit code {proc.returncode}")
        return proc.returncode
    base = (base_before + base_after) / 2
    print(f"command: kradapter approx {' '.join(args)}")
    print(
        f"wall clock {wall:.1f} s, CPU time (user+sys) {usage.ru_utime + usage.ru_stime:.1f} s, {os.cpu_count()} cores"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-min)")
    print(
        f"baseline (200 matmuls, 1 thread): {base_before:.2f} s before, {base_after:.2f} s after; "
        f"run = {wall / base:.0f} baselines"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
