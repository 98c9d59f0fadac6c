"""Shared oracles, case builders and run configurations for the test suite."""
