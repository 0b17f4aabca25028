"""The server process tunes glibc's malloc (fedvox.server.memory) unless the operator chose
with glibc's own environment variables. Each case runs in a fresh interpreter: the settings are
process-wide, and glibc reads its variables at start."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

PROBE = "import json; from fedvox.server.memory import tune_malloc as f; print(json.dumps(f()))"
VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="these are glibc settings"
)


def probe(**env: str) -> dict[str, bool]:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, bool] = json.loads(done.stdout)
    return result


@glibc_only
def test_every_setting_is_applied_on_glibc() -> None:
    assert probe() == dict.fromkeys(VARIABLES, True)


@glibc_only
@pytest.mark.parametrize("variable", VARIABLES)
def test_the_operators_variable_wins(variable: str) -> None:
    expected = dict.fromkeys(VARIABLES, True)
    expected[variable] = False
    assert probe(**{variable: "4194304" if "THRESHOLD" in variable else "4"}) == expected
