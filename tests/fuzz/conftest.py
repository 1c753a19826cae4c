"""Hypothesis profiles for the fuzz tests: a short one for CI, a deep one for bench/.

``AUTHSVC_FUZZ_PROFILE`` picks the profile: ``ci`` (the default) runs a few
hundred examples per target, derandomised so a CI run is reproducible, and the
whole directory in a few seconds; ``deep`` runs 100,000 examples per target
with fresh randomness (``bench/fuzz_deep.sh``).  Neither has a per-example
deadline: a slow example on a busy 2-core CI machine is not a bug, and the
sizes the strategies draw are bounded instead.  No example database is kept
(``database=None``): nothing is written into the work tree, and a failure
prints its reproduction blob instead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Generation is bounded by the strategies, not by wall-clock time.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.register_profile(
    "deep",
    max_examples=100_000,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.load_profile(os.environ.get("AUTHSVC_FUZZ_PROFILE", "ci"))
