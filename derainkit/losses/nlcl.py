"""NLCL's training objective (Ye et al., CVPR 2022), faithful to the official code or with its quirks fixed.

The model writes a rainy image as O = B + R; G_B and G_R predict B̂ and R̂ (all in [-1, 1]). Official
objective (reference note §1.4, code ``models/NLCL_model.py`` @ f4b44ac), every default here:

    L_G = λ_GAN·MSE(D(B̂), 1)                                          λ_GAN = 1     "G_GAN"
        + λ_NCE·½[LocNCE(O → B̂) + LocNCE(B_real → G_B(B_real))]       λ_NCE = 1     "NCE", "NCE_Y", "NCE_both"
        + λ_Dis·LayerNCE(B̂, R̂)                                         λ_Dis = 1     "DisNCE" (the NLCL loss)
        + λ_MSE·mean(B̂ + R̂ − O)²                                        λ_MSE = 1     "MSE" (consistency)
        + λ_L1·sparsity                                                λ_L1 = 0.1    "L1"
    L_D = ½[MSE(D(B̂.detach()), 0) + MSE(D(B_real), 1)]                              "D_fake", "D_real", "D"

* LocNCE (location contrastive, CUT's PatchNCE with non-local sampling): G_B's own features at layers
  0, 2, 4, 8, 12; 256 centres chosen by the non-local search on the *source's* layer-0 features; per
  centre, the query from the target's features, the positive the source's at the same centre (detached),
  the negatives the source's at the other 255 (self-similar, hence hard) centres; τ = 0.07; mean over
  centres and layers.
* LayerNCE (layer contrastive = NLCL): the discriminator as encoder; 8 self-similar B̂ positions (search in
  B̂'s pixels around one random anchor) and 128 self-similar R̂ positions (independent anchor in R̂);
  per layer, the supervised-contrastive (SupCon "L_out") loss over the 136 embeddings labelled background
  or rain, τ = 0.07, every embedding an anchor; mean over the layers.
* Projection heads: Linear → ReLU → Linear (256), then L2 normalisation.

Faithful vs fixed (``NLCLLossConfig.faithful``; the fixture README's quirk numbers):

=====  =======================================  ===========================================================
Q      faithful=True (official code)            faithful=False (default: fixed)
=====  =======================================  ===========================================================
Q1     D features [RGB, f0, f3, f7]: layer 11   D features [f0, f3, f7, f11], one per requested layer
       computed and dropped, raw pixels used
       as a "layer" (heads 3, 64, 128, 256)      (heads 64, 128, 256, 512)
Q2     f0 is post-LeakyReLU (in-place           f0 is the raw conv output, like f3, f7, f11 (all taken
       activation overwrites the stored conv)    before their norm/activation)
Q3     centres map to ⌊y·H_l/256⌋, ⌊x·H_l/256⌋   ⌊y·H_l/H⌋, ⌊x·W_l/W⌋ (identical at 256² crops; right for any
       (256 hard-coded, H_l for both axes)       crop size and aspect)
Q7     L2 normalisation x / (‖x‖ + 1e-7): at     x / max(‖x‖, 1e-12) (F.normalize): unit vectors whatever the
       init the "unit" D embeddings have norms   scale of the head outputs
       ≈ 0.94, 0.26, 0.63
Q5a    PatchNCE fills the negatives' diagonal   the diagonal (the positive's own key) is excluded (−∞)
       with −10 before dividing by τ
Q5b    "sparsity" term 0.1·L1(O, B̂)              0.1·mean|R̂|, the rain layer's sparsity the paper's figure
                                                 names (L_Sparsity)
batch  LayerNCE summed over the images of a     averaged over the batch (the other terms are means), so λ
       batch (official DisNCELoss; batch 1)      does not scale with the batch size
=====  =======================================  ===========================================================

Both modes: the non-local search is vectorised and batched (``derainkit.losses.nonlocal_sampling``;
the official one needs batch 1), anchors in [16, size−16], 16-px patches, 40-px windows. At 256² crops
and batch 1 the two modes differ only by Q1, Q2, Q7, Q5a and Q5b. The optimiser quirks (a head never
stepped, an optimiser built on the wrong head) belong to the training task, not to this module.

The asymmetric extension (TPAMI 2024, ``contrast="asymmetric"``) is **our reconstruction**: the paper's
exact loss is not available to us, only its abstract, which reports that non-local background patches
have a higher intrinsic dimension than rain patches and that the loss should model the two layers'
different compactness. Here the layer contrastive loss keeps its SupCon terms but (1) each anchor's
logits use its class's temperature, τ_B/τ_R = ID_B/ID_R around the geometric mean τ (``id_ratio``,
measured by ``derainkit.metrics.intrinsic_dim``; or explicit ``tau_background``/``tau_rain``): compact
rain is pulled together sharply, diverse background softly; and (2) the loss is the weighted sum of the
per-class mean anchor losses (``weight_background``, ``weight_rain``), so the 8 background anchors count
as much as the 128 rain ones. With equal temperatures and weights 8/136, 128/136 it is the symmetric loss.

Entry points: ``nlcl_forward`` (B̂, R̂, idt_B), ``discriminator_losses`` and ``generator_losses`` (the D
step and the G step, called separately by a training task in the official order forward → D step →
G step), and ``nlcl_objective`` (both on one forward, as the official ``data_dependent_initialize``).
All return ``dict[str, 0-d tensor]``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from derainkit.errors import ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict
from derainkit.losses.nonlocal_sampling import (
    PATCH_SIZE,
    SEARCH_SIZE,
    AnchorSource,
    NonlocalSample,
    gather_rows,
    layer_positions,
    nonlocal_topk,
)

# sampler names, in the order the official G loss calls them (the order Python-random anchors are drawn)
LOC, LOC_IDT, POS, NEG = "loc", "loc_idt", "pos", "neg"
_NORM_EPS_FAITHFUL = 1e-7  # official Normalize: x / (‖x‖ + 1e-7)
_NCE_DIAGONAL_FAITHFUL = -10.0  # official PatchNCE: masked_fill_(diagonal, -10.0) before / τ


@dataclass(frozen=True)
class NLCLLossConfig:
    faithful: bool = False  # reproduce the official code's loss/network quirks (see the module docstring)
    lambda_gan: float = 1.0
    lambda_nce: float = 1.0
    lambda_dis: float = 1.0  # official lambda_DisNCE: the layer contrastive (NLCL) loss
    lambda_mse: float = 1.0
    lambda_l1: float = 0.1
    tau: float = 0.07  # official nce_T, both contrastive losses
    num_patches: int = 256  # LocNCE centres
    num_pos: int = 8  # LayerNCE background positions
    num_neg: int = 128  # LayerNCE rain positions
    patch_size: int = PATCH_SIZE
    search_size: int = SEARCH_SIZE
    gen_layers: tuple[int, ...] = (0, 2, 4, 8, 12)  # official gen_nce_layers (G_B Sequential indices)
    adv_layers: tuple[int, ...] = (0, 3, 7, 11)  # official adv_nce_layers (D Sequential indices)
    nce_idt: bool = True  # official CUT mode: LocNCE also on (B_real, G_B(B_real))
    # The TPAMI 2024 extension, our reconstruction from its abstract (module docstring): "asymmetric" gives
    # background- and rain-anchored terms their own temperature and weight.
    contrast: str = "symmetric"  # symmetric (CVPR 2022, official) | asymmetric
    id_ratio: float | None = None  # measured ID(background) / ID(rain): sets the two temperatures
    tau_background: float | None = None  # explicit temperatures (override id_ratio)
    tau_rain: float | None = None
    weight_background: float = 1.0  # asymmetric: each class's mean anchor loss, weighted
    weight_rain: float = 1.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "NLCLLossConfig":
        for key in ("gen_layers", "adv_layers"):
            v = (d or {}).get(key)
            if v is not None and (not isinstance(v, (list, tuple)) or not all(isinstance(i, int) for i in v)):
                raise ConfigError(f"NLCL loss config {key!r} must be a list of integers, got {v!r}")
        return strict_from_dict(cls, d, "NLCL loss config", sort_valid=True)

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="NLCL loss config ")
        self.validate()

    def validate(self) -> None:
        if self.tau <= 0 or min(self.lambda_gan, self.lambda_nce, self.lambda_dis, self.lambda_mse,
                                self.lambda_l1) < 0:
            raise ConfigError(f"NLCL loss config: tau must be > 0 and every lambda >= 0, got {self.to_dict()}")
        if self.num_pos < 2 or self.num_neg < 2 or self.num_patches < 2:
            raise ConfigError("NLCL loss config: num_pos, num_neg and num_patches must be >= 2 (each anchor "
                              "needs a same-label partner)")
        if self.patch_size < 2 or self.patch_size % 2 or self.search_size < 2 or self.search_size % 2:
            raise ConfigError("NLCL loss config: patch_size and search_size must be even and >= 2")
        for key in ("gen_layers", "adv_layers"):
            layers = getattr(self, key)
            if not layers or list(layers) != sorted(set(layers)):
                raise ConfigError(f"NLCL loss config {key!r} must be increasing and distinct, got {list(layers)}")
        if self.contrast not in ("symmetric", "asymmetric"):
            raise ConfigError(f"NLCL loss config contrast={self.contrast!r}: expected symmetric or asymmetric")
        for key in ("id_ratio", "tau_background", "tau_rain"):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(f"NLCL loss config {key}={v!r} must be a positive number or null")
        if min(self.weight_background, self.weight_rain) < 0:
            raise ConfigError("NLCL loss config: weight_background and weight_rain must be >= 0")

    def layer_temperatures(self) -> tuple[float, float]:
        """(τ_background, τ_rain) of the layer contrastive loss. Symmetric: both ``tau``. Asymmetric: the
        explicit values, else from ``id_ratio`` = ID_B/ID_R: τ_B/τ_R = ID_B/ID_R around the geometric mean
        ``tau`` (the more intrinsic dimensions a class spans, the softer its pull), else both ``tau``."""
        if self.contrast == "symmetric":
            return self.tau, self.tau
        if self.id_ratio is not None:
            r = float(self.id_ratio) ** 0.5
            tb, tr = self.tau * r, self.tau / r
        else:
            tb, tr = self.tau, self.tau
        return (self.tau_background or tb), (self.tau_rain or tr)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gen_layers"], d["adv_layers"] = list(self.gen_layers), list(self.adv_layers)
        return d


# ---------------------------------------------------------------------------------------------- terms

def lsgan_loss(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """LSGAN: mean (D(x) − 1)² for ``real``, mean D(x)² otherwise (official GANLoss('lsgan'))."""
    return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if real else 0.0))


def l2_normalize(x: torch.Tensor, faithful: bool) -> torch.Tensor:
    """Rows to unit length: official x / (‖x‖ + 1e-7) (Q7), or F.normalize's x / max(‖x‖, 1e-12)."""
    if faithful:
        return x / (x.pow(2).sum(-1, keepdim=True).pow(0.5) + _NORM_EPS_FAITHFUL)
    return F.normalize(x, dim=-1)


