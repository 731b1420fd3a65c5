"""The docs stay true: every code block in README.md and docs/**/*.md runs, the API reference
equals a fresh generation from the docstrings, and local links resolve.

Each markdown file's fenced blocks run in document order: ``python`` blocks in one namespace per
file (float64 default, as conftest sets), ``bash`` lines that are ``unigen ...`` commands through
``unigen.cli.main`` (in a temporary directory), every other bash line must be listed in NOT_RUN
with its reason.
"""

import importlib.util
import pathlib
import re
import shlex

import pytest
import torch

from unigen.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)

# bash lines that are not run here, and why
NOT_RUN = {
    "pip install torch==2.13.0 && pip install -e . && unigen verify":
        "installs packages; tests/test_readme.py checks the Quickstart and CI (.ci/run) runs it",
    'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q':
        "installs packages and runs the whole suite; CI (.ci/run) runs it verbatim",
}


def fenced_blocks(path: pathlib.Path) -> list:
    """[(language, code)] in document order."""
    return FENCE.findall(path.read_text())


def _rel(path):
    return str(path.relative_to(ROOT))


def _bash_lines(code: str) -> list:
    lines = []
    for line in code.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "docs" / "gen_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def clean_torch_state():
    """A doc may change torch's global state; put it back for the rest of the suite."""
    dtype, threads, rng = torch.get_default_dtype(), torch.get_num_threads(), torch.get_rng_state()
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


CODE_DOCS = [p for p in DOCS if any(lang in ("python", "bash") for lang, _ in fenced_blocks(p))]


@pytest.mark.parametrize("path", CODE_DOCS, ids=_rel)
def test_code_blocks_run(path, tmp_path, monkeypatch, clean_torch_state):
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    namespace = {"__name__": "__doc__"}
    ran = 0
    for i, (lang, code) in enumerate(fenced_blocks(path)):
        where = f"{_rel(path)} block {i}"
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)  # noqa: S102  (running the docs is the point)
            ran += 1
        elif lang == "bash":
            for line in _bash_lines(code):
                if line in NOT_RUN:
                    continue
                argv = shlex.split(line)
                assert argv[0] == "unigen", f"{where}: {line!r} is neither a unigen command nor listed in NOT_RUN"
                assert not set("|><;&") & set(line), f"{where}: shell syntax in {line!r}"
                try:
                    rc = main(argv[1:])
                except SystemExit as e:  # --help and --version exit through argparse
                    rc = e.code
                assert rc == 0, f"{where}: {line!r} exited with {rc}"
                ran += 1
    assert ran, f"{_rel(path)} has code fences but nothing ran"


def test_not_run_list_is_used():
    """Every NOT_RUN entry still appears in some doc (the list only holds what is really skipped)."""
    lines = {ln for p in DOCS for lang, code in fenced_blocks(p) if lang == "bash" for ln in _bash_lines(code)}
    assert set(NOT_RUN) <= lines, set(NOT_RUN) - lines


def test_every_tutorial_has_code():
    tutorials = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
    assert len(tutorials) >= 5
    for t in tutorials:
        assert any(lang == "python" for lang, _ in fenced_blocks(t)), t.name


# names that have no docstring of their own yet, in files this test does not own; the list may
# only shrink (a new undocumented public name fails the test)
KNOWN_UNDOCUMENTED: set = set()


def test_every_public_name_has_a_docstring():
    missing = set(load_generator().undocumented()) - KNOWN_UNDOCUMENTED
    assert not missing, f"public names without a docstring: {sorted(missing)}"


def test_api_reference_is_current():
    fresh = load_generator().generate()
    committed = (ROOT / "docs" / "api.md").read_text()
    assert committed == fresh, "docs/api.md is stale: run `python docs/gen_api.py`"


def test_local_links_resolve():
    """Relative links and images point at files that exist; '#anchor' links in api.md have targets."""
    for path in DOCS:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            if file:
                assert (path.parent / file).exists(), f"{_rel(path)}: broken link {target}"
            elif anchor:
                assert f'id="{anchor}"' in text or re.search(rf"^#+ .*{re.escape(anchor)}", text, re.MULTILINE | re.IGNORECASE), (
                    f"{_rel(path)}: no anchor {anchor}"
                )
