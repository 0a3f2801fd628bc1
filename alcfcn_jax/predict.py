"""``python -m alcfcn_jax.predict``: the command-line path of :mod:`alcfcn_jax.apps.predict`."""

from alcfcn_jax.apps.predict import list_images, predict_folder, predict_video  # noqa: F401

if __name__ == "__main__":
    from alcfcn_jax.apps import entry
    from alcfcn_jax.apps.predict import define_flags, main

    define_flags()
    entry.run(main, saved_config=True, shipped=True)
