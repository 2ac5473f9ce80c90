"""torch.compile (inductor) on a KRAdapter layer taking the fused path: same outputs and gradients as eager, and
how long compiling takes on this machine. The test suite checks the same with the cheap "aot_eager" backend;
inductor compiles C++ and takes too long for a test on 2 cores.

    PYTHONPATH=src python benchmarks/compile_check.py
"""

import time

import torch
from torch import nn

from kradapter.methods.kradapter.layer import Linear


def main() -> None:
    torch.manual_seed(0)
    layer = Linear(nn.Linear(256, 384).requires_grad_(False), "default", init_weights=False)
    params = [layer.kradapter_U["default"], layer.kradapter_V["default"]]
    x = torch.randn(512, 256, requires_grad=True)

    def grads(fn):
        for t in (*params, x):
            t.grad = None
        y = fn(x)
        y.square().sum().backward()
        return y.detach(), [t.grad.clone() for t in (*params, x)]

    y_eager, g_eager = grads(layer)
    compiled = torch.compile(layer, fullgraph=True)
    start = time.perf_counter()
    y_comp, g_comp = grads(compiled)
    first = time.perf_counter() - start
    same = torch.allclose(y_comp, y_eager, rtol=1e-5, atol=1e-5) and all(
        torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(g_comp, g_eager)
    )
    steady = []
    for _ in range(5):
        start = time.perf_counter()
        grads(compiled)
        steady.append(time.perf_counter() - start)
    print(
        f"torch {torch.__version__}, inductor, fullgraph=True: first call (compile) {first:.1f} s, then "
        f"{sorted(steady)[2] * 1e3:.1f} ms per fwd+bwd; outputs and gradients equal eager: {same}"
    )


if __name__ == "__main__":
    main()
