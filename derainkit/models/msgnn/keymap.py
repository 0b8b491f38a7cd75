"""Official MSGNN state_dict key names <-> ours, and loading of official checkpoints.

Official names come from ``ODE_DerainNet`` (msgnn/config/model.py at 98e6d2f): ``res_group``,
``fuse``, ``convert_rainy*``, ``convert_guide``, ``graph_{1,2,4,guide}``, ``gcn_*``, ``out``. The
mapping is a fixed list of templates, so it is explicit and works in both directions.
Checkpoints saved under ``nn.DataParallel`` carry a ``module.`` prefix, which is stripped; the
official training checkpoint ``{'net', 'clock_net', 'opt_net'}`` is accepted too (its 'net' is used).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from derainkit.errors import CheckpointError
from derainkit.weights import read_state_dict

_BRANCHES = (("rainy1", "1", "scale1"), ("rainy2", "2", "scale2"), ("rainy4", "4", "scale4"),
             ("guide", "guide", "exemplar"))


def _templates() -> list[tuple[str, str]]:
    rules = [
        ("res_group.{t}.units.{j}.avg_eca.{p}", "subnets.{t}.blocks.{j}.attn.{p}"),
        ("res_group.{t}.units.{j}.res.0.{p}", "subnets.{t}.blocks.{j}.conv1.{p}"),
        ("res_group.{t}.units.{j}.res.2.{p}", "subnets.{t}.blocks.{j}.conv2.{p}"),
        ("res_group.{t}.conv1x1.{j}.0.{p}", "subnets.{t}.dense.{j}.{p}"),
        ("res_group.{t}.conv_fusion.0.{p}", "subnets.{t}.fusion.{p}"),
        ("fuse.{t}.0.{p}", "fuse.{t}.conv1.{p}"),
        ("fuse.{t}.2.{p}", "fuse.{t}.conv2.{p}"),
        ("convert_rainy.{p}", "head.{p}"),
        ("out.0.{p}", "tail.conv1.{p}"),
        ("out.2.{p}", "tail.conv2.{p}"),
    ]
    for cv, gr, ours in _BRANCHES:
        b = f"graph.branches.{ours}"
        rules += [
            (f"convert_{cv}.0.{{p}}", f"{b}.values.conv.{{p}}"),
            (f"convert_{cv}.2.units.{{j}}.res.0.{{p}}", f"{b}.values.dense.blocks.{{j}}.conv1.{{p}}"),
            (f"convert_{cv}.2.units.{{j}}.res.2.{{p}}", f"{b}.values.dense.blocks.{{j}}.conv2.{{p}}"),
            (f"convert_{cv}.2.conv1x1.{{j}}.0.{{p}}", f"{b}.values.dense.dense.{{j}}.{{p}}"),
            (f"graph_{gr}.embedcnn1.{{i}}.0.{{p}}", f"{b}.embed_db.convs.{{i}}.{{p}}"),
            (f"graph_{gr}.embedcnn2.{{i}}.0.{{p}}", f"{b}.embed_query.convs.{{i}}.{{p}}"),
            (f"gcn_{gr}.knn_downsample.{{i}}.0.{{p}}", f"{b}.unused_knn_downsample.convs.{{i}}.{{p}}"),
        ]
        for off, mine in (("weightnet_hr", "weight_net"), ("weightnet_lr", "unused_weightnet_lr")):
            rules += [
                (f"gcn_{gr}.{off}.0.0.{{p}}", f"{b}.{mine}.conv_in.{{p}}"),
                (f"gcn_{gr}.{off}.1.body.0.{{p}}", f"{b}.{mine}.res_conv1.{{p}}"),
                (f"gcn_{gr}.{off}.1.body.2.{{p}}", f"{b}.{mine}.res_conv2.{{p}}"),
                (f"gcn_{gr}.{off}.2.0.{{p}}", f"{b}.{mine}.conv_out.{{p}}"),
            ]
    return rules


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, rx in (("t", r"\d+"), ("j", r"\d+"), ("i", r"\d+"), ("p", r"[A-Za-z_]+")):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{rx})")
    return re.compile(pattern + r"\Z")


_RULES = [(_compile(off), off, _compile(ours), ours) for off, ours in _templates()]


def official_to_ours(key: str) -> str | None:
    """Our parameter name for an official one (None when the key is not an MSGNN key)."""
    for rx, _, _, ours in _RULES:
        mt = rx.match(key)
        if mt:
            return ours.format(**mt.groupdict())
    return None


def ours_to_official(key: str) -> str | None:
    """The official parameter name for one of ours (None for modules the official code lacks)."""
    for _, off, rx, _ in _RULES:
        mt = rx.match(key)
        if mt:
            return off.format(**mt.groupdict())
    return None


def export_official_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's weights under the official key names (code variant only)."""
    out = {}
    for key, value in model.state_dict().items():
        off = ours_to_official(key)
        if off is None:
            raise CheckpointError(f"parameter {key!r} has no official counterpart (variant/config not in the "
                                  "official code)")
        out[off] = value
    # official key order: res_group, fuse, convert_rainy, convert_*, graph_X/gcn_X pairs, out
    order = ["res_group.", "fuse.", "convert_rainy.", "convert_rainy1.", "convert_rainy2.", "convert_rainy4.",
             "convert_guide.", "graph_1.", "gcn_1.", "graph_2.", "gcn_2.", "graph_4.", "gcn_4.", "graph_guide.",
             "gcn_guide.", "out."]
    rank = {key: next(i for i, p in enumerate(order) if key.startswith(p)) for key in out}
    return {key: out[key] for key in sorted(out, key=lambda k: rank[k])}  # stable within a prefix


