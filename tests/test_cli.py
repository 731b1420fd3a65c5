import functools
import json

import pytest
import torch

import unigen.verify as V
from unigen import cli
from unigen import process as P
from unigen.cli import main


# Every claim of `unigen verify` runs and must pass, one test per claim so that xdist spreads
# them over its workers (the whole run is over a minute of CPU); the command itself is tested
# below on the same claim list with the measurement stubbed.
@pytest.mark.parametrize("name", [c.name for c in V.all_claims()])
def test_verify_claim_holds(name):
    claims = [c for c in V.all_claims() if c.name == name]
    assert len(claims) == 1, f"{len(claims)} claims named {name!r}"
    (result,) = V.run_claims(claims)
    assert result.passed, result


def test_verify_passes_and_prints_table(monkeypatch, capsys):
    """`unigen verify` measures every claim of V.all_claims() once, in order, and prints the
    table and the count; the measurements themselves are test_verify_claim_holds."""
    measured = []

    def stub(claims):  # the command hands run_claims one claim at a time
        measured.extend(c.name for c in claims)
        return [V.Result(c.name, c.setting, 0.0, c.tol, True, 0.0) for c in claims]

    monkeypatch.setattr(V, "run_claims", stub)
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    every = [c.name for c in V.all_claims()]  # the fixed claims and one order claim per registered deterministic solver configuration
    assert measured == every
    assert "PASS" in out and "FAIL" not in out and all(name in out for name in every)
    n = len(every)
    assert f"{n}/{n} claims hold" in out


def test_verify_shows_fail_for_a_perturbed_conversion(monkeypatch, capsys):
    """Break the conversion hub slightly: the round-trip claim must turn FAIL and exit 1."""
    import unigen.parametrization as P

    real = P.reproject

    def perturbed(out, z, src_c, src, dst_c, dst, check):
        return real(out, z, src_c, src, dst_c, dst, check) * (1 + 1e-6)

    monkeypatch.setattr(P, "reproject", perturbed)
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


def test_bench_quick_optimized_adds_the_calibrated_solver(tmp_path, monkeypatch, capsys):
    """The command builds the quick sweep with the calibrated UniPC(3) appended; the sweep itself
    runs at the one budget compared (10) instead of all six: each budget optimises its own grid
    (quick: 40 evaluations on 512 calibration draws per problem and budget), and the budget-10
    records are the same either way (a budget's run does not depend on the others).
    It also checks what `unigen bench --quick` writes (mode, records, table); the plain command
    at all six budgets runs in docs/tutorials/03-benchmark-nfe-quality.md (tests/test_docs.py)."""
    real, seen = cli.report.run, {}

    @functools.wraps(real)  # the same signature: the command passes progress= only when run takes it
    def at_budget_10(dims, kinds, budgets, n, specs, out, **kw):
        seen.update(kinds=kinds, budgets=budgets, labels=[s.label for s in specs])
        return real(dims, kinds, [10], n, specs, out, **kw)

    monkeypatch.setattr(cli.report, "run", at_budget_10)
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--optimized", "--samples", "100", "--out", str(out), "--no-plot"]) == 0
    data = json.loads(out.read_text())
    assert data["mode"] == "quick" and data["records"]
    assert any(r["solver"].startswith("DPMSolverPP") for r in data["records"])
    assert "| solver |" in capsys.readouterr().out
    assert seen["kinds"] == ["vp", "fm"] and 10 in seen["budgets"] and len(seen["budgets"]) > 1
    assert seen["labels"][-1] == "UniPC(3), optimized" and "UniPC(3)" in seen["labels"]
    records = data["records"]
    assert {r["problem"] for r in records if r["solver"] == "UniPC(3), optimized"} == {"gmm2-vp", "gmm2-fm"}
    recs = [r for r in records if r.get("budget") == 10 and r["problem"] == "gmm2-vp"]
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
            assert ug.make_grid(cli.make_process(name), schedule, 4).shape == (5,)
    with pytest.raises(ValueError, match="VP.discrete"):
        ug.make_grid(cli.make_process("vp"), "leading", 4)
    args = ["sample", "--process", "fm", "--schedule", "logsnr", "--n", "10", "--out", str(tmp_path / "x.png")]
    assert main(args) == 2
    assert "valid --schedule values for --process fm are uniform and quadratic" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# python -m unigen, one-line errors before any work, plots, the help examples
