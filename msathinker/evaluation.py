"""Generation-based evaluation shared by the SFT and Hint-GRPO modules: generate, parse, score with MMSA metrics.

An LLM may answer with no number: such a completion is counted (parse_failure_rate) and scored with the
documented `unparsed_score` policy (default 0.0, the neutral point of every scale) instead of being dropped, so
every clip of the split is in the metrics. format_rate is the fraction of completions in the exact format;
polarity_acc compares the completion's polarity (stated, or else the sign band of its score) with the label's.
With slices (a label.csv column's value per clip, data.init_args.slice_column), every metric is also computed on
the clips of each value alone, keyed "<value>/<metric>".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchmetrics
from torchmetrics.utilities.data import dim_zero_cat

from msathinker.dc_format import Format, parse_completion, polarity_of
from msathinker.generation import generate, generation_config
from msathinker.metrics import msa_metrics
from msathinker.scales import SCALES, Scale, ScaleName


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings of evaluation: greedy by default. These are all the settings: generation stops at the end
    of the turn (<|im_end|>) or of the text, and nothing is read from the checkpoint's generation_config.json (no
    repetition penalty, top-k or min-p it may set; see msathinker.generation)."""

    max_new_tokens: int = 160
    """Longest completion; a longer one is cut and usually fails to parse."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 1.0
    """Sampling temperature (with do_sample)."""
    top_p: float = 1.0
    """Nucleus sampling mass (with do_sample)."""


def generate_completions(
    model, processor, inputs: dict[str, Any], options: GenerationOptions, synced_gpus: bool = False
) -> list[str]:
    """Decode the new tokens of `model.generate` for a batch of prompts (special tokens removed). `synced_gpus`
    keeps this rank stepping until every rank is done (needed when the model is FSDP-sharded)."""
    config = generation_config(
        processor.tokenizer,
        max_new_tokens=options.max_new_tokens,
        do_sample=options.do_sample,
        temperature=options.temperature,
        top_p=options.top_p,
    )
    output = generate(model, config, **inputs, synced_gpus=synced_gpus)
    return processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def slice_key(value: str) -> str:
    """A slice value as it appears in metric names: lower-cased, runs of characters MLflow does not take in a
    metric name (anything but letters, digits, "_", "-", "." and spaces) replaced by "_"."""
    return re.sub(r"[^\w\-. ]+", "_", value.strip().lower(), flags=re.ASCII)


def stable_hash(text: str) -> int:
    """A signed 64-bit integer of a string, the same in every process and Python run (unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)


class CompletionEvaluator(torchmetrics.Metric):
    """Accumulates completions of one evaluation pass; compute() returns MMSA metrics plus format/parse/polarity.

    Each clip counts once. Under DDP and FSDP2, Lightning's DistributedSampler pads the split so that every rank runs
    as many batches (FSDP2 needs that: generation is a collective there), so a few clips are generated twice, on
    two ranks. The per-clip values are gathered from every rank with a key of the clip's id (`stable_hash`), and
    compute() keeps the first occurrence of each key in rank order.

    prediction_scale: the label range the model answers on, when it differs from the evaluated dataset's
    (cross-domain); answers are mapped linearly to the dataset's range before scoring.
    slices: clip id -> slice value (a label.csv column, MSADataModule.slices); compute() adds every metric per
    value, keyed `slice_key(value)/<metric>`. A clip missing from it is in no slice.
    """

    full_state_update = False

    def __init__(
        self,
        scale: Scale,
        output_format: Format = "dc",
        unparsed_score: float = 0.0,
        prediction_scale: ScaleName | None = None,
        slices: Mapping[str, str] | None = None,
    ):
        super().__init__()
        self.scale = scale
        self.output_format = output_format
        self.unparsed_score = unparsed_score
        self.prediction_scale = SCALES[prediction_scale] if prediction_scale else scale
        self.slices = dict(slices or {})
        self.slice_names = sorted(set(self.slices.values()))
        names = ("keys", "predictions", "labels", "valid_format", "unparsed", "polarity_correct", "slice_index")
        for name in names:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.rows: list[dict[str, Any]] = []
        """The completions of this rank, for the completions table."""

    def update(self, ids: list[str], completions: list[str], labels: torch.Tensor) -> None:
        values: dict[str, list] = {name: [] for name in ("predictions", "valid_format", "unparsed", "polarity_correct")}
        for clip_id, completion, label in zip(ids, completions, labels.tolist(), strict=True):
            parsed = parse_completion(completion, self.output_format)
            score = parsed.score
            if score is not None:
                score = self.prediction_scale.map_to(score, self.scale)
            prediction = self.unparsed_score if score is None else score
            polarity = parsed.polarity or (polarity_of(score, self.scale) if score is not None else None)
            values["predictions"].append(prediction)
            values["valid_format"].append(float(parsed.valid))
            values["unparsed"].append(float(score is None))
            values["polarity_correct"].append(float(polarity == polarity_of(label, self.scale)))
            self.rows.append(
                {
                    "id": clip_id,
                    "completion": completion,
                    "polarity": polarity,
                    "score": score,
                    "prediction": prediction,
                    "label": label,
                    "valid": parsed.valid,
                    "error": parsed.error,
                }
            )
        self.keys.append(torch.tensor([stable_hash(i) for i in ids], dtype=torch.int64, device=self.device))
        index = [self.slice_names.index(self.slices[i]) if i in self.slices else -1 for i in ids]
        self.slice_index.append(torch.tensor(index, dtype=torch.int64, device=self.device))
        self.labels.append(labels.detach().to(self.device, torch.float32))
        for name, value in values.items():  # float32 as MMSA's tensors (see msathinker.metrics)
            getattr(self, name).append(torch.tensor(value, dtype=torch.float32, device=self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        first: dict[int, int] = {}
        for position, key in enumerate(dim_zero_cat(self.keys).tolist()):
            first.setdefault(key, position)
        once = torch.tensor(list(first.values()), device=self.device)
        results = self._metrics(once)
        slice_index = dim_zero_cat(self.slice_index)[once]
        for j, name in enumerate(self.slice_names):
            members = once[slice_index == j]
            if len(members):
                results.update({f"{slice_key(name)}/{k}": v for k, v in self._metrics(members).items()})
        return results

    def _metrics(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every metric over the clips at `positions` of the gathered states."""
        predictions, labels = dim_zero_cat(self.predictions)[positions], dim_zero_cat(self.labels)[positions]
        metrics = msa_metrics(predictions.cpu(), labels.cpu(), self.scale)
        results = {k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in metrics.items()}
        results["format_rate"] = dim_zero_cat(self.valid_format)[positions].mean()
        results["parse_failure_rate"] = dim_zero_cat(self.unparsed)[positions].mean()
        results["polarity_acc"] = dim_zero_cat(self.polarity_correct)[positions].mean()
        return results

    def reset(self) -> None:
        super().reset()
        self.rows = []
