"""Times the PyTorch replica of the reference training step (``reference/torch_replica.py``).

    python -m benchmarks.torch_reference [--height 256 --width 455] [--steps 3] [--threads N]

prints JSON (``run()`` returns the same dict, so ``benchmarks/train_step.py`` can time the replica
and our JAX step in one process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from benchmarks.common import loadavg
from reference.torch_replica import make_inputs, torch_namespace

# ----------------------------------------------------------------------------- benchmark


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


def run(
    height: int = 256,
    width: int = 455,
    steps: int = 3,
    *,
    threads: int | None = None,
    n_points: int = 1,
    seed: int = 0,
    with_vgg: bool = True,
    count_flops: bool = True,
) -> dict[str, Any]:
    """Times the replica's reference training step at full width; returns a JSON-able dict.

    Args:
      height: image height.
      width: image width.
      steps: timed steps after one warm-up step.
      threads: ``torch.set_num_threads`` for the run (restored afterwards); None keeps torch's.
      n_points: clicked pixels in the random point map.
      seed: seed of torch's initialisation/dropout and of the inputs.
      with_vgg: run the dead FCN8-VGG16 forward as the reference does.
      count_flops: count FLOPs (``torch.utils.flop_counter``) during the warm-up step.

    Returns:
      dict with ``step_s`` (per timed step), ``step_s_median``, ``step_s_min``, per-phase
      medians, the warm-up step, FLOPs, torch version/threads and the load averages.
    """
    if steps < 1:
        raise ValueError(f"run: steps must be >= 1, got {steps}")
    ns = torch_namespace()
    torch = ns.torch
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        load_before = loadavg()
        torch.manual_seed(seed)
        model = ns.ALCFCNReference(width=64, n_classes=2, with_vgg=with_vgg)
        model.train()
        optimizer = ns.make_optimizer(model)
        image_np, points = make_inputs(height, width, n_points=n_points, seed=seed)
        image = torch.from_numpy(image_np)
        flops = None
        if count_flops:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                warm = ns.reference_train_step(model, optimizer, image, points)
            flops = int(counter.get_total_flops())
        else:
            warm = ns.reference_train_step(model, optimizer, image, points)
        timed, cpu_s = [], []
        for _ in range(steps):
            c0 = time.process_time()
            timed.append(ns.reference_train_step(model, optimizer, image, points))
            cpu_s.append(time.process_time() - c0)
        load_after = loadavg()
        step_s = [t["step_s"] for t in timed]
        phases = {k: statistics.median(t[k] for t in timed) for k in timed[0] if k != "loss"}
        n_params = sum(p.numel() for p in model.model_aff.parameters())
        n_trainable = sum(p.numel() for p in model.model_aff.parameters() if p.requires_grad)
        return {
            "benchmark": "torch_reference_step",
            "torch": torch.__version__,
            "num_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "image_size": [height, width],
            "n_points": int(points.sum()),
            "with_vgg": with_vgg,
            "resnet38_aff_params": n_params,
            "resnet38_aff_trainable_params": n_trainable,
            "warmup": _round({k: v for k, v in warm.items() if k != "loss"}),
            "warmup_counted_flops": count_flops,
            "step_s": [round(s, 4) for s in step_s],
            "step_s_median": round(statistics.median(step_s), 4),
            "step_s_min": round(min(step_s), 4),
            "phase_s_median": _round(phases),
            # Process CPU seconds (all threads) per timed step: on a shared machine, wall time
            # rises with other load while this stays closer to the work done.
            "step_cpu_s": [round(s, 4) for s in cpu_s],
            "flops_per_step": flops,
            "losses": [round(t["loss"], 6) for t in (warm, *timed)],
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        }
    finally:
        torch.set_num_threads(old_threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=455)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--points", type=int, default=1, help="clicked pixels in the point map")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_vgg", action="store_true", help="skip the dead FCN8-VGG16 forward")
    parser.add_argument("--no_flops", action="store_true", help="do not count FLOPs in warm-up")
    args = parser.parse_args()
    result = run(
        args.height,
        args.width,
        args.steps,
        threads=args.threads,
        n_points=args.points,
        seed=args.seed,
        with_vgg=not args.no_vgg,
        count_flops=not args.no_flops,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
