"""Benchmarks are not timed tests, but they must keep running: a tiny smoke run of each."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_speed_benchmark_smoke(tmp_path):
    """Every section of benchmarks/speed.py at tiny sizes, unigen only."""
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick", "--no-peers", "--only", "DDIM",
           "--steps", "20", "--batches", "8", "--repeats", "1", "--tp-batches", "8", "--tp-dims", "2",
           "--compile-steps", "3", "--mf-width", "32", "--mf-steps", "3", "--mf-batch", "8", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
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
