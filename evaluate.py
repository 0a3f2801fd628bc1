"""Evaluates a trained checkpoint, or writes pseudo masks from it.

    python evaluate.py --config=configs/deepfish.py --workdir=runs/alcfcn [--split=test]
        [--checkpoint=best|latest|STEP] [--num_overlays=8]
    python evaluate.py --config=configs/deepfish.py --workdir=runs/alcfcn --mode=pseudo_masks

``--mode=eval`` writes ``<workdir>/eval/<split>/`` (or ``--output_dir``) (metrics.json, report.md, per_image.csv,
overlays/); ``--mode=pseudo_masks`` writes ``<workdir>/pseudo_masks/`` for stage 2.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from alcfcn_jax import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
_SPLIT = flags.DEFINE_string("split", "test", "train | val | test, or a dataset split name.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
_MODE = flags.DEFINE_enum("mode", "eval", ["eval", "pseudo_masks"], "What to do.")
_NUM_OVERLAYS = flags.DEFINE_integer("num_overlays", 8, "Overlay PNGs to write in eval mode.")
_WALK = flags.DEFINE_bool(
    "walk",
    True,
    "--nowalk: evaluate an A-LCFCN model's activation branch alone (eval/<split>_nowalk/).",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir",
    "",
    "Where --mode=eval writes its outputs (default <workdir>/eval/<split>); use it when the "
    "workdir is read-only. Checked writable before anything is computed.",
)
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


def _which(value: str) -> str | int:
    if value in ("best", "latest"):
        return value
    if value.isdigit():
        return int(value)
    raise app.UsageError(f"--checkpoint must be best, latest or a step number, got {value!r}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    jax.config.parse_flags_with_absl()
    # Multi-process: every process runs this program with the same flags (README).
    distributed.initialize_from_flags()
    from alcfcn_jax.eval import report
    from alcfcn_jax.train import mask_writer as pseudo_masks
    from alcfcn_jax.train.config import resolve

    config = resolve(_CONFIG.value)
    which = _which(_CHECKPOINT.value)
    if _MODE.value == "pseudo_masks":
        manifest = pseudo_masks.write_pseudo_masks(config, _WORKDIR.value, which=which)
        logging.info(
            "pseudo masks: %d from step %d", manifest["count"], manifest["checkpoint_step"]
        )
        return
    result = report.run_evaluation(
        config,
        _WORKDIR.value,
        split=_SPLIT.value,
        which=which,
        num_overlays=_NUM_OVERLAYS.value,
        walk=_WALK.value,
        output_dir=_OUTPUT_DIR.value or None,
    )
    print(
        f"{_SPLIT.value}: mIoU {result['miou']:.4f}  fish IoU {result['iou_fish']:.4f}  "
        f"MAE {result['mae']:.3f}  GAME {result['game']:.3f}  ({int(result['num_images'])} images)"
    )


if __name__ == "__main__":
    from alcfcn_jax.config_utils import parse_flags

    app.run(main, flags_parser=parse_flags)
