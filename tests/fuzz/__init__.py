"""Property-based fuzzing of every parser (hypothesis); profiles in conftest.py."""
