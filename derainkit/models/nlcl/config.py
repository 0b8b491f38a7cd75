"""Typed configuration of NLCL's networks (Ye et al., CVPR 2022, "Unsupervised Deraining: Where
Contrastive Learning Meets Self-Similarity").

Architecture facts come from the official code (yunguo224/NLCL @ f4b44ac; reference note
``shared/reference/nlcl-official-code.md``, "§" below):

* two generators of the same architecture (§1.1): a 3×3 conv to ``channels`` maps, ``res_blocks``
  residual blocks (conv-IN-ReLU-conv-IN plus the skip), a conv-IN-ReLU-conv tail and a 3×3 conv back
  to RGB; full resolution throughout, no output activation, inputs and outputs in [-1, 1];
* a PatchGAN discriminator (§1.2): ``disc_layers`` = 3 (CUT's "basic"), ``disc_channels`` = 64,
  4×4 convs of stride 1 each followed by a [1,2,1]² blur-pool of stride 2 (antialiased), InstanceNorm;
* projection heads (§1.3): Linear(C→``head_channels``) → ReLU → Linear(``head_channels``→``head_channels``)
  per feature layer. The official code creates them lazily from the first batch's feature widths; here
  their input widths are explicit (``NLCLConfig.gen_feature_widths`` / ``disc_feature_widths``).

Which feature layers the losses use (and the official code's quirks there) is the loss's business:
``derainkit.losses.nlcl.NLCLLossConfig``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from derainkit.errors import ConfigError
from derainkit.strictconfig import coerce_fields, strict_from_dict


@dataclass(frozen=True)
class NLCLConfig:
    channels: int = 32  # generator width (official G0)
    res_blocks: int = 16  # residual blocks per generator
    disc_channels: int = 64  # discriminator base width (official ndf)
    disc_layers: int = 3  # PatchGAN depth (official n_layers_D; "basic" = 3)
    head_channels: int = 256  # projection-head width (official netF_nc)

    def __post_init__(self) -> None:
        coerce_fields(self, prefix="NLCL config ")
        if min(self.channels, self.disc_channels, self.head_channels, self.disc_layers) < 1 or self.res_blocks < 0:
            raise ConfigError(f"invalid NLCL config {self.to_dict()}: widths and disc_layers must be >= 1, "
                              f"res_blocks >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "NLCLConfig":
        return strict_from_dict(cls, d, "NLCL config", sort_valid=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- feature widths, so that the projection heads can be built before any forward pass ---
    @property
    def gen_layer_count(self) -> int:
        """Positions of the generator's ``gen`` Sequential: conv, res_blocks blocks, tail, conv."""
        return self.res_blocks + 3

    def gen_feature_widths(self, layers: Sequence[int]) -> list[int]:
        """Channel count of the generator's output at each Sequential index in ``layers``."""
        last = self.gen_layer_count - 1
        for i in layers:
            if not 0 <= i <= last:
                raise ConfigError(f"generator feature layer {i} out of range 0..{last}")
        return [3 if i == last else self.channels for i in layers]

    def disc_conv_widths(self) -> dict[int, int]:
        """Sequential index of each discriminator conv -> its output channels (n_layers=3: 0,3,7,11,14)."""
        widths, idx, mult = {0: self.disc_channels}, 3, 1  # conv0, LReLU, blur
        for n in range(1, self.disc_layers):
            mult = min(2 ** n, 8)
            widths[idx] = self.disc_channels * mult
            idx += 4  # conv, IN, LReLU, blur
        widths[idx] = self.disc_channels * min(2 ** self.disc_layers, 8)
        widths[idx + 3] = 1  # conv, IN, LReLU, then the 1-channel prediction conv
        return widths

    def disc_feature_widths(self, layers: Sequence[int], include_input: bool) -> list[int]:
        """Widths of the discriminator's encode-mode features for ``layers``; with ``include_input`` the
        RGB input comes first (the official feature list, quirk Q1)."""
        convs = self.disc_conv_widths()
        for i in layers:
            if i not in convs:
                raise ConfigError(f"discriminator feature layer {i} is not a conv; conv layers: {sorted(convs)}")
        return ([3] if include_input else []) + [convs[i] for i in layers]