# ---------------------------------------------------------------------------------------
def _run_module(*argv):
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "HYPOTHESIS"))}
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-m", "unigen", *argv], capture_output=True, text=True, env=env, timeout=120)


def test_python_dash_m_unigen_is_the_unigen_command(monkeypatch, capsys):
    """`python -m unigen` runs unigen/__main__.py: --help through that module here (runpy, as -m
    runs it), and one fresh `python -m unigen` process for the exit status and the one-line error
    (one interpreter start instead of two)."""
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["unigen", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("unigen", run_name="__main__", alter_sys=True)
    assert e.value.code == 0
    torch.set_default_dtype(torch.float64)  # as test_cli_help: the suite's default, whatever main did
    out = capsys.readouterr().out
    assert "unigen sample" in out and "examples:" in out
    proc = _run_module("sample", "--process", "fm", "--param", "eps")  # an error: one line, exit 2
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("unigen sample: error: --param eps")


@pytest.fixture
def no_work(monkeypatch):
    """Sampling and training fail the test if reached: the errors below come before any work."""
    import importlib

    def boom(*args, **kwargs):
        raise AssertionError("the command sampled or trained before checking its arguments")

    monkeypatch.setattr(importlib.import_module("unigen.sample"), "sample", boom)  # the module, not the function
    monkeypatch.setattr(cli, "sample", boom)  # the CLI's own name for it
    monkeypatch.setattr(importlib.import_module("unigen.train"), "fit", boom)


def _one_line_error(capsys, command="sample"):
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"unigen {command}: error: "), err
    return err


def test_missing_output_folder_fails_before_sampling(tmp_path, capsys, no_work):
    out = tmp_path / "missing" / "a.png"
    for data in ("gmm", "moons"):
        assert main(["sample", "--data", data, "--out", str(out), "--cache", str(tmp_path / "c")]) == 2
        err = _one_line_error(capsys)
        assert f"--out {out}: the folder {out.parent} does not exist" in err
    assert not out.parent.exists() and not (tmp_path / "c").exists()


def test_bad_output_paths_and_cache(tmp_path, capsys, no_work):
    assert main(["sample", "--out", str(tmp_path)]) == 2
    assert "is a folder" in _one_line_error(capsys)
    pytest.importorskip("matplotlib")
    assert main(["sample", "--out", str(tmp_path / "a.xyz")]) == 2
    assert "cannot write .xyz files; use one of .png" in _one_line_error(capsys)
    (tmp_path / "file").write_text("")
    assert main(["sample", "--data", "moons", "--cache", str(tmp_path / "file" / "c"), "--out", str(tmp_path / "m.png")]) == 2
    assert "--cache" in _one_line_error(capsys)


def test_bench_checks_its_output_folder_first(tmp_path, capsys, monkeypatch):
    from unigen.bench import report

    monkeypatch.setattr(report, "run", lambda *a, **k: pytest.fail("the sweep ran"))
    assert main(["bench", "--quick", "--out", str(tmp_path / "nope" / "b.json")]) == 2
    assert "--out" in _one_line_error(capsys, "bench")


@pytest.mark.parametrize("param", ["eps", "score", "denoiser"])
def test_param_the_process_cannot_start_from(param, tmp_path, capsys, no_work):
    assert main(["sample", "--process", "fm", "--param", param, "--out", str(tmp_path / "x.png")]) == 2
    err = _one_line_error(capsys)
    assert f"--param {param} cannot be sampled with --process fm" in err
    assert "valid --param values for --process fm are x0, v, velocity and v_n" in err
    assert "t_start" not in err and "t_end" not in err  # no option the CLI does not have


def test_cli_rules_match_the_library(tmp_path):
    """The --param and --schedule lists the errors name are exactly what the library accepts."""
    import unigen as ug
    from unigen import cli
    from unigen.parametrization import PARAMETRIZATIONS

    for name in cli.PROCESSES:
        process, ok = cli.make_process(name), cli.valid_params(name)
        gm = ug.analytic.ring_mixture(dtype=torch.float32)
        for param in PARAMETRIZATIONS:
            try:
                ug.sample(gm.model(process, param), "Euler", steps=2, shape=(3, 2), dtype=torch.float32)
                works = True
            except ValueError:
                works = False
            assert works == (param in ok), (name, param)


