"""Test helpers shared by unit and component tests (no daemons here)."""
