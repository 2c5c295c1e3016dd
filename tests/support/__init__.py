"""Helpers shared by more than one test directory (see docs/testing.md).

`tests` is on `sys.path` (pytest's `pythonpath` in pyproject.toml), so a test imports
them as `from support.wait import wait_until`. A helper used by one directory only
stays beside its tests; one needed by a second directory moves here instead of being
copied.
"""
