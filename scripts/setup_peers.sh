#!/usr/bin/env bash
# The peers Tiller is measured and checked against (issue 26): TRL's trainers on a recent
# transformers and PyPI's torch, pinned in bench/peers/requirements.txt, in .venv-peers at the
# repository root (git-ignored). For `bash bench/compare.sh --peers` and
# tests/trl_agreement_test.cpp only: Tiller itself, its build, the quickstart and CI's main path
# never need it (the test skips without it). About 6 GB (torch's CUDA wheels come along; they run
# on the CPU). Skipped when .venv-peers already holds exactly those pins.
#   bash scripts/setup_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS=bench/peers/requirements.txt
STAMP=.venv-peers/tiller-requirements-peers.txt
if [ -x .venv-peers/bin/python ] && cmp -s "$REQUIREMENTS" "$STAMP"; then
  echo "setup_peers: .venv-peers is up to date"
  exit 0
fi
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv
fi
[ -x .venv-peers/bin/python ] || python3 -m venv .venv-peers
echo "setup_peers: installing $REQUIREMENTS into .venv-peers (several GB the first time)"
.venv-peers/bin/python -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
cp "$REQUIREMENTS" "$STAMP"
.venv-peers/bin/python -c 'import torch, transformers, trl
print("setup_peers: torch", torch.__version__, "transformers", transformers.__version__, "trl",
      trl.__version__)'