def _read(source: Mapping[str, Any] | str | Path) -> dict[str, torch.Tensor]:
    if isinstance(source, (str, Path)):
        return read_state_dict(source)
    if not isinstance(source, Mapping):
        raise CheckpointError(f"state_dict: expected a mapping, got {type(source).__name__}")
    obj = source
    for wrapper in ("net", "state_dict", "model"):  # official train.py saves {'net', 'clock_net', 'opt_net'}
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"state_dict: entries that are not tensors: {bad[:5]}")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def describe_official(sd: Mapping[str, torch.Tensor]) -> str:
    """Best-effort guess of the config an official-format state_dict was built with (for error hints)."""
    keys = list(sd)
    subnets = {int(m.group(1)) for k in keys if (m := re.match(r"res_group\.(\d+)\.", k))}
    units = {int(m.group(1)) for k in keys if (m := re.match(r"res_group\.0\.units\.(\d+)\.", k))}
    parts = []
    if subnets:
        parts.append(f"n_subnets={max(subnets) + 1}")
    if units:
        parts.append(f"m_blocks={max(units) + 1}")
    if "convert_rainy.weight" in sd:
        parts.append(f"channels={sd['convert_rainy.weight'].shape[0]}")
    scales = [s for s in (1, 2, 4) if any(k.startswith(f"graph_{s}.") for k in keys)]
    parts.append(f"scales={tuple(scales)}")
    parts.append(f"exemplar={any(k.startswith('graph_guide.') for k in keys)}")
    if "fuse.0.0.weight" in sd:
        parts.append(f"fusion_kernel={sd['fuse.0.0.weight'].shape[-1]}")
    parts.append(f"fusion_connection={any('.conv_fusion.' in k for k in keys)}")
    parts.append(f"attention={'gct' if any('.avg_eca.' in k for k in keys) else '?'}")
    return "variant='code', " + ", ".join(parts)


def load_official_state_dict(model: nn.Module, state_dict_or_path: Mapping[str, Any] | str | Path) -> nn.Module:
    """Load official MSGNN weights (official key names, optional ``module.`` prefix, or a training
    checkpoint) into ``model``. Our own key names are accepted too. Raises CheckpointError listing
    missing / unexpected / mis-shaped keys when the checkpoint belongs to another config or variant.
    Returns the model."""
    sd = _read(state_dict_or_path)
    official = any(official_to_ours(k) is not None for k in sd)
    if official:
        mapped, untranslated = {}, []
        for key, value in sd.items():
            ours = official_to_ours(key)
            if ours is None:
                untranslated.append(key)
            else:
                mapped[ours] = value
    else:
        mapped, untranslated = dict(sd), []
    own = model.state_dict()
    name = ours_to_official if official else (lambda k: k)
    missing = [name(k) or k for k in own if k not in mapped]
    unexpected = untranslated + [_display_name(k, official) for k in mapped if k not in own]
    mismatched = [f"{name(k) or k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or mismatched:
        cfg = getattr(model, "config", None)
        msg = [f"checkpoint does not fit this MSGNN ({_short_cfg(cfg)}):"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
                msg.append(f"  {len(items)} {label}: {shown}")
        if official:
            msg.append(f"  the checkpoint looks like: {describe_official(sd)}")
        if cfg is not None and getattr(cfg, "variant", "code") != "code":
            msg.append("  official checkpoints only fit variant='code'")
        raise CheckpointError("\n".join(msg))
    model.load_state_dict(mapped, strict=True)
    return model


def _display_name(key: str, official: bool) -> str:
    # report keys in the naming the checkpoint used
    return (ours_to_official(key) or key) if official else key


def _short_cfg(cfg: Any) -> str:
    if cfg is None:
        return "unknown config"
    d = cfg.to_dict()
    keys = ("variant", "n_subnets", "m_blocks", "channels", "attention", "fusion_connection", "graph", "scales",
            "exemplar", "fusion_kernel")
    return ", ".join(f"{k}={d[k]!r}" for k in keys)
