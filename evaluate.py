"""Evaluates a trained checkpoint, or writes pseudo masks from it.

    python evaluate.py --config=configs/deepfish.py --workdir=runs/alcfcn [--split=test]
        [--checkpoint=best|latest|STEP] [--num_overlays=8]
    python evaluate.py --config=configs/deepfish.py --workdir=runs/alcfcn --mode=pseudo_masks

``--mode=eval`` writes ``<workdir>/eval/<split>/`` (or ``--output_dir``) (metrics.json, report.md, per_image.csv,
overlays/); ``--mode=pseudo_masks`` writes ``<workdir>/pseudo_masks/`` for stage 2.
"""

from absl import flags, logging

from alcfcn_jax.apps import entry

entry.define_flags()
_SPLIT = flags.DEFINE_string("split", "test", "train | val | test, or a dataset split name.")
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


def main(argv):
    # Multi-process: every process runs this program with the same flags (README).
    config, workdir, which = entry.start(argv)
    from alcfcn_jax.eval import report
    from alcfcn_jax.train import mask_writer as pseudo_masks

    if _MODE.value == "pseudo_masks":
        manifest = pseudo_masks.write_pseudo_masks(config, workdir, which=which)
        logging.info(
            "pseudo masks: %d from step %d", manifest["count"], manifest["checkpoint_step"]
        )
        return
    result = report.run_evaluation(
        config,
        workdir,
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
    entry.run(main, saved_config=True)
