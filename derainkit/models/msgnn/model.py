"""The MSGNN network (official ``ODE_DerainNet``), both variants (see ``config.py`` for the differences).

Backbone (§1.2 of shared/reference/msgnn-official-code.md)::

    F0 = head(O); T = F0; Φ = None
    for t in 0..N-1:
        body, Φ = SubNet_t(T, Φ)
        T = Fuse_t(concat[body, G1, G2, G4, GE])       # G*: graph features, computed ONCE per forward
    B̂ = O − tail(body)                                 # tail = Conv3×3 → LReLU → Conv1×1(→3); no clamp

The official code also computes Fuse_{N-1}, the last sub-network's fusion connection and the last
dense 1×1 conv of every sub-network and discards them; this implementation skips that work (outputs
unchanged) but keeps the modules in the code variant for parameter count and checkpoint
compatibility.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.errors import InputSizeError
from derainkit.knn.patches import patch_grid
from derainkit.models.msgnn.blocks import ConvPair, SubNetwork, conv3x3
from derainkit.models.msgnn.config import MSGNNConfig
from derainkit.models.msgnn.graph import BranchResult, GraphModule, ValueNet, candidate_count
from derainkit.models.msgnn.pyramid import PYR_MIN_SIDE, pyr_down, pyr_down_size


class MSGNN(nn.Module):
    """MSGNN deraining network. ``forward(rainy, exemplar=None)`` -> derained image, same shape.

    Inputs are b×3×H×W in [0, 1]; the channel order does not matter to the network (the official
    pipeline feeds BGR). O½ and O¼ are built internally with :func:`pyr_down` unless given.
    """

    def __init__(self, config: MSGNNConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else MSGNNConfig()
        if not isinstance(config, MSGNNConfig):
            raise TypeError(f"MSGNN expects an MSGNNConfig, got {type(config).__name__}")
        self.config = config
        cfg = self.cfg = config.resolve()
        c, slope = cfg.channels, cfg.negative_slope
        keep = bool(cfg.keep_unused)
        branches = cfg.branches
        # Creation order follows the official __init__ (convert_rainy, convert_* value nets, then
        # res_group[t]/fuse[t] interleaved, graph/gcn pairs, out), so torch.manual_seed(s) followed by
        # MSGNN() draws the same initial weights as the official ODE_DerainNet for the code variant.
        self.head = conv3x3(3, c)
        values = {name: ValueNet(c, cfg.value_blocks, slope) for name in branches} \
            if cfg.aggregate == "value_net" else {}
        n_fuse = cfg.n_subnets if keep else cfg.n_subnets - 1
        fuse_in = (1 + len(branches)) * c
        subnets, fuses = [], []
        for t in range(cfg.n_subnets):
            subnets.append(SubNetwork(
                c, cfg.m_blocks, attention=cfg.attention, fusion_connection=cfg.fusion_connection,
                keep_last_dense=keep, negative_slope=slope, gct_eps=cfg.gct_eps, se_reduction=cfg.se_reduction,
                eca_kernel=cfg.eca_kernel, build_fusion=keep or t < cfg.n_subnets - 1))
            if branches and t < n_fuse:
                fuses.append(ConvPair(fuse_in, c, c, cfg.fusion_kernel, cfg.fusion_kernel, slope))
        self.subnets = nn.ModuleList(subnets)
        self.fuse = nn.ModuleList(fuses) if branches else None
        self.graph = GraphModule(cfg, values) if branches else None
        self.tail = ConvPair(c, c, 3, 3, 1, slope)
        # Run activations in channels-last (NHWC) layout: oneDNN convolutions on CPU are markedly
        # faster without per-call layout reorders, and the inference dense blocks become in-place
        # GEMMs. A layout choice only: outputs agree with NCHW to float rounding. Set False to opt out.
        self.channels_last = True

    def _layout(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or not self.channels_last:
            return x
        return x.contiguous(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ inputs
    def prepare_inputs(self, rainy: torch.Tensor, exemplar: torch.Tensor | None = None,
                       half: torch.Tensor | None = None, quarter: torch.Tensor | None = None):
        """Validate and complete (O, O½, O¼, E): missing pyramid levels are built with pyrDown; a
        missing exemplar is the input itself (the official sorted-listdir pairing, §3.3)."""
        if not isinstance(rainy, torch.Tensor) or rainy.dim() != 4 or rainy.shape[1] != 3:
            shape = tuple(rainy.shape) if isinstance(rainy, torch.Tensor) else type(rainy).__name__
            raise ValueError(f"MSGNN expects a b×3×H×W image tensor, got {shape}")
        cfg = self.cfg
        self.check_input_size(rainy.shape[-2], rainy.shape[-1],
                              None if exemplar is None else tuple(exemplar.shape[-2:]))
        rainy, half, quarter, exemplar = (self._layout(t) for t in (rainy, half, quarter, exemplar))
        if self.graph is None:
            return rainy, None, None, None
        if 2 in cfg.scales or 4 in cfg.scales:
            if half is None:
                half = pyr_down(rainy)
            if 4 in cfg.scales and quarter is None:
                quarter = pyr_down(half)
        if cfg.exemplar:
            if exemplar is None:
                exemplar = rainy
            if exemplar.dim() != 4 or exemplar.shape[0] != rainy.shape[0] or exemplar.shape[1] != 3:
                raise ValueError(f"exemplar must be b×3×He×We with the batch size of the input "
                                 f"({rainy.shape[0]}), got {tuple(exemplar.shape)}")
        return rainy, half, quarter, exemplar

    # ------------------------------------------------------------------ input size
    def _size_problem(self, h: int, w: int, exemplar_hw: tuple[int, int] | None = None) -> str | None:
        """Why an h×w input cannot be processed (None when it can): the checks of pyr_down and of the
        graph search, applied to the sizes each branch would see, without running either."""
        cfg = self.cfg
        if self.graph is None:
            return None
        sizes = {1: (h, w)}  # pyramid level (1, 2, 4) -> size
        for scale in (2, 4)[: 2 if 4 in cfg.scales else 1 if 2 in cfg.scales else 0]:
            hh, ww = sizes[scale // 2]
            if hh < PYR_MIN_SIDE or ww < PYR_MIN_SIDE:
                level = "input" if scale == 2 else "×½ level"
                return f"a pyramid step needs at least {PYR_MIN_SIDE}×{PYR_MIN_SIDE} px and the {level} is {hh}×{ww}"
            sizes[scale] = (pyr_down_size(hh), pyr_down_size(ww))
        dbs = [(f"scale{s}", *sizes[s]) for s in cfg.scales]
        if cfg.exemplar:
            dbs.append(("exemplar", *(exemplar_hw if exemplar_hw is not None else (h, w))))
        for name, dh, dw in dbs:
            grid = patch_grid(int(dh), int(dw), cfg.patch_size, cfg.stride)
            n_cand = candidate_count(cfg, grid)
            if n_cand < cfg.k:
                return (f"branch {name!r} sees a {dh}×{dw} image: {grid[0]}×{grid[1]} graph patches "
                        f"(l={cfg.patch_size}, stride {cfg.stride}), {n_cand} candidates, fewer than k={cfg.k}")
        return None

    def min_input_side(self) -> int:
        """Smallest side (px) of a square input this model can process (exemplar the same size)."""
        side = 1
        while self._size_problem(side, side) is not None:
            side += 1
        return side

    def check_input_size(self, h: int, w: int, exemplar_hw: tuple[int, int] | None = None) -> None:
        """Raise InputSizeError (a DerainkitError) when an h×w input is too small for this config."""
        problem = self._size_problem(int(h), int(w), exemplar_hw)
        if problem is not None:
            side = self.min_input_side()
            raise InputSizeError(f"image of {int(h)}×{int(w)} px is too small for this MSGNN: {problem}; "
                                 f"this config needs at least {side}×{side} px")

    # ------------------------------------------------------------------ forward
    def graph_features(self, rainy: torch.Tensor, exemplar: torch.Tensor | None = None, *,
                       half: torch.Tensor | None = None, quarter: torch.Tensor | None = None) -> list[BranchResult]:
        """Per-branch graph results (G, idx, dist) in Fuse order; empty when graph=False."""
        rainy, half, quarter, exemplar = self.prepare_inputs(rainy, exemplar, half, quarter)
        if self.graph is None:
            return []
        return self.graph(rainy, half, quarter, exemplar)

    def forward(self, rainy: torch.Tensor, exemplar: torch.Tensor | None = None, *,
                half: torch.Tensor | None = None, quarter: torch.Tensor | None = None,
                graph_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Derain ``rainy`` (b×3×H×W). ``half``/``quarter``: precomputed pyrDown levels (optional);
        ``graph_features``: precomputed G maps (as from :meth:`graph_features`), e.g. for analysis."""
        if graph_features is None:
            feats = [r.G for r in self.graph_features(rainy, exemplar, half=half, quarter=quarter)]
        else:
            if not isinstance(rainy, torch.Tensor) or rainy.dim() != 4:
                raise ValueError("MSGNN expects a b×3×H×W image tensor")
            feats = list(graph_features)
        return self._backbone(rainy, feats)

    def backbone(self, rainy: torch.Tensor, graph_features: list[torch.Tensor]) -> torch.Tensor:
        """The backbone given the graph features (which are the same for every sub-network, §2.6)."""
        return self._backbone(rainy, list(graph_features))

    def _backbone(self, rainy: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        # `feats` is consumed (emptied) on the inference path so the graph maps can be freed early.
        n = len(self.subnets)
        rainy = self._layout(rainy)
        # Inference with 1×1 fuse convs: keep the graph features in one pixel-major buffer and split
        # the fuse conv into body and graph parts (two GEMMs), instead of concatenating 5·C channels
        # in every iteration.
        rows_g = None
        if (feats and not torch.is_grad_enabled() and self.channels_last and self.fuse is not None and len(self.fuse)
                and self.fuse[0].conv1.kernel_size == (1, 1)):
            b, _, h, w = feats[0].shape
            width = sum(g.shape[1] for g in feats)
            gbuf = feats[0].new_empty(b, h, w, width)
            rows_g = gbuf.view(b * h * w, width)  # P × (branches·C)
            start = 0
            while feats:
                g = feats.pop(0)
                gbuf.permute(0, 3, 1, 2)[:, start:start + g.shape[1]] = g
                start += g.shape[1]
                del g
        else:
            feats = [self._layout(g) for g in feats]
        t = self.head(rainy)
        phi = None
        body = t
        for i, sub in enumerate(self.subnets):
            last = i == n - 1
            body, phi = sub(t, phi, need_phi=not last)  # the last Φ is never used
            if last:
                break
            if self.fuse is None:
                t = body  # graph=False: sub-networks are chained directly
            elif rows_g is not None:
                t = self._fuse_rows(self.fuse[i], body, rows_g)
            else:
                t = self.fuse[i](torch.cat([body, *feats], 1))
        return (rainy - self.tail(body)).contiguous()  # callers get a plain NCHW tensor

    def _fuse_rows(self, fuse: ConvPair, body: torch.Tensor, rows_g: torch.Tensor) -> torch.Tensor:
        b, c, h, w = body.shape
        rows_b = body.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, c)
        w1 = fuse.conv1.weight.flatten(1)
        out = torch.addmm(fuse.conv1.bias, rows_b, w1[:, :c].t())
        out.addmm_(rows_g, w1[:, c:].t())
        out = F.leaky_relu(out, fuse.negative_slope, inplace=True)
        out = torch.addmm(fuse.conv2.bias, out, fuse.conv2.weight.flatten(1).t())
        return out.view(b, h, w, -1).permute(0, 3, 1, 2)


def build_msgnn(cfg: MSGNNConfig | dict | None = None) -> MSGNN:
    """Build an MSGNN from a config (an ``MSGNNConfig``, a plain dict validated strictly, or None)."""
    if cfg is None or isinstance(cfg, MSGNNConfig):
        return MSGNN(cfg)
    return MSGNN(MSGNNConfig.from_dict(cfg))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
