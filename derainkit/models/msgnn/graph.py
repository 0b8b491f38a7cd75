"""MSGNN graph model: patch kNN search + attentional aggregation, for all branches at once (§2).

Per branch (query always the rainy image O; database O, O½, O¼ or the exemplar E):

1. embed O and the database with a 3-layer CNN (code: two frozen CNNs per branch; paper: one shared,
   trained CNN);
2. cut l×l patches with stride s (official padding rule) and find the k nearest database patches of
   every query patch by squared L2 (+1e-5) inside a search window (``derainkit.knn``);
3. edge features per (query, neighbour): code: per-channel Σ|Δ| over the patch (§2.4); paper: the
   signed difference P_O − P_E per pixel (eq. 5);
4. weights: a 1×1 "weight net" on the edge features, softmax over the k neighbours (eqs. 4, 6);
5. values: the neighbours' patches of a value map (code: a trainable conv + Dense(4) on the database
   image, §2.5; paper: the embedding itself, eq. 4), pasted at the query position and folded back to
   an image (patch2im, overlaps averaged); G = Σ_r α_r ⊙ Z_r.

What this implementation changes against the official code, without changing outputs:

* G depends only on the images (never on backbone features, §2.6), so the backbone calls
  :meth:`GraphModule.forward` once per forward instead of once per sub-network.
* Neighbour values are gathered from a flat (b·n)×e tensor with a flat index, so the backward is an
  index_add into b×n×e instead of the dense b×m×e×n gradient of the official expanded gather.
* With s == l (the default) no pixel is covered twice, so weights and the weighted sum are computed
  per patch and folded once (32 channels) instead of folding k·32-channel maps twice; without
  autograd the queries are processed in chunks. With s < l the official per-pixel order (fold, then
  weight net on the averaged maps) is kept.
* The search (and, in the code variant, the edge features) runs under ``torch.no_grad()``; only the
  windowed candidates are scored (the official training path built the full m×n matrix first).
* Neighbours are ranked by exactly recomputed squared distances (see ``derainkit.knn``); the official
  GEMM form can order float near-ties (distances equal to ~1e-7) differently.

Not replicated: the official window-index cache is keyed without the scale, so two branches whose
database grids have the same shape but different scales would share one window (never the case for
the official inputs, e.g. an exemplar half the size of O); here each branch always uses its own scale.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.knn.patches import extract_patches, fold_patches
from derainkit.knn.search import Window, knn
from derainkit.models.msgnn.blocks import DenseResidual, conv3x3
from derainkit.models.msgnn.config import MSGNNConfig

# branch name -> scale factor used by the official window rule (the exemplar uses 1, §2.3)
BRANCH_SCALE = {"scale1": 1, "scale2": 2, "scale4": 4, "exemplar": 1}


class EmbeddingCNN(nn.Module):
    """Matching features: 3 × (Conv3×3 → LReLU), 3→C→C→C (§2.1, the paper's "three-layer CNN")."""

    def __init__(self, channels: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.convs = nn.ModuleList([conv3x3(3, channels), conv3x3(channels, channels), conv3x3(channels, channels)])
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), self.negative_slope)
        return x


