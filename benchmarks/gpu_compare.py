"""The fedvox client's local training throughput against a plain MONAI loop, on one GPU.

Issue 8, section 5. Prepared for one call of the lent GPU machine (instructions in
docs/performance.md, "GPU"); from the repository root:

    PYTHONPATH=proto:server:client python3 benchmarks/gpu_compare.py

Same network (the default UNet, `fedvox.client.model.build_model(ModelSpec(norm=...))`,
16..256 channels), same loss (MONAI DiceCELoss, softmax, one-hot labels), same optimiser
(Adam, lr 1e-3), same GPU, AMP on in both where the configuration says so. It measures,
in volumes per second of the timed steps (after warm-up steps; the clock stops after a
CUDA synchronise):

1. `plain/*`: a plain MONAI/PyTorch loop on random inputs already on the GPU, in the
   issue's three configurations: instance norm fp32 batch 2; batch norm AMP batch 4;
   batch norm AMP `channels_last_3d` batch 4 (the fast one). This is the reference table.
2. On the same data: one synthetic head-CT site (`fedvox.synth`, --size^3 voxels), cut
   into --size^3 training patches by fedvox's own pipeline (cached, balanced, augmented)
   once, untimed; the same CPU batches, in the same order, then feed
   * `plain-best/site-batches`: the fast plain configuration (each batch moved to the GPU
     and to channels_last_3d inside the timed loop, as a plain loop does);
   * `fedvox/site-batches`: `MonaiTrainer.train`, the code a site runs, with the same
     configuration (`model.norm: batch`, `train.amp: true`, batch 4; the trainer picks
     channels_last_3d itself on CUDA), its batch source replaced by those batches. Its
     own step-loop timer gives volumes/s.
   Both are measured --repeats times, alternating; medians. Target: fedvox >= 95% of
   plain-best.
3. `fedvox/end-to-end` (augment on and off): `MonaiTrainer.train` with its real data
   pipeline (MONAI transforms on the CPU, in the training process), to show what the data
   pipeline costs on top of the step.

Stdout ends with exactly one JSON line. It runs on the CPU too (no AMP and no
channels_last there, as in fedvox), which is how it is checked without a GPU:

    .venv/bin/python benchmarks/gpu_compare.py --size 32 --steps 2 --warmup 1 --batch 2 \
        --repeats 1 --cases 2
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss

from fedvox.client.model import build_model
from fedvox.client.site_state import SiteState
from fedvox.client.trainer import MonaiTrainer, pick_device
from fedvox.synth import generate_federation
from fedvox.wire.taskconfig import ModelSpec, TaskConfig, TrainSettings

TARGET = 0.95  # fedvox >= 95% of the best plain configuration
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Plain:
    name: str
    norm: str
    amp: bool
    channels_last: bool
    batch: int


PLAIN = (
    Plain("instance-fp32-b2", "instance", False, False, 2),
    Plain("batch-amp-b4", "batch", True, False, 4),
    Plain("batch-amp-cl3d-b4", "batch", True, True, 4),
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(
    config: Plain,
    device: torch.device,
    batches: Iterator[Batch],
    steps: int,
    warmup: int,
) -> float:
    """Volumes/s of a plain MONAI training loop over `batches` (CPU or device tensors)."""
    torch.manual_seed(0)
    amp = config.amp and device.type == "cuda"
    cl3d = config.channels_last and device.type == "cuda"
    model = build_model(ModelSpec(norm=config.norm)).to(device)
    if cl3d:
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    volumes = 0
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            started = time.perf_counter()
        batch = next(batches)
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        if cl3d:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(image), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step >= warmup:
            volumes += int(image.shape[0])
    sync(device)
    return volumes / (time.perf_counter() - started)


def random_batches(batch: int, size: int, device: torch.device) -> Iterator[Batch]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    image = torch.randn((batch, 1, size, size, size), generator=generator).to(device)
    label = torch.randint(0, 2, (batch, 1, size, size, size), generator=generator).to(device)
    return itertools.repeat({"image": image, "label": label.float()})


def fedvox_config(size: int, batch: int, steps: int, augment: bool = True) -> TaskConfig:
    return TaskConfig(
        model=ModelSpec(norm="batch"),
        train=TrainSettings(
            local_steps=steps, batch_size=batch, patch_size=size, amp=True, augment=augment
        ),
    )


def fedvox_train(
    trainer: MonaiTrainer, config: TaskConfig, warmup: int, batches: list[Batch] | None
) -> float:
    """Volumes/s of MonaiTrainer.train's step loop (its own timer), after a warm-up call."""
    if batches is not None:
        fixed = batches  # the site's real pipeline, already run once: the same batches

        def same_batches(settings: TrainSettings, round_: int) -> Iterator[Batch]:
            return itertools.cycle(fixed)

        trainer._train_batches = same_batches  # type: ignore[method-assign]
    weights = trainer.initial_weights(config)
    short = dataclasses.replace(config, train=dataclasses.replace(config.train, local_steps=warmup))
    trainer.train(weights, short, 1, lambda p: None)  # warm-up: cuDNN, caches, allocator
    result = trainer.train(weights, config, 2, lambda p: None)
    return float(result.metrics["volumes_per_second"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96, help="patch and volume edge (voxels)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="batch of the batch-4 configs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=4, help="training cases of the site")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="for every loop alike")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    log = sys.stderr
    figures: dict[str, Any] = {}

    plain = [dataclasses.replace(p, batch=min(p.batch, args.batch)) for p in PLAIN]
    for setup in plain:
        rates = [
            plain_loop(
                setup,
                device,
                random_batches(setup.batch, args.size, device),
                args.steps,
                args.warmup,
            )
            for _ in range(args.repeats)
        ]
        figures[f"plain/{setup.name}/random"] = statistics.median(rates)
        print(f"plain {setup.name} (random inputs): {statistics.median(rates):.1f} vol/s", file=log)
    best = plain[-1]

    with tempfile.TemporaryDirectory() as tmp:
        (site,) = generate_federation(
            Path(tmp) / "data", 1, size=args.size, n_train=args.cases, n_val=1, n_test=1
        )
        state = SiteState(Path(tmp) / "state")
        trainer = MonaiTrainer(site.name, site, device, state=state)
        config = fedvox_config(args.size, best.batch, args.steps)
        source = trainer._train_batches(config.train, 0)
        count = min(args.warmup + args.steps, 16)
        batches = [next(source) for _ in range(count)]  # CPU tensors, untimed
        print(f"{count} batches of {best.batch} site patches ready", file=log)
        plain_rates, fedvox_rates = [], []
        for _ in range(args.repeats):  # alternating
            plain_rates.append(
                plain_loop(best, device, itertools.cycle(batches), args.steps, args.warmup)
            )
            fedvox_rates.append(fedvox_train(trainer, config, args.warmup, batches))
            print(
                f"site batches: plain-best {plain_rates[-1]:.1f}, fedvox {fedvox_rates[-1]:.1f} "
                "vol/s",
                file=log,
            )
        figures["plain-best/site-batches"] = statistics.median(plain_rates)
        figures["fedvox/site-batches"] = statistics.median(fedvox_rates)
        for augment in (True, False):
            end_to_end = MonaiTrainer(site.name, site, device, state=state)
            rate = fedvox_train(
                end_to_end,
                fedvox_config(args.size, best.batch, args.steps, augment),
                args.warmup,
                None,
            )
            key = f"fedvox/end-to-end/augment-{'on' if augment else 'off'}"
            figures[key] = rate
            print(f"{key}: {rate:.1f} vol/s", file=log)

    ratio = figures["fedvox/site-batches"] / figures["plain-best/site-batches"]
    result = {
        "benchmark": "gpu_compare",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp_active": device.type == "cuda",
        "cudnn_benchmark": bool(args.cudnn_benchmark),
        "size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "batch": best.batch,
        "repeats": args.repeats,
        "volumes_per_second": {k: round(v, 2) for k, v in figures.items()},
        "fedvox_vs_plain_best": round(ratio, 4),
        # only a GPU run counts: on the CPU there is no AMP and no channels_last_3d
        "target": {
            "value": round(ratio, 4),
            "limit": TARGET,
            "met": device.type == "cuda" and ratio >= TARGET,
            "measured_on_gpu": device.type == "cuda",
        },
        "end_to_end_vs_plain_best": round(
            figures["fedvox/end-to-end/augment-on"] / figures["plain-best/site-batches"], 4
        ),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for key, value in figures.items():
        print(f"{key:<42} {value:>9.1f} vol/s")
    print(f"fedvox / plain-best (same batches): {ratio:.3f} (target >= {TARGET})")
    if device.type != "cuda":
        print("no GPU: this run only checks that the script works; the target needs a GPU run")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
