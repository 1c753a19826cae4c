"""Test-services harness: real daemons (MariaDB, nginx, HAProxy, Dovecot) under fixtures.

Each daemon runs in the foreground under its fixture, on loopback, with its own
data directory, and is ended by its own process id.
"""
