"""`fedvox client`: run one site."""

from __future__ import annotations

import argparse
import logging
import platform
from pathlib import Path

from fedvox.wire.settings import add_settings_arguments, overrides_from

log = logging.getLogger(__name__)
FLAG_SETTINGS = {
    "site_id": str,
    "server": str,
    "data_root": str,
    "device": str,
    "threads": int,
    "claim_pool": str,  # no --site-id: claim a shard of this pool (fedvox.client.claim)
    "claim_dir": str,
    "tls_dir": str,  # mutual TLS: a `fedvox provision` folder (or the three files below)
    "tls_cert": str,
    "tls_key": str,
    "tls_ca": str,
    "tls_server_name": str,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, FLAG_SETTINGS)
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, for a server started with --insecure (no TLS settings needed)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from fedvox.client.config import load_client_config
    from fedvox.client.connection import Connection, ServerUnreachable
    from fedvox.client.runner import Runner
    from fedvox.client.site_state import SiteState
    from fedvox.client.trainer import MonaiTrainer, pick_device

    overrides = overrides_from(args, FLAG_SETTINGS)
    if args.insecure:
        overrides["insecure"] = "true"
    config = load_client_config(args.config, overrides)
    tls = config.tls()  # no TLS settings and no --insecure: refused before anything starts
    log.info("site %s: data root %s", config.site_id, config.data_root)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    state_dir = Path(config.state_dir or Path("fedvox-site-state") / config.site_id)
    trainer = MonaiTrainer(
        config.site_id, Path(config.data_root), device, config.cache_rate, SiteState(state_dir)
    )
    connection = Connection(
        config.server,
        config.site_id,
        give_up_after_s=config.connect_timeout_s,
        max_backoff_s=config.max_backoff_s,
        tls=tls,
    )
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "host": platform.node(),
        "data_root": config.data_root,
    }
    try:
        Runner(connection, trainer, config.poll_timeout_s, info, config.byzantine).run()
    except ServerUnreachable as exc:
        log.error("%s", exc)
        return 1
    finally:
        connection.close()
    return 0
