#!/usr/bin/env bash
# The test command (README "Test"): on Debian 12, as root, install everything
# the tests need, start MariaDB when none is running, and run ruff, mypy
# (strict) and the whole pytest suite, integration tests included.
#
# Package installs never start daemons (a temporary policy-rc.d that exits
# 101); the tests start every daemon they need themselves, on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

say() { printf '>>> %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------
# binary-or-file : package
wanted=(
  "/usr/sbin/mariadbd:mariadb-server"
  "/usr/bin/mariadb:mariadb-client"
  "/usr/sbin/nginx:nginx"
  "/usr/lib/nginx/modules/ngx_mail_module.so:libnginx-mod-mail"
  "/usr/sbin/haproxy:haproxy"
  "/usr/lib/dovecot/imap-login:dovecot-imapd"
  "/usr/lib/dovecot/pop3-login:dovecot-pop3d"
  "/usr/sbin/perdition.imap4:perdition"
  "/usr/lib/x86_64-linux-gnu/libperditiondb_mysql.so.0:perdition-mysql"
  "/usr/bin/openssl:openssl"
  "/usr/bin/curl:curl"
  "/usr/bin/systemd-analyze:systemd"
  # Debian's fail2ban filters: the proxy's Auth: line must match filter.d/perdition.conf
  "/etc/fail2ban/filter.d/perdition.conf:fail2ban"
  # [throttle] store = "redis": the tests start a private redis-server
  "/usr/bin/redis-server:redis-server"
  # The Prometheus tests: a private server scrapes the faces; promtool checks
  # the exposition and runs the alert rules' unit tests (deploy/prometheus/)
  "/usr/bin/prometheus:prometheus"
)
missing=()
for pair in "${wanted[@]}"; do
  [ -e "${pair%%:*}" ] || missing+=("${pair##*:}")
done
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing: ${missing[*]}"
  created_policy=no
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=yes
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$created_policy" = yes ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# --- MariaDB: the shared server the contract tests use ---------------------
mariadb_up() {
  mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1 ||
    mariadb-admin -h127.0.0.1 -P3306 -uroot ping >/dev/null 2>&1
}
# Matched by its pid file, not by the binary alone: another mariadbd on the
# machine (a private one on another port, as the tests start) is not this
# server, and must not make start-stop-daemon answer "already running".
mariadb_pidfile=/run/mysqld/mysqld.pid
if ! mariadb_up; then
  say "starting MariaDB"
  install -d -o mysql -g mysql /run/mysqld
  start-stop-daemon --start --oknodo --background --pidfile "$mariadb_pidfile" \
    --exec /usr/sbin/mariadbd -- --user=mysql --pid-file="$mariadb_pidfile"
  for _ in $(seq 60); do mariadb_up && break; sleep 0.5; done
  mariadb_up || { echo "MariaDB did not start" >&2; exit 1; }
fi

# --- Python: a venv (PEP 668 forbids a system-wide pip install) ------------
# The editable install is strict (a tree of links under build/): proxy/ installs
# as authsvc.proxy, and only a real tree lets mypy resolve that name.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,dev,uvloop]' --config-settings editable_mode=strict

# --- Lint, types, tests ----------------------------------------------------
say "ruff"
.venv/bin/ruff check .
say "mypy --strict"
.venv/bin/mypy
say "pytest"
set +e
CI="${CI:-}" .venv/bin/pytest -p no:cacheprovider -q -ra "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"
# The proxy's component tests once more on uvloop's event loop, which the
# authsvc[uvloop] extra makes the proxy's (docs/testing-deps.md); skipped when
# pytest was given its own arguments (one file, one test).
if [ "$#" -eq 0 ]; then
  say "pytest tests/component on uvloop"
  AUTHSVC_LOOP=uvloop CI="${CI:-}" .venv/bin/pytest -p no:cacheprovider -q -ra tests/component
fi