def patch_nce(q: torch.Tensor, k: torch.Tensor, tau: float, faithful: bool) -> torch.Tensor:
    """b×P per-position PatchNCE losses: query q_i against key k_i (positive) and k_j, j≠i, of the same
    image (negatives); k is detached. Official: diagonal of the negatives filled with −10 before /τ."""
    k = k.detach()
    l_pos = (q * k).sum(-1, keepdim=True)  # b×P×1
    l_neg = torch.bmm(q, k.transpose(1, 2))  # b×P×P
    eye = torch.eye(q.shape[1], dtype=torch.bool, device=q.device)[None]
    l_neg = l_neg.masked_fill(eye, _NCE_DIAGONAL_FAITHFUL if faithful else float("-inf"))
    logits = torch.cat([l_pos, l_neg], dim=2) / tau
    target = torch.zeros(logits.shape[0] * logits.shape[1], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits.flatten(0, 1), target, reduction="none").view(q.shape[:2])


def asymmetric_supcon_loss(z_back: torch.Tensor, z_rain: torch.Tensor, tau_back: float, tau_rain: float,
                           weight_back: float = 1.0, weight_rain: float = 1.0) -> torch.Tensor:
    """Per-image asymmetric SupCon (our reconstruction of the TPAMI 2024 loss): the same "L_out" terms as
    :func:`supcon_loss`, but each anchor's logits use its class's temperature, and the loss is
    w_B·mean over background anchors + w_R·mean over rain anchors (so the 8 background anchors are not
    outvoted by the 128 rain ones). Equal τs and weights ∝ class sizes give back the symmetric loss."""
    z = torch.cat([z_back, z_rain], dim=1)
    n, npos = z.shape[1], z_back.shape[1]
    labels = torch.arange(n, device=z.device) < npos
    tau = torch.where(labels, torch.tensor(tau_back, device=z.device), torch.tensor(tau_rain, device=z.device))
    logits = torch.bmm(z, z.transpose(1, 2)) / tau.to(z.dtype)[None, :, None]
    logits = logits - logits.max(dim=2, keepdim=True).values.detach()
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    positive = (labels[:, None] == labels[None, :]) & not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(2, keepdim=True))
    per_anchor = -(log_prob * positive).sum(2) / positive.sum(1)
    return weight_back * per_anchor[:, :npos].mean(1) + weight_rain * per_anchor[:, npos:].mean(1)


