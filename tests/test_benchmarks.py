"""Benchmarks are not timed tests, but they must keep running: a tiny smoke run of each."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_overhead_benchmark_smoke(tmp_path):
    out = tmp_path / "overhead.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--no-peers", "--steps", "20",
           "--batches", "8", "--repeats", "1", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data  # valid, non-empty JSON
    assert "| DDIM | unigen |" in res.stdout
