"""Client halves of the schemes (fedvox.client.hooks): personal keys, FedProx, SCAFFOLD, freeze."""

from __future__ import annotations

import json

import pytest
import torch

from fedvox.client.hooks import SchemeHooks, SchemeTraining, personal_keys
from fedvox.client.model import build_model
from fedvox.server import strategies
from fedvox.wire.taskconfig import ModelSpec
from fedvox.wire.tensors import schema_of
from tests.unit.test_strategy_contract import GLOBAL, UNET_SHAPES, UNET_SPEC

# ---- personal keys on a real (small) MONAI UNet, chosen by module type ----


def unet(norm: str) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm=norm)
    return build_model(spec)


# the six norm layers, in data-flow order; the last block is conv-only (no norm)
NORMS = [
    "model.0.conv.unit0.adn.N",
    "model.1.submodule.0.conv.unit0.adn.N",
    "model.1.submodule.1.submodule.conv.unit0.adn.N",
    "model.1.submodule.2.0.adn.N",
    "model.1.submodule.2.1.conv.unit0.adn.N",
    "model.2.0.adn.N",
]
INSTANCE_STATE = ("weight", "bias")  # affine, no running statistics
BATCH_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def instance_unet() -> torch.nn.Module:
    return unet("instance")


@pytest.fixture(scope="module")
def batch_unet() -> torch.nn.Module:
    return unet("batch")


def test_fedbn_keeps_the_instance_norm_affine_parameters(instance_unet: torch.nn.Module) -> None:
    keys = personal_keys(instance_unet, SchemeHooks(local_keys="norm"))
    assert keys == {f"{n}.{s}" for n in NORMS for s in INSTANCE_STATE}
    assert len(keys) == 12
    # the PReLU next to each norm (adn.A.weight) and the conv biases are shared
    assert not any(".adn.A." in k or k.endswith("conv.bias") for k in keys)


def test_fedbn_keeps_batch_norm_parameters_and_statistics(batch_unet: torch.nn.Module) -> None:
    keys = personal_keys(batch_unet, SchemeHooks.from_config({"local_keys": "norm"}))
    assert keys == {f"{n}.{s}" for n in NORMS for s in BATCH_STATE}
    assert len(keys) == 30
    assert keys <= set(batch_unet.state_dict())


def test_fedper_head_is_the_last_conv_layer(instance_unet: torch.nn.Module) -> None:
    keys = personal_keys(instance_unet, SchemeHooks(local_keys="head", head_layers=1))
    assert keys == {"model.2.1.conv.unit0.conv.weight", "model.2.1.conv.unit0.conv.bias"}


@pytest.mark.parametrize(("norm", "stats"), [("instance", INSTANCE_STATE), ("batch", BATCH_STATE)])
def test_fedper_two_head_layers_take_the_norm_between_them(
    norm: str, stats: tuple[str, ...], instance_unet: torch.nn.Module, batch_unet: torch.nn.Module
) -> None:
    model = instance_unet if norm == "instance" else batch_unet
    keys = personal_keys(model, SchemeHooks(local_keys="head", head_layers=2))
    # the last up block: transposed conv, its norm and PReLU, then the final conv
    assert keys == {
        "model.2.0.conv.weight",
        "model.2.0.conv.bias",
        *(f"model.2.0.adn.N.{s}" for s in stats),
        "model.2.0.adn.A.weight",
        "model.2.1.conv.unit0.conv.weight",
        "model.2.1.conv.unit0.conv.bias",
    }


def test_fedper_head_cannot_exceed_the_conv_layers(instance_unet: torch.nn.Module) -> None:
    # 10 conv-like layers: 3 ResidualUnits x (conv + residual conv), 2 transposed convs,
    # and 2 conv-only units
    everything = personal_keys(instance_unet, SchemeHooks(local_keys="head", head_layers=10))
    assert everything == set(instance_unet.state_dict())
    with pytest.raises(ValueError, match=r"only 10 conv layers, fewer than head_layers=11"):
        personal_keys(instance_unet, SchemeHooks(local_keys="head", head_layers=11))


def test_no_policy_keeps_nothing_local(instance_unet: torch.nn.Module) -> None:
    assert personal_keys(instance_unet, SchemeHooks()) == set()