def test_process_choices_come_from_the_registry(capsys):
    """--process lists the first alias of every registered class that builds from its defaults."""
    assert cli.PROCESSES == cli.process_choices()
    assert {"fm": "FlowMatching", "vp": "VPLinear", "ve": "VE", "edm": "EDM"}.items() <= cli.PROCESSES.items()
    assert set(cli.PROCESSES.values()) == {n for n, c in P.REGISTRY.items() if c.aliases and n not in ("VPDiscrete", "Affine")}
    for name, cls_name in cli.PROCESSES.items():
        assert type(cli.make_process(name)) is P.REGISTRY[cls_name]
    with pytest.raises(cli.CLIError, match="unknown --process 'vpp'; valid names are cosine, edm, fm"):
        cli.make_process("vpp")
    assert _exit_code(["sample", "--process", "vp_discrete"]) == 2
    assert "--process" in capsys.readouterr().err
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["sample"].format_help()
    assert "vp = VPLinear" in help_text and "subvp = SubVP" in help_text


@pytest.mark.parametrize("process", ["subvp", "vp_cosine", "cosine"])
def test_sample_with_the_processes_the_registry_adds(process, tmp_path, capsys):
    param = cli.valid_params(process)[0]
    out = tmp_path / "s.png"
    rc = main(["sample", "--process", process, "--param", param, "--steps", "3", "--n", "20", "--out", str(out),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert out.exists() or out.with_suffix(".pt").exists()


@pytest.mark.parametrize("argv, names", [
    (["sample", "--solver", "DDIMM"], ["--solver", "did you mean DDIM?"]),
    (["sample", "--solver", "DPM++"], ["--solver", "did you mean DPMSolverPP?"]),  # not DDPM
    (["sample", "--solver", "dpm_solver"], ["--solver", "did you mean DPMSolver?"]),
    (["sample", "--steps", "0"], ["--steps"]),
    (["sample", "--data", "nope"], ["--data"]),
    (["verify", "--only", "no-such-claim"], ["--only"]),
    (["sample", "--no-such-option"], ["--no-such-option"]),
    ([], ["COMMAND"]),
])
def test_every_error_is_one_line_naming_the_option(argv, names, tmp_path, capsys, no_work):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "usage:" not in err, err
    assert err.startswith("unigen") and ": error: " in err and all(n in err for n in names), err


def test_plot_title_and_reference_overlay(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    seen = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: seen.append(self))
    assert main(["sample", "--process", "vp", "--param", "eps", "--solver", "Heun", "--steps", "3", "--n", "50",
                 "--out", str(tmp_path / "g.png")]) == 0
    nfe = capsys.readouterr().out.split(" model calls")[0].split()[-1]  # "Heun: 3 steps, N model calls, ..."
    (fig,) = seen
    (ax,) = fig.axes
    title = ax.get_title()
    for word in ("VPLinear", "eps", "Heun", "logsnr schedule", "3 steps", f"NFE {nfe}"):
        assert word in title, title
    reference, samples = ax.collections  # the exact samples under the samples
    assert reference.get_alpha() < samples.get_alpha() and len(reference.get_offsets()) == 50


def test_help_examples_parse_and_pass_the_checks(tmp_path, monkeypatch):
    """Every example of every --help parses, and every sample example passes the checks that run
    before training (its training is measured in benchmarks/cli_examples.py, not here)."""
    import shlex

    from unigen import cli

    monkeypatch.chdir(tmp_path)
    lines = cli.help_examples()
    assert {ln.split()[1] for ln in lines} == {"verify", "sample", "bench"}
    assert len(cli.help_examples("sample")) >= 3
    for line in lines:
        argv = shlex.split(line)[1:]
        argv = argv[: argv.index(">")] if ">" in argv else argv  # `unigen verify --json > claims.json`
        args = cli.build_parser().parse_args(argv)
        if args.command == "sample":
            cli.check_sample_args(args)
            assert args.train_steps == cli.TRAIN_STEPS  # the examples train with the defaults the benchmark measured
