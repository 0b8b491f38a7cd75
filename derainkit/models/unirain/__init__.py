"""UniRain (Yang et al., CVPR 2026): our reconstruction of its asymmetric mixture-of-experts network.

The official release has no model code; ``config.py`` says what follows the paper's equations (the
per-image noisy router, soft MoE in the encoder, hard top-k MoE in the decoder) and what is our
reconstruction (the Restormer backbone, where the MoE layers sit, the expert width, the noise scale).

    from derainkit.models.unirain import UniRain, UniRainConfig
    net = UniRain(UniRainConfig.preset("small"))
    y = net(x)                      # b×3×H×W in [0, 1], any H, W
    net.routing()                   # per-image expert weights of every MoE layer in that forward
    routing_statistics(net, {"drs": [x1, x2], "nrd": [x3]})   # mean weights per group and layer
"""
from derainkit.models.unirain.config import PRESETS, UniRainConfig
from derainkit.models.unirain.model import UniRain, count_parameters, load_unirain_weights, routing_statistics
from derainkit.models.unirain.moe import HardMoE, Routing, SoftMoE
from derainkit.models.unirain.router import NoisyRouter, RoutingNoise

__all__ = ["HardMoE", "NoisyRouter", "PRESETS", "Routing", "RoutingNoise", "SoftMoE", "UniRain", "UniRainConfig",
           "count_parameters", "load_unirain_weights", "routing_statistics"]
