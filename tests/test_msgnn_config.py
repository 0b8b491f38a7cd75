"""MSGNNConfig: strict parsing, validation, variant resolution."""
from __future__ import annotations

import json

import pytest

from derainkit.errors import ConfigError
from derainkit.models.msgnn import MSGNNConfig


def test_defaults_are_the_official_code_settings():
    cfg = MSGNNConfig()
    assert (cfg.variant, cfg.n_subnets, cfg.m_blocks, cfg.channels) == ("code", 4, 12, 32)
    assert (cfg.k, cfg.patch_size, cfg.stride, cfg.window_size) == (5, 3, 3, 30)
    assert cfg.scales == (1, 2, 4) and cfg.exemplar and cfg.graph and cfg.fusion_connection
    assert cfg.attention == "gct"
    r = cfg.resolve()
    assert (r.window_rule, r.fusion_kernel, r.embedding, r.edge_features, r.aggregate) == \
        ("msgnn", 1, "per_branch", "l1", "value_net")
    assert r.train_embedding is False and r.self_neighbour is False and r.keep_unused is True
    assert cfg.window_rule is None  # resolve() returns a copy; the user's config is untouched


def test_code_variant_without_exemplar_uses_5x5_fuse():
    assert MSGNNConfig(exemplar=False).resolve().fusion_kernel == 5


def test_paper_variant_resolution_and_overrides():
    r = MSGNNConfig(variant="paper").resolve()
    assert (r.embedding, r.train_embedding, r.edge_features, r.aggregate, r.self_neighbour, r.window_rule,
            r.fusion_kernel, r.keep_unused) == ("shared", True, "signed", "embedding", True, "centered", 5, False)
    r = MSGNNConfig(variant="paper", edge_features="l1", window_rule="global", fusion_kernel=3).resolve()
    assert (r.edge_features, r.window_rule, r.fusion_kernel) == ("l1", "global", 3)


def test_round_trip_through_json():
    cfg = MSGNNConfig(variant="paper", n_subnets=2, scales=(1, 4), k=7, stride=2, attention="se")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["scales"] == [1, 4]
    assert MSGNNConfig.from_dict(data) == cfg
    assert MSGNNConfig.from_dict(None) == MSGNNConfig()


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        MSGNNConfig.from_dict({"n_subnet": 2})
    msg = str(err.value)
    assert "n_subnet" in msg and "n_subnets" in msg and "window_rule" in msg


@pytest.mark.parametrize("bad, needle", [
    ({"variant": "official"}, "variant"),
    ({"attention": "cbam"}, "attention"),
    ({"window_rule": "square"}, "window_rule"),
    ({"n_subnets": 0}, "n_subnets"),
    ({"k": 2.5}, "k"),
    ({"k": True}, "k"),
    ({"graph": "yes"}, "graph"),
    ({"scales": [1, 3]}, "scales"),
    ({"scales": [2, 2]}, "duplicates"),
    ({"stride": 4, "patch_size": 3}, "stride"),
    ({"fusion_kernel": 4}, "fusion_kernel"),
    ({"scales": [], "exemplar": False}, "at least one branch"),
    ({"edge_features": "l2"}, "edge_features"),
    ({"dist_eps": -1.0}, "dist_eps"),
])
def test_invalid_values_raise_config_error(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        MSGNNConfig.from_dict(bad)


def test_scales_are_canonicalised_and_branches_named():
    cfg = MSGNNConfig(scales=(4, 1))
    assert cfg.scales == (1, 4)
    assert cfg.branches == ("scale1", "scale4", "exemplar")
    assert MSGNNConfig(graph=False).branches == ()
    assert MSGNNConfig(scales=(), exemplar=True).branches == ("exemplar",)


def test_non_mapping_rejected():
    with pytest.raises(ConfigError):
        MSGNNConfig.from_dict([("k", 3)])
