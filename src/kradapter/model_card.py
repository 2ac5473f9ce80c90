"""The model card (README.md) of every adapter kradapter's methods save.

PEFT's ``save_pretrained`` writes a card from its template that names only PEFT; an adapter of a method PEFT does not
ship cannot be loaded without ``import kradapter`` (PEFT raises ``KeyError: 'KRADAPTER'``), so the card says so:
which method, its paper, how to install and load it, what a process without kradapter can use (a LoRA made by
``kradapter convert``, or the model merged by ``kradapter merge``) and hub metadata (``library_name``, tags).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Written into the card once; a card that already holds it (a second save into the same directory) is left alone.
MARKER = "<!-- kradapter model card -->"


@dataclass(frozen=True)
class MethodInfo:
    title: str
    tag: str
    paper: str
    arxiv: str


METHODS = {
    "KRADAPTER": MethodInfo(
        "KRAdapter (Khatri-Rao adapter)",
        "kradapter",
        "Towards Higher Effective Rank in Parameter-efficient Fine-tuning using Khatri-Rao Product",
        "2508.00230",
    ),
    "SINLORA": MethodInfo(
        "SinLoRA (sine-activated low-rank adapter)",
        "sinlora",
        "Sine Activated Low-Rank Matrices for Parameter Efficient Learning",
        "2403.19243",
    ),
    "KRONLORA": MethodInfo(
        "Kron-LoRA (hybrid Kronecker-LoRA adapter)",
        "kronlora",
        "Kronecker-LoRA: hybrid Kronecker-LoRA adapters for scalable, sustainable fine-tuning",
        "2508.01961",
    ),
}


def _peft_type_name(config) -> str:
    kind = config.peft_type
    return getattr(kind, "value", kind)


def kradapter_methods(peft_model) -> list[str]:
    """PeftType names of the model's adapters that kradapter defines, in adapter order, each once."""
    names = [_peft_type_name(c) for c in peft_model.peft_config.values()]
    return list(dict.fromkeys(n for n in names if n in METHODS))


def card_section(methods: list[str], base_model: str | None) -> str:
    lines = [MARKER, "", "## kradapter", ""]
    for name in methods:
        info = METHODS[name]
        lines.append(
            f"This adapter is a **{info.title}**, from *{info.paper}* "
            f"([arXiv {info.arxiv}](https://arxiv.org/abs/{info.arxiv})), implemented by "
            "[kradapter](https://pypi.org/project/kradapter/) as a PEFT method."
        )
    base = base_model or "<base model>"
    lines += [
        "",
        "PEFT does not ship this method: install kradapter and **`import kradapter` before loading**, or PEFT and "
        f"transformers fail with `KeyError: '{methods[0]}'`.",
        "",
        "```bash",
        "pip install kradapter",
        "```",
        "",
        "```python",
        "import kradapter  # registers the method with PEFT",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        'model = PeftModel.from_pretrained(base, "<this adapter>")',
        "```",
        "",
        "### Without kradapter",
        "",
        "A process without kradapter (a LoRA-only server such as vLLM, SGLang, TGI or LoRAX, or diffusers) can use "
        "one of two files made from this adapter, on a machine with kradapter:",
        "",
        "- **a plain PEFT LoRA adapter** (each layer's update truncated to rank R by SVD; the command prints what "
        "that costs per layer: the relative error of the update and the energy kept; `--energy 0.99` picks ranks "
        "instead), loaded with `PeftModel.from_pretrained`, transformers' `model.load_adapter` or diffusers' "
        "`load_lora_adapter`:",
        "",
        "  ```bash",
        f'  kradapter convert --adapter "<this adapter>" --base "{base}" --to lora --rank 64 --out lora/',
        "  ```",
        "",
        "- **the merged model** (exact; a full copy of the base's weights), loaded with plain transformers "
        "`AutoModel*.from_pretrained`:",
        "",
        "  ```bash",
        f'  kradapter merge --adapter "<this adapter>" --base "{base}" --out merged/',
        "  ```",
        "",
    ]
    return "\n".join(lines)


def update_card(peft_model, output_dir: str) -> None:
    """Add kradapter's metadata and section to the README.md PEFT just wrote in ``output_dir``, if any adapter of
    ``peft_model`` is one of kradapter's methods. Rewritten atomically."""
    methods = kradapter_methods(peft_model)
    path = os.path.join(output_dir, "README.md")
    if not methods or not os.path.exists(path):
        return
    from huggingface_hub import ModelCard

    card = ModelCard.load(path)
    tags = set(card.data.get("tags") or [])
    tags.update({"kradapter", "peft"})
    tags.update(METHODS[m].tag for m in methods)
    tags.update(f"arxiv:{METHODS[m].arxiv}" for m in methods)  # the hub links a paper page from this tag
    card.data["tags"] = sorted(tags)
    # "peft" keeps the hub's adapter support (base_model:adapter relations, the PEFT filter); the card's text and
    # the "kradapter" tag say that kradapter is needed.
    card.data["library_name"] = card.data.get("library_name") or "peft"
    # PEFT's card names the model config's _name_or_path (a local path for kradapter's offline defaults); the
    # adapter config's base_model_name_or_path is the name to publish (train records the public name there)
    recorded = {c.base_model_name_or_path for c in peft_model.peft_config.values() if c.base_model_name_or_path}
    if len(recorded) == 1:
        card.data["base_model"] = recorded.pop()
    if MARKER not in card.text:
        base = card.data.get("base_model")
        card.text = card_section(methods, base if isinstance(base, str) else None) + "\n" + card.text.lstrip("\n")
    tmp = path + ".tmp"
    card.save(tmp)
    os.replace(tmp, path)
