"""The fault suite (``faults`` marker): real ``autopaint serve`` processes, worker processes and a
private ``redis-server``, killed by PID mid-job. It takes a few minutes, so it is not part of the
default ``make test``; run it with ``.venv/bin/pytest -m faults tests/faults`` (CI: ``.ci/run``)."""

from __future__ import annotations

import re

import pytest


def _selected(config: pytest.Config) -> bool:
    expr = str(config.getoption("markexpr") or "")
    return re.search(r"(?<!not )\bfaults\b", expr) is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _selected(config):
        return
    skip = pytest.mark.skip(reason="fault suite: run with -m faults (CI runs it after make test)")
    for item in items:
        if item.get_closest_marker("faults") is not None:
            item.add_marker(skip)
