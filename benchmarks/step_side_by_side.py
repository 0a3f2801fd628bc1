"""The frames default's training speed at two commits, side by side on one machine.

    python -m benchmarks.step_side_by_side --old=296b361 [--new=HEAD] [--steps=100] [--repeats=2]

Each commit is checked out in a temporary git worktree and trains ``configs/frames.py`` (its
default preset) for ``steps`` steps on the frames shipped in the package
(``alcfcn_jax/data/sample``: 400 training frames, batch 8, 304x541, the feature cache), old and
new alternating ``repeats`` times, each in its own process with this interpreter. Figures: the
training loop's own ``step_seconds`` (mean per logged window of 20 steps; the first window, which
compiles, is left out) and the logged losses, which must be equal. Results:
``benchmarks/results/step_side_by_side.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _train(tree: pathlib.Path, workdir: pathlib.Path, steps: int) -> list[dict]:
    sample = ROOT / "alcfcn_jax" / "data" / "sample"
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config=configs/frames.py",
            f"--workdir={workdir}",
            f"--config.data.data_dir={sample}",
            f"--config.train.num_steps={steps}",
            "--config.train.log_every=20",
            "--config.train.eval_every=100000",
            "--config.train.checkpoint_every=100000",
            "--config.train.progress=False",
        ],
        cwd=tree,
        check=True,
        capture_output=True,
        env={"PYTHONPATH": str(tree), **_env()},
    )
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "train"]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(old: str, new: str, steps: int, repeats: int) -> dict:
    out: dict = {"old": old, "new": new, "steps": steps, "runs": []}
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp:
        trees = {}
        for name, rev in (("old", old), ("new", new)):
            tree = pathlib.Path(tmp) / name
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=ROOT, check=True
            )
            trees[name] = tree
        try:
            for rep in range(repeats):
                for name, tree in trees.items():
                    rows = _train(tree, pathlib.Path(tmp) / f"run_{name}_{rep}", steps)
                    out["runs"].append(
                        {
                            "commit": name,
                            "repeat": rep,
                            "steps": [r["step"] for r in rows],
                            "step_seconds": [r["step_seconds"] for r in rows],
                            "loss": [r["loss"] for r in rows],
                        }
                    )
                    print(name, rep, out["runs"][-1]["step_seconds"], flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    for name in ("old", "new"):
        runs = [r for r in out["runs"] if r["commit"] == name]
        out[f"{name}_step_s"] = float(np.mean([np.mean(r["step_seconds"][1:]) for r in runs]))
    out["speedup"] = out["old_step_s"] / out["new_step_s"]
    losses = {r["commit"]: r["loss"] for r in out["runs"]}
    out["max_loss_difference"] = float(
        np.max(np.abs(np.asarray(losses["old"]) - np.asarray(losses["new"])))
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="296b361")
    parser.add_argument("--new", default="HEAD")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    result = run(args.old, args.new, args.steps, args.repeats)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_side_by_side.json").write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"old {result['old_step_s']:.3f} s/step, new {result['new_step_s']:.3f} s/step: "
        f"{result['speedup']:.2f}x; largest logged loss difference {result['max_loss_difference']:.3g}"
    )


if __name__ == "__main__":
    main()
