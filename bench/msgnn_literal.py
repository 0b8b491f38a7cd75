"""A LITERAL port of the official MSGNN computation (code defaults), used only as a benchmark baseline.

Written from the description in shared/reference/msgnn-official-code.md (the official code has no
licence, nothing is copied). It keeps the official module names, so the official state_dict loads
with ``load_state_dict`` directly, and it keeps the official costs on purpose:

* the graph aggregation (GCNBlock) runs inside the sub-network loop, once per sub-network, including
  the last iteration whose result is discarded, and Fuse_{N-1} / the last dense 1×1 conv / the last
  fusion connection are computed and discarded (§1.2, §1.3, §2.6);
* neighbour values are gathered from an *expanded* b×m×e×n view (its backward materialises a dense
  b×m×e×n gradient, §4 "Memory behaviour");
* in train mode the search builds the full b×m×n distance matrix (‖q‖²+‖x‖²−2q·x + 1e-5) and then
  gathers the o window columns; in eval mode it scores only the window through an explicit m×o
  index tensor (the replacement of the matmul_cuda kernel, §2.7);
* the embedding CNNs run with autograd on (the official Graph calls are not under no_grad); the
  indices are integers and the edge features are detached, so they receive no gradient.

Assumption where the note is silent: the value extractors ``convert_*`` run once per forward
(outside the loop); only the aggregation is repeated. That makes this baseline, if anything, faster
than the official code.

Self-contained on purpose (own im2patch/patch2im/window/search), so that agreement with
``derainkit.models.msgnn`` is an independent check.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LRELU = 0.2


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(LRELU)


# ------------------------------------------------------------------------------------------ backbone
class GCT(nn.Module):
    def __init__(self, c: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.epsilon = eps

    def forward(self, x):
        embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.epsilon).pow(0.5) * self.alpha
        norm = self.gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + self.epsilon).pow(0.5)
        return x * (1.0 + torch.tanh(embedding * norm + self.beta))


class ResidualBlock(nn.Module):  # official Residual_Block (CTResBlock)
    def __init__(self, c: int) -> None:
        super().__init__()
        self.avg_eca = GCT(c)
        self.res = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), _lrelu(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.res(self.avg_eca(x))


class DenseConnection(nn.Module):
    def __init__(self, c: int, unit_num: int) -> None:
        super().__init__()
        self.unit_num = unit_num
        self.units = nn.ModuleList(ResidualBlock(c) for _ in range(unit_num))
        self.conv1x1 = nn.ModuleList(nn.Sequential(nn.Conv2d((i + 2) * c, c, 1), _lrelu()) for i in range(unit_num))
        self.conv_fusion = nn.Sequential(nn.Conv2d(unit_num * c, c, 1), _lrelu())

    def forward(self, x, input_fusion=None):
        cat, outs = [x], []
        out = x
        for i in range(self.unit_num):
            tmp = self.units[i](out if input_fusion is None else out + input_fusion)
            cat.append(tmp)
            outs.append(tmp)
            out = self.conv1x1[i](torch.cat(cat, 1))  # the last one is computed and discarded
        return tmp, self.conv_fusion(torch.cat(outs, 1))


class Resbase(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.res = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), _lrelu(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.res(x)


class Dense(nn.Module):
    def __init__(self, c: int, unit_num: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(Resbase(c) for _ in range(unit_num))
        self.conv1x1 = nn.ModuleList(nn.Sequential(nn.Conv2d((i + 2) * c, c, 1), _lrelu()) for i in range(unit_num))

    def forward(self, x):
        cat, out = [x], x
        for unit, fuse in zip(self.units, self.conv1x1):
            cat.append(unit(out))
            out = fuse(torch.cat(cat, 1))
        return out


# ------------------------------------------------------------------------------------------ graph ops
def _pads(size: int, l: int, s: int) -> tuple[int, int]:
    pad = (-(size - l)) % s
    return pad // 2, pad - pad // 2


def im2patch(x, l=3, s=3):
    """b×c×H×W -> (b×c×l×l×n1×n2, padding) with the official zero-padding rule."""
    b, c, h, w = x.shape
    t, bo = _pads(h, l, s)
    lf, r = _pads(w, l, s)
    xp = F.pad(x, (lf, r, t, bo))
    n1, n2 = (h + t + bo - l) // s + 1, (w + lf + r - l) // s + 1
    return F.unfold(xp, l, stride=s).view(b, c, l, l, n1, n2), (t, bo, lf, r)


def patch2im(cols, pads, out_hw, l=3, s=3):
    """b×c×l×l×n1×n2 -> b×c×H×W: col2im, divided by col2im(ones), padding cropped."""
    b, c = cols.shape[:2]
    n1, n2 = cols.shape[-2:]
    t, bo, lf, r = pads
    h, w = out_hw
    size = (h + t + bo, w + lf + r)
    out = F.fold(cols.reshape(b, c * l * l, n1 * n2), size, l, stride=s)
    ones = torch.ones(1, l * l, n1 * n2, dtype=cols.dtype, device=cols.device)
    out = out / F.fold(ones, size, l, stride=s)
    return out[:, :, t:t + h, lf:lf + w]


def index_neighbours(q_grid, x_grid, window, scale, device):
    """Official window: S = min(window, n1, n2); origin clamp(i//2 - S//scale, 0, n-S). m×o int64."""
    m1, m2 = q_grid
    n1, n2 = x_grid
    S = min(window, n1, n2)
    i = torch.arange(m1, device=device)
    j = torch.arange(m2, device=device)
    ch = (i // 2 - S // scale).clamp(0, n1 - S)
    cw = (j // 2 - S // scale).clamp(0, n2 - S)
    off = torch.arange(S, device=device)
    rows = (ch[:, None] + off[None]) * n2                 # m1×S
    cols = cw[:, None] + off[None]                        # m2×S
    idx = rows[:, None, :, None] + cols[None, :, None, :]  # m1×m2×S×S
    return idx.reshape(m1 * m2, S * S)


class Graph(nn.Module):
    """Embeddings (two separate CNNs), windowed kNN, detached per-channel L1 edge features."""

    def __init__(self, c: int = 32, k: int = 5, l: int = 3, s: int = 3, window: int = 30, scale: int = 1) -> None:
        super().__init__()
        self.k, self.l, self.s, self.window, self.scale = k, l, s, window, scale
        # Test hook, not official: when set (b×m×k), these neighbours replace the searched ones, so an
        # implementation can be compared on identical graphs when float near-ties flip a neighbour.
        self.force_idx = None

        def cnn():
            return nn.Sequential(nn.Sequential(nn.Conv2d(3, c, 3, padding=1), _lrelu()),
                                 nn.Sequential(nn.Conv2d(c, c, 3, padding=1), _lrelu()),
                                 nn.Sequential(nn.Conv2d(c, c, 3, padding=1), _lrelu()))
        self.embedcnn1 = cnn()   # database side
        self.embedcnn2 = cnn()   # query side

    def forward(self, x, y):
        """x: database image, y: query image (O). Returns idx_k b×m×k and diff b×(k·C)×H×W."""
        l, s, k = self.l, self.s, self.k
        xe = self.embedcnn1(x)
        ye = self.embedcnn2(y)
        b, c = ye.shape[:2]
        yp, ypads = im2patch(ye, l, s)
        xp, _ = im2patch(xe, l, s)
        q_grid, x_grid = tuple(yp.shape[-2:]), tuple(xp.shape[-2:])
        yv = yp.permute(0, 4, 5, 1, 2, 3).reshape(b, q_grid[0] * q_grid[1], -1)   # b×m×e
        xv = xp.permute(0, 4, 5, 1, 2, 3).reshape(b, x_grid[0] * x_grid[1], -1)   # b×n×e
        m, n, e = yv.shape[1], xv.shape[1], yv.shape[2]
        I = index_neighbours(q_grid, x_grid, self.window, self.scale, ye.device)  # m×o
        Ib = I.unsqueeze(0).expand(b, m, I.shape[1])
        if self.training:  # full m×n matrix, then the window columns
            D = (yv.pow(2).sum(-1, keepdim=True) + xv.pow(2).sum(-1).unsqueeze(1)
                 - 2 * torch.bmm(yv, xv.transpose(1, 2)) + 1e-5)
            D = D.gather(2, Ib)
        else:  # matmul1 replacement: only the o window candidates
            xw = xv[torch.arange(b, device=xv.device).view(b, 1, 1), Ib]            # b×m×o×e
            D = (yv.pow(2).sum(-1, keepdim=True) + xw.pow(2).sum(-1)
                 - 2 * torch.einsum("bme,bmoe->bmo", yv, xw) + 1e-5)
        dist, pos = torch.topk(D, k, dim=2, largest=False, sorted=True)
        idx_k = Ib.gather(2, pos)                                                  # b×m×k
        if self.force_idx is not None:
            idx_k = self.force_idx
        # edge features: per-channel L1 over the patch, copied to the patch pixels, folded, detached
        nb = xv.unsqueeze(1).expand(b, m, n, e).gather(2, idx_k.unsqueeze(-1).expand(b, m, k, e))
        d = (yv.unsqueeze(2) - nb).view(b, m, k, c, l * l).abs().sum(-1)           # b×m×k×C
        d = d.unsqueeze(-1).expand(b, m, k, c, l * l).reshape(b, q_grid[0], q_grid[1], k * c, l, l)
        diff = patch2im(d.permute(0, 3, 4, 5, 1, 2), ypads, y.shape[-2:], l, s)
        self.last_dist, self.last_idx = dist.detach(), idx_k  # for diagnostics
        return idx_k, diff.detach()


class ResBlock1x1(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 1), _lrelu(), nn.Conv2d(c, c, 1))

    def forward(self, x):
        return x + self.body(x)


class GCNBlock(nn.Module):
    """Attentional aggregation with the official expanded gather and per-pixel weight net."""

    def __init__(self, c: int = 32, k: int = 5, l: int = 3, s: int = 3) -> None:
        super().__init__()
        self.c, self.k, self.l, self.s = c, k, l, s

        def weightnet():
            return nn.Sequential(nn.Sequential(nn.Conv2d(c, c, 1)), ResBlock1x1(c), nn.Sequential(nn.Conv2d(c, 1, 1)))
        self.knn_downsample = nn.Sequential(nn.Sequential(nn.Conv2d(c, c, 5, stride=2, padding=2)),
                                            nn.Sequential(nn.Conv2d(c, c, 3, padding=1)),
                                            nn.Sequential(nn.Conv2d(c, c, 3, padding=1)))  # never called
        self.weightnet_lr = weightnet()   # never called
        self.weightnet_hr = weightnet()

    def forward(self, y_d, y, idx_k, diff):
        l, s, k, c = self.l, self.s, self.k, self.c
        b = y.shape[0]
        h, w = y.shape[-2:]
        ydp, _ = im2patch(y_d, l, s)
        f = c * l * l
        n = ydp.shape[-2] * ydp.shape[-1]
        yd = ydp.reshape(b, f, n)
        qp, qpads = im2patch(y, l, s)                       # y (= body) is used for shape/padding only
        m1, m2 = qp.shape[-2:]
        m = m1 * m2
        z = yd.view(b, 1, f, n).expand(b, m, f, n).gather(3, idx_k.view(b, m, 1, k).expand(b, m, f, k))  # b×m×f×k
        z = z.permute(0, 3, 2, 1).reshape(b, k * c, l, l, m1, m2)
        z = patch2im(z, qpads, (h, w), l, s)                # b×(k·C)×H×W
        logits = self.weightnet_hr(diff.reshape(b * k, c, h, w)).view(b, k, h, w)
        alpha = torch.softmax(logits, dim=1)
        return (alpha.unsqueeze(2) * z.view(b, k, c, h, w)).sum(1)


# ------------------------------------------------------------------------------------------ network
class LiteralMSGNN(nn.Module):
    """ODE_DerainNet with the code defaults (guide on, 1×1 fuse). forward(O, O½, O¼, E) -> O − R."""

    def __init__(self, n_subnets: int = 4, unit_num: int = 12, c: int = 32, k: int = 5, l: int = 3, s: int = 3,
                 window: int = 30) -> None:
        super().__init__()
        self.n = n_subnets
        self.convert_rainy = nn.Conv2d(3, c, 3, padding=1)

        def convert():
            return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), _lrelu(), Dense(c, 4))
        self.convert_rainy1, self.convert_rainy2, self.convert_rainy4, self.convert_guide = (
            convert(), convert(), convert(), convert())
        self.res_group = nn.ModuleList(DenseConnection(c, unit_num) for _ in range(n_subnets))
        self.fuse = nn.ModuleList(nn.Sequential(nn.Conv2d(5 * c, c, 1), _lrelu(), nn.Conv2d(c, c, 1))
                                  for _ in range(n_subnets))
        self.graph_1, self.gcn_1 = Graph(c, k, l, s, window, 1), GCNBlock(c, k, l, s)
        self.graph_2, self.gcn_2 = Graph(c, k, l, s, window, 2), GCNBlock(c, k, l, s)
        self.graph_4, self.gcn_4 = Graph(c, k, l, s, window, 4), GCNBlock(c, k, l, s)
        self.graph_guide, self.gcn_guide = Graph(c, k, l, s, window, 1), GCNBlock(c, k, l, s)
        self.out = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), _lrelu(), nn.Conv2d(c, 3, 1))

    def forward(self, rainy, rainy_2, rainy_4, guide):
        idx1, diff1 = self.graph_1(rainy, rainy)
        idx2, diff2 = self.graph_2(rainy_2, rainy)
        idx4, diff4 = self.graph_4(rainy_4, rainy)
        idxg, diffg = self.graph_guide(guide, rainy)
        v1, v2, v4, vg = (self.convert_rainy1(rainy), self.convert_rainy2(rainy_2), self.convert_rainy4(rainy_4),
                          self.convert_guide(guide))
        t = self.convert_rainy(rainy)
        fusion = None
        self.G_per_iteration = []  # for tests: the graph features of every iteration (detached)
        for i in range(self.n):
            body, fusion_new = self.res_group[i](t, fusion)
            g1 = self.gcn_1(v1, body, idx1, diff1)
            g2 = self.gcn_2(v2, body, idx2, diff2)
            g4 = self.gcn_4(v4, body, idx4, diff4)
            gg = self.gcn_guide(vg, body, idxg, diffg)
            self.G_per_iteration.append((g1.detach(), g2.detach(), g4.detach(), gg.detach()))
            t = self.fuse[i](torch.cat([body, g1, g2, g4, gg], 1))
            fusion = fusion_new
        return rainy - self.out(body)
