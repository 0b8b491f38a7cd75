"""Multi-objective loss reweighting (UniRain / CoBa) on synthetic validation-loss histories: weights move
toward the type whose loss stalls, respect the floor, sum to 1, stay put during the warm-up, follow the
released train.py formulas, and a reweighter restored from its (JSON) state continues exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from derainkit.errors import CheckpointError, ConfigError
from derainkit.losses.reweighting import LossReweighter, ReweightConfig, ols_slope

TYPES = ("drs", "drd", "nrs", "nrd")
T = np.arange(40)


def _lin(start: float, rate: float) -> np.ndarray:
    return start - rate * T


def _run(history: np.ndarray, **cfg) -> LossReweighter:
    rw = LossReweighter(TYPES, ReweightConfig(**cfg))
    for row in history:
        rw.update(row.tolist())
    return rw


FLAT = np.stack([_lin(0.10, 0.002), _lin(0.12, 0.002), np.full(40, 0.3), _lin(0.11, 0.002)], axis=1)
SLOW = np.stack([_lin(0.10, 0.002), _lin(0.12, 0.002), _lin(0.30, 0.0002), _lin(0.11, 0.002)], axis=1)


def test_paper_variant_moves_weight_to_the_stalled_type():
    rw = _run(FLAT, variant="paper")
    w = rw.weights
    assert int(np.argmax(w)) == 2 and w[2] > 0.45  # nrs stalls while the others still fall
    assert sum(w) == pytest.approx(1.0, abs=1e-12)
    assert rw.trace[-1]["af"] == pytest.approx(1.0)  # the worst loss (nrs) is flat: AF keeps TBS in charge


def test_code_variant_moves_weight_to_the_slower_type_and_keeps_the_floor():
    rw = _run(SLOW, variant="code")
    w = rw.weights
    assert int(np.argmax(w)) == 2 and w[2] > 0.26
    assert sum(w) == pytest.approx(1.0, abs=1e-12)
    assert all(min(r["weights"]) >= 0.1 - 1e-12 and max(r["weights"]) <= 0.7 + 1e-12 for r in rw.trace)
    # The released code's adaptivity factor is a softmax over its last 10 α_max values: with a steady worst
    # loss it decays to 1/10, so ACS (stability) leads and a perfectly flat type is pushed *down* instead.
    flat = _run(FLAT, variant="code")
    assert flat.trace[-1]["af"] == pytest.approx(0.1, abs=1e-6)
    assert int(np.argmin(flat.weights)) == 2


def test_floor_holds_for_a_diverging_type():
    diverging = np.stack([np.full(40, 0.1), 0.1 + 0.05 * T, np.full(40, 0.1), np.full(40, 0.1)], axis=1)
    for cfg, floor in ((dict(variant="code"), 0.1), (dict(variant="paper", floor=0.05), 0.05)):
        rw = _run(diverging, warmup=2, **cfg)
        assert min(min(r["weights"]) for r in rw.trace) >= floor - 1e-12
        assert all(sum(r["weights"]) == pytest.approx(1.0, abs=1e-12) for r in rw.trace)
    assert min(_run(diverging, warmup=2, variant="paper").weights) < 0.05  # no floor in the paper's Eq. 10


def test_warmup_and_uniform_baseline():
    rw = _run(FLAT, variant="paper", warmup=20)
    assert all(r["weights"] == [0.25] * 4 for r in rw.trace[:20])
    assert rw.trace[20]["weights"] != [0.25] * 4 and "tbs" in rw.trace[20] and "tbs" not in rw.trace[19]
    uni = _run(FLAT, variant="uniform", warmup=0)
    assert all(r["weights"] == [0.25] * 4 for r in uni.trace) and len(uni.history) == 40


def _code_reference(history: np.ndarray, window=10, tau=5.0, warmup=20, floor=0.1) -> list[float]:
    """Reference §2.2 written out again in torch float64, with the normal-equation slope fit of train.py."""
    def slope(y):
        if y.shape[0] < 2:
            return torch.tensor(0.0, dtype=torch.float64)
        x = torch.arange(y.shape[0], dtype=torch.float64)
        X = torch.stack([x, torch.ones_like(x)], 1)
        return torch.linalg.solve(X.T @ X, X.T @ y)[0].clamp(-1e3, 1e3)

    k = history.shape[1]
    hist = torch.tensor(history.T, dtype=torch.float64)
    slope_hist, total_hist, w = [], [], torch.full((k,), 1.0 / k, dtype=torch.float64)
    for t in range(1, hist.shape[1] + 1):
        if t - 1 < warmup:
            continue
        win = hist[:, :t][:, -min(window, t):]
        s = torch.stack([slope(r) for r in win])
        rcs = torch.softmax(k * s / (s.abs().sum() + 1e-8), -1)
        slope_hist.append(s)
        sw = torch.stack(slope_hist[-window:], 1)
        acs = torch.softmax((-sw.shape[1] * sw / (sw.abs().sum(1, keepdim=True) + 1e-8))[:, -1], -1)
        total_hist.append(slope(win.max(0).values))
        tw = torch.stack(total_hist[-window:])
        df = torch.softmax(-tw.shape[0] * tw / (tw.abs().sum() + 1e-8) * tau, -1)[-1]
        v = torch.softmax((df * rcs + (1 - df) * acs) * k, -1)
        w = torch.softmax(v * k, -1) * (1 - floor * k) + floor
    return w.tolist()


@pytest.mark.parametrize("history", [FLAT, SLOW], ids=["flat", "slow"])
def test_code_variant_matches_the_released_formulas(history):
    noisy = history + 0.003 * np.random.default_rng(0).standard_normal(history.shape)
    assert _run(noisy, variant="code").weights == pytest.approx(_code_reference(noisy), abs=1e-12)


def test_slope_is_least_squares():
    y = np.array([3.0, 2.5, 2.4, 1.0, 0.7])
    assert ols_slope(y) == pytest.approx(np.polyfit(np.arange(5), y, 1)[0], abs=1e-12)
    assert ols_slope([1.0]) == 0.0 and ols_slope([0.0, 5e3], clamp=1e3) == 1e3


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_a_restored_reweighter_continues_exactly(variant):
    noisy = SLOW + 0.004 * np.random.default_rng(1).standard_normal(SLOW.shape)
    whole = _run(noisy, variant=variant, warmup=5)
    part = LossReweighter(TYPES, ReweightConfig(variant=variant, warmup=5))
    for row in noisy[:17]:
        part.update(row.tolist())
    resumed = LossReweighter(TYPES, ReweightConfig(variant=variant, warmup=5))
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))  # through JSON, as a checkpoint would
    for row in noisy[17:]:
        resumed.update(dict(zip(TYPES, row.tolist())))
    assert resumed.weights == whole.weights  # bit for bit
    assert resumed.state_dict() == whole.state_dict()


def test_config_and_state_errors():
    with pytest.raises(ConfigError, match="unknown reweighting config key"):
        ReweightConfig.from_dict({"variant": "code", "tau": 5})
    with pytest.raises(ConfigError, match="variant"):
        ReweightConfig(variant="cobra")
    with pytest.raises(ConfigError, match="floor"):
        LossReweighter(TYPES, ReweightConfig(floor=0.3))
    rw = LossReweighter(TYPES)
    with pytest.raises(ConfigError, match="no loss for type"):
        rw.update({"drs": 1.0})
    with pytest.raises(ConfigError, match="non-finite"):
        rw.update([1.0, float("nan"), 1.0, 1.0])
    other = LossReweighter(TYPES[:3])
    with pytest.raises(CheckpointError, match="for types"):
        other.load_state_dict(rw.state_dict())
    with pytest.raises(CheckpointError, match="config"):
        LossReweighter(TYPES, ReweightConfig(window=5)).load_state_dict(rw.state_dict())
    assert ReweightConfig.from_dict(ReweightConfig(variant="paper").to_dict()).resolved_normalize is True
