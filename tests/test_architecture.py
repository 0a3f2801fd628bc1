"""The package's layers (docs/architecture.md): no module imports a layer above its own.

Every ``import`` of every module is read, including those inside functions, so a deferred import
cannot hide a dependency that runs upward.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "alcfcn_jax"

# Layer of each top-level part of the package, bottom up. Parts of one layer may not import each
# other, except where ALLOWED_SIDEWAYS says so.
LAYERS = {
    "ops": 0,
    "labels": 0,
    "io": 0,
    "sharding": 0,
    "distributed": 0,
    "config_utils": 0,
    "models": 1,
    "weights": 2,
    "losses": 2,
    "data": 2,
    "checkpoint": 3,
    "eval": 4,
    "train": 5,
    "apps": 6,
    # The public command path ``python -m alcfcn_jax.predict``: a thin entry over apps/.
    "predict": 7,
    "__init__": 7,
}
ALLOWED_SIDEWAYS: set[tuple[str, str]] = set()


def _part(module: str) -> str | None:
    """``alcfcn_jax.<part>...`` -> part (None for modules outside the package)."""
    parts = module.split(".")
    if parts[0] != "alcfcn_jax":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: pathlib.Path) -> list[str]:
    """Every module ``path`` imports (absolute names; ``from alcfcn_jax import x`` gives
    ``alcfcn_jax.x``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "alcfcn_jax":
                found += [f"alcfcn_jax.{a.name}" for a in node.names]
            else:
                found.append(node.module)
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(rel.parts), path


def test_every_part_has_a_layer():
    parts = {_part(name) for name, _ in _modules()}
    assert parts <= set(LAYERS), f"parts without a layer: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("name,path", list(_modules()), ids=lambda v: str(v))
def test_no_import_runs_upward(name, path):
    own = _part(name)
    bad = []
    for imported in _imports(path):
        other = _part(imported)
        if other is None or other == own:
            continue
        if LAYERS[other] > LAYERS[own]:
            bad.append(f"{imported} (layer {LAYERS[other]} above {LAYERS[own]})")
        elif LAYERS[other] == LAYERS[own] and (own, other) not in ALLOWED_SIDEWAYS:
            bad.append(f"{imported} (same layer {LAYERS[own]})")
    assert not bad, f"{name} imports upward or sideways: {bad}"


def test_reference_implementations_stay_outside_the_package():
    for name, path in _modules():
        for imported in _imports(path):
            assert not imported.startswith(("reference", "benchmarks", "tests")), (name, imported)


def test_public_paths_are_kept():
    """The import paths users and the docs rely on survive the layout."""
    import importlib

    for module, names in {
        "alcfcn_jax.ops.affinity": ("dense_affinity", "sparse_affinity", "neighbor_offsets"),
        "alcfcn_jax.ops.random_walk": ("refine",),
        "alcfcn_jax.losses.lcfcn": ("lcfcn_loss", "lcfcn_terms"),
        "alcfcn_jax.eval.metrics": ("game", "confusion", "iou_from_confusion", "SegMeter"),
        "alcfcn_jax.models": ("build_model",),
        "alcfcn_jax.predict": ("predict_folder",),
    }.items():
        mod = importlib.import_module(module)
        for name in names:
            assert callable(getattr(mod, name)), f"{module}.{name}"
