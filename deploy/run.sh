#!/usr/bin/env bash
# The run command (README "Run"): on Debian 12, as root, install authsvc into a
# venv and run its main job, `authsvc serve`, on the embedded default: the
# example config deploy/authsvc.toml with the map file deploy/popmap (no
# database).  Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q .
.venv/bin/authsvc check-config deploy/authsvc.toml
.venv/bin/authsvc lookup Bob --config deploy/authsvc.toml
exec .venv/bin/authsvc serve --config deploy/authsvc.toml "$@"
