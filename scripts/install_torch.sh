#!/usr/bin/env bash
# Install a PyTorch build that suits this machine into the given Python environment, *before* the kit
# itself, so that pip never replaces it with a multi-GB CUDA build on a CPU-only machine.
#
#   scripts/install_torch.sh PYTHON
#
# Rules, first match wins:
#   TORCH_SPEC set        -> pip install "$TORCH_SPEC" (add TORCH_INDEX_URL to pick an index), e.g.
#                            TORCH_SPEC='torch==2.5.1' TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
#   torch importable      -> keep it
#   an NVIDIA GPU present -> pip install torch (the default build carries CUDA)
#   a local CPU wheel     -> pip install torch==$LOCAL_TORCH_VERSION when a find-links folder holds it
#   otherwise             -> pip install torch from PyTorch's CPU-only index
set -euo pipefail
PY=${1:?usage: install_torch.sh PYTHON}
LOCAL_TORCH_VERSION=${LOCAL_TORCH_VERSION:-2.13.0}
pip_install() { "$PY" -m pip install --quiet "$@"; }

if [[ -n "${TORCH_SPEC:-}" ]]; then
    echo "install_torch: TORCH_SPEC=$TORCH_SPEC"
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then pip_install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
    else pip_install "$TORCH_SPEC"; fi
elif "$PY" -c "import torch" 2>/dev/null; then
    echo "install_torch: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install_torch: NVIDIA GPU found, installing the default (CUDA) build"
    pip_install torch
elif "$PY" -m pip install --quiet --dry-run --no-index --no-deps "torch==$LOCAL_TORCH_VERSION" >/dev/null 2>&1; then
    # a find-links folder holds this wheel (its dependencies come from the package index as usual)
    echo "install_torch: installing the local CPU wheel torch==$LOCAL_TORCH_VERSION"
    pip_install "torch==$LOCAL_TORCH_VERSION"
else
    echo "install_torch: no GPU and no local wheel, installing the CPU-only build"
    pip_install torch --index-url https://download.pytorch.org/whl/cpu
fi
