#!/usr/bin/env bash
# Create the separate virtual environment that holds the nnU-Net v2 baseline for the benchmarks.
#
# The baseline never shares an environment with autoseg: autoseg must not import nnunetv2, and
# nnunetv2's dependencies (timm, torchvision, dynamic-network-architectures) must not leak into
# the project's environment.
#
#   NNUNET_VENV     where the environment goes (default ~/.cache/autoseg-bench/nnunet-venv)
#   NNUNET_PYTHON   interpreter that creates it (default python3)
#   NNUNET_SPEC     nnU-Net requirement (default nnunetv2==2.8.1, the version the figures were taken with)
#   TORCH_SPEC      torch requirement (default torch==2.13.0, the CPU wheel on these machines)
#
# Idempotent: when the environment already imports nnunetv2 and torchvision and its commands run,
# nothing is installed. Rerun with --force to rebuild from scratch.
set -euo pipefail

VENV="${NNUNET_VENV:-$HOME/.cache/autoseg-bench/nnunet-venv}"
PYTHON="${NNUNET_PYTHON:-python3}"
NNUNET_SPEC="${NNUNET_SPEC:-nnunetv2==2.8.1}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$VENV"
fi

env_works() {
    [[ -x "$VENV/bin/python" ]] || return 1
    # torchvision is imported on purpose: any `-tr` trainer variant makes nnU-Net import every
    # trainer module, and some of them import torchvision through timm.
    "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1 || return 1
import os, torch, torchvision, timm, nnunetv2
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
root = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
assert recursive_find_python_class(root, "nnUNetTrainer_5epochs", "nnunetv2.training.nnUNetTrainer") is not None
EOF
    "$VENV/bin/nnUNetv2_plan_and_preprocess" -h >/dev/null 2>&1 || return 1
}

# The registry's torchvision is a CUDA build: its _C.so links libtorch_cuda.so, which the CPU
# torch wheel lacks, so its operators are never registered, and torchvision/_meta_registrations.py
# then fails at import time registering fake kernels for "torchvision::nms"/"qnms" that do not
# exist. The other registrations in that file are already guarded by `_has_ops()`; give these two
# the same guard. nnU-Net never calls torchvision operators (nms, roi_align), so nothing it uses
# changes; only the import stops failing. This edits the baseline's own environment, nothing else.
patch_torchvision() {
    local target
    target="$("$VENV/bin/python" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("torchvision").origin), "_meta_registrations.py"))')"
    if [[ -f "$target" ]] && ! grep -q "autoseg-bench: CPU torch" "$target"; then
        sed -i 's|^@torch.library.register_fake("torchvision::\([a-z_]*\)")$|@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda fn: fn))  # autoseg-bench: CPU torch|' "$target"
        echo "patched $target (guarded fake-kernel registrations for missing torchvision ops)"
    fi
}

if env_works; then
    echo "nnU-Net baseline environment already works: $VENV"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)

# torch first, and kept fixed while nnunetv2 resolves: without the constraint pip upgrades torch
# to the newest CUDA build (6 GB) to satisfy the newest torchvision.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$TORCH_SPEC" >"$constraints"
"${PIP[@]}" "$TORCH_SPEC" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
"${PIP[@]}" -c "$constraints" "$NNUNET_SPEC" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
    patch_torchvision
fi

if ! env_works; then
    echo "error: the nnU-Net environment at $VENV still does not work; details:" >&2
    "$VENV/bin/python" -c "import torchvision, nnunetv2" >&2 || true
    exit 1
fi
"$VENV/bin/python" -c 'import torch, torchvision, nnunetv2; from importlib.metadata import version; print("nnU-Net baseline environment ready: torch", torch.__version__, "torchvision", torchvision.__version__, "nnunetv2", version("nnunetv2"))'
echo "  $VENV"
