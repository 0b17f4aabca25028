"""FedMA core for MONAI 3D UNets: channel groups, permutation, matching, matched averaging.

Wang et al., "Federated Learning with Matched Averaging", ICLR 2020 (reference code IBM/FedMA).
Hidden units of a network can be permuted without changing the function it computes, so two
sites' models can compute nearly the same function while their channel orders differ; averaging
them coordinate-wise (FedAvg) then mixes unrelated channels. FedMA first matches each site's
output channels ("neurons") to a common order with the Hungarian algorithm on weight
similarity, permutes them, then averages. This module is the pure numpy/scipy core (the server
has no torch); the strategy that wraps it lives elsewhere.

What IBM's code lacks and this module adds: Conv3d/ConvTranspose3d weights, norm layers
(affine parameters and batch-norm running statistics), residual units (whose residual conv, or
identity, ties the unit's output channels to another space) and UNet skip concatenations (an
encoder's channels reappear at offset 0, and the deeper block's output at offset C_enc, of the
decoder conv's input axis). Every channel axis of every tensor is accounted for, and a schema
that is not recognised is refused with the offending key instead of being silently dropped.

Structure (`unet_channel_groups`): derived from the state-dict schema alone (names and shapes),
by walking MONAI's recursive UNet layout:

    block P   = Sequential(P.0 down, P.1 = SkipConnection(P.1.submodule), P.2 up)
    submodule = a block (it has keys under "P.1.submodule.1.submodule.") or the bottom layer
    down      = Convolution (P.conv.weight, P.adn.N.*, P.adn.A.weight)
                or ResidualUnit (P.conv.unit{i}.conv.weight ..., P.residual.weight or identity)
    up        = transposed Convolution (P.conv.weight, shape (C_in, C_out, k, k, k))
                or Sequential(transposed Convolution P.0, ResidualUnit P.1 with identity residual)
    SkipConnection output = cat([down output, submodule output], dim=1)

Each distinct channel space becomes one `ChannelGroup`; spaces that an identity residual adds
together are merged (union-find). The network's input and output (class) channels form groups
with ``fixed=True``: they are listed, so that coverage can be checked, but never permuted.

Fixed widths, no growth: the paper's BBP-MAP may open new global neurons, so the global layer can
get wider than the local ones. fedvox keeps every width fixed and only permutes: every site
builds its network from the server's ModelSpec (fixed-shape MONAI UNet), and the wire checks
every tensor's shape against the schema, so a wider global model could not be loaded anywhere.
With fixed widths the matching is a plain linear assignment per group (one-to-one, no "new
neuron" option), i.e. a permutation-only FedMA, close to OT fusion / weight matching.

Two ways to use it:

* One-shot, per round (`matched_average`, the default mode): align every site's full model to a
  reference and take the weighted mean, every round. One communication round per round, no
  client changes. It pays off when sites' channels have drifted apart (many local steps, strong
  non-IID, sites initialised independently); when sites start each round from the same global
  model and train briefly, the matching finds (near) identity and it reduces to FedAvg, which is
  a safe fallback rather than a failure.
* The paper's layer-wise protocol (`layer_phase_keys`, `num_phases`): FedMA proper matches one
  layer per communication round, and sites retrain with the matched layers frozen. With one fixed
  global model this becomes: in phase p the server sends the global model, sites freeze the keys
  `layer_phase_keys(groups, p)` (identical at every site, so matching them yields identity) and
  train the rest, and the server again runs `matched_average`. The phase advances every R rounds,
  and a full pass costs `num_phases(groups)` phases (about 10-20 for fedvox's UNets). Use it when
  rounds are cheap and one wants the paper's progressive freezing; otherwise use one-shot.

Permutation convention: ``perm[i] = j`` means the permuted tensor's channel i is the original
channel j (``permuted = original.take(perm, axis)``), one perm per group, identity for fixed groups.

Memory: `match_to` reads one tensor at a time (as float64 copies) while it builds the cost of one
group; `matched_average` keeps the reference (a site's state or the running mean) and the output,
and folds the sites key by key, so at any moment it holds one key's permuted copy per fold step,
never N permuted models. States may be read-only numpy memmaps (e.g. spilled safetensors blobs):
nothing is written in place, and tensors that no group touches are passed through uncopied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from fedvox.wire.tensors import Array, StateDict, TensorSpec

Role = Literal["out", "in", "vector", "stat"]
Perm = npt.NDArray[np.int64]
Float64 = npt.NDArray[np.float64]

ROLES: tuple[Role, ...] = ("out", "in", "vector", "stat")
# norm buffers that carry no channel axis
_SCALAR_SUFFIXES = ("num_batches_tracked",)


@dataclass(frozen=True)
class ChannelRef:
    """One place where a group's channels index a tensor: ``tensor[..., offset:offset+size, ...]``
    along ``axis``.

    role: "out" - a conv weight's output axis (Conv3d axis 0, ConvTranspose3d axis 1);
          "in" - a conv weight's input axis (Conv3d axis 1, ConvTranspose3d axis 0);
          "vector" - a per-channel parameter (conv bias, norm weight/bias, per-channel PReLU);
          "stat" - a per-channel buffer (batch-norm running_mean/running_var).
    """

    key: str
    axis: int
    offset: int
    role: Role


@dataclass(frozen=True)
class ChannelGroup:
    """A set of `size` channels that must be permuted together wherever they appear.

    name: the module that first produces them (or "input"/"output" for the network's own
    channels). fixed: the network's input or output channels, which are never permuted.
    """

    name: str
    size: int
    refs: tuple[ChannelRef, ...]
    fixed: bool = False


# ----------------------------------------------------------------------------------------------
# structure


@dataclass(frozen=True)
class _Seg:
    space: int
    offset: int
    size: int


class _Builder:
    """Walks a MONAI UNet schema, creating channel spaces and merging identity-tied ones."""

    def __init__(self, schema: Mapping[str, TensorSpec]) -> None:
        self.shapes = {k: tuple(int(d) for d in v.shape) for k, v in schema.items()}
        self.used: set[str] = set()
        self.parent: list[int] = []
        self.sizes: list[int] = []
        self.names: list[str] = []
        self.fixed: list[bool] = []
        self.refs: list[list[ChannelRef]] = []

    # spaces ------------------------------------------------------------------------------
    def new_space(self, size: int, name: str, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.sizes.append(size)
        self.names.append(name)
        self.fixed.append(fixed)
        self.refs.append([])
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.sizes[ra] != self.sizes[rb]:
            raise ValueError(
                f"{where}: identity residual adds {self.sizes[ra]} to {self.sizes[rb]} channels"
            )
        root, child = min(ra, rb), max(ra, rb)  # the earliest space keeps its place and name
        self.parent[child] = root
        self.fixed[root] = self.fixed[root] or self.fixed[child]
        self.refs[root].extend(self.refs[child])
        self.refs[child] = []
        return root

    def add(self, space: int, ref: ChannelRef) -> None:
        self.refs[self.find(space)].append(ref)
        self.used.add(ref.key)

    def size(self, space: int) -> int:
        return self.sizes[self.find(space)]

    # tensors -----------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.shapes

    def shape(self, key: str) -> tuple[int, ...]:
        try:
            return self.shapes[key]
        except KeyError:
            raise self.missing(key) from None

    def missing(self, key: str) -> ValueError:
        return ValueError(f"UNet schema: missing tensor {key!r}")

    def prefixed(self, start: str) -> bool:
        return any(k.startswith(start) for k in self.shapes)

    def vector(self, key: str, space: int, role: Role) -> None:
        shape = self.shape(key)
        if shape != (self.size(space),):
            raise ValueError(f"{key!r}: shape {shape}, expected ({self.size(space)},)")
        self.add(space, ChannelRef(key, 0, 0, role))

    def segs_size(self, segs: Sequence[_Seg]) -> int:
        return sum(s.size for s in segs)

    # modules -----------------------------------------------------------------------------
    def weight(
        self, key: str, inputs: Sequence[_Seg], transposed: bool, name: str, out: int | None
    ) -> int:
        """A conv weight reading `inputs`; its output joins space `out` (or a new space)."""
        shape = self.shape(key)
        in_axis, out_axis = (0, 1) if transposed else (1, 0)
        if len(shape) < 3:
            raise ValueError(f"{key!r}: shape {shape} is not a conv weight")
        if shape[in_axis] != self.segs_size(inputs):
            raise ValueError(
                f"{key!r}: {shape[in_axis]} input channels on axis {in_axis}, "
                f"expected {self.segs_size(inputs)}"
            )
        if out is None:
            out = self.new_space(shape[out_axis], name)
        elif shape[out_axis] != self.size(out):
            raise ValueError(
                f"{key!r}: {shape[out_axis]} output channels, expected {self.size(out)}"
            )
        self.add(out, ChannelRef(key, out_axis, 0, "out"))
        for seg in inputs:
            self.add(seg.space, ChannelRef(key, in_axis, seg.offset, "in"))
        return out

    def convolution(self, prefix: str, inputs: Sequence[_Seg], transposed: bool) -> int:
        """monai.networks.blocks.Convolution: conv (+ ADN: norm N, activation A, dropout D)."""
        out = self.weight(f"{prefix}.conv.weight", inputs, transposed, f"{prefix}.conv", None)
        if self.has(f"{prefix}.conv.bias"):
            self.vector(f"{prefix}.conv.bias", out, "vector")
        for name in ("weight", "bias"):
            if self.has(f"{prefix}.adn.N.{name}"):
                self.vector(f"{prefix}.adn.N.{name}", out, "vector")
        for name in ("running_mean", "running_var"):
            if self.has(f"{prefix}.adn.N.{name}"):
                self.vector(f"{prefix}.adn.N.{name}", out, "stat")
        for name in _SCALAR_SUFFIXES:
            key = f"{prefix}.adn.N.{name}"
            if self.has(key):
                if self.shape(key) not in ((), (1,)):
                    raise ValueError(f"{key!r}: shape {self.shape(key)}, expected a scalar")
                self.used.add(key)
        act = f"{prefix}.adn.A.weight"
        if self.has(act):  # PReLU: MONAI's default has one shared parameter
            if self.shape(act) == (1,) and self.size(out) != 1:
                self.used.add(act)
            else:
                self.vector(act, out, "vector")
        return out

    def residual_unit(self, prefix: str, inputs: Sequence[_Seg]) -> int:
        """monai ResidualUnit: out = conv.unit{n-1}(...conv.unit0(x)) + residual(x)."""
        if not self.has(f"{prefix}.conv.unit0.conv.weight"):
            raise self.missing(f"{prefix}.conv.unit0.conv.weight")
        current = list(inputs)
        i = 0
        out = -1
        while self.has(f"{prefix}.conv.unit{i}.conv.weight"):
            out = self.convolution(f"{prefix}.conv.unit{i}", current, transposed=False)
            current = [_Seg(out, 0, self.size(out))]
            i += 1
        key = f"{prefix}.residual.weight"
        if self.has(key):  # a strided or channel-changing conv on the skip path
            self.weight(key, inputs, False, f"{prefix}.residual", out)
            if self.has(f"{prefix}.residual.bias"):
                self.vector(f"{prefix}.residual.bias", out, "vector")
            return out
        # identity residual: the unit's input and output channels are added, one space
        if len(inputs) != 1 or inputs[0].size != self.size(out):
            raise ValueError(f"{prefix!r}: identity residual over a concatenation or resize")
        return self.union(inputs[0].space, out, prefix)

    def down(self, prefix: str, inputs: Sequence[_Seg]) -> int:
        if self.has(f"{prefix}.conv.unit0.conv.weight"):
            return self.residual_unit(prefix, inputs)
        if self.has(f"{prefix}.conv.weight"):
            return self.convolution(prefix, inputs, transposed=False)
        unit = self.prefixed(f"{prefix}.conv.unit")
        raise self.missing(f"{prefix}.conv.unit0.conv.weight" if unit else f"{prefix}.conv.weight")

    def up(self, prefix: str, inputs: Sequence[_Seg]) -> int:
        if self.has(f"{prefix}.conv.weight"):
            return self.convolution(prefix, inputs, transposed=True)
        if self.has(f"{prefix}.0.conv.weight"):
            x = self.convolution(f"{prefix}.0", inputs, transposed=True)
            return self.residual_unit(f"{prefix}.1", [_Seg(x, 0, self.size(x))])
        nested = self.prefixed(f"{prefix}.0.") or self.prefixed(f"{prefix}.1.")
        raise self.missing(f"{prefix}.0.conv.weight" if nested else f"{prefix}.conv.weight")

    def block(self, prefix: str, inputs: Sequence[_Seg]) -> int:
        d = self.down(f"{prefix}.0", inputs)
        sub = f"{prefix}.1.submodule"
        if self.prefixed(f"{sub}.1.submodule."):
            s = self.block(sub, [_Seg(d, 0, self.size(d))])
        else:
            s = self.down(sub, [_Seg(d, 0, self.size(d))])  # the bottom layer
        # SkipConnection: torch.cat([x, submodule(x)], dim=1)
        cat = [_Seg(d, 0, self.size(d)), _Seg(s, self.size(d), self.size(s))]
        return self.up(f"{prefix}.2", cat)


def unet_channel_groups(
    schema: Mapping[str, TensorSpec], prefix: str = "model"
) -> list[ChannelGroup]:
    """The channel groups of a MONAI `UNet` state dict, in forward (creation) order.

    `schema` maps each state-dict key to its shape (``fedvox.wire.tensors.schema_of(state)``).
    Keys are those of ``monai.networks.nets.UNet(...).state_dict()``, whose modules live under
    `prefix`. Norm parameters are optional (affine-free norms have none). Raises ValueError
    naming the key when a tensor is missing, has an unexpected shape, or is not recognised.
    Fixed groups (the network's input and output channels) are included with ``fixed=True``.
    """
    b = _Builder(schema)
    first = f"{prefix}.0.conv.unit0.conv.weight"
    if not b.has(first):
        first = f"{prefix}.0.conv.weight"
    in_channels = b.shape(first)[1]
    source = b.new_space(in_channels, "input", fixed=True)
    out = b.block(prefix, [_Seg(source, 0, in_channels)])
    root = b.find(out)
    b.fixed[root] = True
    if b.names[root] != "input":
        b.names[root] = "output"
    unknown = sorted(set(b.shapes) - b.used)
    if unknown:
        raise ValueError(f"UNet schema: unrecognised tensor {unknown[0]!r} ({len(unknown)} in all)")
    groups = [
        ChannelGroup(b.names[s], b.sizes[s], tuple(b.refs[s]), b.fixed[s])
        for s in range(len(b.parent))
        if b.find(s) == s
    ]
    _check_coverage(b.shapes, groups)
    return groups


def _check_coverage(shapes: Mapping[str, tuple[int, ...]], groups: Sequence[ChannelGroup]) -> None:
    """Every referenced axis is tiled exactly once by the groups' slices."""
    spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for g in groups:
        for r in g.refs:
            spans.setdefault((r.key, r.axis), []).append((r.offset, r.offset + g.size))
    for (key, axis), parts in spans.items():
        parts.sort()
        end = 0
        for lo, hi in parts:
            if lo != end:
                raise ValueError(f"{key!r}: axis {axis} channels [{end}, {lo}) have no group")
            end = hi
        if end != shapes[key][axis]:
            raise ValueError(f"{key!r}: axis {axis} covered up to {end} of {shapes[key][axis]}")


def num_phases(groups: Sequence[ChannelGroup]) -> int:
    """Phases of the layer-wise protocol: one per permutable group."""
    return sum(not g.fixed for g in groups)


def layer_phase_keys(groups: Sequence[ChannelGroup], phase: int) -> list[str]:
    """Keys the sites freeze while retraining in phase `phase` of the layer-wise protocol.

    Phase p (0 <= p <= num_phases) follows the matching of the first p permutable groups in
    forward order. A key is frozen when it touches at least one permutable group and every
    permutable group it touches is among those p; so a conv weight is frozen once its output and
    all its input channel groups are matched, and tensors that only index the network's output
    (the classifier's bias) are never frozen. A site that freezes batch-norm parameters should
    also keep those norm layers in eval mode, so that their running statistics stay put.
    """
    order = [i for i, g in enumerate(groups) if not g.fixed]
    if not 0 <= phase <= len(order):
        raise ValueError(f"phase must be in [0, {len(order)}], got {phase}")
    matched = set(order[:phase])
    touched: dict[str, set[int]] = {}
    for i, g in enumerate(groups):
        if g.fixed:
            continue
        for r in g.refs:
            touched.setdefault(r.key, set()).add(i)
    return sorted(k for k, gs in touched.items() if gs <= matched)


# ----------------------------------------------------------------------------------------------
# permutation


@dataclass(frozen=True)
class _Op:
    group: int
    axis: int
    offset: int
    size: int
    role: Role


def _key_ops(groups: Sequence[ChannelGroup]) -> dict[str, list[_Op]]:
    ops: dict[str, list[_Op]] = {}
    for i, g in enumerate(groups):
        for r in g.refs:
            ops.setdefault(r.key, []).append(_Op(i, r.axis, r.offset, g.size, r.role))
    return ops


def _axis_slice(ndim: int, axis: int, lo: int, hi: int) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    index[axis] = slice(lo, hi)
    return tuple(index)


def _is_identity(perm: Perm) -> bool:
    return bool(np.array_equal(perm, np.arange(perm.shape[0])))


def _check_perms(groups: Sequence[ChannelGroup], perms: Sequence[npt.ArrayLike]) -> list[Perm]:
    if len(perms) != len(groups):
        raise ValueError(f"{len(perms)} permutations for {len(groups)} groups")
    out: list[Perm] = []
    for g, p in zip(groups, perms, strict=True):
        perm = np.asarray(p, dtype=np.int64)
        if perm.shape != (g.size,) or not np.array_equal(np.sort(perm), np.arange(g.size)):
            raise ValueError(f"group {g.name!r}: not a permutation of {g.size} channels")
        if g.fixed and not _is_identity(perm):
            raise ValueError(f"group {g.name!r} holds the network's own channels: not permutable")
        out.append(perm)
    return out


def _permute_array(array: Array, ops: Iterable[_Op], perms: Sequence[Perm]) -> Array:
    """A permuted copy of `array`, or `array` itself when every op is the identity."""
    todo = [op for op in ops if not _is_identity(perms[op.group])]
    if not todo:
        return array
    out = np.array(array, copy=True)
    for op in todo:
        index = _axis_slice(out.ndim, op.axis, op.offset, op.offset + op.size)
        out[index] = np.take(out[index], perms[op.group], axis=op.axis)
    return out


def permute_state(
    state: Mapping[str, Array], groups: Sequence[ChannelGroup], perms: Sequence[npt.ArrayLike]
) -> StateDict:
    """Apply one permutation per group (identity for fixed groups) to every tensor it indexes.

    Returns a new dict; permuted tensors are copies, untouched ones are the input arrays.
    """
    checked = _check_perms(groups, perms)
    ops = _key_ops(groups)
    missing = sorted(set(ops) - set(state))
    if missing:
        raise ValueError(f"state lacks tensor {missing[0]!r} that a channel group indexes")
    return {k: _permute_array(v, ops.get(k, ()), checked) for k, v in state.items()}


# ----------------------------------------------------------------------------------------------
# matching


def _rows(
    array: Array,
    ref_op: _Op,
    key_ops: Sequence[_Op],
    known: Mapping[int, Perm],
    apply_perms: bool,
) -> Float64:
    """The (size, features) matrix of `array`'s channels at `ref_op`.

    The tensor's other channel axes are brought into the common order: a slice whose group has a
    known permutation is permuted (for the site's tensor, `apply_perms`) or left alone (for the
    reference); a slice whose group is still unknown is replaced by its mean over that slice,
    which no permutation of it can change.
    """
    x = np.array(array, dtype=np.float64, copy=True)
    for op in key_ops:
        if op.axis == ref_op.axis:
            continue  # the row axis: sliced below
        index = _axis_slice(x.ndim, op.axis, op.offset, op.offset + op.size)
        perm = known.get(op.group)
        if perm is None:
            x[index] = x[index].mean(axis=op.axis, keepdims=True)
        elif apply_perms and not _is_identity(perm):
            x[index] = np.take(x[index], perm, axis=op.axis)
    rows = x[_axis_slice(x.ndim, ref_op.axis, ref_op.offset, ref_op.offset + ref_op.size)]
    return np.moveaxis(rows, ref_op.axis, 0).reshape(ref_op.size, -1)


def _solve(
    reference: Mapping[str, Array],
    other: Mapping[str, Array],
    index: int,
    ops: Mapping[str, Sequence[_Op]],
    known: Mapping[int, Perm],
    roles: frozenset[Role],
) -> Perm | None:
    similarity: Float64 | None = None
    for key, key_ops in ops.items():
        for op in key_ops:
            if op.group != index or op.role not in roles:
                continue
            a = _rows(reference[key], op, key_ops, known, apply_perms=False)
            b = _rows(other[key], op, key_ops, known, apply_perms=True)
            s = a @ b.T
            similarity = s if similarity is None else similarity + s
    if similarity is None:
        return None
    # max sum_i <ref_i, other_perm(i)>  ==  min sum_i ||ref_i - other_perm(i)||^2
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[np.asarray(rows, dtype=np.int64)] = np.asarray(cols, dtype=np.int64)
    return perm


def match_to(
    reference: Mapping[str, Array],
    other: Mapping[str, Array],
    groups: Sequence[ChannelGroup],
    *,
    sweeps: int = 2,
) -> list[Perm]:
    """Permutations such that ``permute_state(other, groups, perms)`` is aligned to `reference`.

    Forward pass (FedMA): groups are matched in order, each by a Hungarian assignment
    (scipy.optimize.linear_sum_assignment) maximising the inner product between the reference's
    and the site's channels, i.e. minimising their squared distance. A channel's features are its
    producing weights flattened to (C_out, C_in*k^3) after the input side's already-found
    permutations are applied (inputs of groups not yet matched, as in a residual unit whose output
    is tied to its own input, are reduced to their mean, which no permutation changes), plus its
    bias, norm weight/bias and per-channel PReLU as extra columns. Batch-norm running statistics
    are data, not weights, and are not used for matching (they are permuted like the rest).

    Then up to `sweeps` refinement sweeps (weight matching, coordinate ascent on the same
    objective): each group is re-matched with the consuming layers' input slices as features too,
    and every other group's current permutation applied; stops early when nothing changes.
    Fixed groups always get the identity.
    """
    ops = _key_ops(groups)
    for name, state in (("reference", reference), ("other", other)):
        missing = sorted(set(ops) - set(state))
        if missing:
            raise ValueError(f"{name} state lacks tensor {missing[0]!r}")
    known: dict[int, Perm] = {
        i: np.arange(g.size, dtype=np.int64) for i, g in enumerate(groups) if g.fixed
    }
    order = [i for i, g in enumerate(groups) if not g.fixed]
    forward: frozenset[Role] = frozenset(("out", "vector"))
    for i in order:
        perm = _solve(reference, other, i, ops, known, forward)
        known[i] = np.arange(groups[i].size, dtype=np.int64) if perm is None else perm
    both: frozenset[Role] = frozenset(("out", "vector", "in"))
    for _ in range(sweeps):
        changed = False
        for i in order:
            perm = _solve(reference, other, i, ops, known, both)
            if perm is not None and not np.array_equal(perm, known[i]):
                known[i] = perm
                changed = True
        if not changed:
            break
    return [known[i] for i in range(len(groups))]


# ----------------------------------------------------------------------------------------------
# averaging


def _weighted_mean(
    states: Sequence[Mapping[str, Array]],
    weights: Sequence[float],
    groups: Sequence[ChannelGroup],
    perms: Sequence[Sequence[Perm]],
) -> StateDict:
    """Key by key: permute each state's tensor, fold it into a float64 sum, cast back."""
    ops = _key_ops(groups)
    out: StateDict = {}
    for key, first in states[0].items():
        acc: Float64 = np.zeros(first.shape, dtype=np.float64)
        for state, weight, state_perms in zip(states, weights, perms, strict=True):
            t = _permute_array(state[key], ops.get(key, ()), state_perms)
            acc += np.asarray(t, dtype=np.float64) * weight
        dtype = first.dtype
        if dtype.kind in "fc":
            out[key] = acc.astype(dtype)
        elif dtype.kind == "b":
            out[key] = acc >= 0.5
        else:  # counters such as num_batches_tracked: the weighted mean, rounded
            out[key] = np.rint(acc).astype(dtype)
    return out


def matched_average_with_perms(
    states: Sequence[Mapping[str, Array]],
    weights: Sequence[float],
    groups: Sequence[ChannelGroup],
    *,
    reference: Mapping[str, Array] | None = None,
    iterations: int = 3,
    sweeps: int = 2,
) -> tuple[StateDict, list[list[Perm]]]:
    """`matched_average`, also returning each state's permutations of the final pass."""
    if not states or len(states) != len(weights):
        raise ValueError(f"{len(states)} states with {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero: {weights}")
    if iterations < 0 or sweeps < 0:
        raise ValueError("iterations and sweeps must be >= 0")
    keep = [i for i in range(len(states)) if w[i] > 0]
    active = [states[i] for i in keep]
    norm = [float(w[i] / w.sum()) for i in keep]
    ref: Mapping[str, Array] = reference if reference is not None else states[int(np.argmax(w))]
    identity = [np.arange(g.size, dtype=np.int64) for g in groups]
    previous: list[list[Perm]] | None = None
    mean: StateDict = {}
    for _ in range(iterations + 1):
        perms = [identity if s is ref else match_to(ref, s, groups, sweeps=sweeps) for s in active]
        if previous is not None and all(
            np.array_equal(a, b)
            for pa, pb in zip(perms, previous, strict=True)
            for a, b in zip(pa, pb, strict=True)
        ):
            break  # same alignment as last pass: the same mean
        mean = _weighted_mean(active, norm, groups, perms)
        previous = perms
        ref = mean
    assert previous is not None
    return mean, previous


def matched_average(
    states: Sequence[Mapping[str, Array]],
    weights: Sequence[float],
    groups: Sequence[ChannelGroup],
    *,
    reference: Mapping[str, Array] | None = None,
    iterations: int = 3,
    sweeps: int = 2,
) -> StateDict:
    """One-shot FedMA: permutation-aligned weighted mean of full models, widths fixed.

    Every state is aligned (`match_to`) to `reference` (default: the state with the largest
    weight; pass the round's global weights to keep the global channel order stable across
    rounds), and the weighted mean taken. Then, up to `iterations` times, every state is
    re-aligned to the current mean and the mean re-taken, stopping early when the alignment no
    longer changes. The result is in the reference's channel order. Float tensors come back in
    their own dtype; integer tensors (num_batches_tracked) as the rounded weighted mean.
    States with weight 0 are ignored. States may be read-only memmaps (see the module notes).
    """
    mean, _ = matched_average_with_perms(
        states, weights, groups, reference=reference, iterations=iterations, sweeps=sweeps
    )
    return mean
