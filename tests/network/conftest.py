"""Fixtures of the NAT bed tests: a bed per test, built from a scenario, always torn down.

Where the bed cannot run (not root, not Linux, a tool missing) every test here is skipped with one
line saying why; that is the only skip in this package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.network.bed import Bed, LanSpec, unavailable_reason
from tests.network.scenarios import Scenario

BED_UNAVAILABLE = unavailable_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/network/" in item.nodeid:
            item.add_marker(pytest.mark.network)


@pytest.fixture(autouse=True)
def _bed_available() -> None:
    if BED_UNAVAILABLE:
        pytest.skip(BED_UNAVAILABLE)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Report every bed skip at this one place, so `pytest -rs` prints a single line saying why."""
    report: pytest.TestReport = yield
    if BED_UNAVAILABLE and report.skipped and isinstance(report.longrepr, tuple):
        report.longrepr = (__file__, 0, f"Skipped: {BED_UNAVAILABLE}")
    return report


BedFactory = Callable[..., Bed]


@pytest.fixture
def make_bed() -> Iterator[BedFactory]:
    """`make_bed(scenario)` or `make_bed([LanSpec, ...], with_turn=...)`: built now, closed after."""
    beds: list[Bed] = []

    def build(spec: Scenario | list[LanSpec], *, with_turn: bool = True) -> Bed:
        lans = spec.lans() if isinstance(spec, Scenario) else spec
        bed = Bed(lans, with_turn=with_turn)
        beds.append(bed)
        bed.__enter__()
        return bed

    try:
        yield build
    finally:
        for bed in reversed(beds):
            bed.close()
