"""Generation-based evaluation shared by the SFT and Hint-GRPO modules: generate, parse, score with MMSA metrics.

An LLM may answer with no number: such a completion is counted (parse_failure_rate) and scored with the
documented `unparsed_score` policy (default 0.0, the neutral point of every scale) instead of being dropped, so
every clip of the split is in the metrics. format_rate is the fraction of completions in the exact format;
polarity_acc compares the completion's polarity (stated, or else the sign band of its score) with the label's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torchmetrics

from msathinker.dc_format import parse_completion, polarity_of
from msathinker.generation import generate, generation_config
from msathinker.metrics import MSAMetric
from msathinker.scales import SCALES, Scale


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


class CompletionEvaluator(torchmetrics.Metric):
    """Accumulates completions of one evaluation pass; compute() returns MMSA metrics plus format/parse/polarity.

    prediction_scale: the label range the model answers on, when it differs from the evaluated dataset's
    (cross-domain); answers are mapped linearly to the dataset's range before scoring.
    """

    full_state_update = False

    def __init__(
        self, scale: Scale, output_format: str = "dc", unparsed_score: float = 0.0, prediction_scale: str | None = None
    ):
        super().__init__()
        self.scale = scale
        self.output_format = output_format
        self.unparsed_score = unparsed_score
        self.prediction_scale = SCALES[prediction_scale] if prediction_scale else scale
        self.msa = MSAMetric(scale.name)
        for name in ("total", "valid_format", "unparsed", "polarity_correct"):
            self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.rows: list[dict[str, Any]] = []
        """The completions of this rank, for the completions table."""

    def update(self, ids: list[str], completions: list[str], labels: torch.Tensor) -> None:
        preds = []
        for clip_id, completion, label in zip(ids, completions, labels.tolist(), strict=True):
            parsed = parse_completion(completion, self.output_format)
            score = parsed.score
            if score is not None:
                score = self.prediction_scale.map_to(score, self.scale)
            prediction = self.unparsed_score if score is None else score
            polarity = parsed.polarity or (polarity_of(score, self.scale) if score is not None else None)
            self.total += 1
            self.valid_format += float(parsed.valid)
            self.unparsed += float(score is None)
            self.polarity_correct += float(polarity == polarity_of(label, self.scale))
            preds.append(prediction)
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
        self.msa.update(torch.tensor(preds, dtype=torch.float64), labels.to(torch.float64).cpu())

    def compute(self) -> dict[str, torch.Tensor]:
        results = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in self.msa.compute().items()}
        results["format_rate"] = self.valid_format / self.total
        results["parse_failure_rate"] = self.unparsed / self.total
        results["polarity_acc"] = self.polarity_correct / self.total
        return results

    def reset(self) -> None:
        super().reset()
        self.msa.reset()
        self.rows = []
