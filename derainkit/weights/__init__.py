"""Weights files in one place: the kit's ``.safetensors`` exports (write and read) and shipped checkpoints.

Both ``derainkit.models`` (to load weights into a network) and ``derainkit.train`` (to export a finished
run) import this module; it imports neither, so the layers stay one-way.

Exports are byte-stable: the same tensors and metadata always give the same file (same sha256), so a
results record keyed by the weights' digest names the same weights on every run. The safetensors
library writes its metadata from a hash map whose order changes between processes, so the kit
writes the (simple, documented) format itself: an 8-byte little-endian header length, a JSON header
with sorted keys padded with spaces to a multiple of 8 bytes, then the tensors' bytes, ordered by
element size (largest first, which keeps every tensor aligned) and name. Any safetensors reader
loads these files.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Mapping

import torch

from derainkit.errors import CheckpointError
from derainkit.fsutil import atomic_path

METADATA_KEY = "derainkit"  # safetensors metadata entry holding the kit's JSON
SHIPPED_DIR = Path(__file__).resolve().parent  # checkpoints shipped with the kit (see README.md here)

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def shipped(name: str) -> Path | None:
    """A checkpoint shipped in ``derainkit/weights/`` (its README says how it was trained), if present."""
    path = SHIPPED_DIR / name
    return path if path.is_file() else None


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors encoding of ``tensors`` with string ``metadata``, the same bytes for the same input."""
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in order:
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise CheckpointError(f"tensor {name!r}: dtype {t.dtype} cannot be exported")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel (``.module``) and torch.compile
    (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def state_of(model_or_state: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict (of a module, unwrapped from DDP/compile) as own contiguous CPU tensors."""
    if isinstance(model_or_state, torch.nn.Module):
        model_or_state = unwrap(model_or_state).state_dict()
    return {k: v.detach().cpu().contiguous().clone() for k, v in model_or_state.items()}


def export_safetensors(model: torch.nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                       metadata: Mapping[str, Any]) -> Path:
    """Write weights (only) to ``path`` with ``metadata`` as JSON, atomically and byte-stably.

    Metadata should carry the model name and config (``model``, ``model_config``) so that
    ``derainkit.models.build_model(weights=path)`` rebuilds the network; the run config hash, commit,
    iterations and metrics are recorded alongside.
    """
    path = Path(path)
    text = json.dumps(dict(metadata), sort_keys=True, default=str)
    data = safetensors_bytes(state_of(model), {METADATA_KEY: text, "format": "pt"})
    with atomic_path(path, durable=True) as tmp:
        tmp.write_bytes(data)
    return path


def read_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, metadata) of a kit ``.safetensors`` file (any safetensors file: metadata may be {})."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot be read as safetensors ({type(exc).__name__}: {exc})") from None
    return state, meta


def read_metadata(path: str | Path) -> dict:
    """The kit metadata of a ``.safetensors`` file (its header only; {} when it has none)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot be read as safetensors ({type(exc).__name__}: {exc})") from None
    try:
        meta = json.loads(raw.get(METADATA_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata is not a JSON object")
    return meta


# Containers other codes wrap a state_dict in: official train scripts ({'net', 'clock', 'opt'}), generic
# ({'state_dict'}), and the kit's own training checkpoints (format 1: {'model'}; format 2: {'modules'}).
_WRAPPERS = ("net", "state_dict", "model")


def read_state_dict(path: str | Path, module: str = "model") -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a ``.safetensors`` export, or a torch pickle (read with
    ``weights_only=True``: tensors and plain containers only, never code) holding a state_dict, a kit
    training checkpoint (its ``module`` entry), or an official checkpoint dict. A ``module.`` prefix
    (DataParallel) is removed. CheckpointError names the file when it is missing or not weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        obj: Any = read_exported(path)[0]
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged, foreign or code-carrying file
            raise CheckpointError(f"{path}: cannot be read as a weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("modules"), Mapping) and module in obj["modules"]:
        obj = obj["modules"][module]
    for wrapper in _WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict, found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected a state_dict, but entries are not tensors: {bad[:5]}")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_state_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                      what: str) -> torch.nn.Module:
    """``model.load_state_dict(state, strict=True)`` with one CheckpointError line naming the file: which
    keys are missing or unexpected, or which shape does not fit ``what`` (e.g. "DRN DRNConfig(...)")."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: does not fit {what}: {str(exc).splitlines()[-1].strip()[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path}: does not fit {what}: missing {result.missing_keys[:8]}, "
                              f"unexpected {result.unexpected_keys[:8]}")
    return model


def load_weights_file(model: torch.nn.Module, path: str | Path, name: str) -> torch.nn.Module:
    """The common weights loader: any file :func:`read_state_dict` reads, loaded strictly into ``model``."""
    return load_state_strict(model, read_state_dict(path), path, f"{name} {getattr(model, 'config', '')}".strip())


__all__ = ["METADATA_KEY", "SHIPPED_DIR", "export_safetensors", "read_exported", "read_metadata", "read_state_dict",
           "load_state_strict", "load_weights_file", "safetensors_bytes", "shipped", "state_of", "unwrap"]

