"""``python -m alcfcn_jax.predict``: the command-line path of :mod:`alcfcn_jax.apps.predict`."""

from alcfcn_jax.apps.predict import list_images, predict_folder  # noqa: F401

if __name__ == "__main__":
    from absl import app

    from alcfcn_jax.apps.predict import define_flags, main
    from alcfcn_jax.config_utils import parse_flags

    define_flags()
    app.run(main, flags_parser=parse_flags)
