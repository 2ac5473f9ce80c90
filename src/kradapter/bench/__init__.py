"""`kradapter bench`: speed and memory of the KRAdapter training path against its naive form, LoRA at the same
budget, a frozen layer, full fine-tuning and the 3-GEMM limit, all as ratios measured in one run.

options.py (what to run) -> layers.py (sections a, b) and model.py (sections c, d), timed by timing.py, memory
by memory.py -> report.py (targets, table, JSON); pipeline.py runs the sections in order.
"""

from .options import BenchOptions
from .pipeline import count_units, run_bench

__all__ = ["BenchOptions", "count_units", "run_bench"]
