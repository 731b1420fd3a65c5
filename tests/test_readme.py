"""README stays true: its Python blocks run, and its test command is what CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_blocks_run():
    code = blocks("python")
    assert code, "README has no python example"
    for block in code:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


def test_quickstart_is_two_commands_and_ci_runs_the_test_one():
    (quick,) = blocks("bash")[:1]
    cmds = [line for line in quick.strip().splitlines() if line.strip()]
    assert len(cmds) == 2
    assert "unigen verify" in cmds[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci, "'.ci/run' must run README's test command verbatim"
