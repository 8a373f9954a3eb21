"""The README's list of tensor types is what loads (issue 23's done-means): its table names exactly the
types the loader accepts (model_file.SUPPORTED_TYPES), each of them is in a tiny model that
test_forward holds to the float64 reference, and what it says of this machine's kernel table (SIMD for
every type) is what the native core says."""

from __future__ import annotations

from pathlib import Path

from gguf import GGMLQuantizationType as QT

from support.model_files import TINY_SPECS, tiny_model
from sysinfer import native_info
from sysinfer.model.model_file import SUPPORTED_TYPES, read_model_file

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_type_rows() -> dict[str, tuple[str, str]]:
    """type name -> (x86 cell, ARM cell) from the README's table of types by kernel table."""
    text = README.read_text()
    table = text[text.index("| type | avx2, avx512 |"):].split("\n\n", 1)[0].splitlines()[2:]
    rows = {}
    for line in table:
        names, x86, arm = (cell.strip() for cell in line.strip("|").split("|"))
        rows.update({name.strip(): (x86, arm) for name in names.split(",")})
    return rows


def test_readme_lists_exactly_the_types_that_load():
    assert set(readme_type_rows()) == {t.name for t in SUPPORTED_TYPES}


def test_every_listed_type_is_in_a_tiny_model_checked_against_the_reference():
    """test_forward::test_tiny_models_match_reference loads every TINY_SPECS kind and holds its logits
    to the reference: together they hold every type (as matrices, embeddings or output)."""
    held = {t.type.name for kind in TINY_SPECS for t in read_model_file(tiny_model(kind)).tensors.values()}
    assert set(readme_type_rows()) <= held


def test_readme_says_simd_for_every_type_as_the_core_does():
    """The table's cells for this machine's table say SIMD for every type (BF16 was the last on the
    generic kernel), as the native core reports (`info` on such a file: test_cli_info)."""
    rows = readme_type_rows()
    cell = 1 if native_info()["neon"] else 0
    generic = {name for name, cells in rows.items() if not cells[cell].startswith("SIMD")}
    assert generic == {QT(i).name for i in native_info()["generic_types"]} == set()
