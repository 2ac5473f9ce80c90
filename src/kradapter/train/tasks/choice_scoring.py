"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness scores its multiple-choice tasks: each
choice's continuation log-probability given the prompt, summed (acc: the argmax of the sums) and divided by the
continuation's length in characters (acc_norm, the harness's length normalisation).

The continuation of choice c is the answer sentence the recipe trains on ("the correct answer is c"), and a
question's choices come from a `choices` column or from the "Answer format: a/b/c" line that every LLM-Adapters
instruction ends with.

Nothing is computed twice. The prompts' common beginning (the Alpaca preamble, ~1/3 of each prompt) runs once
per call and its keys and values are reused by every question. A question's context (its prompt plus the part its
continuations share, "the correct answer is") runs once, in a batch of questions of similar length (left-padded,
little padding); its last positions' logits score the shared tokens and every choice's first differing token, so
choices that differ in one token (answer1/answer2/answer3, true/false) cost nothing more. Only longer remainders
run again, and only their own tokens, on a copy of their question's cached context. Log-probabilities are taken
at the positions that are scored only (`logits_to_keep`), never over the whole sequence.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

CONTINUATION = "the correct answer is {choice}"
_ANSWER_FORMAT = re.compile(r"Answer format:\s*([^\n]+)")
# A batch holds contexts at least this fraction of its longest one's length: at most ~10% of it is padding.
_PAD_SLACK = 0.9


def row_choices(row: dict) -> list[str] | None:
    """The answer words a question offers: its `choices` list, or its instruction's last "Answer format:" line."""
    if row.get("choices"):
        return [str(c) for c in row["choices"]]
    found = _ANSWER_FORMAT.findall(row.get("instruction") or "")
    if not found:
        return None
    choices = [c.strip() for c in found[-1].strip().split("/") if c.strip()]
    return choices if len(choices) >= 2 else None


def as_classes(answers: Sequence[str], choices: Sequence[Sequence[str] | None]) -> list[str]:
    """The classes that majority rates and balanced accuracy count: the answers themselves where every question
    offers the same choices (answer1/answer2/answer3, true/false); otherwise each answer's position among its own
    question's choices, since answer texts are unique to their question and "always the most common answer" then
    means "always the k-th choice". An answer that is not among its choices (no answer extracted) stays itself."""
    lists = [tuple(c) if c else None for c in choices]
    if len(set(lists)) <= 1:
        return [str(a) for a in answers]
    return [f"choice {cs.index(a) + 1}" if cs and a in cs else str(a) for a, cs in zip(answers, lists)]


def check_choices(rows, path, required: bool = True) -> list[list[str] | None]:
    """Every question's choices: at least two, none repeated, the gold answer among them; one error naming the
    file and row otherwise. With `required` False (generation scoring) a question may offer no choices (its
    response is then searched for the set's answer words), but one that does is checked all the same: an answer
    outside its own choices could never be scored right."""
    out = []
    for i, row in enumerate(rows):
        choices = row_choices(row)
        if choices is None:
            if required:
                raise ValueError(
                    f"{path}: row {i} has no choices to score by log-likelihood: give a 'choices' list "
                    "or end the instruction with 'Answer format: a/b/...' (or use --scoring generate)"
                )
        elif len(choices) < 2 or len(set(choices)) < len(choices):
            raise ValueError(
                f"{path}: row {i} offers choices {choices}: a question needs at least two, none repeated, to be scored"
            )
        elif row["answer"] not in choices:
            raise ValueError(f"{path}: row {i} has answer {row['answer']!r}, not one of its choices {choices}")
        out.append(choices)
    return out


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = 0
    for column in zip(*seqs):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


@dataclass
class _Question:
    index: int
    context: list[int]  # prompt + the tokens all its continuations share
    shared: list[int]  # those shared tokens (scored at the context's last positions)
    conts: list[list[int]]


@dataclass
class _Past:
    cache: Any  # a transformers Cache, one row per sequence run
    mask: torch.Tensor  # (rows, cached length): 1 at real tokens, 0 at padding


def _run(model, seqs: list[list[int]], keep: int, pad_id: int, past: _Past | None = None, rows=None, cache=True):
    """Run left-padded `seqs` (after cached rows `rows` of `past`, which is consumed): the log-softmax of the last
    `keep` positions of each row, (batch, keep, vocab), and (with `cache`) the cache now holding past + seqs."""
    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :], mask[i, width - len(s) :] = torch.tensor(s), 1
    kv = None
    if past is not None:
        index = torch.tensor(rows, dtype=torch.long)
        kv = past.cache
        kv.reorder_cache(index.to(device))
        mask = torch.cat([past.mask[index], mask], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -width:]  # rotary positions count real tokens only
    name = cache_argument(model)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=cache or kv is not None,  # some models ignore a given cache without use_cache
        logits_to_keep=keep,
        **{name: kv},
    )
    return torch.log_softmax(out.logits[:, -keep:].float(), dim=-1), _Past(out.get(name) if cache else None, mask)


