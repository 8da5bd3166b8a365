"""Helpers shared by every test suite, registered in tests/conftest.py through ``pytest_plugins``."""
