"""The docs stay true: every code block in README.md and docs/**/*.md runs as a reader would run
it, the API reference equals a fresh generation from the docstrings, and local links resolve.
(That no file cites material outside the repository is tests/test_no_external_refs.py.)

How a page runs (``test_code_blocks_run``, one test per markdown file):

* its ``python`` blocks, in document order, form ONE script that a fresh ``python`` process
  (``sys.executable``) runs in an empty temporary directory, with torch's own defaults (float32
  unless the page itself sets another dtype; nothing from this suite's conftest leaks in). Each
  block sits on the same line numbers it has in the markdown file, so a traceback line is a
  line of the page;
* each ``bash`` line that is a ``unigen ...`` command runs at its place in the page, in its own
  fresh process (as a shell would run it) through ``unigen.cli.main``, in the same directory;
* every other bash line must be listed in NOT_RUN with the reason it is not run.

So a page costs one interpreter start, plus one per ``unigen`` command it shows.
"""

import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)

# bash lines that are not run here, and why
NOT_RUN = {
    'pip install torch==2.13.0 && pip install -e ".[plot]" && unigen verify':
        "installs packages (torch, then unigen with matplotlib for `unigen sample`'s PNG); the "
        "`unigen verify` it ends with runs in tests/test_cli.py",
    'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -q':
        "installs packages and runs the whole suite; CI (.ci/run) runs it verbatim",
    'python benchmarks/optimized_schedules.py --budgets 10 20 --solvers "UniPC(3)" "UniPC(2)" "DPMSolverPP(2M)" --calibration 2048':
        "the run behind the optimised-grid table: over an hour; tests/test_calibration.py runs a small configuration of the script",
}

# seconds one page may take (all its blocks and commands together); the slowest page needs
# about a tenth of this on two shared cores
PAGE_TIMEOUT = 600

# what a `unigen ...` line of a page runs: the installed console script is `unigen.cli:main`
CLI = "import sys; from unigen.cli import main; sys.exit(main(sys.argv[1:]))"


def fenced_blocks(path: pathlib.Path) -> list:
    """[(language, code)] in document order."""
    return [(lang, code) for lang, code, _ in fenced_blocks_at(path)]


def fenced_blocks_at(path: pathlib.Path) -> list:
    """[(language, code, first line of the code, 1-based)] in document order."""
    text = path.read_text()
    return [(m[1], m[2], text.count("\n", 0, m.start(2)) + 1) for m in FENCE.finditer(text)]


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


def page_script(path: pathlib.Path, name: str = "") -> tuple:
    """The page as one python script in which every line of code keeps its line number.

    Returns (script, blocks) with blocks = [(kind, first line, last line)] of what will run;
    ``name`` (default: the path relative to the repository) is used in messages.
    """
    name = name or _rel(path)
    lines = [""] * (path.read_text().count("\n") + 1)
    blocks = []
    for i, (lang, code, first) in enumerate(fenced_blocks_at(path)):
        where = f"{name} block {i} (line {first})"
        code_lines = code.splitlines()
        if lang == "python":
            lines[first - 1:first - 1 + len(code_lines)] = code_lines
            blocks.append(("python", first, first + len(code_lines) - 1))
        elif lang == "bash":
            for k, raw in enumerate(code_lines):
                if not _bash_lines(raw) or _bash_lines(raw)[0] in NOT_RUN:
                    continue
                (line,) = _bash_lines(raw)
                argv = shlex.split(line)
                assert argv[0] == "unigen", f"{where}: {line!r} is neither a unigen command nor listed in NOT_RUN"
                assert not set("|><;&") & set(line), f"{where}: shell syntax in {line!r}"
                lines[first - 1 + k] = f"__unigen_command__({argv[1:]!r}, {line!r})"
                blocks.append(("bash", first + k, first + k))
    if any(kind == "bash" for kind, _, _ in blocks):
        # the helper goes on line 1, which in a page is its title (a blank line of the script)
        assert not lines[0].strip(), f"{name}: line 1 is code"
        lines[0] = f"exec({RUNNER!r})"
    return "\n".join(lines) + "\n", blocks


