#!/usr/bin/env bash
# tests/test_open_clip.py (KRAdapter on open_clip's CLIP, through nn.MultiheadAttention) in a venv of its own: it skips
# in .ci/run's legs, because open_clip needs torchvision and PyPI's torchvision does not import beside the torch
# 2.13.0 CPU file. torch 2.14.1 with torchvision 0.29.1 does (a CUDA build, 5.8 GB in the venv, both read from this
# machine's disk by pip). Called by .ci/run after its two legs; measured on 2026-12-01, 2 cores at load 5-6, this
# script took 441 s (torch + torchvision 195 s, open_clip, kradapter and pytest 73 s, the test file 27 s, then the
# clean-up); the two legs and the package checks before it took 51 min at that load. Run it on its own: bash .ci/open_clip_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-clip
python3 -m venv .venv-clip
. .venv-clip/bin/activate
pip install --no-cache-dir --upgrade pip
pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 ".[openclip]" pytest
pip check
pip list --format=freeze | grep -iE '^(torch|torchvision|open.clip.torch|peft|transformers)=='
python -c "import open_clip"  # fail here, not as the test file's importorskip skip
python -m pytest tests/test_open_clip.py
deactivate
rm -rf .venv-clip