def supcon_loss(z_back: torch.Tensor, z_rain: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-image SupCon "L_out" over background (b×P×D) and rain (b×N×D) embeddings, every embedding an
    anchor: −mean_i (1/|P(i)|) Σ_{p∈P(i)} log softmax_{a≠i}(z_i·z_a/τ)[p]. Returns b values."""
    z = torch.cat([z_back, z_rain], dim=1)
    n, npos = z.shape[1], z_back.shape[1]
    logits = torch.bmm(z, z.transpose(1, 2)) / tau
    logits = logits - logits.max(dim=2, keepdim=True).values.detach()  # official stabilisation
    labels = torch.arange(n, device=z.device) < npos
    not_self = ~torch.eye(n, dtype=torch.bool, device=z.device)
    positive = (labels[:, None] == labels[None, :]) & not_self
    exp_sum = (torch.exp(logits) * not_self).sum(2, keepdim=True)
    log_prob = logits - torch.log(exp_sum)
    mean_log_prob_pos = (log_prob * positive).sum(2) / positive.sum(1)
    return -mean_log_prob_pos.mean(1)


# -------------------------------------------------------------------------------- contrastive losses

def _sample(search_map: torch.Tensor, name: str, k: int, anchors: AnchorSource, cfg: NLCLLossConfig,
            record: dict | None) -> NonlocalSample:
    b, _, h, w = search_map.shape
    anchor = anchors.draw(name, b, h, w, cfg.patch_size)
    sample = nonlocal_topk(search_map.detach(), anchor, k, cfg.patch_size, cfg.search_size)
    if record is not None:
        record[name] = sample
    return sample


def _embed(head: nn.Module, i: int, feat: torch.Tensor, sample: NonlocalSample, search_hw: tuple[int, int],
           faithful: bool) -> torch.Tensor:
    flat = layer_positions(sample.ids, search_hw, tuple(feat.shape[2:]), faithful)
    return l2_normalize(head(i, gather_rows(feat, flat)), faithful)


def location_nce(nets: nn.Module, source: torch.Tensor, target: torch.Tensor, name: str, anchors: AnchorSource,
                 cfg: NLCLLossConfig, record: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(LocNCE, per-layer values) for a translation ``source`` → ``target`` = G_B(source), λ_NCE applied."""
    with torch.no_grad():  # keys are detached in PatchNCE anyway
        feats_k = nets.background.encode(source, cfg.gen_layers)
    feats_q = nets.background.encode(target, cfg.gen_layers)
    sample = _sample(feats_k[0], name, cfg.num_patches, anchors, cfg, record)
    hw = tuple(source.shape[2:])
    per_layer, per_position = [], []
    for i, (fq, fk) in enumerate(zip(feats_q, feats_k)):
        q = _embed(nets.gen_head, i, fq, sample, hw, cfg.faithful)
        with torch.no_grad():
            k = _embed(nets.gen_head, i, fk, sample, hw, cfg.faithful)
        losses = patch_nce(q, k, cfg.tau, cfg.faithful) * cfg.lambda_nce
        per_position.append(losses.detach())
        per_layer.append(losses.mean())
    if record is not None:
        record[f"{name}_per_position"] = torch.stack(per_position)
    values = torch.stack(per_layer)
    return values.sum() / len(per_layer), values


def layer_nce(nets: nn.Module, background: torch.Tensor, rain: torch.Tensor, anchors: AnchorSource,
              cfg: NLCLLossConfig, record: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(LayerNCE, per-layer values) between B̂ and R̂ through the discriminator's features, λ_Dis applied."""
    feats_b = nets.disc.encode(background, cfg.adv_layers, faithful=cfg.faithful)
    feats_r = nets.disc.encode(rain, cfg.adv_layers, faithful=cfg.faithful)
    pos = _sample(background, POS, cfg.num_pos, anchors, cfg, record)  # searched in B̂'s pixels
    neg = _sample(rain, NEG, cfg.num_neg, anchors, cfg, record)  # independent anchor, in R̂'s pixels
    hw = tuple(background.shape[2:])
    per_layer = []
    for i in range(len(cfg.adv_layers)):  # faithful: zip drops the list's fifth entry (Q1)
        zb = _embed(nets.adv_back_head, i, feats_b[i], pos, hw, cfg.faithful)
        zr = _embed(nets.adv_rain_head, i, feats_r[i], neg, hw, cfg.faithful)
        if cfg.contrast == "asymmetric":
            per_image = asymmetric_supcon_loss(zb, zr, *cfg.layer_temperatures(), cfg.weight_background,
                                               cfg.weight_rain)
        else:
            per_image = supcon_loss(zb, zr, cfg.tau)
        per_layer.append(per_image.sum() if cfg.faithful else per_image.mean())
    values = torch.stack(per_layer)
    return values.sum() / len(per_layer) * cfg.lambda_dis, values * cfg.lambda_dis


# ------------------------------------------------------------------------------------- the objective

@dataclass
class NLCLForward:
    rainy: torch.Tensor  # O, b×3×H×W in [-1, 1]
    clean: torch.Tensor  # B_real: unpaired clean images, same shape
    background: torch.Tensor  # B̂ = G_B(O)
    rain: torch.Tensor  # R̂ = G_R(O)
    idt_background: torch.Tensor | None  # G_B(B_real) when the identity LocNCE is on


def nlcl_forward(nets: nn.Module, rainy: torch.Tensor, clean: torch.Tensor, cfg: NLCLLossConfig) -> NLCLForward:
    """The official forward: R̂ = G_R(O); B̂ (and G_B(B_real)) from one G_B pass over cat(O, B_real)."""
    if rainy.shape != clean.shape:
        raise ValueError(f"NLCL: rainy {tuple(rainy.shape)} and clean {tuple(clean.shape)} batches differ")
    rain = nets.rain(rainy)
    if cfg.nce_idt and cfg.lambda_nce > 0:
        both = nets.background(torch.cat([rainy, clean], dim=0))
        background, idt = both[:rainy.shape[0]], both[rainy.shape[0]:]
    else:
        background, idt = nets.background(rainy), None
    return NLCLForward(rainy, clean, background, rain, idt)


def discriminator_losses(nets: nn.Module, fwd: NLCLForward) -> dict[str, torch.Tensor]:
    """The D step's terms (B̂ detached). The caller makes D trainable first."""
    d_fake = lsgan_loss(nets.disc(fwd.background.detach()), real=False)
    d_real = lsgan_loss(nets.disc(fwd.clean), real=True)
    return {"D_fake": d_fake, "D_real": d_real, "D": 0.5 * (d_fake + d_real)}


def generator_losses(nets: nn.Module, fwd: NLCLForward, anchors: AnchorSource, cfg: NLCLLossConfig,
                     per_layer: bool = False, record: dict | None = None) -> dict[str, torch.Tensor]:
    """The G step's terms and their sum ``G``. The caller freezes D (gradients still pass through it to
    B̂ and R̂). Anchors are drawn in the official order: LOC, LOC_IDT, POS, NEG. With ``per_layer``, keys
    ``"NCE/<layer>"``, ``"NCE_Y/<layer>"`` and ``"DisNCE/<layer>"`` (faithful: ``rgb`` for the pixel
    "layer") are added; ``record`` (a dict) receives each sampler's ``NonlocalSample`` by name."""
    zero = fwd.background.new_zeros(())
    out: dict[str, torch.Tensor] = {}
    out["G_GAN"] = lsgan_loss(nets.disc(fwd.background), real=True) * cfg.lambda_gan if cfg.lambda_gan > 0 else zero
    layer_names = [str(i) for i in cfg.gen_layers]
    if cfg.lambda_nce > 0:
        out["NCE"], nce = location_nce(nets, fwd.rainy, fwd.background, LOC, anchors, cfg, record)
        if per_layer:
            out.update({f"NCE/{n}": v for n, v in zip(layer_names, nce)})
        if fwd.idt_background is not None:
            out["NCE_Y"], nce_y = location_nce(nets, fwd.clean, fwd.idt_background, LOC_IDT, anchors, cfg, record)
            out["NCE_both"] = 0.5 * (out["NCE"] + out["NCE_Y"])
            if per_layer:
                out.update({f"NCE_Y/{n}": v for n, v in zip(layer_names, nce_y)})
        else:
            out["NCE_both"] = out["NCE"]
    else:
        out["NCE"] = out["NCE_both"] = zero
    if cfg.lambda_dis > 0:
        out["DisNCE"], dis = layer_nce(nets, fwd.background, fwd.rain, anchors, cfg, record)
        if per_layer:
            names = (["rgb"] + [str(i) for i in cfg.adv_layers])[:len(cfg.adv_layers)] if cfg.faithful \
                else [str(i) for i in cfg.adv_layers]
            out.update({f"DisNCE/{n}": v for n, v in zip(names, dis)})
    else:
        out["DisNCE"] = zero
    out["MSE"] = F.mse_loss(fwd.background + fwd.rain, fwd.rainy) * cfg.lambda_mse
    sparsity = F.l1_loss(fwd.rainy, fwd.background) if cfg.faithful else fwd.rain.abs().mean()
    out["L1"] = sparsity * cfg.lambda_l1
    out["G"] = out["G_GAN"] + out["NCE_both"] + out["DisNCE"] + out["MSE"] + out["L1"]
    return out


def nlcl_objective(nets: nn.Module, rainy: torch.Tensor, clean: torch.Tensor, anchors: AnchorSource,
                   cfg: NLCLLossConfig, per_layer: bool = False, record: dict | None = None
                   ) -> tuple[NLCLForward, dict[str, torch.Tensor]]:
    """One forward, the D terms and the G terms with the same D (the official ``data_dependent_initialize``
    pass; for evaluation and tests: a training step must step D between the two, see the module doc)."""
    fwd = nlcl_forward(nets, rainy, clean, cfg)
    terms = discriminator_losses(nets, fwd)
    terms.update(generator_losses(nets, fwd, anchors, cfg, per_layer=per_layer, record=record))
    return fwd, terms

