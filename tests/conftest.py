"""Shared fixtures: real servers in real processes, on private addresses."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest

import shoal

START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(scope="module")
def manager() -> Iterator[shoal.SyncManager]:
    """One started shoal manager for a test module (nested='share')."""
    with shoal.Manager() as m:
        yield m


@pytest.fixture(scope="module")
def copy_manager() -> Iterator[shoal.SyncManager]:
    """A manager with Manager's old copy-on-read semantics."""
    with shoal.Manager(nested="copy") as m:
        yield m


@pytest.fixture(params=START_METHODS)
def ctx(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    """Each of the three start methods in turn."""
    return multiprocessing.get_context(request.param)
