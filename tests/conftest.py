"""Shared fixtures: hardware profiles of the paper and an isolated user profile directory."""

from __future__ import annotations

import pytest

from perfmodel import HardwareProfile, get_profile


@pytest.fixture(autouse=True)
def _isolated_profile_dir(tmp_path_factory, monkeypatch):
    """Every test sees an empty user profile directory, never the developer's own."""
    monkeypatch.setenv("SWEETSPOT_PROFILE_DIR", str(tmp_path_factory.mktemp("profiles")))


@pytest.fixture
def xeon() -> HardwareProfile:
    return get_profile("xeon-e5-2697v4")


@pytest.fixture
def atom() -> HardwareProfile:
    return get_profile("atom-c2750")
