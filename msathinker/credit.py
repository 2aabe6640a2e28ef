"""Which completion tokens each part of the Hint-GRPO loss reaches (docs/method.md, Hint credit and Span credit).

- Hint credit "policy": a completion sampled after a prefix hint is trained under the unhinted prompt, its forced
  prefix tokens first (`credit_forced_prefix`); the loss treats them as off-policy (`forced_mask`).
- DC span credit: each reward's advantage reaches the tokens of its span (`span_masks`), split where the
  completion's </discrimination> ends (`discrimination_token_count`).
"""

from __future__ import annotations

import torch

from msathinker.dc_format import discrimination_end
from msathinker.rewards import Span
from msathinker.rollout import Row


def credit_forced_prefix(row: Row, prompt_ids: torch.Tensor) -> Row:
    """The hinted `row` (sampled after a prefix hint) as a completion of the unhinted prompt: its forced tokens
    (what the hinted prompt has beyond `prompt_ids`) start the completion and `forced` counts them."""
    hinted, n = row.prompt_ids, len(prompt_ids)
    if len(hinted) <= n or not torch.equal(hinted[:n], prompt_ids):
        raise ValueError(
            "hint credit 'policy' needs the hinted prompt to be the prompt followed by the forced tokens, but the "
            f"hinted prompt ({len(hinted)} tokens) does not extend the prompt ({n} tokens): the tokenizer merged "
            "the hint prefix with the assistant header; use credit 'prompt'"
        )
    forced = hinted[n:]
    return Row(prompt_ids, row.media, torch.cat([forced, row.completion_ids]), row.truncated, forced=len(forced))


def forced_mask(rows: list[Row], width: int) -> torch.Tensor:
    """(rows, width) bool: the completion positions a hint forced (the first `row.forced` of each)."""
    positions = torch.arange(width)
    return positions[None, :] < torch.tensor([r.forced for r in rows])[:, None]


def discrimination_token_count(tokenizer, completion_ids: torch.Tensor) -> int | None:
    """How many leading tokens of a completion make up its discrimination part (through </discrimination>); None
    when the decoded completion has no single closing tag. Binary search over decoded prefixes: the smallest k whose
    first k tokens decode to text reaching the tag's end (decoded length grows with k)."""
    ids = completion_ids.tolist()
    end = discrimination_end(tokenizer.decode(ids, skip_special_tokens=True))
    if end is None:
        return None
    low, high = 1, len(ids)
    while low < high:
        middle = (low + high) // 2
        if len(tokenizer.decode(ids[:middle], skip_special_tokens=True)) >= end:
            high = middle
        else:
            low = middle + 1
    return low


def span_masks(spans: list[Span], discrimination_tokens: list[int | None], width: int) -> torch.Tensor:
    """(rows, rewards, width) bool: which completion positions each reward's advantage reaches. "discrimination"
    is the first `discrimination_tokens[b]` positions, "calibration" the rest, "all" every position; a row whose
    count is None (no single </discrimination>) gets every reward on every position, as without span credit."""
    positions = torch.arange(width)
    masks = []
    for count in discrimination_tokens:
        if count is None:
            masks.append(torch.ones(len(spans), width, dtype=torch.bool))
            continue
        in_discrimination = positions < count
        by_span = {"all": torch.ones(width, dtype=torch.bool), "discrimination": in_discrimination}
        by_span["calibration"] = ~in_discrimination
        masks.append(torch.stack([by_span[span] for span in spans]))
    return torch.stack(masks)
