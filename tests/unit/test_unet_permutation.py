"""FedMA channel groups against the real MONAI UNet (fedvox.server.strategies.fedma_align).

The numpy core derives the UNet's channel coupling from key names and shapes only; these tests
build the actual network with torch and check that permuting by those groups leaves its outputs
unchanged, that a broken permutation does not, that no conv or norm tensor is left out, and that
matched averaging undoes sites' channel permutations where FedAvg cannot.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from fedvox.server.strategies.fedma_align import (
    ChannelGroup,
    Perm,
    matched_average,
    matched_average_with_perms,
    permute_state,
    unet_channel_groups,
)
from fedvox.wire.tensors import StateDict, schema_of

pytest.importorskip("torch")
pytest.importorskip("monai")

import torch

from fedvox.client.model import build_model
from fedvox.wire.taskconfig import ModelSpec

SPECS = {
    "res0-instance": ModelSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=0),
    "res1-instance": ModelSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    "res2-instance": ModelSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=2),
    "res0-batch": ModelSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=0, norm="batch"),
    "res1-batch": ModelSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch"),
    "res2-batch": ModelSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=2, norm="batch"),
    # identity residuals: the bottom unit (8 -> 8, stride 1) and a stride-1 down unit (4 -> 4)
    "identity-bottom": ModelSpec(channels=(4, 8, 8), strides=(2, 2), num_res_units=2),
    "identity-down": ModelSpec(
        channels=(4, 4, 8), strides=(1, 2), num_res_units=1, norm="batch", out_channels=3
    ),
    "four-levels": ModelSpec(channels=(2, 4, 6, 8), strides=(2, 2, 2), num_res_units=1),
}

NORM_TYPES = (
    torch.nn.InstanceNorm3d,
    torch.nn.BatchNorm3d,
)
CONV_TYPES = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)


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


def random_model(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    """The UNet in eval mode, conv weights as initialised, every other float tensor random."""
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or t.dim() > 1:
                continue  # conv weights keep MONAI's init, which keeps activations O(1)
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith(".N.weight"):
                t.normal_(1.0, 0.2)
            elif name.endswith(".A.weight"):
                t.uniform_(0.1, 0.4)
            else:
                t.normal_(0.0, 0.1)
    return model


def numpy_state(model: torch.nn.Module) -> StateDict:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def outputs(model: torch.nn.Module, state: StateDict, x: torch.Tensor) -> np.ndarray:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    with torch.no_grad():
        y: np.ndarray = model(x).numpy()
    return y


def inputs(seed: int = 1, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 16, 16, 16, generator=generator)


def random_perms(groups: list[ChannelGroup], seed: int) -> list[Perm]:
    """A non-identity permutation for every permutable group."""
    rng = np.random.default_rng(seed)
    perms: list[Perm] = []
    for g in groups:
        perm = np.arange(g.size, dtype=np.int64)
        while not g.fixed and g.size > 1 and np.array_equal(perm, np.arange(g.size)):
            perm = rng.permutation(g.size).astype(np.int64)
        perms.append(perm)
    return perms


def setup(name: str) -> tuple[torch.nn.Module, StateDict, list[ChannelGroup]]:
    model = random_model(SPECS[name])
    state = numpy_state(model)
    return model, state, unet_channel_groups(schema_of(state))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_permuting_a_unet_leaves_its_outputs_unchanged(name: str) -> None:
    model, state, groups = setup(name)
    x = inputs()
    before = outputs(model, state, x)
    permuted = permute_state(state, groups, random_perms(groups, seed=2))
    changed = [k for k in state if not np.array_equal(state[k], permuted[k])]
    assert len(changed) > len(state) // 2  # the permutation really moved things
    after = outputs(model, permuted, x)
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)


def _drop(groups: list[ChannelGroup], pred: str) -> list[ChannelGroup]:
    return [replace(g, refs=tuple(r for r in g.refs if pred not in r.key)) for g in groups]


def _shift_concat(groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """Forget the concatenation offset: the deeper block's slice of the top decoder conv."""
    out = []
    done = False
    for g in reversed(groups):  # the top-level decoder comes last
        refs = []
        for r in g.refs:
            if not done and r.role == "in" and r.offset > 0:
                r = replace(r, offset=0)
                done = True
            refs.append(r)
        out.append(replace(g, refs=tuple(refs)))
    assert done
    return out[::-1]


