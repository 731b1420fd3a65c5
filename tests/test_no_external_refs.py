"""The repository stands on its own: no file in it points the reader at material that is not in
it (a private note of formulas, a design file, a folder next to the checkout, numbered items of
such a note). Identities are written out in docs/theory.md; code and tests cite its sections or
the published papers.

This file is the one exemption: it has to spell out the phrases it looks for.
"""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

OUTSIDE = re.compile(
    "|".join([
        r"math[\s_-]*sheet",           # "math sheet", "math-sheet.md", "test_math_sheet_...", wrapped "math\nsheet"
        r"\bthe\s+sheet\b",            # "the sheet's error scale"
        r"(?<![\w.-])shared/",         # a folder beside the repository ("shared/notes", "../shared/x")
        r"design\.md",                 # a design file that is not part of the repository
        r"\bpitfalls?\s+\d+",          # numbered items of such a note
    ]),
    flags=re.IGNORECASE,
)

# the places the rule is about; every other text file of the checkout is checked as well
REQUIRED = ("unigen", "docs", "tests", "benchmarks", "README.md")


def repository_files() -> list:
    """Tracked and new (not ignored) files of the checkout; without git, every file outside
    hidden, build and cache folders. A top-level ``shared`` folder, which some checkouts carry
    beside the package, is not part of the repository and is skipped."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        files = [ROOT / f for f in out if f]
    except (OSError, subprocess.CalledProcessError):
        skip = {"build", "dist", "__pycache__"}
        files = [f for f in ROOT.rglob("*")
                 if not any(part.startswith(".") or part in skip or part.endswith(".egg-info")
                            for part in f.relative_to(ROOT).parts[:-1])]
    files = [f for f in files if f.relative_to(ROOT).parts[0] != "shared"]
    return sorted({f for f in files if f.is_file()})


def _text(path: pathlib.Path):
    """The file's text, or None for a binary file (an image, a checkpoint)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def test_scan_covers_the_repository():
    files = repository_files()
    tops = {f.relative_to(ROOT).parts[0] for f in files}
    assert set(REQUIRED) <= tops, set(REQUIRED) - tops
    assert ROOT / "docs" / "theory.md" in files


def test_no_references_outside_the_repository():
    """No text file (code, docstrings, comments, tests, docs, results) cites material that is not
    in this repository."""
    me = pathlib.Path(__file__).resolve()
    hits = []
    for f in repository_files():
        if f.resolve() == me:
            continue
        text = _text(f)
        if text is None:
            continue
        lines = text.splitlines()
        for m in OUTSIDE.finditer(text):  # the whole text: a phrase may wrap onto the next line
            n = text.count("\n", 0, m.start()) + 1
            hit = f"{f.relative_to(ROOT)}:{n}: {lines[n - 1].strip()[:100]}"
            if hit not in hits:
                hits.append(hit)
    if hits:
        pytest.fail(f"{len(hits)} references to material outside the repository:\n" + "\n".join(hits), pytrace=False)


@pytest.mark.parametrize("text", ["(math sheet, section 3)", "math-sheet.md", "test_math_sheet_closed_forms",
                                  "the sheet's error scale", "see shared/notes", "../shared/x.md", "DESIGN.md",
                                  "design.md", "pitfall 11", "pitfalls 3", "Math\nSheet"])
def test_pattern_finds(text):
    assert OUTSIDE.search(text)


@pytest.mark.parametrize("text", ["theory.md, section 3", "a shared cache", "torch.Tensor.share_memory_()",
                                  "is_shared()", "designed", "spreadsheet", "worksheet", "a common pitfall"])
def test_pattern_spares(text):
    assert not OUTSIDE.search(text)
