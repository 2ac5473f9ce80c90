"""social_iqa in three prompt formats: the zero-shot model's log-likelihood scores, and training files in the
answer-text format, for the "Commonsense default that learns" study in RECIPES.md.

Formats (the same questions and choice order as the commonsense default's social_iqa set, from the same file):
* numbers: the default's form before it moved to wikiHow questions, LLM-Adapters' template: the answers listed in
  the prompt, the model answers "answerK";
* listed:  the answers listed in the prompt, the model answers with the answer's text;
* texts:   the question alone, the model answers with the answer's text (lm-evaluation-harness' cloze form; the
  default's own social_iqa rows).
Every continuation is "the correct answer is X", as `kradapter train --task commonsense` trains and scores.

    PYTHONPATH=src python benchmarks/commonsense_formats.py --zero-shot 200 --threads 2
    PYTHONPATH=src python benchmarks/commonsense_formats.py --write runs/siqa-texts   # train.json, social_iqa.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kradapter.io import read_json, write_text
from kradapter.train.defaults.bigbench import bigbench_tasks
from kradapter.train.defaults.commonsense import _social_iqa, answer_text_row, split_social_iqa

FORMATS = ("numbers", "listed", "texts")


def questions() -> tuple[list[dict], list[dict]]:
    """(test, train) BIG-bench social_iqa examples, split as the commonsense default splits them."""
    return split_social_iqa(read_json(bigbench_tasks(("social_iqa",))["social_iqa"])["examples"])


def row(example: dict, form: str) -> dict:
    if form == "numbers":  # the old default's row, with its choices spelled out
        return _social_iqa(example) | {"choices": [f"answer{i}" for i in (1, 2, 3)]}
    texts = answer_text_row(example)
    if form == "texts":
        return texts
    listed = " ".join(f"Answer{i}: {c}" for i, c in enumerate(texts["choices"], 1))  # the same row, answers listed
    return texts | {"instruction": f"{texts['instruction']}\n\n{listed}"}


def zero_shot(n: int, threads: int) -> None:
    import torch
    from transformers import AutoTokenizer

    from kradapter.train.defaults.models import smollm2_path
    from kradapter.train.tasks.choice_scoring import CONTINUATION, choice_logprobs, pick
    from kradapter.train.tasks.commonsense import load_model, prompt_of

    torch.set_num_threads(threads)
    path = smollm2_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), load_model(path)
    test = questions()[0][:n]
    for form in FORMATS:
        rows = [row(e, form) for e in test]
        prompts = [tokenizer(prompt_of(r["instruction"]))["input_ids"] for r in rows]
        texts = [[CONTINUATION.format(choice=c) for c in r["choices"]] for r in rows]
        conts = [[tokenizer(t, add_special_tokens=False)["input_ids"] for t in ts] for ts in texts]
        acc, norm = pick(
            choice_logprobs(model, prompts, conts, 16, tokenizer.eos_token_id), [r["choices"] for r in rows], texts
        )
        gold = [r["answer"] for r in rows]
        hits = [sum(p == g for p, g in zip(pred, gold)) / len(gold) for pred in (acc, norm)]
        print(f"{form:<8} {len(gold)} questions: acc {hits[0]:.3f}  acc_norm {hits[1]:.3f}", flush=True)


def write(out: Path, form: str) -> None:
    test, train = questions()
    for name, examples in (("train", train), ("social_iqa", test)):
        write_text(out / f"{name}.json", json.dumps([row(e, form) for e in examples], ensure_ascii=False) + "\n")
    print(f"{out}/train.json ({len(train)} questions), {out}/social_iqa.json ({len(test)}), format {form}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zero-shot", type=int, metavar="N", help="score the first N test questions in every format")
    p.add_argument("--write", type=Path, metavar="DIR", help="write train.json and social_iqa.json to DIR")
    p.add_argument("--format", choices=FORMATS, default="texts", help="format of --write (default texts)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not (args.zero_shot or args.write):
        p.error("give --zero-shot N, --write DIR or both")
    if args.write:
        write(args.write, args.format)
    if args.zero_shot:
        zero_shot(args.zero_shot, args.threads)


if __name__ == "__main__":
    main()
