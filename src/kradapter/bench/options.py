"""What `kradapter bench` measures, validated before any work."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SECTIONS = ("layer", "saved", "model", "inference")
DEFAULT_SHAPES = ((1024, 1024), (1024, 4096), (4096, 1024), (768, 3072))  # (d_in, d_out) as nn.Linear(d_in, d_out)


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """'1024x4096,768x3072' -> ((1024, 4096), (768, 3072)): IN x OUT, as nn.Linear(IN, OUT)."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"shape {item.strip()!r} is not IN x OUT (e.g. 1024x4096)")
        shapes.append((int(parts[0]), int(parts[1])))
    return tuple(shapes)


def parse_sections(text: str) -> tuple[str, ...]:
    """The bench sections named in a comma-separated list.

    Args:
        text: E.g. ``"layer,saved"``.

    Returns:
        The section names, in the given order.

    Raises:
        ValueError: If a name is unknown or the list is empty.
    """
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise ValueError(f"unknown bench section(s) {bad or [text]}; choose from {', '.join(SECTIONS)}")
    return names


def check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device (give cpu, cuda or cuda:N)") from err
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: the bench runs on cpu or cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch.cuda.is_available() is False on this machine")


@dataclass
class BenchOptions:
    """Sizes and repeats. Defaults are the issue's: N = 4096 tokens, four layer shapes, a Llama-shaped model with
    hidden 1024, 4 layers and grouped k/v (16 heads, 4 key/value heads), k_proj and v_proj adapted."""

    sections: tuple[str, ...] = SECTIONS
    tokens: int = 4096
    shapes: tuple[tuple[int, int], ...] = DEFAULT_SHAPES
    k1: int | str = "sqrt"
    repeats: int = 9  # interleaved timing rounds per layer shape
    warmup: int = 1
    hidden: int = 1024
    layers: int = 4
    heads: int = 16
    kv_heads: int = 4
    intermediate: int = 2816
    vocab: int = 8192
    batch: int = 2
    seq: int = 512
    model_repeats: int = 5  # interleaved rounds of training steps / inference forwards
    memory_steps: int = 2  # training steps run in each peak-memory process
    memory_one_process: bool = False  # quick runs: all methods' peak memory in one process instead of one each
    seed: int = 0
    threads: int | None = None  # torch threads for every measurement; None keeps torch's default
    device: str = "cpu"  # "cuda" / "cuda:N": timing synchronises CUDA, memory is CUDA's peak allocation

    def validate(self) -> None:
        """Check every option before any work.

        Raises:
            ValueError: If a section is unknown or a size, count or flag is out of range; the message names it.
        """
        parse_sections(",".join(self.sections))
        for name in (
            "tokens",
            "repeats",
            "hidden",
            "layers",
            "heads",
            "kv_heads",
            "intermediate",
            "vocab",
            "batch",
            "seq",
            "model_repeats",
            "memory_steps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be an int >= 1, got {self.threads!r}")
        check_device(self.device)
        if not isinstance(self.memory_one_process, bool):
            raise ValueError(f"memory_one_process must be True or False, got {self.memory_one_process!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        for d_in, d_out in self.shapes:
            if d_in < 1 or d_out < 1:
                raise ValueError(f"layer shape {d_in}x{d_out} must have positive sides")
        if not self.shapes:
            raise ValueError("give at least one layer shape")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(
                f"hidden={self.hidden} must divide by heads={self.heads}, and heads by kv_heads={self.kv_heads}"
            )
        self._check_machine()
        from ..ops import resolve_k

        for d_in, d_out in self.shapes:
            resolve_k(d_out, d_in, self.k1)  # raises a ValueError naming k1 and the shape

    def _check_machine(self) -> None:
        """Threads and sizes this machine cannot offer, refused before anything is allocated."""
        from .._resources import FLOAT32, check_memory, check_threads

        check_threads("threads", self.threads)
        if "layer" in self.sections or "saved" in self.sections:
            # one layer case holds x, dy, the output and x's gradient: tokens x (2 d_in + 2 d_out) float32
            widest = max(2 * d_in + 2 * d_out for d_in, d_out in self.shapes)
            check_memory(f"tokens={self.tokens}", FLOAT32 * self.tokens * widest, self.device)
        if "model" in self.sections or "inference" in self.sections:
            # the logits alone: batch x seq x vocab float32 (and their gradient in training)
            check_memory(
                f"batch={self.batch} x seq={self.seq} x vocab={self.vocab}",
                2 * FLOAT32 * self.batch * self.seq * self.vocab,
                self.device,
            )

    def to_dict(self) -> dict:
        """The options as a plain dict (recorded in ``bench.json``).

        Returns:
            Field name -> value.
        """
        return asdict(self)
