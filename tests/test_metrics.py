"""MSA metrics: parity with MMSA's metricsTop.py (oracle below), hand-computed values, errors, MSAMetric."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from msathinker.metrics import MOSEI_KEYS, SIMS_KEYS, MSAMetric, metric_keys, msa_metrics
from msathinker.scales import SCALES

TOL = 1e-6


class MMSAOracle:
    """MMSA's regression metrics (thuiar/MMSA src/MMSA/utils/metricsTop.py), kept as close to the original as
    possible; the only change is that results are not rounded to 4 decimals. Inputs are tensors, as in MMSA."""

    def _multiclass_acc(self, y_pred, y_true):
        return np.sum(np.round(y_pred) == np.round(y_true)) / float(len(y_true))

    def eval_mosei_regression(self, y_pred, y_true, exclude_zero=False):
        test_preds = y_pred.view(-1).cpu().detach().numpy()
        test_truth = y_true.view(-1).cpu().detach().numpy()

        test_preds_a7 = np.clip(test_preds, a_min=-3.0, a_max=3.0)
        test_truth_a7 = np.clip(test_truth, a_min=-3.0, a_max=3.0)
        test_preds_a5 = np.clip(test_preds, a_min=-2.0, a_max=2.0)
        test_truth_a5 = np.clip(test_truth, a_min=-2.0, a_max=2.0)
        test_preds_a3 = np.clip(test_preds, a_min=-1.0, a_max=1.0)
        test_truth_a3 = np.clip(test_truth, a_min=-1.0, a_max=1.0)

        mae = np.mean(np.absolute(test_preds - test_truth))
        corr = np.corrcoef(test_preds, test_truth)[0][1]
        mult_a7 = self._multiclass_acc(test_preds_a7, test_truth_a7)
        mult_a5 = self._multiclass_acc(test_preds_a5, test_truth_a5)
        mult_a3 = self._multiclass_acc(test_preds_a3, test_truth_a3)  # noqa: F841  (computed, not returned, as MMSA)

        non_zeros = np.array([i for i, e in enumerate(test_truth) if e != 0])
        non_zeros_binary_truth = test_truth[non_zeros] > 0
        non_zeros_binary_preds = test_preds[non_zeros] > 0

        non_zeros_acc2 = accuracy_score(non_zeros_binary_preds, non_zeros_binary_truth)
        non_zeros_f1_score = f1_score(non_zeros_binary_truth, non_zeros_binary_preds, average="weighted")

        binary_truth = test_truth >= 0
        binary_preds = test_preds >= 0
        acc2 = accuracy_score(binary_preds, binary_truth)
        f_score = f1_score(binary_truth, binary_preds, average="weighted")

        eval_results = {
            "Has0_acc_2": acc2,
            "Has0_F1_score": f_score,
            "Non0_acc_2": non_zeros_acc2,
            "Non0_F1_score": non_zeros_f1_score,
            "Mult_acc_5": mult_a5,
            "Mult_acc_7": mult_a7,
            "MAE": mae,
            "Corr": corr,
        }
        return eval_results

    def eval_sims_regression(self, y_pred, y_true):
        test_preds = y_pred.view(-1).cpu().detach().numpy()
        test_truth = y_true.view(-1).cpu().detach().numpy()
        test_preds = np.clip(test_preds, a_min=-1.0, a_max=1.0)
        test_truth = np.clip(test_truth, a_min=-1.0, a_max=1.0)

        # two classes{[-1.0, 0.0], (0.0, 1.0]}
        ms_2 = [-1.01, 0.0, 1.01]
        test_preds_a2 = test_preds.copy()
        test_truth_a2 = test_truth.copy()
        for i in range(2):
            test_preds_a2[np.logical_and(test_preds > ms_2[i], test_preds <= ms_2[i + 1])] = i
        for i in range(2):
            test_truth_a2[np.logical_and(test_truth > ms_2[i], test_truth <= ms_2[i + 1])] = i

        # three classes{[-1.0, -0.1], (-0.1, 0.1], (0.1, 1.0]}
        ms_3 = [-1.01, -0.1, 0.1, 1.01]
        test_preds_a3 = test_preds.copy()
        test_truth_a3 = test_truth.copy()
        for i in range(3):
            test_preds_a3[np.logical_and(test_preds > ms_3[i], test_preds <= ms_3[i + 1])] = i
        for i in range(3):
            test_truth_a3[np.logical_and(test_truth > ms_3[i], test_truth <= ms_3[i + 1])] = i

        # five classes{[-1.0, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1.0]}
        ms_5 = [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
        test_preds_a5 = test_preds.copy()
        test_truth_a5 = test_truth.copy()
        for i in range(5):
            test_preds_a5[np.logical_and(test_preds > ms_5[i], test_preds <= ms_5[i + 1])] = i
        for i in range(5):
            test_truth_a5[np.logical_and(test_truth > ms_5[i], test_truth <= ms_5[i + 1])] = i

        mae = np.mean(np.absolute(test_preds - test_truth))
        corr = np.corrcoef(test_preds, test_truth)[0][1]
        mult_a2 = self._multiclass_acc(test_preds_a2, test_truth_a2)
        mult_a3 = self._multiclass_acc(test_preds_a3, test_truth_a3)
        mult_a5 = self._multiclass_acc(test_preds_a5, test_truth_a5)
        f_score = f1_score(test_truth_a2, test_preds_a2, average="weighted")

        eval_results = {
            "Mult_acc_2": mult_a2,
            "Mult_acc_3": mult_a3,
            "Mult_acc_5": mult_a5,
            "F1_score": f_score,
            "MAE": mae,
            "Corr": corr,
        }
        return eval_results


ORACLE = MMSAOracle()


def oracle(preds: torch.Tensor, labels: torch.Tensor, scale: str) -> dict[str, float]:
    """MMSA's result, except Corr for constant inputs: our documented 0.0 where MMSA gives NaN or, when the mean of a
    constant array is not exactly that constant, floating-point noise such as -7.85e-17."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if scale == "mosei":
            result = ORACLE.eval_mosei_regression(preds, labels)
            p, t = preds.numpy(), labels.numpy()
        else:
            result = ORACLE.eval_sims_regression(preds, labels)
            p, t = np.clip(preds.numpy(), -1.0, 1.0), np.clip(labels.numpy(), -1.0, 1.0)
    if np.all(p == p[0]) or np.all(t == t[0]):
        result["Corr"] = 0.0
    return {key: float(value) for key, value in result.items()}


