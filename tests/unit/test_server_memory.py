"""The server process caps glibc's malloc arenas (fedvox.server.memory), unless the operator
set MALLOC_ARENA_MAX. Each case runs in a fresh interpreter: the setting is process-wide."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = "from fedvox.server.memory import limit_malloc_arenas as f; print(f())"


def probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas are a glibc setting")
def test_arenas_are_capped_on_glibc() -> None:
    assert probe() == "True"


def test_the_operators_malloc_arena_max_wins() -> None:
    assert probe(MALLOC_ARENA_MAX="4") == "False"
