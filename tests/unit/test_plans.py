"""Plans and overrides: pure logic."""

from __future__ import annotations

import pytest

from tenantsearch.auth.rbac import Action
from tenantsearch.limits.plans import BUDGET_OF, PLANS, OverrideErrors, check_overrides, effective
from tenantsearch.limits.port import Rate


def test_every_action_spends_a_budget() -> None:
    assert set(BUDGET_OF) == set(Action)


def test_overrides_replace_single_limits() -> None:
    limits = effective("free", {"search_rate": 7, "search_period": 60, "max_documents": None})
    assert limits.rate(next(b for b in BUDGET_OF.values() if b.value == "search")) == Rate(
        7, 60, PLANS["free"].search_burst
    )
    assert limits.max_documents is None
    assert limits.write_rate == PLANS["free"].write_rate
    assert effective("no-such-plan", None) == PLANS["standard"]


@pytest.mark.parametrize(
    "raw",
    [
        {"search_rate": 0},
        {"search_rate": True},
        {"search_burst": -1},
        {"daily_requests": 0},
        {"search_period": 0},
        {"whatever": 1},
        {"write_rate": "10"},
    ],
)
def test_bad_overrides_are_refused_with_their_path(raw: dict[str, object]) -> None:
    with pytest.raises(OverrideErrors) as info:
        check_overrides(raw)
    assert info.value.errors[0].path == f"/limits/{next(iter(raw))}"
