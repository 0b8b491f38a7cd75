"""Multi-objective loss reweighting across rain types (UniRain §3.3, a renamed CoBa "Convergence Balancer").

Each rain type i (DRS, DRD, NRS, NRD) is an objective with its own validation loss ℓ_i(t), one value per
epoch t. After a warm-up, the per-type weights ω_i of the training loss Σ_i ω_i ℓ_i are set from three
scores of the loss *trends* (reference note ``shared/reference/unirain-method.md`` §2):

* slope α_i(t): least-squares slope of type i's last N losses (x = 0..N−1); α < 0 converging;
* TBS (type balance, CoBa's RCS): ``softmax_i(K α_i / Σ_j |α_j|)``: more weight to types whose loss
  falls more slowly than the others';
* TSS (type stability, CoBa's ACS): ``softmax_i(−N α_i(t) / Σ_{last N} |α_i(k)|)``: each type's slope
  against its own recent slopes, so a type that starts to diverge is pushed down;
* AF (adaptivity, CoBa's DF), from the slope α_max of the per-epoch maximum loss over types: near 1
  while the worst loss still falls (TBS leads), smaller once it rises (TSS takes over);
* ``ω = AF · TBS + (1 − AF) · TSS``.

Variants (``ReweightConfig.variant``), never mixed silently:

``code`` (default: the paper's numbers came from the released code)
    The released ``train.py`` (QianfengY/UniRain @ 5381c6b), §2.2: raw (unnormalised) losses; windows of
    min(N, available) entries for the losses, the slope history and the α_max history; slopes clamped to
    ±1e3 (0 with fewer than 2 points); ``DF = softmax_s(τ · (−N' α_max(s) / Σ_{window} |α_max|))`` at the
    last s (no "× t", no min(·, 1), a 10-entry window instead of the whole history); then two more
    softmaxes and a floor: ``v = softmax(K · (DF·RCS + (1−DF)·ACS))``, ``ω = softmax(K · v)·(1 − K·f) + f``
    with f = 0.1, so ω_i ∈ [0.1, 0.7]. Weights stay 1/K until the update numbered ``warmup + 1``
    (``current_epoch >= 20`` with 0-based epochs). N = 10, τ = 5, warm-up 20, K the number of types
    (the code's ``num_tasks``; all its literal 4s are that).
``paper``
    The paper's Eqs. 6-10 (§2.1): losses normalised by each type's first recorded value (CoBa's
    convention; the summaries say "normalised" without saying by what: GUESS), windows of N as above,
    ``AF(t) = min(t · softmax_s(x_s)[t], 1)`` with ``x_s = −τ · s · α_max(s) / Σ_{u ≤ s} |α_max(u)|``
    over every score computation s = 1..t so far, and ω = AF·TBS + (1−AF)·TSS directly (floor 0 by
    default; with a floor f > 0 the same affine map as the code's is applied). The paper gives no N, τ
    or warm-up: the code's values are the defaults.
``uniform``
    The fixed-weights baseline: ω_i = 1/K always (the history is still recorded).

Only the updates after the warm-up compute scores, in both variants, so "t" counts score computations.
The state (:meth:`LossReweighter.state_dict`) is plain JSON (lists of floats): histories of the losses,
slopes and α_max (and the AF arguments), the current weights and a per-update trace; a reweighter
restored from it continues with exactly the weights an uninterrupted one computes. Arithmetic is numpy
float64 (the code's CoBa class also works in float64, then hands float32 weights to the loss).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from derainkit.errors import CheckpointError, ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict

VARIANTS = ("code", "paper", "uniform")
_EPS = 1e-8  # the code's denominators' epsilon
STATE_VERSION = 1


@dataclass(frozen=True)
class ReweightConfig:
    """variant: code | paper | uniform (see the module docstring)
    window:      N, entries in the slope windows (code: 10)
    temperature: τ of the adaptivity factor (code: 5)
    warmup:      updates (epochs) before the weights move; they first change at update warmup + 1 (code: 20)
    floor:       least weight of a type (None: the variant's: code 0.1, paper 0); needs floor · K < 1
    normalize:   divide each type's losses by its first one before fitting slopes (None: paper yes, code no)
    slope_clamp: slopes are clamped to ±this (code: 1e3)
    """

    variant: str = "code"
    window: int = 10
    temperature: float = 5.0
    warmup: int = 20
    floor: float | None = None
    normalize: bool | None = None
    slope_clamp: float = 1e3

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="ReweightConfig.")
        if self.variant not in VARIANTS:
            raise ConfigError(f"ReweightConfig.variant={self.variant!r}: must be one of {list(VARIANTS)}")
        if self.window < 2:
            raise ConfigError(f"ReweightConfig.window={self.window}: must be >= 2 (a slope needs two points)")
        if self.warmup < 0 or not self.temperature > 0 or not self.slope_clamp > 0:
            raise ConfigError(f"ReweightConfig: warmup >= 0, temperature > 0 and slope_clamp > 0 are required, got "
                              f"{self.warmup}, {self.temperature}, {self.slope_clamp}")
        if self.floor is not None and self.floor < 0:
            raise ConfigError(f"ReweightConfig.floor={self.floor}: must be >= 0")

    @property
    def resolved_floor(self) -> float:
        if self.floor is not None:
            return float(self.floor)
        return 0.1 if self.variant == "code" else 0.0

    @property
    def resolved_normalize(self) -> bool:
        return bool(self.normalize) if self.normalize is not None else self.variant == "paper"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ReweightConfig":
        return strict_from_dict(cls, d, "reweighting config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- pieces

def softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def ols_slope(y: Sequence[float], clamp: float = math.inf) -> float:
    """Least-squares slope of y against x = 0..len(y)−1 (0 for fewer than two points), clamped to ±clamp."""
    v = np.asarray(y, np.float64)
    if v.size < 2:
        return 0.0
    x = np.arange(v.size, dtype=np.float64)
    xc = x - x.mean()
    slope = float(np.dot(xc, v - v.mean()) / np.dot(xc, xc))
    return float(np.clip(slope, -clamp, clamp))


def balance_score(slopes: np.ndarray) -> np.ndarray:
    """TBS / RCS: softmax(K α / Σ|α|)."""
    k = slopes.size
    return softmax(k * slopes / (np.abs(slopes).sum() + _EPS))


def stability_score(slope_history: np.ndarray) -> np.ndarray:
    """TSS / ACS from a K×W window of slopes (last column current): softmax(−W α_now / Σ_window |α|)."""
    w = slope_history.shape[1]
    return softmax(-w * slope_history[:, -1] / (np.abs(slope_history).sum(axis=1) + _EPS))


# ------------------------------------------------------------------------------------------- the reweighter

class LossReweighter:
    """Per-type loss weights updated once per epoch from the per-type validation losses."""

    def __init__(self, types: Sequence[str], config: ReweightConfig | None = None) -> None:
        self.types = tuple(str(t) for t in types)
        if not self.types or len(set(self.types)) != len(self.types):
            raise ConfigError(f"loss reweighting needs distinct type names, got {list(types)}")
        self.config = config or ReweightConfig()
        k = len(self.types)
        if self.config.resolved_floor * k >= 1.0:
            raise ConfigError(f"ReweightConfig.floor={self.config.resolved_floor}: floor × {k} types must be < 1")
        self.history: list[list[float]] = []  # one row of K validation losses per update
        self.slopes: list[list[float]] = []  # per score computation: the K slopes
        self.worst_slopes: list[float] = []  # per score computation: α_max
        self.af_arguments: list[float] = []  # paper variant: x_s of the AF softmax
        self.trace: list[dict[str, Any]] = []  # per update: the scores behind the weights
        self._weights = [1.0 / k] * k

    # -------------------------------------------------------------- reading
    @property
    def weights(self) -> list[float]:
        """Current weights in ``types`` order (sum 1)."""
        return list(self._weights)

    def weight_dict(self) -> dict[str, float]:
        return dict(zip(self.types, self._weights))

    @property
    def updates(self) -> int:
        return len(self.history)

    # -------------------------------------------------------------- updating
    def update(self, losses: Mapping[str, float] | Sequence[float]) -> list[float]:
        """Record one epoch's per-type validation losses; returns the weights for the next epoch."""
        row = self._row(losses)
        self.history.append(row)
        record: dict[str, Any] = {"update": self.updates, "losses": row}
        if self.config.variant != "uniform" and self.updates > self.config.warmup:
            parts = self._code_step() if self.config.variant == "code" else self._paper_step()
            record.update(parts)
            self._weights = [float(w) for w in parts["weights"]]
        record["weights"] = list(self._weights)
        self.trace.append(record)
        return self.weights

    def _row(self, losses: Mapping[str, float] | Sequence[float]) -> list[float]:
        if isinstance(losses, Mapping):
            missing = [t for t in self.types if t not in losses]
            if missing:
                raise ConfigError(f"loss reweighting: no loss for type(s) {missing} (have {sorted(losses)})")
            values = [losses[t] for t in self.types]
        else:
            values = list(losses)
            if len(values) != len(self.types):
                raise ConfigError(f"loss reweighting: {len(values)} losses for {len(self.types)} types")
        row = [float(v) for v in values]
        if not all(math.isfinite(v) for v in row):
            raise ConfigError(f"loss reweighting: non-finite validation loss {row}")
        return row

    def _window(self) -> np.ndarray:
        """K×W window of the last W losses (normalised by the first ones when configured)."""
        hist = np.asarray(self.history, np.float64).T
        if self.config.resolved_normalize:
            hist = hist / np.where(hist[:, :1] != 0, hist[:, :1], 1.0)
        return hist[:, -min(self.config.window, hist.shape[1]):]

    def _slopes(self, window: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """Per-type slopes (appended to the history), α_max, and the K×W' slope window."""
        clamp = self.config.slope_clamp
        slopes = np.array([ols_slope(r, clamp) for r in window])
        self.slopes.append(slopes.tolist())
        worst = ols_slope(window.max(axis=0), clamp)
        self.worst_slopes.append(worst)
        slope_window = np.asarray(self.slopes[-self.config.window:], np.float64).T
        return slopes, worst, slope_window

    def _code_step(self) -> dict[str, Any]:
        k, f = len(self.types), self.config.resolved_floor
        slopes, _, slope_window = self._slopes(self._window())
        rcs, acs = balance_score(slopes), stability_score(slope_window)
        tail = np.asarray(self.worst_slopes[-self.config.window:], np.float64)
        df_logits = -tail.size * tail / (np.abs(tail).sum() + _EPS)
        df = float(softmax(df_logits * self.config.temperature)[-1])
        inner = softmax(k * (df * rcs + (1.0 - df) * acs))
        weights = softmax(k * inner) * (1.0 - f * k) + f
        return {"slopes": slopes.tolist(), "tbs": rcs.tolist(), "tss": acs.tolist(), "af": df,
                "worst_slope": self.worst_slopes[-1], "weights": weights.tolist()}

    def _paper_step(self) -> dict[str, Any]:
        k, f = len(self.types), self.config.resolved_floor
        slopes, worst, slope_window = self._slopes(self._window())
        tbs, tss = balance_score(slopes), stability_score(slope_window)
        s = len(self.worst_slopes)
        total = float(np.abs(self.worst_slopes).sum())
        self.af_arguments.append(-self.config.temperature * s * worst / (total + _EPS))
        af = min(s * float(softmax(np.asarray(self.af_arguments))[-1]), 1.0)
        weights = af * tbs + (1.0 - af) * tss
        if f > 0:
            weights = weights * (1.0 - f * k) + f
        return {"slopes": slopes.tolist(), "tbs": tbs.tolist(), "tss": tss.tolist(), "af": af,
                "worst_slope": worst, "weights": weights.tolist()}

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state: everything ``update`` depends on, plus the trace."""
        return {"version": STATE_VERSION, "types": list(self.types), "config": self.config.to_dict(),
                "history": [list(r) for r in self.history], "slopes": [list(r) for r in self.slopes],
                "worst_slopes": list(self.worst_slopes), "af_arguments": list(self.af_arguments),
                "weights": list(self._weights), "trace": [dict(r) for r in self.trace]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(f"loss reweighting state version {state.get('version')!r}, expected {STATE_VERSION}")
        if tuple(state.get("types", ())) != self.types:
            raise CheckpointError(f"loss reweighting state is for types {state.get('types')}, not {list(self.types)}")
        if ReweightConfig.from_dict(state["config"]) != self.config:
            raise CheckpointError(f"loss reweighting state has config {state['config']}, this run "
                                  f"{self.config.to_dict()}")
        self.history = [[float(v) for v in r] for r in state["history"]]
        self.slopes = [[float(v) for v in r] for r in state["slopes"]]
        self.worst_slopes = [float(v) for v in state["worst_slopes"]]
        self.af_arguments = [float(v) for v in state["af_arguments"]]
        self._weights = [float(v) for v in state["weights"]]
        self.trace = [dict(r) for r in state["trace"]]
