"""The README and docs/ name only files that exist (a moved module must take its mentions along)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A repository path: a top-level folder of the repository, then a file with an extension.
PATH = re.compile(
    r"(?<![\w/.~<-])((?:alcfcn_jax|tests|configs|benchmarks|docs|reference)/[\w/.-]*\w\.(?:py|md|png|json|csv|txt))"
)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_files_exist(doc):
    missing = sorted(
        {m for m in PATH.findall(doc.read_text()) if not (ROOT / m).exists() and "<" not in m}
    )
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