def test_a_policy_that_matches_no_tensor_is_an_error() -> None:
    # instance norm without affine parameters has no state: FedBN would keep nothing
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.InstanceNorm3d(2))
    with pytest.raises(ValueError, match=r"local_keys='norm' matches no tensor"):
        personal_keys(model, SchemeHooks(local_keys="norm"))
    # names do not matter, module types do: a conv called "norm" is not a norm layer
    named = torch.nn.Sequential()
    named.add_module("norm", torch.nn.Conv3d(1, 2, 1))
    with pytest.raises(ValueError, match="matches no tensor"):
        personal_keys(named, SchemeHooks(local_keys="norm"))
    assert personal_keys(named, SchemeHooks(local_keys="head")) == {"norm.weight", "norm.bias"}


def test_hook_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"does not support strategy hook 'moon_mu'"):
        SchemeHooks.from_config({"moon_mu": 1.0})
    with pytest.raises(ValueError, match=r"unknown local_keys policy 'body'"):
        SchemeHooks.from_config({"local_keys": "body"})
    assert SchemeHooks.from_config({"scaffold": True, "lr": 0.05}).lr == 0.05
    hooks = SchemeHooks.from_config({"freeze": ["a", "b"], "proximal_mu": 0.1})
    assert hooks.freeze == ("a", "b") and hooks.proximal_mu == 0.1


# ---- the client side of the strategy contract ----


def test_the_contract_model_is_the_real_unet() -> None:
    model = build_model(UNET_SPEC)
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == UNET_SHAPES
    assert {k: str(v.dtype) for k, v in state.items()} == {
        k: "torch.int64" if k.endswith("num_batches_tracked") else "torch.float32"
        for k in UNET_SHAPES
    }


@pytest.mark.parametrize("name", sorted(strategies.REGISTRY))
def test_every_scheme_sends_hooks_the_client_understands(name: str) -> None:
    strategy = strategies.create(name)
    strategy.initialize(schema_of(GLOBAL))
    model = build_model(UNET_SPEC)
    for round_ in (1, 2, 3):
        config = json.loads(json.dumps(strategy.client_config(round_)))  # the JSON task config
        hooks = SchemeHooks.from_config(config)  # raises on a hook this client lacks
        personal_keys(model, hooks)  # raises if a local_keys policy matches nothing
        SchemeTraining(hooks, model, {}, {}, lr=0.1)  # raises on a key it cannot freeze


# ---- FedProx, SCAFFOLD and freeze on a tiny module ----


def linear() -> torch.nn.Linear:
    """y = w x + b with w = [[1, 2]], b = [3]."""
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([3.0]))
    return model


def close(got: torch.Tensor, want: list[float] | list[list[float]]) -> None:
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-6, atol=1e-7)


def move(model: torch.nn.Linear, dw: list[float], db: float) -> None:
    with torch.no_grad():
        model.weight.add_(torch.tensor([dw]))
        model.bias.add_(torch.tensor([db]))


def test_fedprox_penalty_against_hand_computation() -> None:
    model = linear()
    scheme = SchemeTraining(SchemeHooks(proximal_mu=0.5), model, {}, {}, lr=0.1)
    penalty = scheme.penalty()
    assert penalty is not None and float(penalty.detach()) == 0.0  # at the global weights
    move(model, [1.0, -2.0], 3.0)
    penalty = scheme.penalty()
    assert penalty is not None
    # mu/2 * ||w - w_global||^2 = 0.25 * (1 + 4 + 9) = 3.5
    assert float(penalty.detach()) == pytest.approx(3.5, rel=1e-6)
    torch.autograd.backward(penalty)
    # gradient mu * (w - w_global): 0.5 * [1, -2] and 0.5 * 3
    assert model.weight.grad is not None and model.bias.grad is not None
    close(model.weight.grad, [[0.5, -1.0]])
    close(model.bias.grad, [1.5])


def test_fedprox_penalty_skips_frozen_parameters_and_is_off_without_mu() -> None:
    model = linear()
    scheme = SchemeTraining(SchemeHooks(proximal_mu=0.5, freeze=("bias",)), model, {}, {}, 0.1)
    move(model, [1.0, -2.0], 3.0)
    penalty = scheme.penalty()
    assert penalty is not None
    assert float(penalty.detach()) == pytest.approx(0.25 * (1 + 4), rel=1e-6)  # 1.25
    assert SchemeTraining(SchemeHooks(), linear(), {}, {}, 0.1).penalty() is None


