#!/usr/bin/env bash
# Installs what is missing, builds, and runs the self-contained quickstart (recipes/quickstart.json):
# Tiller writes its own synthetic stories, trains a tokenizer and a small base model on them, then
# SFT, a reward model and PPO, prints the ground-truth table and writes runs/quickstart/report.html.
# A few minutes on 2 CPU cores; nothing is downloaded. Re-running skips the stages already complete.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh --target tiller  # the test binaries are scripts/test.sh's
build/tiller run recipes/quickstart.json "$@"
build/tiller report runs/quickstart
