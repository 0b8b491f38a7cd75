"""Backbone building blocks of MSGNN: channel attentions, CTResBlock, the dense sub-network, Dense(n).

Structure follows §1.3–§1.6 of shared/reference/msgnn-official-code.md. Module names are ours; the
official names are mapped in ``keymap.py``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)


class GCT(nn.Module):
    """Gated Channel Transformation (Yang et al., CVPR'20), 'l2' mode as in the official code (§1.5).

    Identity at initialisation (gamma = beta = 0).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same operation order as the reference implementation, so float rounding matches too.
        embedding = (x.pow(2).sum((2, 3), keepdim=True) + self.eps).pow(0.5) * self.alpha
        norm = self.gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + self.eps).pow(0.5)
        gate = 1.0 + torch.tanh(embedding * norm + self.beta)
        return x * gate


class SE(nn.Module):
    """Squeeze-and-Excitation (Hu et al., CVPR'18): avg-pool, C→C/r→C with ReLU, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * w


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """Adaptive 1-D kernel size of ECA-Net: nearest odd |(log2 C + b) / gamma|."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module):
    """Efficient Channel Attention (Wang et al., CVPR'20): avg-pool, 1-D conv across channels, sigmoid."""

    def __init__(self, channels: int, kernel_size: int | None = None) -> None:
        super().__init__()
        k = kernel_size or eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3))                                   # b×C
        y = self.conv(y.unsqueeze(1)).squeeze(1)             # mix neighbouring channels
        return x * torch.sigmoid(y)[:, :, None, None]


def make_attention(kind: str, channels: int, *, gct_eps: float = 1e-5, se_reduction: int = 16,
                   eca_kernel: int | None = None) -> nn.Module | None:
    if kind == "gct":
        return GCT(channels, gct_eps)
    if kind == "se":
        return SE(channels, se_reduction)
    if kind == "eca":
        return ECA(channels, eca_kernel)
    if kind == "none":
        return None
    raise ValueError(f"unknown attention {kind!r}")


