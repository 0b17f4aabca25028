"""numpy tests of the FedMA core (fedvox.server.strategies.fedma_align): no torch here.

Toy networks written out by hand (a 2-layer and a 3-layer MLP, and a skip concatenation) check
permutation, matching and matched averaging; a literal MONAI UNet schema checks the derived
channel groups. The tests against the real MONAI UNet are in test_unet_permutation.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fedvox.server.strategies.fedma_align import (
    ChannelGroup,
    ChannelRef,
    Perm,
    layer_phase_keys,
    match_to,
    matched_average,
    matched_average_with_perms,
    num_phases,
    permute_state,
    unet_channel_groups,
)
from fedvox.wire.tensors import StateDict, TensorSpec, schema_of


def f64(array: np.ndarray) -> npt.NDArray[np.float64]:
    return np.asarray(array, dtype=np.float64)


def plain_average(states: list[StateDict], weights: list[float]) -> StateDict:
    """FedAvg: the coordinate-wise weighted mean, channel orders ignored."""
    out: StateDict = {}
    for key, first in states[0].items():
        acc = np.zeros(first.shape)
        for weight, state in zip(weights, states, strict=True):
            acc += weight * f64(state[key])
        out[key] = (acc / sum(weights)).astype(first.dtype)
    return out


def perm(*values: int) -> Perm:
    return np.array(values, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# a 2-layer MLP: x (2) -> W1 (3, 2), b1 -> relu -> W2 (2, 3), b2 -> y (2)

TWO_LAYER = [
    ChannelGroup("input", 2, (ChannelRef("w1", 1, 0, "in"),), fixed=True),
    ChannelGroup(
        "hidden",
        3,
        (
            ChannelRef("w1", 0, 0, "out"),
            ChannelRef("b1", 0, 0, "vector"),
            ChannelRef("w2", 1, 0, "in"),
        ),
    ),
    ChannelGroup(
        "output", 2, (ChannelRef("w2", 0, 0, "out"), ChannelRef("b2", 0, 0, "vector")), True
    ),
]
KEEP = perm(0, 1)


def test_permute_state_by_hand() -> None:
    state: StateDict = {
        "w1": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
        "b1": np.array([10.0, 20.0, 30.0]),
        "w2": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        "b2": np.array([7.0, 8.0]),
        "step": np.array(5, dtype=np.int64),
    }
    out = permute_state(state, TWO_LAYER, [KEEP, perm(2, 0, 1), KEEP])
    np.testing.assert_array_equal(out["w1"], [[5.0, 6.0], [1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(out["b1"], [30.0, 10.0, 20.0])
    np.testing.assert_array_equal(out["w2"], [[3.0, 1.0, 2.0], [6.0, 4.0, 5.0]])
    assert out["b2"] is state["b2"] and out["step"] is state["step"]  # untouched: not copied
    np.testing.assert_array_equal(state["b1"], [10.0, 20.0, 30.0])  # the input is not modified


def test_match_to_by_hand() -> None:
    reference: StateDict = {
        "w1": np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]),
        "b1": np.array([0.1, 0.2, 0.3]),
        "w2": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
        "b2": np.array([0.0, 0.0]),
    }
    # the site holds hidden units (3, 1, 2) of the reference, in that order
    other: StateDict = {
        "w1": np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]]),
        "b1": np.array([0.3, 0.1, 0.2]),
        "w2": np.array([[3.0, 1.0, 2.0], [6.0, 4.0, 5.0]]),
        "b2": np.array([0.0, 0.0]),
    }
    for sweeps in (0, 2):
        perms = match_to(reference, other, TWO_LAYER, sweeps=sweeps)
        np.testing.assert_array_equal(perms[1], [1, 2, 0])
        np.testing.assert_array_equal(perms[0], KEEP)
        np.testing.assert_array_equal(perms[2], KEEP)
        aligned = permute_state(other, TWO_LAYER, perms)
        for key, value in reference.items():
            np.testing.assert_array_equal(aligned[key], value)
    assert [p.tolist() for p in match_to(reference, reference, TWO_LAYER)] == [
        [0, 1],
        [0, 1, 2],
        [0, 1],
    ]


def test_bad_permutations_are_refused() -> None:
    state: StateDict = {
        "w1": np.zeros((3, 2)),
        "b1": np.zeros(3),
        "w2": np.zeros((2, 3)),
        "b2": np.zeros(2),
    }
    with pytest.raises(ValueError, match="2 permutations for 3 groups"):
        permute_state(state, TWO_LAYER, [KEEP, perm(0, 1, 2)])
    with pytest.raises(ValueError, match="not a permutation"):
        permute_state(state, TWO_LAYER, [KEEP, perm(0, 0, 1), KEEP])
    with pytest.raises(ValueError, match="not a permutation"):
        permute_state(state, TWO_LAYER, [KEEP, perm(0, 1), KEEP])
    with pytest.raises(ValueError, match="not permutable"):
        permute_state(state, TWO_LAYER, [perm(1, 0), perm(0, 1, 2), KEEP])
    with pytest.raises(ValueError, match="'b1'"):
        permute_state(
            {k: v for k, v in state.items() if k != "b1"}, TWO_LAYER, [KEEP, perm(0, 1, 2), KEEP]
        )


# ----------------------------------------------------------------------------------------------
# a 3-layer MLP with a skip concatenation: h = relu(W1 x + b1), g = relu(W2 h + b2),
# y = W3 cat([h, g]) + b3, so W3's input axis holds h at offset 0 and g at offset 4

H, G = 4, 5
SKIP = [
    ChannelGroup("input", 3, (ChannelRef("w1", 1, 0, "in"),), fixed=True),
    ChannelGroup(
        "h",
        H,
        (
            ChannelRef("w1", 0, 0, "out"),
            ChannelRef("b1", 0, 0, "vector"),
            ChannelRef("w2", 1, 0, "in"),
            ChannelRef("w3", 1, 0, "in"),
        ),
    ),
    ChannelGroup(
        "g",
        G,
        (
            ChannelRef("w2", 0, 0, "out"),
            ChannelRef("b2", 0, 0, "vector"),
            ChannelRef("w3", 1, H, "in"),
        ),
    ),
    ChannelGroup(
        "output", 2, (ChannelRef("w3", 0, 0, "out"), ChannelRef("b3", 0, 0, "vector")), True
    ),
]


def skip_net(seed: int = 0) -> StateDict:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((H, 3)).astype(np.float32),
        "b1": rng.standard_normal(H).astype(np.float32),
        "w2": rng.standard_normal((G, H)).astype(np.float32),
        "b2": rng.standard_normal(G).astype(np.float32),
        "w3": rng.standard_normal((2, H + G)).astype(np.float32),
        "b3": rng.standard_normal(2).astype(np.float32),
        "steps": np.array(10, dtype=np.int64),
    }


def forward(state: StateDict, x: np.ndarray) -> np.ndarray:
    h = np.maximum(state["w1"] @ x + state["b1"][:, None], 0)
    g = np.maximum(state["w2"] @ h + state["b2"][:, None], 0)
    y: np.ndarray = state["w3"] @ np.concatenate([h, g]) + state["b3"][:, None]
    return y


X = np.random.default_rng(99).standard_normal((3, 50)).astype(np.float32)


def site_perms(seed: int) -> list[Perm]:
    rng = np.random.default_rng(seed)
    return [np.arange(g.size, dtype=np.int64) if g.fixed else rng.permutation(g.size) for g in SKIP]


def test_permutation_through_a_concatenation_keeps_the_function() -> None:
    state = skip_net()
    perms = site_perms(1)
    permuted = permute_state(state, SKIP, perms)
    np.testing.assert_allclose(forward(permuted, X), forward(state, X), rtol=1e-5, atol=1e-5)
    # forgetting the offset of g inside the concatenation breaks it
    wrong = [*SKIP[:2], ChannelGroup("g", G, (*SKIP[2].refs[:2], ChannelRef("w3", 1, 0, "in")))]
    wrong.append(SKIP[3])
    assert not np.allclose(forward(permute_state(state, wrong, perms), X), forward(state, X))


def test_matched_average_recovers_the_function_and_fedavg_does_not() -> None:
    state = skip_net()
    perms = [site_perms(s) for s in (1, 2, 3)]
    sites = [permute_state(state, SKIP, p) for p in perms]
    weights = [2.0, 1.0, 1.0]
    merged, found = matched_average_with_perms(sites, weights, SKIP)
    np.testing.assert_allclose(forward(merged, X), forward(state, X), rtol=1e-5, atol=1e-5)
    for key, value in sites[0].items():  # the heaviest site's channel order
        np.testing.assert_allclose(f64(merged[key]), f64(value), rtol=1e-6)
    for i in range(3):  # site i's channel c ends up where site 0 keeps it
        for g, (p_true, p_found) in enumerate(zip(perms[i], found[i], strict=True)):
            np.testing.assert_array_equal(p_true[p_found], perms[0][g])
    fedavg = plain_average(sites, weights)
    assert np.abs(forward(fedavg, X) - forward(state, X)).max() > 0.1


def test_matched_average_aligns_to_a_given_reference_and_keeps_dtypes() -> None:
    state = skip_net()
    sites = [permute_state(state, SKIP, site_perms(s)) for s in (4, 5)]
    sites[1] = {**sites[1], "steps": np.array(13, dtype=np.int64)}
    merged = matched_average(sites, [1.0, 2.0], SKIP, reference=state)
    for key in ("w1", "b1", "w2", "b2", "w3", "b3"):
        np.testing.assert_allclose(f64(merged[key]), f64(state[key]), rtol=1e-6)
        assert merged[key].dtype == np.float32
    assert merged["steps"].dtype == np.int64 and int(merged["steps"]) == 12  # rint(36 / 3)


def test_zero_weight_sites_are_ignored_and_bad_weights_refused() -> None:
    state = skip_net()
    garbage = {k: np.full_like(v, 1e6) for k, v in state.items()}
    merged = matched_average([state, garbage], [1.0, 0.0], SKIP)
    for key, value in state.items():
        np.testing.assert_array_equal(merged[key], value)
    for bad in ([0.0, 0.0], [1.0, -1.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="weights"):
            matched_average([state, garbage], bad, SKIP)
    with pytest.raises(ValueError, match="2 states with 1 weights"):
        matched_average([state, garbage], [1.0], SKIP)


def test_matched_average_reads_read_only_memmaps(tmp_path: Path) -> None:
    state = skip_net()
    sites: list[StateDict] = []
    for s in (6, 7, 8):
        site: StateDict = {}
        for key, value in permute_state(state, SKIP, site_perms(s)).items():
            path = tmp_path / f"{s}-{key}.npy"
            np.save(path, value)
            site[key] = np.load(path, mmap_mode="r")
        sites.append(site)
    merged = matched_average(sites, [1.0, 1.0, 1.0], SKIP)
    np.testing.assert_allclose(forward(merged, X), forward(state, X), rtol=1e-5, atol=1e-5)


def test_layer_phase_keys() -> None:
    assert num_phases(SKIP) == 2
    assert layer_phase_keys(SKIP, 0) == []
    assert layer_phase_keys(SKIP, 1) == ["b1", "w1"]  # w2 also reads g, not yet matched
    assert layer_phase_keys(SKIP, 2) == ["b1", "b2", "w1", "w2", "w3"]  # never b3: output only
    with pytest.raises(ValueError, match="phase"):
        layer_phase_keys(SKIP, 3)


# ----------------------------------------------------------------------------------------------
# a MONAI UNet schema, written out: UNet(spatial_dims=3, in_channels=1, out_channels=2,
# channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm=("batch", {"affine": True}))

_K3 = (3, 3, 3)
UNET_RES1_BATCH: dict[str, tuple[int, ...]] = {}


def _convolution(prefix: str, out: int, weight: tuple[int, ...], adn: bool = True) -> None:
    UNET_RES1_BATCH[f"{prefix}.conv.weight"] = weight
    UNET_RES1_BATCH[f"{prefix}.conv.bias"] = (out,)
    if adn:
        for name in ("weight", "bias", "running_mean", "running_var"):
            UNET_RES1_BATCH[f"{prefix}.adn.N.{name}"] = (out,)
        UNET_RES1_BATCH[f"{prefix}.adn.N.num_batches_tracked"] = ()
        UNET_RES1_BATCH[f"{prefix}.adn.A.weight"] = (1,)


_convolution("model.0.conv.unit0", 4, (4, 1, *_K3))
UNET_RES1_BATCH["model.0.residual.weight"] = (4, 1, *_K3)
UNET_RES1_BATCH["model.0.residual.bias"] = (4,)
_convolution("model.1.submodule.0.conv.unit0", 8, (8, 4, *_K3))
UNET_RES1_BATCH["model.1.submodule.0.residual.weight"] = (8, 4, *_K3)
UNET_RES1_BATCH["model.1.submodule.0.residual.bias"] = (8,)
_convolution("model.1.submodule.1.submodule.conv.unit0", 16, (16, 8, *_K3))
UNET_RES1_BATCH["model.1.submodule.1.submodule.residual.weight"] = (16, 8, 1, 1, 1)
UNET_RES1_BATCH["model.1.submodule.1.submodule.residual.bias"] = (16,)
_convolution("model.1.submodule.2.0", 4, (24, 4, *_K3))  # ConvTranspose3d: (C_in, C_out, ...)
_convolution("model.1.submodule.2.1.conv.unit0", 4, (4, 4, *_K3))
_convolution("model.2.0", 2, (8, 2, *_K3))
_convolution("model.2.1.conv.unit0", 2, (2, 2, *_K3), adn=False)


def unet_schema(shapes: dict[str, tuple[int, ...]]) -> dict[str, TensorSpec]:
    return {k: TensorSpec(s, "I64" if k.endswith("tracked") else "F32") for k, s in shapes.items()}


def test_unet_channel_groups_from_a_schema() -> None:
    groups = unet_channel_groups(unet_schema(UNET_RES1_BATCH))
    assert [(g.name, g.size, g.fixed) for g in groups] == [
        ("input", 1, True),
        ("model.0.conv.unit0.conv", 4, False),
        ("model.1.submodule.0.conv.unit0.conv", 8, False),
        ("model.1.submodule.1.submodule.conv.unit0.conv", 16, False),
        ("model.1.submodule.2.0.conv", 4, False),
        ("output", 2, True),
    ]
    refs = {g.name: {(r.key, r.axis, r.offset, r.role) for r in g.refs} for g in groups}
    top_down = refs["model.0.conv.unit0.conv"]
    assert ("model.0.residual.weight", 0, 0, "out") in top_down  # residual conv, same channels
    assert ("model.0.residual.bias", 0, 0, "vector") in top_down
    assert ("model.0.conv.unit0.adn.N.running_var", 0, 0, "stat") in top_down
    assert ("model.2.0.conv.weight", 0, 0, "in") in top_down  # concatenation, offset 0
    assert ("model.2.0.conv.weight", 0, 4, "in") in refs["model.1.submodule.2.0.conv"]
    bottom = refs["model.1.submodule.1.submodule.conv.unit0.conv"]
    assert ("model.1.submodule.2.0.conv.weight", 0, 8, "in") in bottom  # after the 8 encoder ch.
    inner_up = refs["model.1.submodule.2.0.conv"]
    assert ("model.1.submodule.2.0.conv.weight", 1, 0, "out") in inner_up  # transposed: axis 1
    # the up path's residual unit adds its input: its conv reads and writes the same channels
    assert ("model.1.submodule.2.1.conv.unit0.conv.weight", 1, 0, "in") in inner_up
    assert ("model.1.submodule.2.1.conv.unit0.conv.weight", 0, 0, "out") in inner_up
    grouped = {r.key for g in groups for r in g.refs}
    assert all(k.endswith(("A.weight", "tracked")) for k in set(UNET_RES1_BATCH) - grouped)


def test_unet_channel_groups_refuses_what_it_does_not_know() -> None:
    extra = {**UNET_RES1_BATCH, "model.1.submodule.0.attention.weight": (8,)}
    with pytest.raises(ValueError, match=r"unrecognised tensor 'model\.1\.submodule\.0\.attention"):
        unet_channel_groups(unet_schema(extra))
    missing = {k: v for k, v in UNET_RES1_BATCH.items() if k != "model.2.0.conv.weight"}
    with pytest.raises(ValueError, match=r"model\.2\.0\.conv\.weight"):
        unet_channel_groups(unet_schema(missing))
    resized = {**UNET_RES1_BATCH, "model.1.submodule.0.conv.unit0.adn.N.bias": (7,)}
    with pytest.raises(ValueError, match=r"model\.1\.submodule\.0\.conv\.unit0\.adn\.N\.bias"):
        unet_channel_groups(unet_schema(resized))
    narrow = {**UNET_RES1_BATCH, "model.2.0.conv.weight": (6, 2, *_K3)}
    with pytest.raises(ValueError, match=r"'model\.2\.0\.conv\.weight': 6 input channels"):
        unet_channel_groups(unet_schema(narrow))
    with pytest.raises(ValueError, match="missing tensor"):
        unet_channel_groups({"encoder.weight": TensorSpec((4, 1, 3, 3, 3), "F32")})


def test_unet_groups_match_and_average_in_numpy() -> None:
    rng = np.random.default_rng(0)
    state: StateDict = {
        k: (rng.standard_normal(s) if s else np.array(3)).astype(
            np.int64 if k.endswith("tracked") else np.float32
        )
        for k, s in UNET_RES1_BATCH.items()
    }
    groups = unet_channel_groups(schema_of(state))
    perms = [
        np.arange(g.size, dtype=np.int64) if g.fixed else rng.permutation(g.size) for g in groups
    ]
    site = permute_state(state, groups, perms)
    assert not np.array_equal(site["model.2.0.conv.weight"], state["model.2.0.conv.weight"])
    aligned = permute_state(site, groups, match_to(state, site, groups))
    for key, value in state.items():
        np.testing.assert_array_equal(aligned[key], value)
    merged = matched_average([state, site], [1.0, 1.0], groups)
    for key, value in state.items():
        np.testing.assert_allclose(f64(merged[key]), f64(value), rtol=1e-6)