def cache_argument(model) -> str:
    """The name a model's forward takes its key/value cache by, and returns it under: transformers 5.25 renamed
    `past_key_values` to `cache` (the old name deprecated, removed in 5.40), model by model; an unknown keyword
    would be swallowed by **kwargs, so read the forward's own signature."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _reusable(cache) -> bool:
    """Cached keys and values can be extended after padding only for full attention: a sliding window or a
    recurrent state would count the padding as tokens."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    layers = getattr(cache, "layers", None) or []
    return isinstance(cache, DynamicCache) and bool(layers) and all(type(la) is DynamicLayer for la in layers)


def _batches(questions: list[_Question], start: int, batch_size: int) -> list[list[_Question]]:
    """Questions longest context first, cut into batches of similar length; a batch's second pass (choices with
    more than one token left) holds at most batch_size rows too."""
    order = sorted(questions, key=lambda qu: -len(qu.context))
    out: list[list[_Question]] = []
    rows = 0
    for qu in order:
        extra = sum(len(c) - len(qu.shared) > 1 for c in qu.conts)
        if (
            not out
            or len(out[-1]) >= batch_size
            or rows + extra > max(batch_size, extra)
            or len(qu.context) - start < _PAD_SLACK * (len(out[-1][0].context) - start)
        ):
            out.append([])
            rows = 0
        out[-1].append(qu)
        rows += extra
    return out


def choice_logprobs(
    model, prompts: list[list[int]], conts: list[list[list[int]]], batch_size: int, pad_id: int
) -> list[list[float]]:
    """Summed log-probability of each question's continuations given its prompt, in the order given."""
    questions = []
    for q, (p, cs) in enumerate(zip(prompts, conts)):
        if not p or not cs or not all(cs):
            raise ValueError(f"question {q}: log-likelihood scoring needs a non-empty prompt and continuations")
        n = min(_common_prefix(cs), min(len(c) for c in cs) - 1)  # every choice keeps a token of its own
        questions.append(_Question(q, p + cs[0][:n], cs[0][:n], cs))
    out = [[0.0] * len(c) for c in conts]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # the prompts' common beginning, once; each scored position stays after it
            start = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)
            preamble = _run(model, [prompts[0][:start]], 1, pad_id)[1] if start else None
            if preamble is not None and not _reusable(preamble.cache):
                preamble, start = None, 0
            for batch in _batches(questions, start, batch_size):
                _score_batch(model, batch, start, preamble, pad_id, out)
    finally:
        model.train(was_training)
    return out


def _score_batch(model, batch: list[_Question], start: int, preamble: _Past | None, pad_id: int, out) -> None:
    keep = max(len(qu.shared) for qu in batch) + 1
    past = copy.deepcopy(preamble) if preamble is not None else None
    longer = any(len(c) > len(qu.shared) + 1 for qu in batch for c in qu.conts)  # a second pass follows
    logp, ctx = _run(model, [qu.context[start:] for qu in batch], keep, pad_id, past, [0] * len(batch), longer)
    reuse = longer and _reusable(ctx.cache)
    jobs = []  # (row in batch, choice, remainder after the shared tokens)
    for row, qu in enumerate(batch):
        n = len(qu.shared)
        # kept position keep - 1 - n + j predicts shared token j; the last kept one, each choice's next token
        shared_lp = sum(float(logp[row, keep - 1 - n + j, t]) for j, t in enumerate(qu.shared))
        for k, c in enumerate(qu.conts):
            out[qu.index][k] = shared_lp + float(logp[row, keep - 1, c[n]])
            if len(c) > n + 1:
                jobs.append((row, k, c[n:]))
    if not jobs:
        return
    # the remaining tokens of longer choices: their own tokens after the cached context (or all, where the
    # cache cannot be extended); position i predicts remainder token i + 1
    keep = max(len(r) for _, _, r in jobs) - 1
    if reuse:
        logp, _ = _run(model, [r[:-1] for _, _, r in jobs], keep, pad_id, ctx, [row for row, _, _ in jobs], False)
    else:
        logp, _ = _run(model, [batch[row].context + r[:-1] for row, _, r in jobs], keep, pad_id, cache=False)
    for i, (row, k, r) in enumerate(jobs):
        m = len(r) - 1
        out[batch[row].index][k] += sum(float(logp[i, keep - m + j, t]) for j, t in enumerate(r[1:]))


def pick(logprobs: list[list[float]], choices: list[list[str]], texts: list[list[str]]) -> tuple[list, list]:
    """(argmax of the sums, argmax of the sums per character of continuation) as answer words."""
    acc, norm = [], []
    for lps, cs, ts in zip(logprobs, choices, texts):
        acc.append(cs[max(range(len(cs)), key=lambda k: lps[k])])
        norm.append(cs[max(range(len(cs)), key=lambda k: lps[k] / max(1, len(ts[k])))])
    return acc, norm
