"""unigen.progress: one bar for the CLI, the benchmarks and sample(progress=True)."""

import io
import sys

import pytest

from unigen.progress import CounterLine, NoProgress, progress_bar


def test_disabled_bar_does_nothing(capsys):
    bar = progress_bar(3, "x", enabled=False)
    assert isinstance(bar, NoProgress)
    with bar:
        bar.update(2)
        bar.set_postfix_str("note")
    assert capsys.readouterr() == ("", "")


def test_counter_line_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    bar = progress_bar(3, "train")
    assert isinstance(bar, CounterLine)
    bar.update()
    bar.set_postfix_str("loss 0.5")
    bar.update(2)
    bar.close()
    err = capsys.readouterr().err
    assert "\rtrain: 1/3" in err and err.endswith("\rtrain: 3/3  loss 0.5\n")
    buf = io.StringIO()
    with progress_bar(2, "to a file", file=buf) as bar:
        bar.update(2)
    assert buf.getvalue() == "\rto a file: 2/2\n" and capsys.readouterr().err == ""


def test_require_tqdm_is_an_import_error_only_when_asked(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"a progress bar \(DDIM\) needs tqdm: pip install 'unigen\[progress\]'"):
        progress_bar(5, "DDIM", require_tqdm=True)
    assert isinstance(progress_bar(5, "DDIM", enabled=False, require_tqdm=True), NoProgress)
    assert isinstance(progress_bar(5, "DDIM"), CounterLine)


def test_tqdm_bar_when_installed():
    tqdm = pytest.importorskip("tqdm")
    buf = io.StringIO()
    bar = progress_bar(4, "sweep", file=buf, leave=False, require_tqdm=True)
    assert isinstance(bar, tqdm.tqdm)
    bar.update(4)
    bar.set_postfix_str("ok")
    bar.close()
    assert "sweep" in buf.getvalue()
