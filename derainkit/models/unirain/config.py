"""Typed configuration of our UniRain network reconstruction (Yang et al., CVPR 2026).

The public UniRain release (QianfengY/UniRain @ 5381c6b) has **no model code** (``from net.model
import UniRain`` fails), so everything here except the router equations is our reconstruction. The
reference note (``shared/reference/unirain-method.md``, "§" below) tags each fact; in short:

==========================  =================================================================  ==========
what                        value here                                                         source
==========================  =================================================================  ==========
router                      R = softmax(W(φ(x) + ε)), φ = global average pool, per image       paper (§1.1)
encoder MoE                 soft: every expert runs, weighted by R (weights sum to 1)          paper
decoder MoE                 hard: TopK(R), only the k chosen experts run, weighted by their     paper
                            softmax probabilities (no renormalisation unless ``renormalize``)
experts E, k                3 and 1: what Figure 2 draws                                        paper figure
backbone                    Restormer U-Net (4 levels, MDTA attention + GDFN feed-forward)      GUESS (§1.2)
where the MoE sits          the feed-forward (GDFN) of every encoder/decoder block becomes an   GUESS
                            MoE of E slim GDFN experts; latent and refinement stay dense
expert width                ``expert_hidden="split"``: the dense GDFN's hidden width split      GUESS
                            over the E experts, so a soft layer costs what a dense one does and
                            a hard top-1 layer a third of it (the reported 126.5 GFLOPs are
                            below a dense Restormer's ~140)
router noise                N(0, s²) on the pooled vector, s = 1/E, training only               paper eq. +
                                                                                                GUESS for s
==========================  =================================================================  ==========

Presets (``UniRainConfig.preset(name)``, or ``{"preset": name, ...}`` in ``from_dict``):

``base``   the default: Restormer's widths, heads and depths (C = 48, blocks 4/6/6/8, 4 refinement
           blocks, heads 1/2/4/8) with one change to reach the reported size: GDFN expansion 2.36
           instead of Restormer's 2.66. That gives 24.46 M parameters (reported: 24.4 M, Table 3;
           with 2.66 it would be 26.14 M, Restormer's own count) and 124 GMACs at 256×256 with the
           default soft/hard routing (reported: 126.5 "GFLOPs", multiply-accumulates in this
           literature). Which knob the authors turned is unknown; we chose the expansion because it
           moves the parameter count and the cost together towards both reported figures (a latent
           of 6 blocks instead of 8, the other obvious candidate, gives 22.5 M). Measured with
           ``torch.utils.flop_counter`` (which also counts the attention products; it gives 155
           GMACs for the dense network). ``tests/test_unirain_model.py`` checks the 2 % band.
``small``  trains on a CPU: C = 16, one block per level, one refinement block, heads 1/1/2/2.

``encoder_routing``/``decoder_routing`` (``soft``/``hard``/``dense``) give the ablation's variants:
soft/hard (default, the paper's asymmetric design), soft/soft and hard/hard (symmetric, Table 6),
hard/soft (inverted), and ``dense`` for either side (a plain GDFN of the full width: with dense/dense
the network is a Restormer-style U-Net without experts).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Mapping

from derainkit.errors import ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict

ROUTINGS = ("soft", "hard", "dense")
EXPERT_HIDDEN = ("split", "full")
NOISE_SITES = ("pooled", "input")
LEVELS = 4  # encoder levels, the last one being the latent (Restormer)


@dataclass(frozen=True)
class UniRainConfig:
    """Shape and routing of the network (see the module docstring for what is paper and what is ours).

    channels:          C, width of level 1 (levels have C, 2C, 4C, 8C; decoder level 1 and the
                       refinement run at 2C, as in Restormer)
    blocks:            transformer blocks per level (encoder levels 1-3 and the latent; decoder levels 3-1
                       mirror levels 3-1)
    refinement_blocks: dense blocks after decoder level 1
    heads:             attention heads per level (decoder level 1 and refinement use ``heads[0]``)
    ffn_expansion:     GDFN hidden width = int(width · ffn_expansion) for a dense layer
    experts:           E, experts per MoE layer
    top_k:             k, experts that run per image in a hard layer
    encoder_routing:   soft | hard | dense, for every block of encoder levels 1-3
    decoder_routing:   soft | hard | dense, for every block of decoder levels 3-1
    expert_hidden:     split (each expert int(width · ffn_expansion / E) wide) | full (each as wide as
                       the dense layer)
    renormalize:       hard layers divide the kept top-k probabilities by their sum (off: the paper's
                       TopK keeps the raw probabilities; note that with k = 1 renormalising makes the
                       weight 1 and the router then gets no gradient at all)
    noise_std:         s of the router noise (training only); None: 1/E
    noise_site:        pooled (ε added to the pooled vector, as one summary says) | input (ε added to the
                       feature map before pooling, as the equation is written: identical in law to pooled
                       noise of s/sqrt(H·W), and implemented that way)
    bias:              biases in the convolutions (Restormer: none)
    """

    channels: int = 48
    blocks: tuple[int, ...] = (4, 6, 6, 8)
    refinement_blocks: int = 4
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion: float = 2.36
    experts: int = 3
    top_k: int = 1
    encoder_routing: str = "soft"
    decoder_routing: str = "hard"
    expert_hidden: str = "split"
    renormalize: bool = False
    noise_std: float | None = None
    noise_site: str = "pooled"
    bias: bool = False

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="UniRainConfig.")
        self._validate()

    def _validate(self) -> None:
        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"UniRainConfig.{key}={getattr(self, key)!r}: must be {expected}")

        if self.channels < 1:
            raise bad("channels", ">= 1")
        for key in ("blocks", "heads"):
            values = getattr(self, key)
            if len(values) != LEVELS or any(v < 1 for v in values):
                raise bad(key, f"{LEVELS} integers >= 1 (levels 1-3 and the latent)")
        if self.refinement_blocks < 0:
            raise bad("refinement_blocks", ">= 0")
        for level, h in enumerate(self.heads):
            if (self.channels << level) % h:
                raise bad("heads", f"divisors of the level widths {[self.channels << i for i in range(LEVELS)]}")
        if not self.ffn_expansion > 0:
            raise bad("ffn_expansion", "> 0")
        if self.experts < 1:
            raise bad("experts", ">= 1")
        if not 1 <= self.top_k <= self.experts:
            raise bad("top_k", f"in [1, experts={self.experts}]")
        for key, allowed in (("encoder_routing", ROUTINGS), ("decoder_routing", ROUTINGS),
                             ("expert_hidden", EXPERT_HIDDEN), ("noise_site", NOISE_SITES)):
            if getattr(self, key) not in allowed:
                raise bad(key, f"one of {list(allowed)}")
        if self.noise_std is not None and self.noise_std < 0:
            raise bad("noise_std", ">= 0 (or null for 1/experts)")
        if self.hidden(self.channels, moe=True) < 1:
            raise ConfigError(f"UniRainConfig: experts={self.experts} leave an expert of width "
                              f"{self.hidden(self.channels, moe=True)} at C={self.channels}; use expert_hidden='full', "
                              "fewer experts or more channels")

    # ------------------------------------------------------------------ derived values
    @property
    def router_noise_std(self) -> float:
        return float(self.noise_std) if self.noise_std is not None else 1.0 / self.experts

    def hidden(self, width: int, moe: bool) -> int:
        """GDFN hidden width of one expert (``moe``) or of a dense layer at ``width`` channels."""
        if moe and self.expert_hidden == "split":
            return int(width * self.ffn_expansion / self.experts)
        return int(width * self.ffn_expansion)

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this (three 2× downsamplings)."""
        return 2 ** (LEVELS - 1)

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "UniRainConfig":
        """A named preset (``base``, ``small``) with some fields replaced."""
        if name not in PRESETS:
            raise ConfigError(f"unknown UniRain preset {name!r}; expected one of {sorted(PRESETS)}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ConfigError(f"unknown UniRain config key(s) {unknown}; valid keys: {sorted(valid + ['preset'])}")
        return replace(PRESETS[name], **overrides)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "UniRainConfig":
        """Strict: unknown keys raise ConfigError. A ``preset`` key picks the defaults of the other keys
        (``{"preset": "small", "experts": 4}``); it is not kept (``to_dict`` lists every field)."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"UniRain config must be a mapping of keys to values, got {type(d).__name__}")
        data = dict(d)
        preset = data.pop("preset", None)
        if preset is None:
            return strict_from_dict(cls, data, "UniRain config", sort_valid=True)
        return cls.preset(str(preset), **data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


PRESETS: dict[str, UniRainConfig] = {
    "base": UniRainConfig(),
    "small": UniRainConfig(channels=16, blocks=(1, 1, 1, 1), refinement_blocks=1, heads=(1, 1, 2, 2)),
}
