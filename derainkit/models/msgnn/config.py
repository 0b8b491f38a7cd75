"""Typed configuration of MSGNN (Wang et al., IJCAI-24) with every switch the paper's ablations use.

Two variants share one config (reference note: shared/reference/msgnn-official-code.md, "§" below):

``variant="code"`` (default)
    Exactly what the official code (supersupercong/MSGNN @ 98e6d2f) computes; the paper's numbers came
    from it. Loads official checkpoints (see ``keymap.py``). Default parameter count 2,061,579
    (N=2: 1,393,227), of which 404,036 never get a gradient (§1.7).

``variant="paper"``
    What the paper's text describes where it disagrees with the code. Each difference is a separate
    field below, left at ``None`` to take the variant's default, so any mix can be ablated:

    =====================  ========================  ==============================  =================
    field                  code default              paper default                   reference note
    =====================  ========================  ==============================  =================
    ``embedding``          ``"per_branch"``: 2       ``"shared"``: one 3-layer CNN    §5.4, §2.1
                           CNNs per branch (8)       for O, O½, O¼ and E
    ``train_embedding``    ``False`` (search and     ``True``: gradients reach the    §5.4, §2.3
                           edges under no_grad)      embedding via edges/values
    ``edge_features``      ``"l1"``: per-channel     ``"signed"``: P_O − P_E per      §5.5, §2.4
                           Σ|Δ| over the patch       pixel (eq. 5)
    ``aggregate``          ``"value_net"``: patches  ``"embedding"``: the matched     §5.6, §2.5
                           of a separate trainable   embedding patches P_E (eq. 4)
                           conv+Dense(4) extractor
    ``self_neighbour``     ``False``                 ``True``: the query is its own   §5.7
                                                     neighbour (scale-1 branch)
    ``fusion_kernel``      1 (5 without exemplar)    5 (stride 1, see below)          §5.2, §1.2
    ``window_rule``        ``"msgnn"`` (official,    ``"centered"``                   §5.8, §2.3
                           ½ factor hard-coded)
    ``keep_unused``        ``True`` (dead modules    ``False``                        §1.7
                           kept for checkpoints)
    =====================  ========================  ==============================  =================

    Notes on the paper variant choices:

    * fusion convs: the paper says 5×5 with *stride 2*; a stride of 2 would halve the resolution and
      break the full-resolution backbone, which has no upsampling (§5.2), so stride 1 is used.
    * self_neighbour: "the query patch itself is its closest neighbour" can only hold where the query
      image is the database (the scale-1 branch). There the query's own patch is neighbour 0 (edge
      feature exactly 0) and the other k−1 are the nearest non-self candidates. The ×½, ×¼ and
      exemplar databases do not contain the query patch, so they keep k searched neighbours.
    * window: the paper mentions no search window; a global search over a full test image is
      quadratic, so the paper variant uses a window of the same size centred on the query's position
      in the database (the rule the official code meant, §2.3). ``window_rule="global"`` is available.
    * N: §4.2 says 8 sub-networks but the N ablation (Fig. 7) says "N = 4 as our default"; the code
      uses 4. Both variants default to 4 (§5.1). M=12 comes from the code (the paper gives none).
    * Not changed in either variant: cross-scale matches paste the 3×3 low-resolution patch without
      taking an upscaled counterpart (§5.9, the paper does not describe one either); LeakyReLU
      placement follows the code (§5.12); the loss and exemplar pairing are training-side (§5.10,
      §5.13).
    * The paper's parameter counts (2.46 M / 1.55 M) match neither variant (§5.3).

Exemplar: when ``exemplar=True`` and ``forward`` gets no exemplar, the input image itself is used.
That is what the official pairing does on a filesystem whose ``listdir`` is sorted (§3.3, §3.5).

Graph features enter the backbone between sub-networks (through Fuse_t, t < N−1), so with
``n_subnets=1`` they feed nothing, exactly as in the official code.

Graph off (``graph=False``, Table 2 M1–M5): no graph branches, value nets or fuse convs; each
sub-network's output feeds the next directly. ``scales``/``exemplar`` are then ignored.
Attention swaps (Table 2 M2–M4): SE/ECA sit where GCT sits (gating the input of the residual branch,
§1.4) so that only the attention type changes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from derainkit.errors import ConfigError
from derainkit.strictconfig import strict_from_dict

Variant = Literal["code", "paper"]
Attention = Literal["none", "se", "eca", "gct"]
WindowRule = Literal["msgnn", "centered", "global"]

_VARIANTS = ("code", "paper")
_ATTENTIONS = ("none", "se", "eca", "gct")
_WINDOW_RULES = ("msgnn", "centered", "global")
_EMBEDDINGS = ("per_branch", "shared")
_EDGES = ("l1", "signed")
_AGGREGATES = ("value_net", "embedding")
_SCALES = (1, 2, 4)

# Per-variant defaults of the fields that are None unless set (see the module docstring table).
_VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "code": dict(embedding="per_branch", train_embedding=False, edge_features="l1", aggregate="value_net",
                 self_neighbour=False, window_rule="msgnn", keep_unused=True),
    "paper": dict(embedding="shared", train_embedding=True, edge_features="signed", aggregate="embedding",
                  self_neighbour=True, window_rule="centered", keep_unused=False, fusion_kernel=5),
}


@dataclass
class MSGNNConfig:
    """Architecture of one MSGNN. Field names follow the paper; the official names are in comments.

    Fields left at ``None`` take the variant's default; :meth:`resolve` fills them in.
    """

    variant: str = "code"
    n_subnets: int = 4            # N, settings.num_group_res
    m_blocks: int = 12            # M, settings.unit_num (CTResBlocks per sub-network)
    channels: int = 32            # C, settings.channel
    fusion_connection: bool = True  # Table 2 "FC": 1x1 conv over the M block outputs, added to every next block input
    attention: str = "gct"        # Table 2: none (M1/M2) | eca (M3) | se (M4) | gct ("CT", M5/M6)
    graph: bool = True            # Table 2 "Graph"
    k: int = 5                    # neighbours, settings.n_neighbors (Table 5: 3/5/7)
    patch_size: int = 3           # l, settings.graph_patch_size (Table 4: 3/5/7)
    stride: int = 3               # s, settings.gcn_stride (Table 3: 1/2/3)
    scales: tuple[int, ...] = (1, 2, 4)  # internal branches: O, O½, O¼ (Figure 8)
    exemplar: bool = True         # external branch, settings.guide (Figure 9)
    window_size: int = 30         # settings.window, in patches
    window_rule: str | None = None      # "msgnn" | "centered" | "global"
    fusion_kernel: int | None = None    # kernel of the two Fuse convs; code: 1 with exemplar, 5 without
    embedding: str | None = None        # "per_branch" | "shared"
    train_embedding: bool | None = None
    edge_features: str | None = None    # "l1" | "signed"
    aggregate: str | None = None        # "value_net" | "embedding"
    self_neighbour: bool | None = None
    keep_unused: bool | None = None     # keep modules the code builds but never calls (checkpoint compatibility)
    value_blocks: int = 4         # residual blocks in each value extractor (convert_* = conv + Dense(4))
    se_reduction: int = 16        # SE bottleneck ratio (Hu et al. default)
    eca_kernel: int | None = None  # ECA 1-D kernel; None = adaptive rule of Wang et al. (3 for C=32)
    gct_eps: float = 1e-5
    dist_eps: float = 1e-5        # added to squared distances, as the code does
    negative_slope: float = 0.2
    knn_backend: str = "auto"     # passed to derainkit.knn.search.knn
    query_chunk: int = 8192       # queries per chunk when aggregating without autograd (bounds memory)

    def __post_init__(self) -> None:
        if isinstance(self.scales, list):
            self.scales = tuple(self.scales)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError naming the field and the allowed values when anything is invalid."""
        def choice(name: str, allowed: tuple, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if value not in allowed:
                raise ConfigError(f"MSGNNConfig.{name}={value!r} is invalid; expected one of {list(allowed)}")

        def integer(name: str, lo: int, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"MSGNNConfig.{name}={value!r} must be an integer")
            if value < lo:
                raise ConfigError(f"MSGNNConfig.{name}={value} must be >= {lo}")

        def boolean(name: str, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if not isinstance(value, bool):
                raise ConfigError(f"MSGNNConfig.{name}={value!r} must be true or false")

        def number(name: str, lo: float) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= lo:
                raise ConfigError(f"MSGNNConfig.{name}={value!r} must be a number >= {lo}")

        choice("variant", _VARIANTS)
        choice("attention", _ATTENTIONS)
        choice("window_rule", _WINDOW_RULES, optional=True)
        choice("embedding", _EMBEDDINGS, optional=True)
        choice("edge_features", _EDGES, optional=True)
        choice("aggregate", _AGGREGATES, optional=True)
        for name in ("n_subnets", "m_blocks", "channels", "k", "patch_size", "stride", "window_size",
                     "se_reduction", "query_chunk"):
            integer(name, 1)
        integer("value_blocks", 0)
        integer("fusion_kernel", 1, optional=True)
        integer("eca_kernel", 1, optional=True)
        for name in ("fusion_connection", "graph", "exemplar"):
            boolean(name)
        for name in ("train_embedding", "self_neighbour", "keep_unused"):
            boolean(name, optional=True)
        number("gct_eps", 0.0)
        number("dist_eps", 0.0)
        number("negative_slope", 0.0)
        if not isinstance(self.knn_backend, str):
            raise ConfigError(f"MSGNNConfig.knn_backend={self.knn_backend!r} must be a string")
        if self.fusion_kernel is not None and self.fusion_kernel % 2 == 0:
            raise ConfigError(f"MSGNNConfig.fusion_kernel={self.fusion_kernel} must be odd ('same' padding keeps "
                              "the full-resolution backbone)")
        if self.eca_kernel is not None and self.eca_kernel % 2 == 0:
            raise ConfigError(f"MSGNNConfig.eca_kernel={self.eca_kernel} must be odd")
        if not isinstance(self.scales, tuple) or any(isinstance(s, bool) or s not in _SCALES for s in self.scales):
            raise ConfigError(f"MSGNNConfig.scales={self.scales!r} must be a subset of {list(_SCALES)}")
        if len(set(self.scales)) != len(self.scales):
            raise ConfigError(f"MSGNNConfig.scales={self.scales!r} has duplicates")
        if tuple(sorted(self.scales)) != self.scales:
            # Branch order fixes the Fuse input channel order [body, G1, G2, G4, GE]; keep it canonical.
            self.scales = tuple(sorted(self.scales))
        if self.stride > self.patch_size:
            # s > l leaves pixels covered by no patch: the code's patch2im divides by a zero count (NaN).
            raise ConfigError(f"MSGNNConfig.stride={self.stride} must be <= patch_size={self.patch_size} "
                              "(otherwise some pixels belong to no patch)")
        if self.graph and not self.scales and not self.exemplar:
            raise ConfigError("MSGNNConfig: graph=True needs at least one branch: non-empty scales or exemplar=True "
                              "(use graph=False for the no-graph model)")

    # ------------------------------------------------------------------ variants
    def resolve(self) -> "MSGNNConfig":
        """A copy with every variant-dependent ``None`` field filled in."""
        defaults = dict(_VARIANT_DEFAULTS[self.variant])
        if "fusion_kernel" not in defaults:
            defaults["fusion_kernel"] = 1 if self.exemplar else 5  # official: guide=True 1x1, guide=False 5x5
        changes = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        return dataclasses.replace(self, **changes)

    @property
    def branches(self) -> tuple[str, ...]:
        """Names of the graph branches in Fuse order: 'scale1', 'scale2', 'scale4', 'exemplar'."""
        if not self.graph:
            return ()
        return tuple(f"scale{s}" for s in self.scales) + (("exemplar",) if self.exemplar else ())

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "MSGNNConfig":
        """Strict constructor: unknown keys raise ConfigError listing the valid ones (None = defaults)."""
        if isinstance(data, Mapping) and isinstance(data.get("scales"), list):
            data = {**data, "scales": tuple(data["scales"])}
        return strict_from_dict(cls, data, "MSGNN config")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict (scales as a list); ``from_dict(to_dict())`` round-trips."""
        out = dataclasses.asdict(self)
        out["scales"] = list(self.scales)
        return out
