"""`python -m fedvox.client` = `fedvox client`."""

import sys

from fedvox.cli import main as _main


def main() -> int:
    return _main(["client", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