class ValueNet(nn.Module):
    """Trainable value extractor ``convert_*``: Conv3×3(3→C) → LReLU → Dense(n) (§2.5)."""

    def __init__(self, channels: int, n_blocks: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.conv = conv3x3(3, channels)
        self.dense = DenseResidual(channels, n_blocks, negative_slope)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(F.leaky_relu(self.conv(x), self.negative_slope))


class WeightNet(nn.Module):
    """Attention logits from edge features: 1×1 conv → ResBlock(1×1, LReLU, 1×1) + skip → 1×1 to one
    logit (§2.5 item 4). Applied to the last dim, so it serves patch vectors and (channels-last) maps."""

    def __init__(self, channels: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.res_conv1 = nn.Conv2d(channels, channels, 1)
        self.res_conv2 = nn.Conv2d(channels, channels, 1)
        self.conv_out = nn.Conv2d(channels, 1, 1)
        self.negative_slope = negative_slope

    @staticmethod
    def _lin(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, conv.weight.flatten(1), conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ...×C -> ... (one logit per vector)."""
        h = self._lin(self.conv_in, x)
        h = h + self._lin(self.res_conv2, F.leaky_relu(self._lin(self.res_conv1, h), self.negative_slope))
        return self._lin(self.conv_out, h).squeeze(-1)


class UnusedKnnDownsample(nn.Module):
    """``knn_downsample`` of the official GCNBlock: built, never called (kept for checkpoints, §1.7)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(channels, channels, 5, padding=2), conv3x3(channels, channels),
                                    conv3x3(channels, channels)])


class BranchResult(NamedTuple):
    """Per-branch output; ``idx``/``dist`` are returned for diagnostics and tests."""
    G: torch.Tensor      # b×C×H×W aggregated graph feature
    idx: torch.Tensor    # b×m×k database patch indices (ascending distance; self first if self_neighbour)
    dist: torch.Tensor   # b×m×k squared L2 + dist_eps of those neighbours


class GraphBranch(nn.Module):
    """Parameters of one branch (one official Graph + GCNBlock pair and its convert_* value net)."""

    def __init__(self, cfg: MSGNNConfig, values: ValueNet | None = None) -> None:
        super().__init__()
        c, slope = cfg.channels, cfg.negative_slope
        # Creation order = the official one (embedcnn1, embedcnn2, knn_downsample, weightnet_lr,
        # weightnet_hr), so a seeded build draws the same initial weights as the official code.
        if values is None and cfg.aggregate == "value_net":
            values = ValueNet(c, cfg.value_blocks, slope)
        self.values = values
        if cfg.embedding == "per_branch":
            self.embed_db = EmbeddingCNN(c, slope)      # official embedcnn1 (database side)
            self.embed_query = EmbeddingCNN(c, slope)   # official embedcnn2 (query side)
        else:
            self.embed_db = self.embed_query = None
        if cfg.keep_unused:
            self.unused_knn_downsample = UnusedKnnDownsample(c)
            self.unused_weightnet_lr = WeightNet(c, slope)
        self.weight_net = WeightNet(c, slope)           # official weightnet_hr


def candidate_count(cfg: MSGNNConfig, grid: tuple[int, int]) -> int:
    """Candidate patches one query sees in a database with this patch grid (``cfg`` resolved): the whole
    grid for a global search, else the (grid-clipped) window."""
    if cfg.window_rule == "global":
        return grid[0] * grid[1]
    return min(cfg.window_size, grid[0], grid[1]) ** 2


class GraphModule(nn.Module):
    """All graph branches. ``forward(O, O½, O¼, E)`` -> one b×C×H×W feature per branch, in Fuse order."""

    def __init__(self, cfg: MSGNNConfig, values: dict[str, ValueNet] | None = None) -> None:
        super().__init__()
        cfg = cfg.resolve()
        self.cfg = cfg
        self.branch_names = cfg.branches
        values = values or {}
        self.shared_embed = EmbeddingCNN(cfg.channels, cfg.negative_slope) if cfg.embedding == "shared" else None
        self.branches = nn.ModuleDict({name: GraphBranch(cfg, values.get(name)) for name in self.branch_names})

    # ------------------------------------------------------------------ helpers
    def _window(self, branch: str) -> Window | None:
        if self.cfg.window_rule == "global":
            return None
        return Window(size=self.cfg.window_size, rule=self.cfg.window_rule, scale=BRANCH_SCALE[branch])

    def _search(self, branch: str, qp: torch.Tensor, q_grid, xp: torch.Tensor, x_grid) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        k = cfg.k
        n_cand = candidate_count(cfg, x_grid)
        if n_cand < k:
            raise ValueError(f"MSGNN branch {branch!r}: only {n_cand} candidate patches in the search window of a "
                             f"{x_grid[0]}×{x_grid[1]} patch grid, fewer than k={k}; use a larger image or smaller k")
        with torch.no_grad():
            dist, idx = knn(qp, xp, k, query_grid=q_grid, cand_grid=x_grid, window=self._window(branch),
                            backend=cfg.knn_backend, eps=cfg.dist_eps)
            if cfg.self_neighbour and branch == "scale1":
                dist, idx = _self_first(dist, idx, cfg.dist_eps)
        return dist, idx

    def _embed(self, name: str, images: dict[str, torch.Tensor], cache: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query embedding of O, database embedding) for one branch, computed when needed so that
        full-resolution embeddings of different branches are not all alive at once."""
        grad = bool(self.cfg.train_embedding) and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            if self.shared_embed is not None:  # one CNN: embed O once, reuse it as query everywhere
                if "scale1" not in cache:
                    cache["scale1"] = self.shared_embed(images["scale1"])
                q = cache["scale1"]
                x = q if name == "scale1" else self.shared_embed(images[name])
                return q, x
            br = self.branches[name]
            return br.embed_query(images["scale1"]), br.embed_db(images[name])

    # ------------------------------------------------------------------ forward
    def forward(self, rainy: torch.Tensor, half: torch.Tensor | None, quarter: torch.Tensor | None,
                exemplar: torch.Tensor | None) -> list[BranchResult]:
        cfg = self.cfg
        images = {"scale1": rainy, "scale2": half, "scale4": quarter, "exemplar": exemplar}
        for name in self.branch_names:
            if images[name] is None:
                raise ValueError(f"MSGNN graph branch {name!r} needs its input image")
        l, s = cfg.patch_size, cfg.stride
        hw = rainy.shape[-2:]
        cache: dict[str, torch.Tensor] = {}
        results = []
        for name in self.branch_names:
            br = self.branches[name]
            # values first: the value net is the largest temporary, so run it before the embeddings exist
            vp = extract_patches(br.values(images[name]), l, s)[0] if br.values is not None else None
            q_emb, x_emb = self._embed(name, images, cache)
            qp, q_grid = extract_patches(q_emb, l, s)
            xp, x_grid = extract_patches(x_emb, l, s) if x_emb is not q_emb else (qp, q_grid)
            del q_emb, x_emb
            dist, idx = self._search(name, qp.detach(), q_grid, xp.detach(), x_grid)
            if vp is None:
                vp = xp
            assert vp.shape[1] == xp.shape[1]
            G = self._aggregate(br, qp, xp, vp, idx, hw)
            del qp, xp, vp
            results.append(BranchResult(G, idx, dist))
        return results

    def _aggregate(self, br: GraphBranch, qp: torch.Tensor, xp: torch.Tensor, vp: torch.Tensor,
                   idx: torch.Tensor, hw) -> torch.Tensor:
        cfg = self.cfg
        b, m, k = idx.shape
        n, e = vp.shape[1], vp.shape[2]
        # flat index into (b·n)×e: gather via index_select, whose backward is an index_add (no dense b×m×e×n)
        flat = (idx + torch.arange(b, device=idx.device).view(b, 1, 1) * n).reshape(b, m * k)
        edges_need_grad = cfg.train_embedding and torch.is_grad_enabled()
        if cfg.stride == cfg.patch_size:
            if torch.is_grad_enabled():
                g = self._patch_space(br, qp, xp, vp, flat, edges_need_grad)
            else:
                g = vp.new_empty(b, m, e)
                step = max(1, cfg.query_chunk // max(1, b))
                for a in range(0, m, step):
                    g[:, a:a + step] = self._patch_space(br, qp[:, a:a + step], xp, vp, flat[:, a * k:(a + step) * k],
                                                         False)
            return fold_patches(g, hw, cfg.patch_size, cfg.stride)
        return self._map_space(br, qp, xp, vp, flat, hw, edges_need_grad)

    def _edges(self, qp: torch.Tensor, xp: torch.Tensor, flat: torch.Tensor, need_grad: bool) -> torch.Tensor:
        """Edge features b×m×k×C×l² (signed) or b×m×k×C (l1) for the m queries of ``qp``."""
        cfg = self.cfg
        b, m = qp.shape[:2]
        k = flat.shape[1] // m
        c, l2 = cfg.channels, cfg.patch_size ** 2
        with torch.set_grad_enabled(need_grad):
            nb = xp.reshape(-1, xp.shape[-1]).index_select(0, flat.reshape(-1)).view(b, m, k, c, l2)
            d = qp.reshape(b, m, 1, c, l2) - nb
            if cfg.edge_features == "l1":
                d = d.abs().sum(-1)  # per-channel L1 over the patch pixels (§2.4)
        return d

    def _patch_space(self, br, qp, xp, vp, flat, edges_need_grad) -> torch.Tensor:
        """s == l: each pixel lies in exactly one query patch, so weights are per patch (l1) or per
        patch pixel (signed) and the weighted sum is formed before folding. Returns b×m×e."""
        cfg = self.cfg
        b, m = qp.shape[:2]
        k = flat.shape[1] // m
        c, l2 = cfg.channels, cfg.patch_size ** 2
        d = self._edges(qp, xp, flat, edges_need_grad)
        z = vp.reshape(-1, vp.shape[-1]).index_select(0, flat.reshape(-1)).view(b, m, k, c, l2)
        if cfg.edge_features == "l1":
            alpha = torch.softmax(br.weight_net(d), dim=2)                  # b×m×k
            g = torch.einsum("bmk,bmkce->bmce", alpha, z)
        else:
            alpha = torch.softmax(br.weight_net(d.transpose(3, 4)), dim=2)  # b×m×k×l²
            g = (alpha.unsqueeze(3) * z).sum(2)
        return g.reshape(b, m, c * l2)

    def _map_space(self, br, qp, xp, vp, flat, hw, edges_need_grad) -> torch.Tensor:
        """s < l: the official order. Fold every neighbour's edge features and values to k·C-channel
        maps (overlaps averaged), weight net per pixel, softmax over k, weighted sum."""
        cfg = self.cfg
        b, m = qp.shape[:2]
        k = flat.shape[1] // m
        c, l, s = cfg.channels, cfg.patch_size, cfg.stride
        l2 = l * l
        d = self._edges(qp, xp, flat, edges_need_grad)
        if cfg.edge_features == "l1":
            d = d.unsqueeze(-1).expand(b, m, k, c, l2)  # the patch's vector is copied to all its pixels
        d_map = fold_patches(d.reshape(b, m, k * c * l2), hw, l, s)                 # b×(k·C)×H×W
        z = vp.reshape(-1, vp.shape[-1]).index_select(0, flat.reshape(-1))
        z_map = fold_patches(z.view(b, m, k * c * l2), hw, l, s)                    # b×(k·C)×H×W
        h, w = hw
        logits = br.weight_net(d_map.view(b, k, c, h, w).permute(0, 1, 3, 4, 2))   # b×k×H×W
        alpha = torch.softmax(logits, dim=1)
        return (alpha.unsqueeze(2) * z_map.view(b, k, c, h, w)).sum(1)


def _self_first(dist: torch.Tensor, idx: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Make each query its own first neighbour (paper variant, scale-1 branch: query grid == database
    grid, so query q is database patch q): drop q from the searched list if present, else drop the
    farthest, and prepend q with distance eps (its squared distance to itself is 0)."""
    b, m, k = idx.shape
    own = torch.arange(m, device=idx.device).view(1, m, 1)
    is_self = (idx == own).to(torch.int8)
    order = torch.sort(is_self, dim=-1, stable=True).indices[..., :k - 1]  # non-self first, rank kept
    idx = torch.cat([own.expand(b, m, 1), idx.gather(-1, order)], -1)
    dist = torch.cat([dist.new_full((b, m, 1), eps), dist.gather(-1, order)], -1)
    return dist, idx

