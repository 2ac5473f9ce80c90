"""Peak-memory measurements of `kradapter bench` section c, run by memory.peak_rss_in_subprocess in a fresh
process: `python -m kradapter.bench.memory_worker OPTIONS_JSON METHOD...` prints one JSON line (KiB per method).

The bench runs one method per process. Given several, they run one after another, each measured from the resident
set just before its model is built (glibc returns freed tensors to the OS here, see memory.py); the peak is taken
over the training steps only. On a CUDA device the same three figures come from CUDA's allocator
(memory.cuda_allocated_kib), and "source" says which was measured.
"""

from __future__ import annotations

import gc
import json
import sys


def measure(method: str, opts) -> dict:
    import torch

    from .memory import cuda_allocated_kib, read_status_kib, reset_cuda_peak, reset_peak_rss
    from .model import build_base, make_batch, prepare, train_step

    on_cuda = torch.device(opts.device).type == "cuda"
    if on_cuda:

        def now():
            return cuda_allocated_kib(opts.device)

        def reset():
            reset_cuda_peak(opts.device)

        def peak_now():
            return cuda_allocated_kib(opts.device, peak=True)
    else:

        def now():
            return read_status_kib("VmRSS")

        reset = reset_peak_rss

        def peak_now():
            return read_status_kib("VmHWM")

    gc.collect()
    torch.manual_seed(opts.seed)
    start = now()
    model = prepare(method, build_base(opts), opts)
    step = train_step(model, make_batch(opts))
    at_model = now()
    reset()  # building the model is not part of the measured span
    for _ in range(opts.memory_steps):  # the first step also creates gradients and optimizer state
        step()
    peak = peak_now()
    del step, model
    gc.collect()
    return {
        "peak_kib": peak - start,  # weights + gradients + optimizer state + activations at the worst moment
        "model_kib": at_model - start,  # the model (with adapters) before any step
        "training_kib": peak - at_model,  # what training adds on top of the model
        "source": "cuda max_memory_allocated" if on_cuda else "peak RSS (VmHWM)",
    }


def main(argv: list[str]) -> dict:
    from .options import BenchOptions

    options = json.loads(argv[0])
    options["shapes"] = tuple(tuple(s) for s in options["shapes"])
    options["sections"] = tuple(options["sections"])
    opts = BenchOptions(**options)
    if opts.threads is not None:
        import torch

        torch.set_num_threads(opts.threads)
    return {method: measure(method, opts) for method in argv[1:]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