def assert_matches_oracle(preds: torch.Tensor, labels: torch.Tensor, scale: str) -> dict[str, float]:
    expected = oracle(preds, labels, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may leak out of msa_metrics
        got = msa_metrics(preds, labels, scale)
    assert list(got) == list(expected)
    for key, value in got.items():
        assert type(value) is float, key
        assert value == pytest.approx(expected[key], abs=TOL), (key, value, expected[key])
    return got


# ---- parity with MMSA on random inputs -----------------------------------------------------------------------------

HALVES = [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]
MOSEI_PRED_SPECIAL = [0.0, -0.0, -3.0, 3.0, -2.0, 2.0, 5.0, -7.0, *HALVES]
MOSEI_LABEL_SPECIAL = [0.0, -3.0, 3.0, 1 / 3, -2 / 3, 4 / 3, -5 / 3, *HALVES[1:-1]]
SIMS_SPECIAL = [-1.0, -0.8, -0.7, -0.6, -0.2, -0.1, 0.0, 0.1, 0.2, 0.6, 0.7, 0.8, 1.0]
SIMS_PRED_SPECIAL = [*SIMS_SPECIAL, 1.5, -2.0, 1.01, -1.01]


def paired(pred_values: st.SearchStrategy[float], label_values: st.SearchStrategy[float]) -> st.SearchStrategy:
    def build(n: int) -> st.SearchStrategy:
        return st.tuples(
            st.lists(pred_values, min_size=n, max_size=n),
            st.lists(label_values, min_size=n, max_size=n),
            st.sampled_from([torch.float64, torch.float32]),
        )

    return st.integers(1, 40).flatmap(build)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    paired(
        st.one_of(st.floats(-8, 8), st.sampled_from(MOSEI_PRED_SPECIAL)),
        st.one_of(st.floats(-3, 3), st.sampled_from(MOSEI_LABEL_SPECIAL)),
    )
)
def test_mosei_matches_mmsa_random(case: tuple[list[float], list[float], torch.dtype]) -> None:
    preds, labels, dtype = case
    label_tensor = torch.tensor(labels, dtype=dtype)  # tiny float64 labels may become 0 in float32
    assume(bool(label_tensor.ne(0).any()))  # MMSA raises IndexError when every label is 0 (tested below)
    assert_matches_oracle(torch.tensor(preds, dtype=dtype), label_tensor, "mosei")


