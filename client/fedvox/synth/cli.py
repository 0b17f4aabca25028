"""``synth`` subcommand: write a synthetic CT federation to disk.

Mount it with ``add_arguments(subparser)`` and dispatch to ``run(args)``; it also runs stand-alone
as ``python -m fedvox.synth.cli --out DIR``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedvox.synth.profiles import default_profiles, iid_profiles
from fedvox.synth.writer import MIN_SIZE, generate_federation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, help="directory that receives one sub-directory per site"
    )
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size", type=int, default=64, help="voxels per axis at the reference spacing (default 64)"
    )
    parser.add_argument("--train", type=int, default=8, help="training cases per site (default 8)")
    parser.add_argument("--val", type=int, default=2, help="validation cases per site (default 2)")
    parser.add_argument("--test", type=int, default=2, help="test cases per site (default 2)")
    parser.add_argument(
        "--iid", action="store_true", help="give every site the same scanner profile (IID control)"
    )


def _validate(args: argparse.Namespace) -> None:
    minimums = {"sites": 1, "size": MIN_SIZE, "seed": 0, "train": 0, "val": 0, "test": 0}
    for option, minimum in minimums.items():
        value = getattr(args, option)
        if value < minimum:
            raise SystemExit(
                f"fedvox synth: error: argument --{option}: must be >= {minimum}, got {value}"
            )


def run(args: argparse.Namespace) -> int:
    _validate(args)
    profiles = (iid_profiles if args.iid else default_profiles)(args.sites)

    def report(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    site_dirs = generate_federation(
        args.out,
        args.sites,
        seed=args.seed,
        size=args.size,
        n_train=args.train,
        n_val=args.val,
        n_test=args.test,
        profiles=profiles,
        progress=report,
    )
    kind = "IID" if args.iid else "non-IID"
    print(
        f"synth: {len(site_dirs)} {kind} site(s) in {args.out}: "
        + ", ".join(d.name for d in site_dirs)
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedvox-synth", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
