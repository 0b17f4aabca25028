"""Tests of round checkpoints (fedvox.server.store)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fedvox.server.store import Store
from fedvox.wire.tensors import StateDict
from tests.helpers import assert_state_equal, blake3_hex, f32


def weights(value: float) -> StateDict:
    return {
        "w": f32([[value, value + 1, value + 2], [value + 3, value + 4, value + 5]]),
        "n": np.array([int(value)], dtype=np.int64),
    }


def write_rounds(store: Store, *rounds: int) -> None:
    for round_ in rounds:
        store.write_checkpoint(round_, weights(round_), {}, {}, {"kind": "train", "note": round_})


def test_latest_is_the_newest_round(tmp_path: Path) -> None:
    store = Store(tmp_path)
    write_rounds(store, 0, 1, 2)
    latest = Store(tmp_path).latest()  # a fresh store, as after a restart
    assert latest is not None
    assert latest.round == 2
    assert latest.path == tmp_path / "checkpoints" / "round-000002"
    model = latest.model_path.read_bytes()
    assert latest.digest == blake3_hex(model)
    assert latest.meta["global_size"] == len(model)
    assert (latest.meta["round"], latest.meta["kind"], latest.meta["note"]) == (2, "train", 2)
    assert_state_equal(Store(tmp_path).load_weights(latest), weights(2))


def test_write_checkpoint_returns_matching_metadata(tmp_path: Path) -> None:
    store = Store(tmp_path)
    state = {"momentum": f32([0.5, -0.5])}
    checkpoint = store.write_checkpoint(3, weights(3), state, {}, {"kind": "train"})
    on_disk = json.loads((checkpoint.path / "round.json").read_text())
    assert on_disk == checkpoint.meta
    assert on_disk["global_digest"] == blake3_hex(checkpoint.model_path.read_bytes())
    assert on_disk["strategy_digest"] == blake3_hex(
        (checkpoint.path / "strategy.safetensors").read_bytes()
    )
    assert_state_equal(store.load_strategy_state(checkpoint), state)
    assert store.blob_path(checkpoint.digest) == checkpoint.model_path
    assert store.blob_path("0" * 64) is None
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["round-000003"]


def test_empty_store_has_no_latest(tmp_path: Path) -> None:
    assert Store(tmp_path).latest() is None


def test_corrupted_model_falls_back_to_previous_round(tmp_path: Path) -> None:
    write_rounds(Store(tmp_path), 1, 2)
    model = tmp_path / "checkpoints" / "round-000002" / "global.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # flip the last byte of the last weight
    model.write_bytes(bytes(data))
    store = Store(tmp_path)
    latest = store.latest()
    assert latest is not None and latest.round == 1
    assert_state_equal(store.load_weights(latest), weights(1))
    assert store.blob_path(latest.digest) == latest.model_path


def test_damaged_metadata_falls_back_to_previous_round(tmp_path: Path) -> None:
    write_rounds(Store(tmp_path), 1, 2, 3)
    (tmp_path / "checkpoints" / "round-000003" / "round.json").write_text("{not json")
    (tmp_path / "checkpoints" / "round-000002" / "round.json").unlink()
    latest = Store(tmp_path).latest()
    assert latest is not None and latest.round == 1


def test_leftover_temporary_directory_is_ignored(tmp_path: Path) -> None:
    store = Store(tmp_path)
    write_rounds(store, 1)
    # a crash mid-write of round 2 leaves a complete-looking temporary directory behind
    store.write_checkpoint(2, weights(2), {}, {}, {})
    final = tmp_path / "checkpoints" / "round-000002"
    final.rename(tmp_path / "checkpoints" / ".tmp-round-000002")
    (tmp_path / "checkpoints" / "stray-file").write_text("x")
    latest = Store(tmp_path).latest()
    assert latest is not None and latest.round == 1
    # rewriting the round replaces the leftover and becomes the latest
    store.write_checkpoint(2, weights(20), {}, {}, {})
    assert not (tmp_path / "checkpoints" / ".tmp-round-000002").exists()
    latest = Store(tmp_path).latest()
    assert latest is not None and latest.round == 2
    assert_state_equal(store.load_weights(latest), weights(20))


def test_rewriting_a_round_replaces_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    write_rounds(store, 1)
    checkpoint = store.write_checkpoint(1, weights(7), {}, {}, {})
    latest = Store(tmp_path).latest()
    assert latest is not None and latest.digest == checkpoint.digest
    assert_state_equal(store.load_weights(latest), weights(7))


def make_legacy(folder: Path) -> dict[str, object]:
    """Turn a checkpoint into one written before the switch to BLAKE3: SHA-256 digests and no
    digest_algorithm in round.json."""
    meta = json.loads((folder / "round.json").read_text())
    del meta["digest_algorithm"]
    for key, name in (("global_digest", "global"), ("strategy_digest", "strategy")):
        meta[key] = hashlib.sha256((folder / f"{name}.safetensors").read_bytes()).hexdigest()
    (folder / "round.json").write_text(json.dumps(meta))
    return dict(meta)


def test_a_checkpoint_digested_with_sha256_is_verified_and_upgraded(tmp_path: Path) -> None:
    write_rounds(Store(tmp_path), 1)
    folder = tmp_path / "checkpoints" / "round-000001"
    legacy = make_legacy(folder)
    store = Store(tmp_path)
    latest = store.latest()
    assert latest is not None and latest.round == 1
    model = latest.model_path.read_bytes()
    assert latest.digest == blake3_hex(model) != legacy["global_digest"]
    on_disk = json.loads((folder / "round.json").read_text())
    assert on_disk == latest.meta
    assert on_disk["digest_algorithm"] == "blake3"
    assert on_disk["strategy_digest"] == blake3_hex((folder / "strategy.safetensors").read_bytes())
    assert (on_disk["kind"], on_disk["note"]) == ("train", 1)  # the rest is kept
    assert store.blob_path(latest.digest) == latest.model_path  # sites can download it
    assert not (folder / "round.json.tmp").exists()
    assert Store(tmp_path).latest() == latest  # upgraded once: read back as it is


def test_a_damaged_sha256_checkpoint_is_skipped_not_upgraded(tmp_path: Path) -> None:
    write_rounds(Store(tmp_path), 1, 2)
    folder = tmp_path / "checkpoints" / "round-000002"
    make_legacy(folder)
    model = folder / "global.safetensors"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    latest = Store(tmp_path).latest()
    assert latest is not None and latest.round == 1
    assert "digest_algorithm" not in json.loads((folder / "round.json").read_text())
