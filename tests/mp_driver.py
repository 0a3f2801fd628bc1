"""Runs an entry point (``train.py``, ``evaluate.py``) with test hooks, for test_multiprocess.py.

    python tests/mp_driver.py train.py --config=... --coordinator_address=... [...]

The entry point runs unchanged, on its own flags (``runpy``); environment variables add hooks:

* ``MP_WRITE_LOG=<dir>``: every file written through ``alcfcn_jax.io`` (reports, manifests,
  masks, overlays) is recorded as a JSON line ``{"process", "path"}`` in
  ``<dir>/writes.<pid>.jsonl``, so a test can check that a file is written once, by one process.
* ``MP_KILL_AFTER_STEP=K``: once checkpoint ``K`` is committed and every process has reached
  that point, each process SIGKILLs itself (a crash right after a checkpoint).
* ``MP_VIRTUAL_PROCESSES=N`` (a single process): the training loop is fed the global batches an
  ``N``-process job would build (the concatenation of the ``N`` per-process slices).
* ``MP_DUMP_PARAMS=<file.npz>``: at the end of training process 0 saves the model state.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys

import numpy as np


def _hook_writes(log_dir: str) -> None:
    from alcfcn_jax import io

    depth = [0]  # write_json_atomic calls write_text_atomic: record the outer call only

    def wrap(fn):
        def recorded(*args, **kwargs):
            import jax

            depth[0] += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0]:
                return out
            path = kwargs.get("path", args[1] if fn.__name__ == "save_png_atomic" else args[0])
            row = {"process": jax.process_index(), "path": os.path.abspath(str(path))}
            with open(os.path.join(log_dir, f"writes.{os.getpid()}.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
            return out

        return recorded

    for name in ("write_json_atomic", "write_text_atomic", "save_png_atomic"):
        setattr(io, name, wrap(getattr(io, name)))


def _hook_kill(step: int) -> None:
    from alcfcn_jax import checkpoint
    from alcfcn_jax import sharding as shd

    save = checkpoint.Checkpointer.save

    def save_then_die(self, s, **kwargs):
        save(self, s, **kwargs)
        if int(s) == step:
            self.wait()
            shd.barrier("mp_driver_kill")
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.Checkpointer.save = save_then_die


class _Joined:
    """``n`` per-process training iterators read as one: each batch is their concatenation."""

    def __init__(self, iterators):
        self.iterators = iterators

    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(it) for it in self.iterators]
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}

    def get_state(self):
        return [it.get_state() for it in self.iterators]

    def set_state(self, states):
        for it, s in zip(self.iterators, states, strict=True):
            it.set_state(s)


def _hook_virtual_processes(n: int) -> None:
    from alcfcn_jax.data import pipeline
    from alcfcn_jax.train import inputs as data

    def with_iterator(d, config, local_batch):
        assert local_batch % n == 0, (local_batch, n)
        d.iterator = _Joined(
            [
                pipeline.train_iterator_from_config(
                    d.data_cfg,
                    d.train_input,
                    batch_size=local_batch // n,
                    seed=int(config.seed),
                    process_index=i,
                    process_count=n,
                )
                for i in range(n)
            ]
        )
        return d

    data._with_iterator = with_iterator


def _hook_dump(path: str) -> None:
    """Dumps the model state of the last step's checkpoint as it is saved (the final state)."""
    from alcfcn_jax.train import loop

    save = loop.save_state

    def dump_then_save(ckpt, step, state, *, config, **kwargs):
        import jax

        if jax.process_index() == 0 and step == int(config.train.num_steps):
            arrays = {}
            for key_path, leaf in jax.tree_util.tree_flatten_with_path(state["model"])[0]:
                if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                    leaf = jax.random.key_data(leaf)
                arrays[jax.tree_util.keystr(key_path)] = np.asarray(leaf)
            np.savez(path, **arrays)
        return save(ckpt, step, state, config=config, **kwargs)

    loop.save_state = dump_then_save


def main() -> None:
    if os.environ.get("MP_WRITE_LOG"):
        _hook_writes(os.environ["MP_WRITE_LOG"])
    if os.environ.get("MP_KILL_AFTER_STEP"):
        _hook_kill(int(os.environ["MP_KILL_AFTER_STEP"]))
    if os.environ.get("MP_VIRTUAL_PROCESSES"):
        _hook_virtual_processes(int(os.environ["MP_VIRTUAL_PROCESSES"]))
    if os.environ.get("MP_DUMP_PARAMS"):
        _hook_dump(os.environ["MP_DUMP_PARAMS"])
    target, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