@settings(max_examples=100, deadline=None)
@given(
    paired(
        st.one_of(st.floats(-2, 2), st.sampled_from(SIMS_PRED_SPECIAL)),
        st.one_of(st.floats(-1, 1), st.sampled_from(SIMS_SPECIAL)),
    )
)
def test_sims_matches_mmsa_random(case: tuple[list[float], list[float], torch.dtype]) -> None:
    preds, labels, dtype = case
    assert_matches_oracle(torch.tensor(preds, dtype=dtype), torch.tensor(labels, dtype=dtype), "sims")


# ---- parity with MMSA on hand-made edge cases ----------------------------------------------------------------------

MOSEI_EDGE_CASES = {
    "labels_with_zeros": ([0.3, -0.2, 0.0, 1.2, -2.0], [0.0, 0.0, 1.0, 2.0, -1.0]),
    "preds_exactly_zero": ([0.0, 0.0, 0.0, 1.0], [1.0, -1.0, 0.0, 2.0]),
    "half_to_even": (HALVES[1:-1], [-2.0, -2.0, 0.0, 0.0, 2.0, 2.0]),
    "half_to_even_mismatch": (HALVES[1:-1], [-3.0, -1.0, -1.0, 1.0, 1.0, 3.0]),
    "out_of_range_preds": ([5.0, -7.0, 3.4, -2.6, 0.2], [3.0, -3.0, 2.0, -2.0, 0.0]),
    "negative_zero_pred": ([-0.0, -0.0, 1.0], [0.5, -0.5, 1.0]),
    "all_one_class": ([1.0, 2.0, 0.5], [-1.0, -2.0, -0.5]),
    "single_sample": ([1.0], [2.0]),
}

SIMS_EDGE_CASES = {
    "bin_edges": ([-0.7, -0.1, 0.0, 0.1, 0.7, -1.0, 1.0], [-0.7, -0.1, 0.0, 0.1, 0.7, -1.0, 1.0]),
    "bin_edges_shifted": ([-0.7, -0.1, 0.0, 0.1, 0.7], [-0.8, -0.2, 0.2, 0.0, 0.8]),
    "out_of_range": ([1.5, -3.0, 1.01, -1.01], [1.0, -1.0, 0.8, -0.6]),
    "zero_is_negative": ([0.0, 0.0, 0.2], [-0.2, 0.2, 0.0]),
    "all_clipped_constant": ([2.0, 3.0, 1.5], [0.2, 0.4, 0.6]),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(MOSEI_EDGE_CASES))
def test_mosei_matches_mmsa_edge_cases(name: str, dtype: torch.dtype) -> None:
    preds, labels = MOSEI_EDGE_CASES[name]
    assert_matches_oracle(torch.tensor(preds, dtype=dtype), torch.tensor(labels, dtype=dtype), "mosei")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(SIMS_EDGE_CASES))
def test_sims_matches_mmsa_edge_cases(name: str, dtype: torch.dtype) -> None:
    preds, labels = SIMS_EDGE_CASES[name]
    assert_matches_oracle(torch.tensor(preds, dtype=dtype), torch.tensor(labels, dtype=dtype), "sims")


# ---- hand-computed values ------------------------------------------------------------------------------------------


