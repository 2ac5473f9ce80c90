"""Project-made models and data for the recipe tests: tiny config-built models saved to tmp dirs, word-level
tokenizers built in code, and small data files whose labels follow from their words (so training can learn)."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]


def word_tokenizer(texts: list[str], path: Path, eos_last: bool = False, append_eos: bool = False):
    """A word-level PreTrainedTokenizerFast over the words of `texts`, saved to `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in _words(t)})
    specials = [s for s in SPECIALS if not (eos_last and s == "[EOS]")]
    vocab = {w: i for i, w in enumerate(specials + words + (["[EOS]"] if eos_last else []))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(
            single="$A [EOS]", special_tokens=[("[EOS]", vocab["[EOS]"])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )
    fast.save_pretrained(path)
    return fast


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"\w+|[^\w\s]+", text)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- text ---------------------------------------------------------------------------------------------------------
MOODS = {
    "negative": ["awful", "bad", "sad"],
    "neutral": ["okay", "plain", "fine"],
    "positive": ["great", "happy", "good"],
}
FILLER = ["the", "movie", "was", "really", "day", "food", "and", "a", "it"]


def sentiment_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(MOODS)[i % 3]
        words = rng.sample(FILLER, 4) + [rng.choice(MOODS[label])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label, "score": float(list(MOODS).index(label))})
    return rows


def tiny_bert(tmp: Path) -> str:
    from transformers import BertConfig, BertModel

    texts = [" ".join(FILLER + sum(MOODS.values(), []))]
    tok = word_tokenizer(texts, tmp / "bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(tmp / "bert")
    return str(tmp / "bert")


def text_data(tmp: Path) -> list[str]:
    train = write_jsonl(tmp / "train.jsonl", sentiment_rows(60, 0))
    test = write_jsonl(tmp / "test.jsonl", sentiment_rows(24, 1))
    ood = write_jsonl(tmp / "ood.jsonl", sentiment_rows(18, 2))
    return [f"train={train}", f"test={test}", f"ood:shifted={ood}"]


# --- commonsense ----------------------------------------------------------------------------------------------------
def commonsense_rows(n: int, seed: int, kind: str) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if kind == "choice":
            k = rng.randint(1, 3)
            instruction = f"Please choose the correct answer to the question: which is {k} ? Answer1: one Answer2: two Answer3: three Answer format: answer1/answer2/answer3"
            answer = f"answer{k}"
        else:
            b = rng.random() < 0.5
            instruction = f"Please answer the following question with true or false, question: is it {'yes' if b else 'no'} ? Answer format: true/false"
            answer = "true" if b else "false"
        rows.append(
            {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}
        )
    return rows


def tiny_llama(tmp: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    from kradapter.train.tasks.commonsense import PROMPT

    texts = [PROMPT] + [
        r["instruction"] + " " + r["output"] for kind in ("choice", "bool") for r in commonsense_rows(30, 0, kind)
    ]
    tok = word_tokenizer(texts, tmp / "llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(tmp / "llama")
    return str(tmp / "llama")


def commonsense_data(tmp: Path) -> list[str]:
    def dump(name, rows):
        (tmp / name).write_text(json.dumps(rows))
        return tmp / name

    return [
        f"train={dump('cs_train.json', commonsense_rows(40, 0, 'choice'))}",
        f"id:choice={dump('cs_test.json', commonsense_rows(10, 1, 'choice'))}",
        f"ood:yesno={dump('cs_ood.json', commonsense_rows(10, 2, 'bool'))}",
    ]


# --- images -----------------------------------------------------------------------------------------------------------
def image_folder(root: Path, classes: list[str], per_class: int, seed: int, size: int = 16) -> Path:
    """Class c is a bright bar at a class-specific row band, plus noise."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.randint(0, 60, size=(size, size, 3)).astype(np.uint8)
            band = (c * size) // len(classes)
            img[band : band + max(1, size // len(classes)), :, :] = 230
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def image_data(tmp: Path, classes=("circle", "square", "triangle")) -> list[str]:
    return [
        f"train={image_folder(tmp / 'img_train', list(classes), 8, 0)}",
        f"test={image_folder(tmp / 'img_test', list(classes), 4, 1)}",
        f"ood:dim={image_folder(tmp / 'img_ood', list(classes)[:2], 3, 2)}",
    ]


def tiny_resnet(tmp: Path) -> str:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3
    )
    ResNetForImageClassification(config).save_pretrained(tmp / "resnet")
    return str(tmp / "resnet")


def tiny_clip(tmp: Path, classes=("circle", "square", "triangle")) -> str:
    from transformers import CLIPConfig, CLIPModel

    tok = word_tokenizer([f"An image of a {c} ." for c in classes], tmp / "clip", eos_last=True, append_eos=True)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            eos_token_id=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            image_size=16,
            patch_size=8,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(tmp / "clip")
    return str(tmp / "clip")


# --- per-example records ------------------------------------------------------------------------------------------
def check_per_example(out: Path, metrics: dict) -> dict:
    """DIR/per_example.json holds 0/1 per test example and seed, whose mean is exactly the run's recorded score."""
    record = json.loads((out / "per_example.json").read_text())
    assert record["seeds"] == metrics["seeds"] and set(record["tests"]) == set(metrics["tests"])
    for name, t in metrics["tests"].items():
        rows = record["tests"][name]
        assert [len(r) for r in rows] == [metrics["sizes"][name]] * len(metrics["seeds"])
        assert all(set(r) <= {0, 1} for r in rows)
        assert [sum(r) / len(r) for r in rows] == t["per_seed"]
    return record


# --- arguments ------------------------------------------------------------------------------------------------------
def train_args(task: str, out: Path, **overrides) -> argparse.Namespace:
    """The Namespace `kradapter train` would build, with test-sized defaults."""
    from kradapter.cli import _load_commands
    from kradapter.train.commands import add_train_arguments

    _load_commands()
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--task", task, "--output-dir", str(out), "--quiet"])
    args.max_steps, args.batch_size, args.logging_steps, args.eval_batch_size = 4, 8, 2, 16
    for k, v in overrides.items():
        setattr(args, k, v)
    return args
