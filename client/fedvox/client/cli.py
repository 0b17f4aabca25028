"""`fedvox client`: run one site."""

from __future__ import annotations

import argparse
import logging
import platform
from pathlib import Path

from fedvox.wire.settings import parse_overrides

log = logging.getLogger(__name__)
FLAG_SETTINGS = {"site_id": str, "server": str, "data_root": str, "device": str, "threads": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML settings file")
    for name, kind in FLAG_SETTINGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from fedvox.client.config import load_client_config
    from fedvox.client.connection import Connection, ServerUnreachable
    from fedvox.client.runner import Runner
    from fedvox.client.trainer import MonaiTrainer, pick_device

    overrides = parse_overrides(args.set)
    overrides.update(
        {k: str(getattr(args, k)) for k in FLAG_SETTINGS if getattr(args, k) is not None}
    )
    config = load_client_config(args.config, overrides)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    trainer = MonaiTrainer(config.site_id, Path(config.data_root), device, config.cache_rate)
    connection = Connection(
        config.server,
        config.site_id,
        give_up_after_s=config.connect_timeout_s,
        max_backoff_s=config.max_backoff_s,
    )
    info = {"device": str(device), "torch": torch.__version__, "host": platform.node()}
    try:
        Runner(connection, trainer, config.poll_timeout_s, info).run()
    except ServerUnreachable as exc:
        log.error("%s", exc)
        return 1
    finally:
        connection.close()
    return 0