def test_mosei_hand_computed() -> None:
    # p = [2.5, -0.5, 0.0, 4.0], t = [2.0, 0.0, -1.0, 2.4]
    # MAE = (0.5 + 0.5 + 1.0 + 1.6) / 4 = 0.9 (unclipped: 4.0 vs 2.4 costs 1.6)
    # Acc7: clip p -> [2.5, -0.5, 0, 3], round half-even -> [2, -0, 0, 3]; t -> [2, 0, -1, 2]: equal 2/4 = 0.5
    # Acc5: clip p -> [2, -0.5, 0, 2] -> [2, -0, 0, 2]; t -> [2, 0, -1, 2]: equal 3/4 = 0.75
    # Has0: t>=0 [T, T, F, T], p>=0 [T, F, T, T]: acc 2/4; F1(T) = 2/3 (P 2/3, R 2/3), F1(F) = 0;
    #       weighted = 3/4 * 2/3 + 1/4 * 0 = 0.5
    # Non0: drop t == 0 (index 1); t>0 [T, F, T], p>0 [T, F (p = 0 is not > 0), T]: acc 1, F1 1
    # Corr: dp = [1, -2, -1.5, 2.5], dt = [1.15, -0.85, -1.85, 1.55]: 9.5 / sqrt(13.5 * 7.87)
    got = msa_metrics([2.5, -0.5, 0.0, 4.0], [2.0, 0.0, -1.0, 2.4], "mosei")
    expected = {
        "Has0_acc_2": 0.5,
        "Has0_F1_score": 0.5,
        "Non0_acc_2": 1.0,
        "Non0_F1_score": 1.0,
        "Mult_acc_5": 0.75,
        "Mult_acc_7": 0.5,
        "MAE": 0.9,
        "Corr": 9.5 / math.sqrt(13.5 * 7.87),
    }
    assert list(got) == list(MOSEI_KEYS)
    assert got == pytest.approx(expected, abs=1e-12)


def test_sims_hand_computed() -> None:
    # p = [-0.7, 0.1, 0.0, 1.5] -> clipped [-0.7, 0.1, 0.0, 1.0]; t = [-0.8, 0.2, -0.2, 0.6]
    # MAE (clipped) = (0.1 + 0.1 + 0.2 + 0.4) / 4 = 0.2
    # Acc2 bins (-1.01,0],(0,1.01]: p [0, 1, 0, 1], t [0, 1, 0, 1]: 1.0, F1 1.0
    # Acc3 cuts -0.1, 0.1: p [0, 1, 1, 2], t [0, 2, 0, 2]: 2/4 = 0.5
    # Acc5 cuts -0.7, -0.1, 0.1, 0.7: p [0, 2, 2, 4], t [0, 3, 1, 3]: 1/4 = 0.25
    # Corr: dp = [-0.8, 0, -0.1, 0.9], dt = [-0.75, 0.25, -0.15, 0.65]: 1.2 / sqrt(1.46 * 1.07)
    got = msa_metrics([-0.7, 0.1, 0.0, 1.5], [-0.8, 0.2, -0.2, 0.6], "sims")
    expected = {
        "Mult_acc_2": 1.0,
        "Mult_acc_3": 0.5,
        "Mult_acc_5": 0.25,
        "F1_score": 1.0,
        "MAE": 0.2,
        "Corr": 1.2 / math.sqrt(1.46 * 1.07),
    }
    assert list(got) == list(SIMS_KEYS)
    assert got == pytest.approx(expected, abs=1e-12)


def test_sims_weighted_f1_hand_computed() -> None:
    # Acc2 classes: t [0, 0, 1, 1], p [0, 1, 1, 1] (p = 0.0 is class 0; 0.05 is class 1)
    # F1(0): P 1/1, R 1/2 -> 2/3; F1(1): P 2/3, R 1 -> 4/5; weighted (2, 2) = (2/3 + 4/5) / 2 = 11/15
    got = msa_metrics([0.0, 0.05, 0.3, 0.9], [-0.4, 0.0, 0.2, 0.8], "sims")
    assert got["Mult_acc_2"] == 0.75
    assert got["F1_score"] == pytest.approx(11 / 15, abs=1e-12)


