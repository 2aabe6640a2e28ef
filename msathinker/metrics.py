"""MSA regression metrics, computed as MMSA's ``metricsTop.py`` computes them (docs/method.md, Metrics).

Why: every MSA paper we compare with reports numbers from MMSA's ``MetricsTop('regression')``
(``thuiar/MMSA``, ``src/MMSA/utils/metricsTop.py``), so our numbers are only comparable if we use the same
definitions, the same clipping, the same rounding rule and the same class boundaries. The key names are MMSA's.
``tests/test_metrics.py`` checks parity against a re-implementation of MMSA's two functions.

Scale "mosei" (MOSI / MOSEI, labels in [-3, 3]); p = predictions, t = labels:

- ``MAE``: mean |p - t| and ``Corr``: Pearson(p, t), both on the raw, *unclipped* values.
- ``Mult_acc_7``: clip p and t to [-3, 3], ``np.round`` both (half to even: 2.5 -> 2, -0.5 -> -0), fraction equal.
- ``Mult_acc_5``: the same with clipping to [-2, 2].
- ``Has0_acc_2`` / ``Has0_F1_score``: classes t >= 0 vs p >= 0 over all samples; accuracy and sklearn's
  ``f1_score(average="weighted")`` (support-weighted F1 over both classes, not the positive-class F1).
- ``Non0_acc_2`` / ``Non0_F1_score``: samples with t == 0 exactly are dropped; classes t > 0 vs p > 0 (a prediction
  of exactly 0 is non-negative for Has0 but negative for Non0).

Scale "sims" (SIMS / SIMS v2, labels in [-1, 1]):

- p and t are clipped to [-1, 1] first; ``MAE`` and ``Corr`` are computed on the clipped values.
- Classes are left-open, right-closed intervals (lo, hi]:
  ``Mult_acc_2`` / ``F1_score`` (weighted): edges -1.01, 0, 1.01 (0 is negative);
  ``Mult_acc_3``: edges -1.01, -0.1, 0.1, 1.01; ``Mult_acc_5``: edges -1.01, -0.7, -0.1, 0.1, 0.7, 1.01.

Where we differ from MMSA (on purpose):

- No rounding to 4 decimals; values are returned as python floats.
- ``Corr`` is 0.0 when p or t is constant (MMSA: NaN from ``np.corrcoef`` with a RuntimeWarning or, when the mean of
  a constant array is not exactly that constant, rounding noise such as -7.9e-17); for "sims" the check is on the
  clipped values. A single sample is constant.
- ``Non0_acc_2`` and ``Non0_F1_score`` are 0.0 when every label is exactly 0 (MMSA crashes with an IndexError).
- Empty input, different lengths and non-finite values raise ValueError. Unparseable LLM outputs are not this module's
  business: the caller scores them with its parse-failure policy before calling us.
- sklearn's ``UndefinedMetricWarning`` (a class absent from predictions or labels) is silenced; the value is sklearn's
  (``zero_division`` default, i.e. that class's precision/recall count as 0).

Precision: the arithmetic happens in the inputs' own float dtype, as in MMSA (which evaluates float32 tensors).
Comparisons with the class edges therefore use that dtype: a float32 0.1 is in (-0.1, 0.1] as one would expect,
whereas casting it to float64 first (0.10000000149...) would move it to the next class. float16/bfloat16 are
widened to float32 (exact); integers, booleans and python numbers become float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from msathinker.scales import SCALES, Scale

__all__ = ["MOSEI_KEYS", "SIMS_KEYS", "MSAMetric", "metric_keys", "msa_metrics"]

MOSEI_KEYS: tuple[str, ...] = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
)
"""Keys of the "mosei" result, in MMSA's order."""

SIMS_KEYS: tuple[str, ...] = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")
"""Keys of the "sims" result, in MMSA's order."""

_SIMS_EDGES_2 = (-1.01, 0.0, 1.01)
_SIMS_EDGES_3 = (-1.01, -0.1, 0.1, 1.01)
_SIMS_EDGES_5 = (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)

ArrayLike = Tensor | np.ndarray | Sequence[float]


def _resolve_scale(scale: str | Scale) -> Scale:
    if isinstance(scale, Scale) and scale.name in SCALES:
        return scale
    if isinstance(scale, str) and scale in SCALES:
        return SCALES[scale]
    raise ValueError(
        f"unknown metric scale {scale!r}; expected one of {', '.join(sorted(SCALES))} or a Scale "
        "(for a dataset name use msathinker.scales.scale_of)"
    )


