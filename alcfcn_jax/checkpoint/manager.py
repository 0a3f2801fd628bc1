"""Orbax checkpoints of a training run: save, auto-resume, retention, structure checks.

Layout: ``<workdir>/checkpoints/<step>/`` with four items:
  * ``model`` - the model's NNX state (trainable params, frozen weights, BatchNorm statistics,
    dropout RNG state), Orbax ``StandardSave``;
  * ``opt``   - the optimizer's NNX state (Adam moments and count), ``StandardSave``;
  * ``meta``  - JSON: step, base RNG key data, the resolved config, best validation score/step,
    the validation metrics of this step (if any);
  * ``data``  - JSON: the training data iterator state of every process (gathered on multi-host
    runs, so the file written by process 0 holds them all).

Retention: the latest ``keep`` checkpoints plus the one with the best validation score by the
ranking rule of ``checkpoint.ranking`` (ties go to the later step, as the reference's ``>=``).
Orbax writes each step into a temporary directory and renames it only when complete, so a crash
during a save leaves the previous checkpoints intact (the half-written directory is ignored and
cleaned up on the next start). Restoring a model for inference is ``eval.inference``'s job.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from alcfcn_jax import config_utils
from alcfcn_jax import sharding as shd
from alcfcn_jax.checkpoint.ranking import DEFAULT_BEST_METRIC, best_mode, is_better

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("model", "opt", "meta", "data")
FORMAT_VERSION = 1
# Config keys that must agree between a checkpoint and the run restoring it: they change the
# parameter tree or the optimizer state, so a restore would be partial or meaningless.
STRUCTURAL_KEYS = (
    "model.name",
    "model.backbone",
    "model.n_classes",
    "model.with_affinity",
    "optim.name",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the model being restored."""


def checkpoint_dir(workdir: str | os.PathLike) -> pathlib.Path:
    """``<workdir>/checkpoints`` as an absolute path (Orbax requires absolute paths)."""
    return pathlib.Path(workdir).expanduser().absolute() / CHECKPOINT_DIR


