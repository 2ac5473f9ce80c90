"""CLIP image classification (`--task clip`), the paper's vision-language setting.

transformers' CLIPModel from a local path; the head is the text tower reading one prompt per class ("An image of a
{classname}." by default), logits = CLIP's logit scale x cosine(image, prompt). `--towers vision,text` chooses
which towers get adapters (attention key and value by default). `--shots K` trains on K images per class. The
untouched model is the zero-shot baseline, so every run reports r_gen = mean OOD gain / ID gain over zero-shot.
No CLIP checkpoint installs offline here: pass --model PATH (e.g. a saved openai/clip-vit-base-patch32).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from ..baselines import set_baselines
from ..data import spec_args
from .base import Prepared, load_or_explain, resolve_targets, split_csv
from .image import evaluate_logits, load_image_sets, pixel_transform, split_image_sets, stack_collate

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOWERS = {"vision": "vision_model", "text": "text_model"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("clip task")
    g.add_argument("--prompt", default="An image of a {classname}.", help="class prompt template")
    g.add_argument("--towers", default="vision,text", help="towers to adapt: vision, text or vision,text")


def _features(out) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor.
    return out if torch.is_tensor(out) else out.pooler_output


class CLIPClassifier(nn.Module):
    """CLIP with one text prompt per class as the classification head."""

    def __init__(self, clip: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        super().__init__()
        self.clip = clip
        self.register_buffer("prompt_ids", prompt_ids, persistent=False)
        self.register_buffer("prompt_mask", prompt_mask, persistent=False)

    def forward(self, pixel_values, labels=None):
        image = F.normalize(_features(self.clip.get_image_features(pixel_values=pixel_values)), dim=-1)
        text = F.normalize(
            _features(self.clip.get_text_features(input_ids=self.prompt_ids, attention_mask=self.prompt_mask)), dim=-1
        )
        logits = self.clip.logit_scale.exp() * image @ text.T
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def class_prompts(classes: list[str], template: str) -> list[str]:
    if "{classname}" not in template:
        raise ValueError(f"--prompt {template!r} must contain {{classname}}")
    return [template.format(classname=c.replace("_", " ")) for c in classes]


def load_model(path: str, classes: list[str], template: str = "An image of a {classname}.") -> CLIPClassifier:
    """The one place a CLIP model is loaded."""
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer(class_prompts(classes, template), padding=True, return_tensors="pt")
    return CLIPClassifier(clip, enc["input_ids"], enc["attention_mask"])


def tower_targets(towers: str) -> list[str]:
    chosen = [t.strip() for t in towers.split(",") if t.strip()]
    bad = [t for t in chosen if t not in TOWERS]
    if bad or not chosen:
        raise ValueError(f"--towers {towers!r}: use vision, text or vision,text")
    return [rf"clip\.{TOWERS[t]}\..*\.(k_proj|v_proj)" for t in chosen]


def prepare(args: argparse.Namespace) -> Prepared:
    if not args.model:
        raise ValueError(
            "no CLIP model installs offline: pass --model PATH to a local CLIP checkpoint "
            "(CLIPModel + tokenizer, e.g. a saved openai/clip-vit-base-patch32)"
        )
    if not args.data:
        raise ValueError("--task clip needs --data train=DIR and test sets (imagefolder dirs or image files)")
    model_path = args.model
    specs, raw, classes = load_image_sets(args, lambda: [])
    model = load_or_explain("CLIP model path", model_path, lambda: load_model(model_path, classes, args.prompt))
    defaults = tower_targets(args.towers)
    targets = resolve_targets(model, split_csv(args.target_modules) or defaults, [], kinds=(nn.Linear,))
    size = args.image_size or model.clip.config.vision_config.image_size
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(model_path)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    except Exception:  # no processor saved with the model: OpenAI CLIP's statistics
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    train, validation, tests = split_image_sets(args, raw, specs, using_default=False)
    transform = pixel_transform(args.image_column, size, mean, std)

    def build_model():
        return load_model(model_path, classes, args.prompt)

    return Prepared(
        task="clip",
        model_path=model_path,
        build_model=build_model,
        train=train.with_transform(transform),
        validation=validation.with_transform(transform),
        tests={n: d.with_transform(transform) for n, d in tests.items()},
        groups={s.name: s.group for s in specs if s.role == "test"},
        collator=stack_collate,
        evaluate=evaluate_logits(args),
        metric="accuracy",
        targets=targets,
        head=[],
        zero_shot=True,
        loaded=model,
        run_info={"task": "clip", "model": model_path, "classes": classes, "prompt": args.prompt},
        sizes={"train": len(train), "validation": len(validation), **{n: len(d) for n, d in tests.items()}},
        defaults={"max_steps": None, "epochs": 10, "batch_size": 32},
        data_args=spec_args(specs),
        baselines={n: set_baselines(d["labels"], len(classes)) for n, d in tests.items()},
    )


def rebuild(run_info: dict):
    return load_model(run_info["model"], run_info["classes"], run_info["prompt"])