def metric_keys(scale: str | Scale) -> tuple[str, ...]:
    """The result keys of `msa_metrics` for a scale ("mosei" or "sims", or a `Scale`)."""
    return MOSEI_KEYS if _resolve_scale(scale).name == "mosei" else SIMS_KEYS


def _as_array(values: ArrayLike, what: str) -> np.ndarray:
    """A flat float array; keeps float32/float64, widens half precision to float32, other types to float64."""
    if isinstance(values, Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        array = values.numpy()
    else:
        array = np.asarray(values)
    if array.dtype not in (np.float32, np.float64):
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{what} must be numeric, got dtype {array.dtype}") from error
    return array.reshape(-1)


def _check_finite(array: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(
            f"{what} has {bad.size} non-finite value(s); first at index {int(bad[0])} ({array[bad[0]]!r}). "
            "Score unparseable outputs with the parse-failure policy before computing metrics."
        )


def _multiclass_acc(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """MMSA's __multiclass_acc: fraction of samples whose np.round (half to even) values are equal."""
    return float(np.sum(np.round(y_pred) == np.round(y_true)) / float(len(y_true)))


def _weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's weighted F1 with its default zero_division, without the UndefinedMetricWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return float(f1_score(y_true, y_pred, average="weighted"))


def _corr(y_pred: np.ndarray, y_true: np.ndarray) -> float:
    """Pearson correlation as np.corrcoef; 0.0 when either side is constant (np.corrcoef: NaN)."""
    if np.all(y_pred == y_pred[0]) or np.all(y_true == y_true[0]):
        return 0.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        corr = float(np.corrcoef(y_pred, y_true)[0][1])
    return corr if np.isfinite(corr) else 0.0


def _bins(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Class index of each value for the intervals (edges[i], edges[i + 1]], compared in the values' dtype."""
    classes = np.full(values.shape, -1, dtype=np.int64)
    for i, (low, high) in enumerate(pairwise(edges)):
        classes[np.logical_and(values > low, values <= high)] = i
    return classes


def _mosei(test_preds: np.ndarray, test_truth: np.ndarray) -> dict[str, float]:
    test_preds_a7 = np.clip(test_preds, a_min=-3.0, a_max=3.0)
    test_truth_a7 = np.clip(test_truth, a_min=-3.0, a_max=3.0)
    test_preds_a5 = np.clip(test_preds, a_min=-2.0, a_max=2.0)
    test_truth_a5 = np.clip(test_truth, a_min=-2.0, a_max=2.0)

    mae = float(np.mean(np.absolute(test_preds - test_truth)))
    corr = _corr(test_preds, test_truth)
    mult_a7 = _multiclass_acc(test_preds_a7, test_truth_a7)
    mult_a5 = _multiclass_acc(test_preds_a5, test_truth_a5)

    non_zeros = np.flatnonzero(test_truth != 0)
    if non_zeros.size:
        non_zeros_binary_truth = test_truth[non_zeros] > 0
        non_zeros_binary_preds = test_preds[non_zeros] > 0
        non_zeros_acc2 = float(accuracy_score(non_zeros_binary_preds, non_zeros_binary_truth))
        non_zeros_f1_score = _weighted_f1(non_zeros_binary_truth, non_zeros_binary_preds)
    else:  # every label is exactly 0: nothing to score (MMSA raises IndexError here)
        non_zeros_acc2 = 0.0
        non_zeros_f1_score = 0.0

    binary_truth = test_truth >= 0
    binary_preds = test_preds >= 0
    acc2 = float(accuracy_score(binary_preds, binary_truth))
    f_score = _weighted_f1(binary_truth, binary_preds)

    return {
        "Has0_acc_2": acc2,
        "Has0_F1_score": f_score,
        "Non0_acc_2": non_zeros_acc2,
        "Non0_F1_score": non_zeros_f1_score,
        "Mult_acc_5": mult_a5,
        "Mult_acc_7": mult_a7,
        "MAE": mae,
        "Corr": corr,
    }


def _sims(test_preds: np.ndarray, test_truth: np.ndarray) -> dict[str, float]:
    test_preds = np.clip(test_preds, a_min=-1.0, a_max=1.0)
    test_truth = np.clip(test_truth, a_min=-1.0, a_max=1.0)

    test_preds_a2, test_truth_a2 = _bins(test_preds, _SIMS_EDGES_2), _bins(test_truth, _SIMS_EDGES_2)
    test_preds_a3, test_truth_a3 = _bins(test_preds, _SIMS_EDGES_3), _bins(test_truth, _SIMS_EDGES_3)
    test_preds_a5, test_truth_a5 = _bins(test_preds, _SIMS_EDGES_5), _bins(test_truth, _SIMS_EDGES_5)

    return {
        "Mult_acc_2": _multiclass_acc(test_preds_a2, test_truth_a2),
        "Mult_acc_3": _multiclass_acc(test_preds_a3, test_truth_a3),
        "Mult_acc_5": _multiclass_acc(test_preds_a5, test_truth_a5),
        "F1_score": _weighted_f1(test_truth_a2, test_preds_a2),
        "MAE": float(np.mean(np.absolute(test_preds - test_truth))),
        "Corr": _corr(test_preds, test_truth),
    }


def msa_metrics(preds: ArrayLike, labels: ArrayLike, scale: str | Scale) -> dict[str, float]:
    """MMSA's regression metrics of `preds` against `labels` (see the module docstring for definitions).

    Args:
        preds: predicted sentiment scores (tensor, array or sequence; flattened).
        labels: gold scores, same number of elements.
        scale: "mosei" (MOSI/MOSEI, [-3, 3]) or "sims" (SIMS/SIMS v2, [-1, 1]), or a `Scale` (only its name is
            used: the clipping ranges and class edges are MMSA's constants).

    Returns:
        "mosei": Has0_acc_2, Has0_F1_score, Non0_acc_2, Non0_F1_score, Mult_acc_5, Mult_acc_7, MAE, Corr.
        "sims": Mult_acc_2, Mult_acc_3, Mult_acc_5, F1_score, MAE, Corr. Python floats, not rounded.
        Corr is 0.0 when predictions or labels are constant; the Non0 metrics are 0.0 when every label is 0.

    Raises:
        ValueError: unknown scale, no samples, different numbers of predictions and labels, or a non-finite
            prediction or label (the message names the first bad index).
    """
    resolved = _resolve_scale(scale)
    test_preds = _as_array(preds, "preds")
    test_truth = _as_array(labels, "labels")
    if test_preds.size != test_truth.size:
        raise ValueError(f"preds and labels differ in length: {test_preds.size} predictions, {test_truth.size} labels")
    if test_preds.size == 0:
        raise ValueError("cannot compute MSA metrics on empty input (0 predictions, 0 labels)")
    _check_finite(test_preds, "preds")
    _check_finite(test_truth, "labels")
    if resolved.name == "mosei":
        return _mosei(test_preds, test_truth)
    return _sims(test_preds, test_truth)


class MSAMetric(Metric):
    """`msa_metrics` as a torchmetrics Metric: accumulates predictions and labels, computes on the whole set.

    The states are lists reduced with "cat", so under DDP `compute` sees every rank's samples (rank-major order;
    Lightning's DistributedSampler may pad the last batch with repeated samples, as for any metric).
    Inputs are stored flattened in the metric's dtype (float32 by default, like MMSA's tensors;
    ``metric.set_dtype(torch.float64)`` to keep float64). `compute` returns 0-dim tensors of that dtype on the
    metric's device, keyed as `msa_metrics`.
    """

    is_differentiable = False
    higher_is_better: bool | None = None  # mixed: MAE is lower-is-better, the rest higher-is-better
    full_state_update = False

    preds: list[Tensor] | Tensor
    labels: list[Tensor] | Tensor

    def __init__(self, scale: str | Scale = "mosei", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = _resolve_scale(scale)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, labels: Tensor) -> None:
        """Add a batch; both are flattened and must have the same number of elements."""
        preds = torch.as_tensor(preds)
        labels = torch.as_tensor(labels)
        if preds.numel() != labels.numel():
            raise ValueError(f"preds and labels differ in length: {preds.numel()} predictions, {labels.numel()} labels")
        self.preds.append(preds.detach().reshape(-1).to(self.dtype))
        self.labels.append(labels.detach().reshape(-1).to(self.dtype))

    def compute(self) -> dict[str, Tensor]:
        """`msa_metrics` over every sample seen (all ranks); ValueError if there is none."""
        if isinstance(self.preds, list) and not self.preds:
            raise ValueError("MSAMetric.compute() called with no samples; call update() first")
        preds, labels = dim_zero_cat(self.preds), dim_zero_cat(self.labels)
        if preds.numel() == 0:  # after a DDP sync in which no rank had data
            raise ValueError("MSAMetric.compute() called with no samples; call update() first")
        results = msa_metrics(preds, labels, self.scale)
        return {key: torch.tensor(value, dtype=self.dtype, device=self.device) for key, value in results.items()}
