"""``sweetspot bench train``: the time of one training step of a network on each device.

For every device it builds the same seeded network, trains it with :class:`Trainer` (the
loop jobs use: momentum SGD, one loss read per step, data moved to the device) on random
inputs of the network's shape, and times whole epochs of ``--steps`` steps after a warm-up
epoch: the median epoch time over ``--repeats`` epochs, divided by the steps. The devices run
one after the other in one process, so ratios between them are the measurement to trust
(docs/research.md's rule for timings on shared hosts). ``--json`` prints ``{"results": [...]}``
with ``step_s`` and ``images_per_s`` per device and ``speedup_vs_first``, the first device's
step time over this one's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch.utils.data import TensorDataset

from model.arguments import integer
from model.training import distributed
from model.training.trainer import TrainConfig, Trainer


def _device(text: str) -> str:
    try:
        distributed.check_device_spec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``sweetspot bench train``."""
    from model.networks import NETWORKS

    parser.add_argument("--model", default="resnet20", choices=sorted(NETWORKS),
                        help="built-in network (default resnet20)")  # fmt: skip
    parser.add_argument("--batch", type=integer(1), default=128,
                        help="images per step (default 128)")  # fmt: skip
    parser.add_argument("--device", nargs="+", type=_device, default=["cpu", "auto"],
                        help="devices to time, in order: cpu, cuda, cuda:N, auto; each once "
                        "(default: cpu auto, the CPU and a GPU if there is one)")  # fmt: skip
    parser.add_argument("--steps", type=integer(1), default=20, help="steps per timed epoch")
    parser.add_argument("--repeats", type=integer(1), default=5,
                        help="timed epochs per device (median taken; default 5)")  # fmt: skip
    parser.add_argument("--threads", type=integer(1), help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def time_steps(model: str, batch: int, device: str, steps: int, repeats: int,
               threads: int | None = None) -> dict:  # fmt: skip
    """Median seconds per training step of ``model`` on ``device`` (see the module doc)."""
    from model.networks import create_model, network_info

    info = network_info(model)
    torch.manual_seed(0)
    net = create_model(model)
    inputs = torch.randn(batch * steps, *info.input_shape)
    data = TensorDataset(inputs, torch.randint(info.num_classes, (batch * steps,)))
    config = TrainConfig(batch_size=batch, device=device, lr=0.001, log_every=0)  # no events
    trainer = Trainer(net, data, data, config)
    if threads:  # train_epoch runs without fit(), which would set the config's threads
        torch.set_num_threads(threads)
    trainer.train_epoch()  # warm-up: allocator, cuDNN's choices, the first kernels
    epochs = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.train_epoch()  # ends with a read of the loss sum: the device is done
        epochs.append(time.perf_counter() - start)
    step = statistics.median(epochs) / steps
    return {
        "model": model, "batch": batch, "device": distributed.describe_device(trainer.device),
        "threads": torch.get_num_threads(), "steps": steps, "repeats": repeats,
        "step_s": step, "images_per_s": batch / step,
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    devices = {}  # resolved → as asked; 'auto' on a host without a GPU is the CPU once
    for spec in args.device:
        try:
            devices.setdefault(distributed.resolve_device(spec), spec)
        except ValueError as error:  # a GPU asked for that this host does not have
            print(f"sweetspot: {error}", file=sys.stderr)
            return 2
    results = [time_steps(args.model, args.batch, str(device), args.steps, args.repeats,
                          args.threads) for device in devices]  # fmt: skip
    for result in results:
        result["speedup_vs_first"] = results[0]["step_s"] / result["step_s"]
    if args.json:
        print(json.dumps({"results": results}, indent=2))
        return 0
    print(f"{'device':<28} {'step ms':>9} {'images/s':>10} {'× first':>8}")
    for r in results:
        print(f"{r['device']:<28} {r['step_s'] * 1e3:>9.2f} {r['images_per_s']:>10.0f} "
              f"{r['speedup_vs_first']:>8.2f}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.training.bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
