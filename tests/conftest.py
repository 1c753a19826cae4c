"""Shared pytest configuration.

Integration tests carry ``@pytest.mark.integration``.  On a developer's
machine they skip with a reason when a binary is missing; in CI (``CI=true``)
a missing binary fails the run instead (see ``tests/services/require.py``).
"""

# Shared service fixtures (mariadb_db, private_mariadb, ...), one instance per session.
pytest_plugins = ["tests.services.mariadb"]
