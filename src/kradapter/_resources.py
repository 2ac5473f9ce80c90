"""What this machine offers (memory, CPU threads), checked before a command allocates or spawns anything: an absurd
size gets one error with the estimate and what is available, not an allocator error of 40 GB to 128 TB later."""

from __future__ import annotations

import os

FLOAT32 = 4
FLOAT64 = 8


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(option: str, value: int | None) -> None:
    """A ValueError naming `option` when `value` threads exceed the CPUs this process may use."""
    cpus = available_cpus()
    if value is not None and value > cpus:
        raise ValueError(f"{option} {value}: this machine offers {cpus} CPU(s) to this process; give at most {cpus}")


def available_bytes(device: str = "cpu") -> int:
    """Free memory of `device`: CUDA's free bytes, or the host's MemAvailable (Linux), else its physical memory."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63  # unknown: never refuse on a guess


def format_bytes(n: float) -> str:
    """A byte count in binary units: 1536 -> "1.5 KB"."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(what: str, needed: int, device: str = "cpu") -> None:
    """A ValueError when `needed` bytes (a lower-bound estimate of what `what` allocates) exceed `device`'s free
    memory; the message names `what`, the estimate and what is available."""
    free = available_bytes(device)
    if needed > free:
        raise ValueError(
            f"{what} needs at least {format_bytes(needed)} of {device} memory, {format_bytes(free)} is available; "
            "give a smaller size"
        )
