"""README stays true: its test command is what CI runs (its code blocks run in tests/test_docs.py)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_has_python_examples():
    """They run (in order, in one namespace) in tests/test_docs.py, with every other doc's code."""
    assert blocks("python"), "README has no python example"


def test_quickstart_is_two_commands_and_ci_runs_the_test_one():
    (quick,) = blocks("bash")[:1]
    cmds = [line for line in quick.strip().splitlines() if line.strip()]
    assert len(cmds) == 2
    assert "unigen verify" in cmds[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci, "'.ci/run' must run README's test command verbatim"
