"""Shared pytest configuration.

Integration tests carry ``@pytest.mark.integration``.  On a developer's
machine they skip with a reason when a binary is missing; in CI (``CI=true``)
a missing binary fails the run instead (see ``tests/services/require.py``).
"""
