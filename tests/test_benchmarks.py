"""Benchmarks are not timed tests, but they must keep running: a tiny smoke run of each.

The scripts form the package ``benchmarks`` and run as ``python -m benchmarks.<name>`` from the
repository root; the tests import them the same way (pytest puts the root on sys.path:
``pythonpath`` in pyproject.toml), with no path edits anywhere.
"""

import importlib
import json
import pathlib
import re
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = ["benchmarks", "benchmarks.peer_samplers", "benchmarks.peers", "benchmarks.nfe_quality",
           "benchmarks.optimized_schedules", "benchmarks.cli_examples", "benchmarks.speed",
           "benchmarks.speed.common", "benchmarks.speed.cases", "benchmarks.speed.overhead",
           "benchmarks.speed.throughput", "benchmarks.speed.compiled", "benchmarks.speed.model_share"]


def _speed(*args, timeout=300):
    """``python -m benchmarks.speed ARGS`` from the repository root, as the docs say to run it."""
    cmd = [sys.executable, "-m", "benchmarks.speed", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_modules_import_without_touching_sys_path(name):
    before = list(sys.path)
    importlib.import_module(name)
    assert sys.path == before


def test_no_sys_path_edits_in_benchmarks_or_tests():
    edit = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\s*\+?=(?!=)")
    offenders = [str(p.relative_to(ROOT)) for d in ("benchmarks", "tests") for p in sorted((ROOT / d).rglob("*.py"))
                 if edit.search(p.read_text())]
    assert offenders == []


def test_speed_benchmark_smoke(tmp_path, capsys):
    """Every section of ``python -m benchmarks.speed`` at tiny sizes, unigen only."""
    out = tmp_path / "speed.json"
    res = _speed("--quick", "--no-peers", "--only", "DDIM", "--steps", "20", "--batches", "8", "--repeats", "1",
                 "--tp-batches", "8", "--tp-dims", "2", "--compile-steps", "3", "--mf-width", "32", "--mf-steps", "3",
                 "--mf-batch", "8", "--out", str(out))
    data = json.loads(out.read_text())
    assert set(data) == {"meta", "overhead", "throughput", "compile", "model_fraction"}
    assert "| DDIM | unigen |" in res.stdout  # the overhead table
    assert data["throughput"]["rows"] and all("samples_per_s" in r for r in data["throughput"]["rows"])
    if "rows" in data["compile"]:  # unigen.compile present: compiled and eager loops agree
        ok = [r for r in data["compile"]["rows"] if "us_per_step" in r]
        assert {r["mode"] for r in ok} >= {"ug.sample", "eager", "aot_eager"}
        assert max(r["agreement_rel_max_diff"] for r in ok) <= 1e-6
    fraction = data["model_fraction"]["rows"][0]
    assert 0.0 < fraction["fraction"] <= 1.0 and fraction["nfe"] == 3
    assert data["overhead"]["first_call"]["rows"] == []  # --only DDIM: none of the row's algorithms

    # the first-call setup row alone, merged into the overhead section already in the file. Run in
    # this process through main(argv), the function the command line above ran (a second fresh
    # interpreter only re-paid the ~4 s import); under a fresh interpreter's float32 default dtype,
    # and the thread count it sets is restored
    from benchmarks.speed.__main__ import main as speed_main

    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    try:
        assert speed_main(["--sections", "overhead", "--first-call-only", "--update", "--quick", "--no-peers",
                           "--only", "DPM++(2M)", "--fc-steps", "3,5", "--fc-repeats", "1", "--repeats", "1",
                           "--out", str(out)]) == 0
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    merged = json.loads(out.read_text())
    assert set(merged) == set(data)
    assert merged["overhead"]["results"] == data["overhead"]["results"]
    rows = merged["overhead"]["first_call"]["rows"]
    assert {(r["key"], r["steps"]) for r in rows} == {(k, n) for k in ("ug-dpmpp-edm", "ug-dpmpp-ddpm") for n in (3, 5)}
    for r in rows:
        assert "error" not in r, r
        assert r["first_call_us"] > 0 and r["warm_call_us"] > 0 and r["grid_alone_us"] is None
        assert r["new_model_same_process_minus_warm_us"] is not None
    assert "## 1d. First-call setup" in stdout
