import json

import pytest
import torch

import unigen.verify as V
from unigen.cli import main


def test_verify_passes_and_prints_table(capsys):
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    assert f"{len(V.CLAIMS)}/{len(V.CLAIMS)} claims hold" in out


def test_verify_shows_fail_for_a_perturbed_conversion(monkeypatch, capsys):
    """Break the conversion hub slightly: the round-trip claim must turn FAIL and exit 1."""
    import unigen.parametrization as P

    real = P._reproject

    def perturbed(out, z, src_c, src, dst_c, dst, check):
        return real(out, z, src_c, src, dst_c, dst, check) * (1 + 1e-6)

    monkeypatch.setattr(P, "_reproject", perturbed)
    assert main(["verify", "--only", "round trips"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_json_and_unknown_claim(capsys):
    assert main(["verify", "--json", "--only", "tweedie"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["passed"] and data[0]["error"] < 1e-8
    assert main(["verify", "--only", "no-such-claim"]) == 2
    assert "claims are:" in capsys.readouterr().err


def test_a_crashing_claim_is_a_fail():
    res = V.run_claims([V.Claim("boom", "x", 1.0, lambda: 1 / 0)])
    assert not res[0].passed and "ZeroDivisionError" in res[0].setting


def test_cli_help():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    torch.set_default_dtype(torch.float64)


def test_bench_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--samples", "100", "--out", str(out), "--no-plot"]) == 0
    data = json.loads(out.read_text())
    assert data["mode"] == "quick" and data["records"]
    assert any(r["solver"].startswith("DPMSolverPP") for r in data["records"])
    assert "| solver |" in capsys.readouterr().out


def test_sample_command(tmp_path, capsys):
    out = tmp_path / "gmm.png"
    assert main(["sample", "--data", "gmm", "--process", "vp", "--param", "eps", "--solver", "UniPC",
                 "--steps", "8", "--n", "200", "--out", str(out)]) == 0
    assert out.exists() or out.with_suffix(".pt").exists()
    assert "UniPC: 8 steps, 8 model calls, 200 samples" in capsys.readouterr().out
    # a small trained model is cached and reused
    args = ["sample", "--data", "moons", "--solver", "Euler", "--steps", "5", "--n", "100", "--train-steps", "30",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "moons.png")]
    assert main(args) == 0 and "saved" in capsys.readouterr().out
    assert main(args) == 0 and "loaded" in capsys.readouterr().out
    assert main(["sample", "--solver", "NoSuchSolver"]) == 2
    assert "valid names are" in capsys.readouterr().err
