"""Contract tests: one suite, every map backend, the same answers."""
