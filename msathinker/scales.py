"""Label scales of the MSA datasets and the per-scale constants of the method (docs/method.md, Scales)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ScaleName = Literal["mosei", "sims"]


@dataclass(frozen=True)
class Scale:
    """A label range and the thresholds the method derives from it.

    `name` is the MMSA metric family: "mosei" for MOSI/MOSEI ([-3, 3]), "sims" for SIMS/SIMS v2 ([-1, 1]).
    """

    name: ScaleName
    low: float
    high: float
    neutral_band: float
    """Polarity is neutral when |y| <= neutral_band (MMSA's class cuts; see dc_format.polarity_of)."""
    filter_tolerance: float
    """Teacher records are kept when |score - label| <= filter_tolerance."""
    reward_tau: float
    """Score reward is max(0, 1 - |s - y| / reward_tau)."""

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def map_to(self, value: float, other: Scale) -> float:
        """Linear map of a value from this label range to `other`'s (cross-domain evaluation)."""
        return other.low + (value - self.low) * (other.high - other.low) / (self.high - self.low)


SCALES: dict[str, Scale] = {
    "mosei": Scale("mosei", -3.0, 3.0, neutral_band=0.5, filter_tolerance=0.5, reward_tau=1.0),
    "sims": Scale("sims", -1.0, 1.0, neutral_band=0.1, filter_tolerance=1 / 6, reward_tau=1 / 3),
}

DATASET_SCALES: dict[str, str] = {
    "mosi": "mosei",
    "mosei": "mosei",
    "sims": "sims",
    "simsv2": "sims",
    "demo_mosi": "mosei",
    "demo_sims": "sims",
}
"""Dataset name -> scale name. The demo_* datasets are the synthetic ones `msathinker demo-data` writes."""


def scale_of(dataset: str) -> Scale:
    """The label scale of a dataset by name (one of DATASET_SCALES)."""
    if dataset not in DATASET_SCALES:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(DATASET_SCALES))}")
    return SCALES[DATASET_SCALES[dataset]]