MUTATIONS = [
    ("res0-instance", "concat offset"),
    ("res2-instance", "concat offset"),
    ("res1-instance", "residual"),
    ("res2-instance", "adn.N.bias"),
    ("res1-batch", "running_mean"),
    ("res0-batch", "conv.bias"),  # (under instance norm a conv bias cancels out)
]


@pytest.mark.parametrize(("name", "mutation"), MUTATIONS)
def test_a_wrong_permutation_changes_the_outputs(name: str, mutation: str) -> None:
    model, state, groups = setup(name)
    x = inputs()
    before = outputs(model, state, x)
    perms = random_perms(groups, seed=3)
    broken = _shift_concat(groups) if mutation == "concat offset" else _drop(groups, mutation)
    after = outputs(model, permute_state(state, broken, perms), x)
    assert np.abs(after - before).max() > 1e-3


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_conv_and_norm_tensor_is_in_a_group(name: str) -> None:
    model, state, groups = setup(name)
    grouped = {r.key for g in groups for r in g.refs}
    for module_name, module in model.named_modules():
        if not isinstance(module, CONV_TYPES + NORM_TYPES):
            continue
        for tensor_name, _ in [*module.named_parameters(), *module.named_buffers()]:
            if tensor_name != "num_batches_tracked":
                assert f"{module_name}.{tensor_name}" in grouped
        if isinstance(module, CONV_TYPES):
            # both channel axes of every conv weight, tiled exactly by the groups' slices
            key = f"{module_name}.weight"
            for axis in (0, 1):
                covered = sorted(
                    (r.offset, r.offset + g.size)
                    for g in groups
                    for r in g.refs
                    if r.key == key and r.axis == axis
                )
                ends = [0] + [hi for _, hi in covered]
                assert [lo for lo, _ in covered] == ends[:-1]
                assert ends[-1] == state[key].shape[axis]
    # what is left out carries no channel axis: single-parameter PReLUs and BN counters
    for key in set(state) - grouped:
        assert key.endswith(("adn.A.weight", "num_batches_tracked")), key
        assert state[key].size == 1


def test_network_input_and_output_channels_are_fixed() -> None:
    _, state, groups = setup("res2-batch")
    fixed = [g for g in groups if g.fixed]
    assert [(g.name, g.size) for g in fixed] == [("input", 1), ("output", 2)]
    with pytest.raises(ValueError, match="not permutable"):
        permute_state(state, groups, [np.arange(g.size)[::-1] for g in groups])


@pytest.mark.parametrize(
    "name", ["res0-instance", "res2-instance", "res1-batch", "identity-bottom"]
)
def test_matched_average_undoes_site_permutations_and_fedavg_does_not(name: str) -> None:
    model, state, groups = setup(name)
    x = inputs()
    original = outputs(model, state, x)
    site_perms = [random_perms(groups, seed=10 + i) for i in range(3)]
    sites = [permute_state(state, groups, p) for p in site_perms]
    weights = [1.0, 3.0, 2.0]

    merged, perms = matched_average_with_perms(sites, weights, groups)
    np.testing.assert_allclose(outputs(model, merged, x), original, atol=1e-5, rtol=0)
    # the result is in the heaviest site's channel order
    for key, value in sites[1].items():
        np.testing.assert_allclose(f64(merged[key]), f64(value), atol=1e-6)
    assert len(perms) == 3

    fedavg = plain_average(sites, weights)
    assert np.abs(outputs(model, fedavg, x) - original).max() > 0.1 * np.abs(original).max()


def test_matched_average_with_noise_stays_close_to_the_original_function() -> None:
    model, state, groups = setup("res2-batch")
    x = inputs()
    original = outputs(model, state, x)
    rng = np.random.default_rng(7)
    sites = []
    for i in range(3):
        noisy: StateDict = {
            k: (f64(v) + 1e-3 * rng.standard_normal(v.shape)).astype(v.dtype)
            if v.dtype.kind == "f"
            else v
            for k, v in state.items()
        }
        sites.append(permute_state(noisy, groups, random_perms(groups, seed=20 + i)))
    merged = matched_average(sites, [1.0, 1.0, 1.0], groups, reference=sites[0])
    scale = np.abs(original).max()
    assert np.abs(outputs(model, merged, x) - original).max() < 0.02 * scale
