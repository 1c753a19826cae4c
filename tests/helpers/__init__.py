"""Test helpers shared by every kind of test and the services harness (no daemons here)."""
