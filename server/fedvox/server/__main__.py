"""`python -m fedvox.server` = `fedvox server`."""

import sys

from fedvox.cli import main as _main


def main() -> int:
    return _main(["server", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
