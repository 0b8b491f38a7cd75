"""NLCL (Ye et al., CVPR 2022): unsupervised deraining by non-local contrastive learning.

    from derainkit.models.nlcl import NLCLDerain, load_nlcl_weights
    model = load_nlcl_weights(NLCLDerain(), "latest_net_Back.pth")   # + latest_net_Rain.pth beside it
    background = model(x)                  # x: b×3×H×W RGB in [0, 1] -> derained RGB in [0, 1]
    background, rain = model.layers(x)     # rain layer in image units: background + rain ≈ x

Training-side networks (both generators, the discriminator-encoder and the projection heads):
``build_nlcl_nets`` / ``NLCLNets``; the losses are in ``derainkit.losses.nlcl``. Modules:
``config`` (NLCLConfig), ``generator``, ``discriminator``, ``heads``, ``nets``, ``derain`` (the
[0, 1] wrapper and the official quantisation), ``weights`` (official and kit files).
"""
from derainkit.models.nlcl.config import NLCLConfig
from derainkit.models.nlcl.derain import NLCLDerain, NLCLRainLayer
from derainkit.models.nlcl.discriminator import NLCLDiscriminator
from derainkit.models.nlcl.generator import NLCLGenerator
from derainkit.models.nlcl.heads import ProjectionHeads, xavier_init_
from derainkit.models.nlcl.nets import ADV_LAYERS, GEN_LAYERS, NLCLNets, adv_head_widths, build_nlcl_nets
from derainkit.models.nlcl.weights import (
    load_generator_file,
    load_nlcl_weights,
    load_official_nets,
    read_state_file,
)

__all__ = [
    "NLCLConfig", "NLCLDerain", "NLCLRainLayer", "NLCLDiscriminator", "NLCLGenerator", "ProjectionHeads",
    "xavier_init_", "NLCLNets", "build_nlcl_nets", "adv_head_widths", "GEN_LAYERS", "ADV_LAYERS",
    "load_generator_file", "load_nlcl_weights", "load_official_nets", "read_state_file",
]