def test_float32_edges_stay_in_their_class() -> None:
    # float32(0.1) = 0.10000000149...: compared in float32 (as MMSA does with float32 tensors) it is in (-0.1, 0.1]
    preds = torch.tensor([0.1, -0.7, 0.7, -0.1], dtype=torch.float32)
    labels = [0.0, -0.8, 0.6, -0.2]  # classes for Acc5: [2, 0, 3, 1]
    got = msa_metrics(preds, labels, "sims")
    assert got["Mult_acc_5"] == 1.0
    assert got["Mult_acc_3"] == 1.0


def test_scale_object_and_keys() -> None:
    preds, labels = [0.5, -1.0, 2.0], [1.0, -1.5, 2.5]
    assert msa_metrics(preds, labels, SCALES["mosei"]) == msa_metrics(preds, labels, "mosei")
    assert msa_metrics(preds, labels, SCALES["sims"]) == msa_metrics(preds, labels, "sims")
    assert metric_keys("mosei") == MOSEI_KEYS
    assert metric_keys(SCALES["sims"]) == SIMS_KEYS
    with pytest.raises(ValueError, match="unknown metric scale"):
        msa_metrics(preds, labels, "mosi")


# ---- documented deviations and errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["mosei", "sims"])
@pytest.mark.parametrize(
    ("preds", "labels"),
    [([0.5, 0.5, 0.5], [1.0, -0.5, 0.2]), ([0.1, -0.3, 0.8], [0.2, 0.2, 0.2]), ([0.7], [0.4])],
)
def test_constant_input_corr_is_zero_without_warnings(preds: list[float], labels: list[float], scale: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = msa_metrics(preds, labels, scale)
    assert got["Corr"] == 0.0
    assert all(math.isfinite(value) for value in got.values())


def test_sims_clipping_to_constant_gives_zero_corr() -> None:
    assert msa_metrics([1.5, 2.0, 9.0], [0.2, 0.4, 0.6], "sims")["Corr"] == 0.0


def test_constant_labels_corr_is_exactly_zero_not_rounding_noise() -> None:
    # np.corrcoef gives -7.85e-17 here (the mean of [0.8, 0.8, 0.8] is not exactly 0.8), not NaN
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        assert np.corrcoef([0.0, 0.0, 1.0], [0.8, 0.8, 0.8])[0][1] != 0.0
    assert msa_metrics([0.0, 0.0, 1.0], [0.8, 0.8, 0.8], "sims")["Corr"] == 0.0


def test_all_labels_zero_non0_metrics_are_zero() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = msa_metrics([0.5, -1.0, 0.0], [0.0, 0.0, 0.0], "mosei")
    assert got["Non0_acc_2"] == 0.0
    assert got["Non0_F1_score"] == 0.0
    assert got["Has0_acc_2"] == pytest.approx(2 / 3)
    assert got["Corr"] == 0.0


def test_undefined_class_f1_keeps_sklearn_value_without_warning() -> None:
    # every label positive, every prediction negative: sklearn gives 0.0 (and would warn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = msa_metrics([-1.0, -2.0], [1.0, 2.0], "mosei")
    assert got["Has0_F1_score"] == 0.0
    assert got["Non0_F1_score"] == 0.0


@pytest.mark.parametrize("scale", ["mosei", "sims"])
def test_empty_input_raises(scale: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        msa_metrics([], [], scale)
    with pytest.raises(ValueError, match="empty"):
        msa_metrics(torch.zeros(0), torch.zeros(0), scale)


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="3 predictions, 2 labels"):
        msa_metrics([0.1, 0.2, 0.3], [0.1, 0.2], "mosei")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_prediction_raises_with_index(bad: float) -> None:
    with pytest.raises(ValueError, match=r"preds .*index 2"):
        msa_metrics([0.1, 0.2, bad, 0.4], [0.1, 0.2, 0.3, 0.4], "mosei")
    with pytest.raises(ValueError, match=r"labels .*index 0"):
        msa_metrics([0.1, 0.2], torch.tensor([bad, 0.3]), "sims")


def test_shapes_are_flattened() -> None:
    preds = torch.tensor([[0.5], [-1.0], [2.0]])
    assert msa_metrics(preds, [1.0, -1.5, 2.5], "mosei") == msa_metrics([0.5, -1.0, 2.0], [1.0, -1.5, 2.5], "mosei")


# ---- MSAMetric -----------------------------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
MOSEI_P = RNG.uniform(-3.5, 3.5, 50)
MOSEI_T = np.round(RNG.uniform(-3, 3, 50) * 3) / 3
SIMS_P = RNG.uniform(-1.2, 1.2, 50)
SIMS_T = np.round(RNG.uniform(-1, 1, 50) * 5) / 5
DATA = {"mosei": (MOSEI_P, MOSEI_T), "sims": (SIMS_P, SIMS_T)}


def assert_tensor_results(got: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert list(got) == list(expected)
    for key, value in got.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key
        assert value.item() == pytest.approx(expected[key], abs=TOL), key


@pytest.mark.parametrize("scale", ["mosei", "sims"])
def test_msametric_chunks_equal_concatenation(scale: str) -> None:
    preds, labels = DATA[scale]
    metric = MSAMetric(scale).set_dtype(torch.float64)
    metric.update(torch.from_numpy(preds[:17]), torch.from_numpy(labels[:17]))
    metric.update(torch.from_numpy(preds[17:]).reshape(-1, 1), torch.from_numpy(labels[17:]))
    got = metric.compute()
    assert all(value.dtype == torch.float64 for value in got.values())
    assert_tensor_results(got, msa_metrics(preds, labels, scale))


def test_msametric_default_float32() -> None:
    preds, labels = DATA["sims"]
    metric = MSAMetric("sims")
    metric.update(torch.from_numpy(preds), torch.from_numpy(labels))
    got = metric.compute()
    assert all(value.dtype == torch.float32 for value in got.values())
    expected = msa_metrics(preds.astype(np.float32), labels.astype(np.float32), "sims")
    assert_tensor_results(got, expected)


def fake_gather(other: MSAMetric) -> Callable:
    """A dist_sync_fn for a 2-rank world whose other rank holds `other`'s states (gathered in add_state order)."""
    remote = iter(
        [
            torch.cat(other.preds) if other.preds else torch.tensor([], dtype=other.dtype),
            torch.cat(other.labels) if other.labels else torch.tensor([], dtype=other.dtype),
        ]
    )

    def gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        return [tensor, next(remote)]

    return gather


@pytest.mark.parametrize("split", [20, 0, 50])
def test_msametric_ddp_cat_reduction(split: int) -> None:
    preds, labels = DATA["mosei"]
    rank1 = MSAMetric("mosei").set_dtype(torch.float64)
    if split < 50:
        rank1.update(torch.from_numpy(preds[split:]), torch.from_numpy(labels[split:]))
    rank0 = MSAMetric("mosei", dist_sync_fn=fake_gather(rank1), distributed_available_fn=lambda: True)
    rank0.set_dtype(torch.float64)
    if split:
        rank0.update(torch.from_numpy(preds[:split]), torch.from_numpy(labels[:split]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rank without data: torchmetrics warns that compute() precedes update()
        got = rank0.compute()
    assert_tensor_results(got, msa_metrics(preds, labels, "mosei"))


def test_msametric_merge_state_and_reset() -> None:
    preds, labels = DATA["sims"]
    first, second = MSAMetric("sims").set_dtype(torch.float64), MSAMetric("sims").set_dtype(torch.float64)
    first.update(torch.from_numpy(preds[:10]), torch.from_numpy(labels[:10]))
    second.update(torch.from_numpy(preds[10:]), torch.from_numpy(labels[10:]))
    first.merge_state(second)
    assert_tensor_results(first.compute(), msa_metrics(preds, labels, "sims"))
    first.reset()
    with pytest.raises(ValueError, match="no samples"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns that compute() runs before update()
        first.compute()


def test_msametric_errors() -> None:
    with pytest.raises(ValueError, match="unknown metric scale"):
        MSAMetric("simsv2")
    metric = MSAMetric("mosei")
    with pytest.raises(ValueError, match="3 predictions, 2 labels"):
        metric.update(torch.zeros(3), torch.zeros(2))
    metric.update(torch.tensor([0.1, float("nan")]), torch.tensor([0.2, 0.3]))
    with pytest.raises(ValueError, match="index 1"):
        metric.compute()
