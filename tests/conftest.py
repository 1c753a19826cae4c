"""Shared pytest configuration.

Integration tests carry ``@pytest.mark.integration``.  On a developer's
machine they skip with a reason when a daemon, binary or file is missing; in
CI (``CI=true``, which ``.ci/run`` sets) that fails the run instead
(``tests/services/require.py``).
"""

# Shared service fixtures (mariadb_db, private_mariadb, ..., prometheus).
pytest_plugins = ["tests.services.mariadb", "tests.services.prometheus"]
