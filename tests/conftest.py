"""Shared fixtures: real servers in real processes, on private addresses."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

import shoal

START_METHODS = ["fork", "spawn", "forkserver"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """The Redis backend's tests need a real redis-server: install Debian's package when it is
    missing and we may (root with apt-get, as in CI). Otherwise those tests fail and say how."""
    if shutil.which("redis-server") or shutil.which("valkey-server"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"]):
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=600, check=False)


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
