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
# Only what serve uses: the listeners' certificates are nginx's and the proxy's.
.venv/bin/authsvc check-config --for serve deploy/authsvc.toml
.venv/bin/authsvc lookup Bob --config deploy/authsvc.toml
cat <<'EOF'

authsvc serve starts on 127.0.0.1:9143 (Ctrl-C stops it). Ask it what nginx would ask:
  curl -i -H 'Auth-User: Bob' -H 'Auth-Pass: x' -H 'Auth-Protocol: imap' -H 'Auth-Login-Attempt: 1' -H 'Client-IP: 127.0.0.1' http://127.0.0.1:9143/auth

EOF
exec .venv/bin/authsvc serve --config deploy/authsvc.toml "$@"