# a `unigen ...` line: a fresh process per command, as a shell runs it; its stderr is the page's
# stderr, and a non-zero status stops the page naming the command
RUNNER = f"""
def __unigen_command__(argv, line):
    import subprocess, sys
    rc = subprocess.call([sys.executable, "-c", {CLI!r}, *argv], stdout=subprocess.DEVNULL)
    if rc:
        raise RuntimeError(f"`{{line}}` exited with status {{rc}}")
"""


def _failing_block(stderr: str, script: pathlib.Path, blocks: list) -> str:
    """Where the page failed: the innermost traceback frame inside the page's script, as a line
    of the page and the block that holds it."""
    hits = re.findall(rf'File "{re.escape(str(script))}", line (\d+)', stderr)
    if not hits:
        return "no traceback line points into the page"
    line = int(hits[-1])
    for kind, first, last in blocks:
        if first <= line <= last:
            what = f"the {kind} block at lines {first}-{last}" if kind == "python" else "a unigen command"
            return f"at line {line} of the page, in {what}"
    return f"at line {line} of the page"


def _page_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "HYPOTHESIS"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["MPLBACKEND"] = "Agg"  # plots are written to files, never shown
    env.setdefault("OMP_NUM_THREADS", "1")  # same numbers, no oversubscription on shared runners
    return env


def _has_code_to_run(path: pathlib.Path) -> bool:
    return any(lang == "python" or (lang == "bash" and set(_bash_lines(code)) - set(NOT_RUN)) for lang, code in fenced_blocks(path))


CODE_DOCS = [p for p in DOCS if _has_code_to_run(p)]


def run_page(path: pathlib.Path, tmp_path: pathlib.Path, name: str = ""):
    """Run the page as its reader would (see the module docstring); fail the test, naming the
    line of the page, if it does not exit cleanly. Returns the finished process."""
    name = name or _rel(path)
    script, blocks = page_script(path, name)
    assert blocks, f"{name} has code fences but nothing would run"
    file = tmp_path / (path.name + ".py")
    file.write_text(script)
    work = tmp_path / "cwd"  # files the examples write land here
    work.mkdir()
    try:
        proc = subprocess.run([sys.executable, str(file)], cwd=work, env=_page_env(), capture_output=True,
                              text=True, timeout=PAGE_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{name} did not finish in {PAGE_TIMEOUT} s\n--- stderr (tail) ---\n{err[-3000:]}")
    if proc.returncode:
        where = _failing_block(proc.stderr, file, blocks)
        pytest.fail(
            f"{name} fails when run as a script, {where} (exit status {proc.returncode})\n"
            f"--- stderr (tail) ---\n{proc.stderr[-3000:]}\n--- stdout (tail) ---\n{proc.stdout[-1000:]}"
        )
    return proc


@pytest.mark.parametrize("path", CODE_DOCS, ids=_rel)
def test_code_blocks_run(path, tmp_path):
    run_page(path, tmp_path)


def test_pages_run_with_torch_defaults(tmp_path):
    """A page sees torch as a new interpreter has it (float32), not as this suite's conftest set
    it (float64); a failure is reported at its line of the page."""
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nimport torch\nprint(torch.get_default_dtype())\n```\n")
    proc = run_page(page, tmp_path, "page.md")
    assert proc.stdout.strip() == "torch.float32"
    bad = tmp_path / "bad.md"
    bad.write_text("# t\n\n```python\nx = 1\n```\n\ntext\n\n```python\nraise ValueError(x)\n```\n")
    script, blocks = page_script(bad, "bad.md")
    stderr = f'Traceback (most recent call last):\n  File "{tmp_path / "bad.md.py"}", line 10, in <module>\n'
    assert _failing_block(stderr, tmp_path / "bad.md.py", blocks) == "at line 10 of the page, in the python block at lines 10-10"


def test_page_script_keeps_line_numbers(tmp_path):
    """A traceback line of the generated script is the same line of the page."""
    page = tmp_path / "page.md"
    page.write_text("# t\n\ntext\n\n```python\nx = 1\n\ny = x + 1\n```\n\n```bash\nunigen --version\n```\n")
    script, blocks = page_script(page, "page.md")
    lines = script.splitlines()
    assert lines[5] == "x = 1" and lines[7] == "y = x + 1"
    assert lines[11] == "__unigen_command__(['--version'], 'unigen --version')"
    assert blocks == [("python", 6, 8), ("bash", 12, 12)]
    compile(script, "page.md.py", "exec")


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
