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


def test_bench_quick_optimized_adds_the_calibrated_solver(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--optimized", "--samples", "100", "--out", str(out), "--no-plot"]) == 0
    recs = [r for r in json.loads(out.read_text())["records"] if r.get("budget") == 10 and r["problem"] == "gmm2-vp"]
    rmse = {r["solver"]: r["rmse"] for r in recs}
    assert rmse["UniPC(3), optimized"] <= 1.2 * rmse["UniPC(3)"]  # tuned on other noise; not worse


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


# ---------------------------------------------------------------------------------------
# help, version, choices, progress
# ---------------------------------------------------------------------------------------
def _exit_code(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_help_mentions_every_subcommand_and_each_has_examples(capsys):
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("verify", "sample", "bench"):
        assert command in out
        assert _exit_code([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "examples:" in text and f"unigen {command}" in text and "--progress" in text


def test_version(capsys):
    import unigen

    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"unigen {unigen.__version__}"


@pytest.mark.parametrize("option, valid", [
    ("--data", ["gmm", "moons", "checkerboard", "swiss_roll", "eight_gaussians", "digits"]),
    ("--process", ["fm", "vp", "ve", "edm"]),
    ("--param", ["eps", "x0", "v", "score", "velocity", "denoiser"]),
    ("--schedule", ["uniform", "logsnr", "karras", "quadratic"]),
])
def test_unknown_choice_lists_the_valid_ones(option, valid, capsys):
    assert _exit_code(["sample", option, "no-such-name"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-name'" in err
    assert all(f"'{v}'" in err for v in valid)


def test_unknown_solver_lists_every_registered_name(capsys):
    from unigen.solvers import REGISTRY

    assert main(["sample", "--solver", "ddim"]) == 2  # names are case-sensitive
    err = capsys.readouterr().err
    assert "unknown solver 'ddim'" in err and all(name in err for name in REGISTRY)


def test_bad_numbers_and_impossible_combinations_exit_2(tmp_path, capsys):
    assert _exit_code(["sample", "--steps", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err
    assert _exit_code(["bench", "--samples", "ten"]) == 2
    # an eps model cannot start flow matching's grid at t = 1 (alpha = 0): a message, not a traceback
    rc = main(["sample", "--process", "fm", "--param", "eps", "--n", "10", "--out", str(tmp_path / "x.png"), "--no-progress"])
    assert rc == 2 and "unigen sample: error:" in capsys.readouterr().err


def test_verify_progress_bar_and_counter_fallback(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    assert main(["verify", "--only", "tweedie", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "verify" in captured.err and "1/1" in captured.err and "PASS" in captured.out
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)  # as if tqdm were not installed
    assert main(["verify", "--only", "tweedie", "--progress"]) == 0
    assert "verify: 1/1" in capsys.readouterr().err
    assert main(["verify", "--only", "tweedie", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_sample_shows_training_and_sampling_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)  # the counter lines are easy to read
    args = ["sample", "--data", "moons", "--solver", "Euler", "--steps", "4", "--n", "50", "--train-steps", "12",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "m.png"), "--progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "train: 12/12" in err and "sample (Euler): 4/4" in err


def test_bench_passes_progress_only_when_run_accepts_it(monkeypatch, tmp_path):
    from unigen.bench import report

    seen = []

    def with_progress(*args, progress=False, **kw):
        seen.append(progress)

    def without_progress(dims, kinds, budgets, n, specs, out, *, seed=0, quick=False, plots=True):
        seen.append("no keyword")

    for fake in (with_progress, without_progress):
        monkeypatch.setattr(report, "run", fake)
        assert main(["bench", "--quick", "--progress", "--out", str(tmp_path / "b.json")]) == 0
    assert seen == [True, "no keyword"]


def test_cli_schedules_and_processes(tmp_path, capsys):
    """--schedule offers real schedule names valid on continuous processes (diffusers'
    leading/trailing/linspace need VP.discrete, which no --process is); a schedule that cannot
    span a process's range is a message and exit 2, not a traceback."""
    import unigen as ug
    from unigen import cli

    assert set(cli.SCHEDULES) < set(ug.SCHEDULES)
    for name in ("vp", "ve", "edm"):
        for schedule in cli.SCHEDULES:
            assert ug.make_grid(cli._make_process(name), schedule, 4).shape == (5,)
    with pytest.raises(ValueError, match="VP.discrete"):
        ug.make_grid(cli._make_process("vp"), "leading", 4)
    args = ["sample", "--process", "fm", "--schedule", "logsnr", "--n", "10", "--out", str(tmp_path / "x.png")]
    assert main(args) == 2 and "infinite at t_start" in capsys.readouterr().err
