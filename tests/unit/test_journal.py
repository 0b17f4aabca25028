"""The round journal: what a killed server finds again, and what it must not trust."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from fedvox.server.journal import RoundJournal, SpilledUpdateSet
from fedvox.wire.tensors import to_safetensors
from tests.helpers import blake3_hex, f32

PLAN = {"kind": "train", "round": 3, "tasks": [{"task_id": "t-a", "site_id": "site-a"}]}


def spill(journal: RoundJournal, site: str, values: list[float]) -> bytes:
    blob = to_safetensors({"w": f32(values)})
    journal.spill(site, f"task-{site}", blob, blake3_hex(blob), 4, 7, {"loss": 0.5})
    return blob


def test_recover_returns_plan_and_accepted_entries(tmp_path: Path) -> None:
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    spill(journal, "site-b", [1.0, 2.0])
    spill(journal, "site-a", [-1.0, 0.5])
    (recovered,) = RoundJournal.recover(tmp_path)
    assert recovered.plan == PLAN
    assert sorted(recovered.entries) == ["site-a", "site-b"]
    entry = recovered.entries["site-a"]
    assert (entry.task_id, entry.num_examples, entry.local_steps) == ("task-site-a", 4, 7)
    assert entry.metrics == {"loss": 0.5}
    updates = SpilledUpdateSet(list(recovered.entries.values()))
    assert list(updates.sites) == ["site-a", "site-b"]  # canonical order, not arrival order
    np.testing.assert_array_equal(updates.tensor("site-b", "w"), [1.0, 2.0])


def test_blob_without_its_header_was_never_accepted(tmp_path: Path) -> None:
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    spill(journal, "site-a", [1.0])
    blob = to_safetensors({"w": f32([9.0])})
    (journal.path / "site-b.safetensors").write_bytes(blob)  # killed before the header
    (recovered,) = RoundJournal.recover(tmp_path)
    assert list(recovered.entries) == ["site-a"]


def test_damaged_blob_is_not_counted(tmp_path: Path) -> None:
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    blob = spill(journal, "site-a", [1.0, 2.0])
    (journal.path / "site-a.safetensors").write_bytes(blob[:-1] + b"\x01")
    (recovered,) = RoundJournal.recover(tmp_path)
    assert recovered.entries == {}


def test_round_without_a_complete_plan_is_dropped(tmp_path: Path) -> None:
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    (journal.path / "round.json").write_text('{"kind": "tr')  # e.g. a disk fault
    assert RoundJournal.recover(tmp_path) == []
    assert not journal.path.exists()


def test_evaluation_results_need_no_blob(tmp_path: Path) -> None:
    journal = RoundJournal.create(tmp_path, 0, {**PLAN, "kind": "evaluate"})
    journal.spill("site-a", "t-a", b"", "", 2, 0, {"test_dice": 0.25})
    (recovered,) = RoundJournal.recover(tmp_path)
    assert recovered.entries["site-a"].metrics == {"test_dice": 0.25}
    meta = json.loads((journal.path / "site-a.json").read_text())
    assert meta["digest"] == "" and not (journal.path / "site-a.safetensors").exists()


def test_refusals_are_found_again(tmp_path: Path) -> None:
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    spill(journal, "site-b", [1.0])
    journal.refuse("site-a", "t-a", "metric 'loss' is not finite")
    (journal.path / "site-c.refused").write_text('{"site_id": "site-c", "rea')  # torn: ignored
    (recovered,) = RoundJournal.recover(tmp_path)
    assert recovered.refusals == {"site-a": "metric 'loss' is not finite"}
    assert list(recovered.entries) == ["site-b"]  # a refusal is not an accepted result


def test_entries_written_with_sha256_are_still_verified(tmp_path: Path) -> None:
    """A round journal left by a server from before the switch to BLAKE3."""
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    blobs = {site: spill(journal, site, [float(i), 2.0]) for i, site in enumerate("ab")}
    for site, blob in blobs.items():
        meta_path = journal.path / f"{site}.json"
        meta = json.loads(meta_path.read_text())
        assert meta.pop("digest_algorithm") == "blake3"
        meta["digest"] = hashlib.sha256(blob).hexdigest()
        meta_path.write_text(json.dumps(meta))
    (journal.path / "b.safetensors").write_bytes(blobs["b"][:-1] + b"\x01")  # damaged
    (recovered,) = RoundJournal.recover(tmp_path)
    assert list(recovered.entries) == ["a"]
    assert recovered.entries["a"].digest == hashlib.sha256(blobs["a"]).hexdigest()


def test_a_staged_blob_holds_every_byte_written_in_pieces(tmp_path: Path) -> None:
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    data = bytes(range(256)) * 40_000  # 10.24 MB: more than two of the 4 MiB writeback steps
    staged = journal.open_stage()
    for start in range(0, len(data), 1_000_003):
        staged.write(memoryview(data)[start : start + 1_000_003])
    view = staged.mapped()  # what the server parses: the file's bytes, no copy of its own
    assert view.readonly and bytes(view) == data
    path = staged.finish()
    assert path.parent == journal.path and path.name.startswith(".staged-")
    assert path.read_bytes() == data
    entry = journal.commit(path, "site-a", "task-site-a", blake3_hex(data), 4, 7, {})
    staged.discard()  # after commit: the committed blob stays
    assert entry.path.read_bytes() == data
    assert not path.exists()


def test_a_discarded_staged_blob_leaves_nothing(tmp_path: Path) -> None:
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    staged = journal.open_stage()
    assert bytes(staged.mapped()) == b""  # nothing written yet: nothing to map
    staged.write(b"half an upload")
    view = staged.mapped()
    staged.discard()
    assert bytes(view) == b"half an upload"  # a map holds the file, not its name
    assert sorted(p.name for p in journal.path.iterdir()) == ["round.json"]
    (recovered,) = RoundJournal.recover(tmp_path)
    assert recovered.entries == {}


def test_a_staged_blob_reserves_its_size_and_a_full_disk_refuses_it_at_once(
    tmp_path: Path,
) -> None:
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    staged = journal.open_stage(3 * 4096)
    assert staged.path.stat().st_blocks * 512 >= 3 * 4096  # allocated before any write
    staged.discard()
    with pytest.raises(OSError):  # more than any disk holds: refused before the first chunk
        journal.open_stage(1 << 60)
    assert sorted(p.name for p in journal.path.iterdir()) == ["round.json"]


def test_an_accepted_result_and_a_new_round_survive_a_power_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename is durable only once its directory is fsynced: the journal fsyncs the round's
    folder after a result's header appears in it, and the root after the round's folder."""
    real_fsync = os.fsync
    synced_dirs: list[tuple[int, bool]] = []  # (inode, whether site-a's header existed then)

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            header = tmp_path / "round-000003" / "site-a.json"
            synced_dirs.append((info.st_ino, header.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    journal = RoundJournal.create(tmp_path, 3, PLAN)
    assert (tmp_path.stat().st_ino, False) in synced_dirs
    spill(journal, "site-a", [1.0])
    assert (journal.path.stat().st_ino, True) in synced_dirs