def _preservation_policy(keep: int, metric: str):
    pp = checkpoint_managers.preservation_policy
    sign = -1.0 if best_mode(metric) == "min" else 1.0
    return pp.AnyPreservationPolicy(
        [
            pp.LatestN(n=keep),
            pp.BestN(
                # Ascending sort, the last is kept: stable, so ties go to the later step
                # (:func:`is_better`).
                get_metric_fn=lambda m: sign * m[metric],
                reverse=False,
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )


def _get(tree: Any, key: str) -> Any:
    """``tree[key]`` for a dict or an Orbax ``Composite`` result."""
    return tree[key] if isinstance(tree, Mapping) else getattr(tree, key)


def _shape_tree(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"a/b/c": (shape, dtype)}`` for every array leaf of a state or metadata tree."""
    out = {}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in leaves:
        name = "/".join(_key_name(k) for k in path if _key_name(k) != "value")
        shape = tuple(getattr(leaf, "shape", ()) or ())
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            # Orbax stores typed PRNG keys as their raw key data (e.g. uint32[..., 2]).
            shape = tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
        out[name] = (shape, str(dtype))
    return out


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def compare_structures(saved: Any, target: Any, *, what: str) -> None:
    """Raises CheckpointError when two state trees differ in keys or array shapes.

    Args:
      saved: the checkpoint's metadata tree (leaves with ``shape``).
      target: the abstract (or concrete) state the run expects.
      what: a label for the message (e.g. ``"model"``).
    """
    a, b = _shape_tree(saved), _shape_tree(target)
    missing = sorted(set(b) - set(a))
    extra = sorted(set(a) - set(b))
    wrong = sorted(k for k in set(a) & set(b) if a[k][0] != b[k][0])
    if not (missing or extra or wrong):
        return
    lines = []
    if missing:
        lines.append(
            f"missing in the checkpoint: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    if extra:
        lines.append(f"not in this model: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for k in wrong[:5]:
        lines.append(f"{k}: checkpoint shape {a[k][0]}, model shape {b[k][0]}")
    raise CheckpointError(
        f"the {what} state in the checkpoint does not match the {what} built from the config "
        "(a different model or config shape?):\n  " + "\n  ".join(lines)
    )


def _encode_iterator_state(state: Any) -> dict[str, Any]:
    if isinstance(state, (bytes, bytearray)):
        return {"format": "bytes", "state": bytes(state).decode("utf-8")}
    json.dumps(state)  # fail here, clearly, rather than inside the async writer
    return {"format": "json", "state": state}


def decode_iterator_state(entry: Mapping[str, Any]) -> Any:
    """Inverse of the data-item encoding: the value to pass to ``iterator.set_state``."""
    if entry["format"] == "bytes":
        return entry["state"].encode("utf-8")
    return entry["state"]


class Checkpointer:
    """The run's ``CheckpointManager`` with the project's items, retention and checks.

    Args:
      workdir: the run's directory (checkpoints go to ``<workdir>/checkpoints``).
      keep: how many of the latest checkpoints to keep (the best one is kept in addition).
      best_metric: the metrics key that ranks checkpoints (``val_miou``; ``val_mae`` is
        minimised, see :func:`best_mode`).
      read_only: open an existing directory without creating or deleting anything.
      async_save: write in a background thread (the device-to-host copy is still synchronous, so
        the caller may donate the saved arrays right after ``save`` returns).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        keep: int = 2,
        best_metric: str = DEFAULT_BEST_METRIC,
        read_only: bool = False,
        async_save: bool = True,
    ) -> None:
        self.directory = checkpoint_dir(workdir)
        self.best_metric = best_metric
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints in {self.directory} (directory not found)")
        options = ocp.CheckpointManagerOptions(
            preservation_policy=_preservation_policy(keep, best_metric),
            # Orbax stores a step's metrics only when best_fn is set; the ranking itself is
            # is_better's (best_step below), which the preservation policy agrees with.
            best_fn=lambda m: m[best_metric],
            best_mode=best_mode(best_metric),
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
        )
        # Explicit handlers (not just item names): a fresh manager can then read the metadata of
        # existing checkpoints before any save or restore (needed for the structure check).
        handlers = {
            "model": ocp.StandardCheckpointHandler(),
            "opt": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
        }
        assert tuple(handlers) == ITEMS
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    # --- queries -------------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest complete checkpoint step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def is_complete(self, step: int) -> bool:
        """Whether step ``step`` holds every item (``model``, ``opt``, ``meta``, ``data``).

        Orbax renames a step into place only when whole, but a kill during a later deletion (or a
        user's ``rm``) can leave a step folder with some items gone: such a step is never offered
        for restore.
        """
        folder = self.directory / str(int(step))
        return folder.is_dir() and all((folder / item).is_dir() for item in ITEMS)

    def best_step(self) -> int | None:
        """The step with the best validation score by :func:`is_better` (None when no checkpoint
        holds one)."""
        best_step, best = None, None
        for step in self.all_steps():
            value = (self.manager.metrics(step) or {}).get(self.best_metric)
            if value is not None and is_better(float(value), best, self.best_metric):
                best_step, best = step, float(value)
        return best_step

    def all_steps(self) -> list[int]:
        """Every complete checkpoint step, ascending (incomplete ones are left out, with a
        warning: see :meth:`is_complete`)."""
        steps = sorted(self.manager.all_steps())
        complete = [s for s in steps if self.is_complete(s)]
        if len(complete) != len(steps):
            logging.warning(
                "ignoring incomplete checkpoint step(s) %s in %s (an item folder is missing)",
                sorted(set(steps) - set(complete)),
                self.directory,
            )
        return complete

    def resolve(self, which: str | int) -> int:
        """``"best"``, ``"latest"`` or a step number -> an existing step (or CheckpointError)."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoints in {self.directory}")
        if which == "latest":
            return steps[-1]
        if which == "best":
            best = self.best_step()
            return steps[-1] if best is None else int(best)
        if isinstance(which, str) and which.isdigit():
            which = int(which)
        if isinstance(which, int) and not isinstance(which, bool):
            if which not in steps:
                raise CheckpointError(
                    f"no checkpoint at step {which} in {self.directory}; available: {steps}"
                )
            return which
        raise CheckpointError(f"which must be 'best', 'latest' or a step number, got {which!r}")

    # --- save ----------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        *,
        model_state: Any,
        opt_state: Any,
        meta: Mapping[str, Any],
        data_state: Any = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Saves one checkpoint (collective: every process must call it).

        Args:
          step: the number of completed training steps.
          model_state, opt_state: NNX states (pytrees of jax arrays).
          meta: JSON-able run metadata (config, rng, best score...).
          data_state: this process's data-iterator state (``get_state()`` value) or None.
          metrics: validation metrics of this step; must hold the ``best_metric`` key.
        """
        data = {"process_count": jax.process_count(), "states": None}
        if data_state is not None:
            data["states"] = shd.gather_json(_encode_iterator_state(data_state))
        if metrics is not None and self.best_metric not in metrics:
            raise ValueError(
                f"checkpoint metrics must contain {self.best_metric!r}, got {sorted(metrics)}"
            )
        args = ocp.args.Composite(
            model=ocp.args.StandardSave(model_state),
            opt=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(dict(meta, format_version=FORMAT_VERSION, step=int(step))),
            data=ocp.args.JsonSave(data),
        )
        self.manager.save(
            int(step),
            args=args,
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True,
        )

    # --- restore -------------------------------------------------------------------------------

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON ``meta`` item of a checkpoint."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(_get(restored, "meta"))

    def check_config(self, step: int, config: Any) -> dict[str, Any]:
        """Compares a checkpoint's stored config with ``config``; returns its meta.

        Raises:
          CheckpointError: a structural key (model name/backbone/classes/affinity, optimizer)
            differs. Other differences are logged as warnings (e.g. a longer ``num_steps``).
        """
        meta = self.read_meta(step)
        saved = meta.get("config") or {}
        current = config_utils.to_plain(config)
        changed = config_utils.diff_configs(saved, current)
        structural = [k for k in changed if k in STRUCTURAL_KEYS]
        if structural:
            details = "; ".join(
                f"{k}: checkpoint {_lookup(saved, k)!r}, config {_lookup(current, k)!r}"
                for k in structural
            )
            raise CheckpointError(
                f"{self.directory} holds a checkpoint (step {step}) of a different model or "
                f"optimizer: {details}. Use a new --workdir or restore the original config."
            )
        if changed:
            logging.warning(
                "Config differs from the checkpoint's (step %d) in: %s", step, ", ".join(changed)
            )
        return meta

    def check_structure(self, step: int, *, model_state: Any, opt_state: Any | None) -> None:
        """Raises CheckpointError when the stored trees differ from the targets (keys/shapes)."""
        try:
            metadata = self.manager.item_metadata(step)
        except Exception as err:  # noqa: BLE001 - surface any Orbax read error as ours
            raise CheckpointError(
                f"cannot read checkpoint {step} in {self.directory}: {err}"
            ) from err
        for item, target in (("model", model_state), ("opt", opt_state)):
            if target is None:
                continue
            saved = _get(metadata, item)
            if saved is None:
                raise CheckpointError(
                    f"checkpoint {step} in {self.directory} has no readable {item!r} item"
                )
            compare_structures(saved, target, what="optimizer" if item == "opt" else item)

    def restore(
        self,
        step: int,
        *,
        model_state: Any,
        opt_state: Any | None = None,
        with_data: bool = True,
    ) -> tuple[Any, Any, dict[str, Any], Any]:
        """Restores a checkpoint into the shapes, dtypes and shardings of the given targets.

        Args:
          step: an existing step.
          model_state, opt_state: abstract or concrete target states (``opt_state=None`` restores
            only the model, for inference).
          with_data: also read the data-iterator states.

        Returns:
          ``(model_state, opt_state or None, meta, data_state or None)``; ``data_state`` is this
          process's decoded iterator state.

        Raises:
          CheckpointError: the trees do not match (never a silent partial restore).
        """
        self.check_structure(step, model_state=model_state, opt_state=opt_state)
        items: dict[str, Any] = {
            "model": ocp.args.StandardRestore(_abstract(model_state)),
            "meta": ocp.args.JsonRestore(),
        }
        if opt_state is not None:
            items["opt"] = ocp.args.StandardRestore(_abstract(opt_state))
        if with_data:
            items["data"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(
                f"restoring checkpoint {step} from {self.directory} failed: {err}"
            ) from err
        data_state = None
        if with_data:
            data = _get(restored, "data") or {}
            states = data.get("states")
            if states is not None:
                if int(data.get("process_count", 1)) != jax.process_count():
                    raise CheckpointError(
                        f"checkpoint {step} was written by {data.get('process_count')} processes "
                        f"but this run has {jax.process_count()}; the data order cannot be resumed"
                    )
                data_state = decode_iterator_state(states[jax.process_index()])
        opt = _get(restored, "opt") if opt_state is not None else None
        return _get(restored, "model"), opt, dict(_get(restored, "meta")), data_state

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return "<missing>"
        node = node[part]
    return node


def _abstract(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) for a concrete state; abstract states pass through."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def run_selection_metric(workdir: str | os.PathLike, default: str = DEFAULT_BEST_METRIC) -> str:
    """The checkpoint-ranking key a finished or running training run used (``val_mae`` for a
    run trained with ``select_metric=mae``), read from its latest checkpoint's config; ``default``
    when no checkpoint records one. Readers of another run's checkpoints (stage 2) rank them so.
    """
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            return default
        saved = (ckpt.read_meta(latest).get("config") or {}).get("train") or {}
    finally:
        ckpt.close()
    metric = saved.get("select_metric")
    return f"val_{metric}" if metric else default
