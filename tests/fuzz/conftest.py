"""Hypothesis profiles for the fuzz tests: a short one for CI, a deep one for bench/.

``AUTHSVC_FUZZ_PROFILE`` picks the profile: ``ci`` (the default) runs a few
hundred examples per target, derandomised so a CI run is reproducible, and the
whole directory in a few seconds; ``deep`` runs 100,000 examples per target
with fresh randomness (``bench/fuzz_deep.sh``).  Neither has a per-example
deadline: a slow example on a busy 2-core CI machine is not a bug, and the
sizes the strategies draw are bounded instead.  No example database is kept
(``database=None``): nothing is written into the work tree, and a failure
prints its reproduction blob instead.  ``AUTHSVC_FUZZ_EXAMPLES=N`` overrides
the number of examples of either profile (for a quick look between the two).
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
_profile = os.environ.get("AUTHSVC_FUZZ_PROFILE", "ci")
_examples = os.environ.get("AUTHSVC_FUZZ_EXAMPLES")
if _examples:
    settings.register_profile(f"{_profile}-{_examples}", settings.get_profile(_profile),
                              max_examples=int(_examples))
    _profile = f"{_profile}-{_examples}"
settings.load_profile(_profile)
