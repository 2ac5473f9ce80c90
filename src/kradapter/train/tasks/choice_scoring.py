"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness scores its multiple-choice tasks: each
choice's continuation log-probability given the prompt, summed (acc: the argmax of the sums) and divided by the
continuation's length in characters (acc_norm, the harness's length normalisation).

The continuation of choice c is the answer sentence the recipe trains on ("the correct answer is c"), and a
question's choices come from a `choices` column or from the "Answer format: a/b/c" line that every LLM-Adapters
instruction ends with. Questions are scored in batches, longest first, left-padded so that every row ends at the
same position (the logits needed are the last few, `logits_to_keep`). When all of a question's continuations
differ only in their last token (answer1 / answer2 / answer3, true / false) one forward pass over the prompt and
the shared part scores every choice; otherwise each choice is its own sequence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

CONTINUATION = "the correct answer is {choice}"
_ANSWER_FORMAT = re.compile(r"Answer format:\s*([^\n]+)")


def row_choices(row: dict) -> list[str] | None:
    """The answer words a question offers: its `choices` list, or its instruction's last "Answer format:" line."""
    if row.get("choices"):
        return [str(c) for c in row["choices"]]
    found = _ANSWER_FORMAT.findall(row.get("instruction") or "")
    if not found:
        return None
    choices = [c.strip() for c in found[-1].strip().split("/") if c.strip()]
    return choices if len(choices) >= 2 else None


def check_choices(rows, path) -> list[list[str]]:
    """Every question's choices, gold answer among them; one error naming the file and row otherwise."""
    out = []
    for i, row in enumerate(rows):
        choices = row_choices(row)
        if choices is None:
            raise ValueError(
                f"{path}: row {i} has no choices to score by log-likelihood: give a 'choices' list "
                "or end the instruction with 'Answer format: a/b/...' (or use --scoring generate)"
            )
        if row["answer"] not in choices:
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


def _jobs(prompt: list[int], conts: list[list[int]]):
    """Forward passes scoring one question: (sequence, [(choice, [(index in sequence, token)])])."""
    shared = _common_prefix(conts)
    if all(len(c) == shared + 1 for c in conts):  # choices differ in their last token only: one pass
        seq = prompt + conts[0][:shared]
        n = len(prompt)
        return [(seq, [(k, [(n + j, c[j]) for j in range(len(c))]) for k, c in enumerate(conts)])]
    return [(prompt + c, [(k, [(len(prompt) + j, c[j]) for j in range(len(c))])]) for k, c in enumerate(conts)]


def _forward(model, seqs: list[list[int]], keep: int, pad_id: int) -> torch.Tensor:
    """Log-softmax of the last `keep` positions' logits of each left-padded sequence: (batch, keep, vocab)."""
    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :], mask[i, width - len(s) :] = torch.tensor(s), 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # rotary positions start at each row's first real token
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    return torch.log_softmax(logits[:, -keep:].float(), dim=-1)


def choice_logprobs(
    model, prompts: list[list[int]], conts: list[list[list[int]]], batch_size: int, pad_id: int
) -> list[list[float]]:
    """Summed log-probability of each question's continuations given its prompt, in the order given."""
    jobs = [(q, seq, targets) for q, (p, c) in enumerate(zip(prompts, conts)) for seq, targets in _jobs(p, c)]
    jobs.sort(key=lambda j: -len(j[1]))  # similar lengths together: little padding
    out = [[0.0] * len(c) for c in conts]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(jobs), batch_size):
                batch = jobs[start : start + batch_size]
                # logits at index t - 1 predict token t; keep enough trailing positions for every target
                keep = max(len(seq) - min(t for _, tg in targets for t, _ in tg) + 1 for _, seq, targets in batch)
                logp = _forward(model, [seq for _, seq, _ in batch], keep, pad_id)
                for row, (q, seq, targets) in enumerate(batch):
                    for k, pairs in targets:
                        # sequence index t - 1 sits at kept row keep - (len(seq) - (t - 1))
                        out[q][k] = float(sum(logp[row, keep - len(seq) + t - 1, tok] for t, tok in pairs))
    finally:
        model.train(was_training)
    return out


def pick(logprobs: list[list[float]], choices: list[list[str]], texts: list[list[str]]) -> tuple[list, list]:
    """(argmax of the sums, argmax of the sums per character of continuation) as answer words."""
    acc, norm = [], []
    for lps, cs, ts in zip(logprobs, choices, texts):
        acc.append(cs[max(range(len(cs)), key=lambda k: lps[k])])
        norm.append(cs[max(range(len(cs)), key=lambda k: lps[k] / max(1, len(ts[k])))])
    return acc, norm
