"""A few fedvox client training steps on CUDA with AMP at 96^3; prints volumes/s.

Prepared for a lent GPU machine (see README "GPU"): synthesises one 96^3 site, trains the
default UNet through fedvox's own MonaiTrainer (the code a site runs), and ends with a JSON line.
Runs on the CPU too (slowly, AMP off), which is how it is checked where no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fedvox.client.trainer import MonaiTrainer, pick_device
from fedvox.synth import generate_federation
from fedvox.wire.taskconfig import ModelSpec, TaskConfig, TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--norm", default="instance", choices=["instance", "batch"])
    args = parser.parse_args()
    device = pick_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        (site,) = generate_federation(Path(tmp), 1, size=args.size, n_train=4, n_val=1, n_test=1)
        trainer = MonaiTrainer(site.name, site, device)
        model = ModelSpec(norm=args.norm)  # the default UNet, 16..256 channels
        settings = TrainSettings(
            local_steps=args.warmup, batch_size=args.batch, patch_size=args.size, amp=True
        )
        config = TaskConfig(model=model, train=settings)
        weights = trainer.initial_weights(config)
        trainer.train(weights, config, 0, lambda p: None)  # warm-up: cache, cuDNN autotune
        config = TaskConfig(
            model=model,
            train=TrainSettings(
                local_steps=args.steps, batch_size=args.batch, patch_size=args.size, amp=True
            ),
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = trainer.train(weights, config, 1, lambda p: None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    figures = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "amp_active": bool(settings.amp and device.type == "cuda"),
        "norm": args.norm,
        "batch": args.batch,
        "size": args.size,
        "steps": args.steps,
        "volumes_per_second": round(args.steps * args.batch / elapsed, 2),
        "train_loss": round(result.metrics["train_loss"], 4),
        "torch": torch.__version__,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
