"""Smoke run of ``python -m benchmarks.low_nfe_defaults`` on a tiny configuration (2-D VP, two NFEs)."""

import json
import math

from benchmarks import low_nfe_defaults as bench


def test_low_nfe_defaults_tiny(tmp_path):
    out = tmp_path / "low_nfe.json"
    assert bench.main(["--dims", "2", "--processes", "vp", "--nfe", "4", "6", "--samples", "64",
                       "--families", "DPMSolverPP(3)", "UniPC(2)", "UniPC(3)", "--quiet", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"meta", "records", "comparisons", "combinations", "recommendation"}
    recs = data["records"]
    expected = len(bench.configs("DPMSolverPP(3)")) + len(bench.configs("UniPC(2)")) + len(bench.configs("UniPC(3)"))
    assert len(recs) == 2 * expected
    for r in recs:
        assert {"problem", "family", "solver", "options", "config", "nfe", "budget", "steps", "rmse"} <= set(r)
        assert r["problem"] == "gmm2-vp" and r["nfe"] == r["budget"] in (4, 6)
        assert r["rmse"] is not None and math.isfinite(r["rmse"]) and r["rmse"] > 0
    # the singlestep warm-up pays its extra call on step 0 with one step fewer, at equal NFE
    warm = [r for r in recs if r["options"].get("warmup") == "singlestep"]
    assert warm and all(r["steps"] == r["nfe"] - 1 for r in warm)
    titles = {c["title"] for c in data["comparisons"]}
    assert {"DPMSolverPP(3): match_reference_3m", "DPMSolverPP(3): warmup", "UniPC(3): variant",
            "UniPC order (bh2, corrector)"} <= titles
    for c in data["comparisons"]:
        assert c["wins"]["low"]["cases"] == 2 and c["wins"]["high"]["cases"] == 0
    assert set(data["recommendation"]) == {"DPMSolverPP(3)", "UniPC(2)", "UniPC(3)"}