CONTROL = {"weight": torch.tensor([[0.5, -0.5]]), "bias": torch.tensor([1.0])}
SITE_CONTROL = {"weight": torch.tensor([[0.25, 0.25]])}  # no c_i for the bias yet: zeros


def test_scaffold_corrects_gradients_by_c_minus_c_i() -> None:
    model = linear()
    scheme = SchemeTraining(SchemeHooks(scaffold=True), model, CONTROL, SITE_CONTROL, lr=0.1)
    model.weight.grad = torch.tensor([[1.0, 1.0]])
    model.bias.grad = torch.tensor([2.0])
    scheme.correct_gradients()
    # g - c_i + c: [1 - 0.25 + 0.5, 1 - 0.25 - 0.5] and 2 - 0 + 1
    close(model.weight.grad, [[1.25, 0.25]])
    close(model.bias.grad, [3.0])


def test_scaffold_new_site_control_against_the_formula() -> None:
    model = linear()
    control = {**CONTROL, "not_a_parameter": torch.tensor([9.0])}  # ignored
    scheme = SchemeTraining(SchemeHooks(scaffold=True), model, control, SITE_CONTROL, lr=0.1)
    assert sorted(scheme.c) == ["bias", "weight"]
    move(model, [-0.2, 0.4], -0.5)  # y = [[0.8, 2.4]], [2.5]
    new = scheme.new_site_control(steps=4)
    # c_i+ = c_i - c + (w_global - y) / (K lr), K lr = 0.4:
    #   weight: [0.25 - 0.5 + 0.2/0.4, 0.25 + 0.5 - 0.4/0.4] = [0.25, -0.25]
    #   bias:   0 - 1 + 0.5/0.4 = 0.25
    close(new["weight"], [[0.25, -0.25]])
    close(new["bias"], [0.25])
    # no steps: nothing learned, c_i is kept (zeros where it was missing)
    kept = scheme.new_site_control(steps=0)
    assert kept["weight"].tolist() == [[0.25, 0.25]] and kept["bias"].tolist() == [0.0]


def test_scaffold_site_control_is_the_mean_raw_gradient_under_plain_sgd() -> None:
    # with plain SGD on the corrected gradient, y_K = w - lr sum_k (g_k - c_i + c), so
    # option II gives c_i+ = mean_k g_k: the site's average gradient along its path
    torch.manual_seed(0)
    model = linear()
    scheme = SchemeTraining(SchemeHooks(scaffold=True), model, CONTROL, SITE_CONTROL, lr=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.tensor([[1.0, -1.0], [0.5, 2.0]]), torch.tensor([[0.0], [1.0]])
    raw = {"weight": torch.zeros(1, 2), "bias": torch.zeros(1)}
    for _ in range(3):
        optimizer.zero_grad()
        torch.autograd.backward(torch.nn.functional.mse_loss(model(x), target))
        for name, p in model.named_parameters():
            assert p.grad is not None
            raw[name] += p.grad / 3
        scheme.correct_gradients()
        optimizer.step()
    new = scheme.new_site_control(steps=3)
    for name in raw:
        torch.testing.assert_close(new[name], raw[name], rtol=1e-5, atol=1e-6)


def test_freeze_keeps_named_parameters_fixed() -> None:
    model = linear()
    SchemeTraining(SchemeHooks(freeze=("bias",)), model, {}, {}, lr=0.1)
    assert not model.bias.requires_grad and model.weight.requires_grad
    trainable = [p for p in model.parameters() if p.requires_grad]  # as the trainer does
    optimizer = torch.optim.SGD(trainable, lr=0.1, weight_decay=0.1)
    model(torch.tensor([[1.0, 1.0]])).sum().backward()
    optimizer.step()
    assert model.bias.tolist() == [3.0]
    assert model.weight.tolist() != [[1.0, 2.0]]


def test_freeze_refuses_unknown_names_and_accepts_buffers() -> None:
    with pytest.raises(ValueError, match=r"cannot freeze 'nope'"):
        SchemeTraining(SchemeHooks(freeze=("nope",)), linear(), {}, {}, lr=0.1)
    conv = "model.0.conv.unit0.conv.weight"
    stats = "model.0.conv.unit0.adn.N.running_mean"  # FedMA's layer-wise phases send these
    model = unet("batch")
    SchemeTraining(SchemeHooks(freeze=(conv, stats)), model, {}, {}, lr=0.1)
    assert not dict(model.named_parameters())[conv].requires_grad
