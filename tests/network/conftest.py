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
            if BED_UNAVAILABLE:
                item.add_marker(pytest.mark.skip(reason=BED_UNAVAILABLE))


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