class ResBlock(nn.Module):
    """x + conv2(LReLU(conv1(attn(x)))): the CTResBlock (§1.4) when ``attn`` is GCT, a plain residual
    block (the official ``Resbase`` inside Dense(n)) when ``attn`` is None.

    The attention gates the input of the residual branch only; the skip carries the un-gated x.
    """

    def __init__(self, channels: int, attn: nn.Module | None = None, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.attn = attn
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(x) if self.attn is not None else x
        if torch.is_grad_enabled():
            return x + self.conv2(F.leaky_relu(self.conv1(y), self.negative_slope))
        # inference: reuse buffers in place (two fewer full-resolution temporaries per block)
        t = F.leaky_relu(self.conv1(y), self.negative_slope, inplace=True)
        del y
        return self.conv2(t).add_(x)


class SubNetwork(nn.Module):
    """One MSGNN sub-network: M densely connected CTResBlocks plus the "fusion connection" (§1.3).

    ``forward(x, phi)`` returns ``(body, phi_new)``: body is the raw output of the last block, phi_new =
    LReLU(1×1 conv over the M block outputs), which the next sub-network adds to every block input.
    The official code also computes a last dense 1×1 conv whose output it discards; it is kept as a
    module (``keep_last_dense``) for checkpoint compatibility but never run.
    """

    def __init__(self, channels: int, m_blocks: int, *, attention: str = "gct", fusion_connection: bool = True,
                 keep_last_dense: bool = True, negative_slope: float = 0.2, gct_eps: float = 1e-5,
                 se_reduction: int = 16, eca_kernel: int | None = None, build_fusion: bool = True) -> None:
        super().__init__()
        c = channels
        self.channels, self.m_blocks, self.negative_slope = c, m_blocks, negative_slope
        # Creation order = the official one (conv_fusion, then block j and dense conv j alternately),
        # so a seeded build draws the same initial weights as the official code.
        fusion = conv1x1(m_blocks * c, c) if (fusion_connection and build_fusion) else None
        n_dense = m_blocks if keep_last_dense else m_blocks - 1
        blocks, dense = [], []
        for j in range(m_blocks):
            blocks.append(ResBlock(c, make_attention(attention, c, gct_eps=gct_eps, se_reduction=se_reduction,
                                                     eca_kernel=eca_kernel), negative_slope))
            if j < n_dense:
                dense.append(conv1x1((j + 2) * c, c))
        self.blocks = nn.ModuleList(blocks)
        self.dense = nn.ModuleList(dense)
        self.fusion = fusion
        self.fusion_connection = fusion_connection

    def forward(self, x: torch.Tensor, phi: torch.Tensor | None = None,
                need_phi: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        if torch.is_grad_enabled():
            return self._forward_autograd(x, phi, need_phi)
        return self._forward_buffer(x, phi, need_phi)

    def _block_input(self, h: torch.Tensor, phi: torch.Tensor | None) -> torch.Tensor:
        return h if phi is None else h + phi

    def _forward_autograd(self, x, phi, need_phi):
        # Training path without concatenations. A dense 1×1 conv over concat(feats) equals the sum of
        # per-input 1×1 convs, so as soon as a feature exists, ONE conv computes its contributions to
        # every later dense conv (and to the fusion connection), split into C-channel chunks and added
        # to running pre-activations. Autograd then keeps each feature once instead of O(M²) concat
        # copies, and a feature's gradient arrives in one piece (split backward) instead of M
        # accumulations. Same operations as the official code, summed in a different order.
        slope, c, m = self.negative_slope, self.channels, self.m_blocks
        use_fusion = need_phi and self.fusion is not None
        w_dense = [self.dense[j].weight.flatten(1) for j in range(m - 1)]
        w_fusion = self.fusion.weight.flatten(1) if use_fusion else None
        acc: list[torch.Tensor | None] = [None] * (m - 1)   # pre-activation of dense conv j
        fus: list[torch.Tensor | None] = [None]

        def contribute(feat: torch.Tensor, i: int) -> None:
            # feats[i] is input slot i of dense conv j for every j >= i-1, and slot i-1 of the fusion conv
            targets = range(max(0, i - 1), m - 1)
            rows = [w_dense[j][:, i * c:(i + 1) * c] for j in targets]
            if use_fusion and i >= 1:
                rows.append(w_fusion[:, (i - 1) * c:i * c])
            if not rows:
                return
            w = torch.cat(rows, 0)
            chunks = F.conv2d(feat, w.view(w.shape[0], c, 1, 1)).split(c, 1)
            for chunk, j in zip(chunks, targets):
                acc[j] = chunk if acc[j] is None else acc[j] + chunk
            if use_fusion and i >= 1:
                fus[0] = chunks[-1] if fus[0] is None else fus[0] + chunks[-1]

        contribute(x, 0)
        h = x
        u = x
        for j, block in enumerate(self.blocks):
            u = block(self._block_input(h, phi))
            contribute(u, j + 1)
            if j < m - 1:  # acc[j] now holds all inputs 0..j+1
                h = F.leaky_relu(acc[j] + self.dense[j].bias.view(1, -1, 1, 1), slope)
                acc[j] = None
        phi_new = None
        if use_fusion:
            phi_new = F.leaky_relu(fus[0] + self.fusion.bias.view(1, -1, 1, 1), slope)
        return u, phi_new

    def _forward_buffer(self, x, phi, need_phi):
        # Without autograd, write every block output once into a preallocated (M+1)·C buffer and run
        # the dense 1×1 convs on channel-prefix views: no growing torch.cat copies, which dominate peak
        # memory on large images (13·C full-resolution channels). The buffer is pixel-major (NHWC), so a
        # channel prefix is a row-strided matrix and each 1×1 conv is one GEMM (addmm) reading it in
        # place. Same arithmetic as the cat path.
        slope, c, m = self.negative_slope, self.channels, self.m_blocks
        b, _, hgt, wid = x.shape
        buf = x.new_empty(b, hgt, wid, (m + 1) * c)
        rows = buf.view(b * hgt * wid, (m + 1) * c)       # one row per pixel
        chw = buf.permute(0, 3, 1, 2)                     # NCHW-shaped, channels-last strided view
        chw[:, :c] = x
        h = self._block_input(x, phi)
        for j, block in enumerate(self.blocks):
            chw[:, (j + 1) * c:(j + 2) * c] = block(h)
            del h
            if j < m - 1:
                h = self._conv1x1_rows(self.dense[j], rows[:, :(j + 2) * c], b, hgt, wid)
                h = F.leaky_relu(h, slope, inplace=True)
                if phi is not None:
                    h.add_(phi)  # h is a fresh GEMM output: add Φ in place
        u = chw[:, m * c:].contiguous(memory_format=torch.channels_last)
        phi_new = None
        if need_phi and self.fusion is not None:
            phi_new = F.leaky_relu(self._conv1x1_rows(self.fusion, rows[:, c:], b, hgt, wid), slope, inplace=True)
        return u, phi_new

    @staticmethod
    def _conv1x1_rows(conv: nn.Conv2d, rows: torch.Tensor, b: int, hgt: int, wid: int) -> torch.Tensor:
        """1×1 conv of pixel rows (P×Cin, any row stride) -> b×Cout×H×W in channels-last layout."""
        out = torch.addmm(conv.bias, rows, conv.weight.flatten(1).t())
        return out.view(b, hgt, wid, -1).permute(0, 3, 1, 2)


class DenseResidual(nn.Module):
    """The official ``Dense(n)`` used in the value extractors (§2.5): n plain residual blocks, densely
    fused; after block j, h = LReLU(1×1 conv((j+2)C→C)(concat)), and the output is the last h."""

    def __init__(self, channels: int, n_blocks: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        c = channels
        self.negative_slope = negative_slope
        blocks, dense = [], []
        for j in range(n_blocks):  # alternate creation, as the official code does
            blocks.append(ResBlock(c, None, negative_slope))
            dense.append(conv1x1((j + 2) * c, c))
        self.blocks = nn.ModuleList(blocks)
        self.dense = nn.ModuleList(dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and len(self.blocks):
            return self._forward_buffer(x)
        feats = [x]
        h = x
        for block, fuse in zip(self.blocks, self.dense):
            feats.append(block(h))
            h = F.leaky_relu(fuse(torch.cat(feats, 1)), self.negative_slope)
        return h

    def _forward_buffer(self, x: torch.Tensor) -> torch.Tensor:
        # Same pixel-major buffer scheme as SubNetwork._forward_buffer (no growing concatenations).
        n, c = len(self.blocks), x.shape[1]
        b, _, hgt, wid = x.shape
        buf = x.new_empty(b, hgt, wid, (n + 1) * c)
        rows = buf.view(b * hgt * wid, (n + 1) * c)
        chw = buf.permute(0, 3, 1, 2)
        chw[:, :c] = x
        h = x
        for j, (block, fuse) in enumerate(zip(self.blocks, self.dense)):
            chw[:, (j + 1) * c:(j + 2) * c] = block(h)
            h = F.leaky_relu(SubNetwork._conv1x1_rows(fuse, rows[:, :(j + 2) * c], b, hgt, wid),
                             self.negative_slope, inplace=True)
        return h.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) else h.contiguous()


class ConvPair(nn.Module):
    """conv1 → LReLU → conv2 with 'same' padding; used for Fuse (k×k) and the output head."""

    def __init__(self, cin: int, cmid: int, cout: int, k1: int, k2: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cmid, k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(cmid, cout, k2, padding=k2 // 2)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.leaky_relu(self.conv1(x), self.negative_slope))
