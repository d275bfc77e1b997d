"""Test-wide hooks: the tests marked with tests/reference.py's reference_mark skip, or fail on CI, without the data."""

from __future__ import annotations

import pytest

from reference import ON_CI, REFERENCE_DIR, missing_reason


def pytest_report_header(config: pytest.Config) -> str:
    found = "found" if REFERENCE_DIR.is_dir() else ("MISSING: reference tests fail (CI=true)" if ON_CI else
                                                    "missing: reference tests skip")
    return f"reference data: {REFERENCE_DIR} ({found})"


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("reference"):
        path = mark.kwargs.get("path", REFERENCE_DIR)
        if not path.is_dir():
            if ON_CI:
                pytest.fail(f"{missing_reason(path)}; CI=true, and CI always has ../shared there", pytrace=False)
            pytest.skip(missing_reason(path))
