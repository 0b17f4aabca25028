"""A site whose data fails the pre-round check registers its problem and its summary, stops, and is
never sampled; the federation runs to the end with the good site. Real server, real clients (in
threads of this process), plaintext loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedvox.admin import format_status, get_status
from fedvox.client.checks import INFO_ERROR, INFO_SUMMARY
from fedvox.client.connection import Connection
from fedvox.client.runner import Runner
from fedvox.client.site_state import SiteState
from fedvox.client.trainer import MonaiTrainer
from fedvox.client.volume import DataError
from fedvox.server.app import start
from fedvox.server.config import ServerConfig
from fedvox.wire.taskconfig import ModelSpec, TrainSettings
from tests.ctdata import box_site

pytestmark = pytest.mark.integration


def run_site(root: Path, name: str, address: str) -> int:
    """One site's client until the server says stop: its task count."""
    trainer = MonaiTrainer(name, root / name, torch.device("cpu"), state=SiteState(root / "state"))
    connection = Connection(address, name, give_up_after_s=30)
    try:
        return Runner(connection, trainer, poll_timeout_s=1).run()
    finally:
        connection.close()


def test_a_site_with_bad_data_is_shown_and_left_out(tmp_path: Path) -> None:
    box_site(tmp_path / "site-good", n_train=2, n_test=1)
    box_site(tmp_path / "site-bad", n_train=2, n_test=0)
    missing = tmp_path / "site-bad/labelsTr/training_1.nii.gz"
    missing.unlink()
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        state_dir=str(tmp_path / "server"),
        min_sites=1,
        rounds=1,
        evaluate=False,
        round_timeout_s=120,
        poll_timeout_s=1,
        insecure=True,
        model=ModelSpec(channels=(4, 8), strides=(2,), num_res_units=0),
        train=TrainSettings(local_steps=2, batch_size=1, patch_size=16),
    )
    running = start(config)
    address = f"127.0.0.1:{running.port}"
    try:
        problem = (
            r"site-bad cannot take part: 1 problem\(s\): labelsTr/training_1\.nii\.gz: missing"
        )
        with pytest.raises(DataError, match=problem):
            run_site(tmp_path, "site-bad", address)
        assert run_site(tmp_path, "site-good", address) == 2  # init and round 1
        status = get_status(address)
    finally:
        running.stop(0)
    assert status.phase == "done" and status.completed_round == 1
    sites = {s.site_id: s for s in status.sites}
    assert sites["site-bad"].num_examples == 0 and sites["site-good"].num_examples == 2
    assert sites["site-bad"].info[INFO_ERROR].startswith("1 problem(s): labelsTr/training_1.nii.gz")
    assert INFO_SUMMARY in sites["site-good"].info and INFO_ERROR not in sites["site-good"].info
    assert all(list(summary.sites) == ["site-good"] for summary in status.history)
    text = format_status(status)
    assert "data site-good: 2/0/1 cases (tr/val/test), shape 40x40x24" in text
    assert "data site-bad: 1/0/0 cases (tr/val/test)" in text and "ERROR 1 problem(s)" in text
