"""Print the third-party requirements of fedvox distributions, one per line.

    python3 docker/requirements.py proto server client

Each argument is a distribution folder; its pyproject.toml gives the dependencies (the fedvox-*
ones among them are the distributions themselves and are left out) and the build backend's
requirements, so that the distributions can then be installed with --no-build-isolation.
Used by docker/wheelhouse.sh on the host and by docker/install.sh in an image build.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(dists: list[str]) -> list[str]:
    found: set[str] = set()
    for dist in dists:
        project = tomllib.loads((Path(dist) / "pyproject.toml").read_text())
        found.update(r for r in project["project"]["dependencies"] if not r.startswith("fedvox-"))
        found.update(project["build-system"]["requires"])
    return sorted(found)


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
