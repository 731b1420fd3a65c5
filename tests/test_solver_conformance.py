"""Conformance of every registered solver (diffusers' SchedulerCommonTest, diffrax's all_ode_solvers)."""

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unigen as ug
from helpers import DDPM_BETAS, NAMES, PROCESSES, SOLVERS, mixture, solver_id

GM = mixture(dim=2, k=3, seed=2)
IMG = ug.GaussianMixture(torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.5, 0.4]))


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@contextlib.contextmanager
def no_host_sync(solver):
    """Inside solver.step, any host sync (.item(), bool(), float(), int(), .tolist()) raises."""

    def boom(*a, **k):
        raise AssertionError("host sync inside a solver step")

    real_step = solver.step
    names = ("item", "__bool__", "__float__", "__int__", "tolist")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def step(*args, **kwargs):
        for n in names:
            setattr(torch.Tensor, n, boom)
        try:
            return real_step(*args, **kwargs)
        finally:
            for n, f in saved.items():
                setattr(torch.Tensor, n, f)

    solver.step = step
    try:
        yield
    finally:
        del solver.step


@pytest.mark.parametrize("solver", SOLVERS, ids=solver_id)
def test_shape_dtype_nfe_and_no_sync(solver):
    p = ug.VP.linear()
    model = IMG.model(p, "eps")
    z = torch.randn(5, 2, 2, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    steps = 6
    ctx = contextlib.nullcontext() if solver.syncs_host else no_host_sync(solver)
    with ctx:
        x, info = ug.sample(model, solver, steps=steps, noise=z, generator=torch.Generator().manual_seed(1))
    assert x.shape == z.shape and x.dtype == torch.float32 and x.device == z.device
    assert torch.isfinite(x).all()
    expected = solver.expected_nfe(steps, False)
    if expected is not None:
        assert info.nfe == expected
    assert info.times.shape == (steps + 1,)


@pytest.mark.parametrize("solver", SOLVERS, ids=solver_id)
def test_deterministic_given_generator_and_batch_items_independent(solver):
    p = ug.FlowMatching()
    model = GM.model(p, "velocity")
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(steps=8, t_start=0.98)
    a, _ = ug.sample(model, solver, noise=z, generator=gens([10, 11, 12, 13]), **kw)
    b, _ = ug.sample(model, solver, noise=z, generator=gens([10, 11, 12, 13]), **kw)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if getattr(solver, "batch_coupled", False):
        return  # e.g. a corrector whose step size is a batch mean (documented)
    one, _ = ug.sample(model, solver, noise=z[2:3], generator=gens([12]), **kw)
    torch.testing.assert_close(one, a[2:3], rtol=1e-12, atol=1e-12)


@settings(max_examples=60)
@given(
    name=st.sampled_from(NAMES),
    param=st.sampled_from(ug.PARAMETRIZATIONS),
    k=st.integers(0, len(SOLVERS) - 1),
    steps=st.integers(2, 12),
)
def test_every_process_parametrization_solver_runs(name, param, k, steps):
    solver = SOLVERS[k]
    p = PROCESSES[name]
    model = GM.model(p, param)
    try:
        x, info = ug.sample(model, solver, steps=steps, shape=(6, 2), generator=torch.Generator().manual_seed(0))
    except ug.SingularConversionError as e:  # eps/score/denoiser at alpha = 0: documented refusal
        assert param in ("eps", "score", "denoiser") and "Pass t_start below it" in str(e)
        return
    except ValueError as e:  # solvers that divide by alpha at a zero-SNR start say so
        assert "alpha" in str(e) and float(p.alpha(torch.tensor(p.t_max))) == 0.0, str(e)
        return
    assert torch.isfinite(x).all(), (name, param, solver)


# ---- ends of the grid -----------------------------------------------------------------------
@pytest.mark.parametrize("solver", [s for s in SOLVERS if not s.syncs_host], ids=solver_id)
def test_karras_grid_to_zero_is_finite_and_lands_on_x0(solver):
    p = ug.EDM()
    oracle, calls = GM.model(p, "denoiser"), []

    def denoiser(z, t):
        calls.append((z.clone(), t.clone()))
        return oracle(z, t).out

    needs_energy = "energy" in solver.requires  # the oracle itself: a wrapper has no energy
    model = oracle if needs_energy else ug.Model(denoiser, p, "denoiser")
    ts = ug.make_grid(p, "karras", 10, t_end=0.0)
    assert ts[-1] == 0 and (ts[:-1] - ts[1:]).min() > 0  # no zero-length step
    x, info = ug.sample(model, solver, schedule=ts, shape=(6, 2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    if not needs_energy:
        # the step onto sigma = 0 lands on the denoiser's output (x0_hat) at its last evaluation,
        # made at the last noisy time (UniPC: at its predicted point; EDM churn: at the raised
        # time t_hat = (1 + gamma) t of the last noisy step)
        z_last, t_last = calls[-1]
        assert float(ts[-2]) * (1 - 1e-12) <= float(t_last) < float(ts[-3])
        torch.testing.assert_close(x, oracle(z_last, t_last).x0, rtol=1e-12, atol=1e-12)  # measured: 0 to 4e-16
    expected = solver.expected_nfe(10, True)
    if expected is not None:
        assert info.nfe == expected


def test_heun_nfe_2n_minus_1_or_2n():
    p = ug.EDM()
    model = GM.model(p, "x0")
    _, a = ug.sample(model, ug.Heun(), schedule=ug.make_grid(p, "karras", 10, t_end=0.0), shape=(2, 2))
    _, b = ug.sample(model, ug.Heun(), steps=10, shape=(2, 2))
    assert (a.nfe, b.nfe) == (19, 20)


def test_denoise_final_costs_one_call():
    model = GM.model(ug.VP.linear(), "eps")
    z = torch.randn(3, 2)
    x, info = ug.sample(model, ug.DDIM(), steps=5, noise=z, denoise_final=True)
    x_plain, _ = ug.sample(model, ug.DDIM(), steps=5, noise=z)
    assert info.nfe == 6
    torch.testing.assert_close(x, model(x_plain, ug.schedules.sample_range(model.process)[1]).x0)


@pytest.mark.parametrize("solver", [ug.DDIM(), ug.DPMSolverPP(2), ug.UniPC(2), ug.Euler(), ug.Heun(), ug.DDPM(), ug.DDIM(eta=1.0)], ids=solver_id)
def test_zero_terminal_snr_is_finite(solver):
    p = ug.VP.discrete(DDPM_BETAS, rescale_zero_terminal_snr=True)
    model = GM.model(p, "v")
    x, _ = ug.sample(model, solver, steps=10, shape=(6, 2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    with pytest.raises(ug.SingularConversionError, match="cannot convert 'eps'"):
        ug.sample(GM.model(p, "eps"), solver, steps=10, shape=(6, 2))


def test_zero_terminal_snr_start():
    """Out of alpha = 0 the noise form's z/alpha is undefined: multistep DPM-Solver and DEIS take
    the limit step z_1 = alpha_1 x0_hat + sigma_1 eps_hat, which is DPM-Solver++'s first step
    (x0_hat carries everything at zero SNR); singlestep orders 2-3 refuse, naming the fix."""
    p = ug.VP.discrete(DDPM_BETAS, rescale_zero_terminal_snr=True)
    model = GM.model(p, "v")
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    ts = ug.make_grid(p, "trailing", 10)
    first = ug.sample(model, ug.DPMSolverPP(1), schedule=ts[:2], noise=z)[0]
    for solver in (ug.DPMSolver(1), ug.DPMSolver(2), ug.DPMSolver(3), ug.DEIS(2), ug.DEIS(3), ug.UniPC(2, variant="bh1")):
        x, _ = ug.sample(model, solver, schedule=ts[:2], noise=z)
        torch.testing.assert_close(x, first, rtol=1e-12, atol=1e-12)
        assert torch.isfinite(ug.sample(model, solver, schedule=ts, noise=z)[0]).all()
    for solver in (ug.DPMSolver(2, multistep=False), ug.DPMSolverPP(3, multistep=False)):
        with pytest.raises(ValueError, match=r"intermediate points .* -inf .* use multistep=True"):
            ug.sample(model, solver, schedule=ts, noise=z)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", [ug.DDIM(), ug.DPMSolverPP(2), ug.UniPC(2), ug.Heun(clock="sigma")], ids=solver_id)
def test_half_precision(dtype, solver):
    p = ug.VP.linear()
    model = GM.model(p, "eps")
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    ref, _ = ug.sample(model, solver, steps=15, noise=z)
    x, _ = ug.sample(model, solver, steps=15, noise=z.to(dtype))
    assert x.dtype == dtype and torch.isfinite(x).all()
    tol = 2e-2 if dtype == torch.float16 else 6e-2  # bf16 has an 8-bit mantissa (eps 7.8e-3)
    torch.testing.assert_close(x.double(), ref, rtol=tol, atol=tol)


def test_trajectory_callback_and_grad():
    model = GM.model(ug.VP.linear(), "eps")
    seen = []
    z = torch.randn(3, 2, requires_grad=True)
    x, info = ug.sample(model, ug.DPMSolverPP(2), steps=4, noise=z, return_trajectory=True, grad=True,
                        callback=lambda i, t, zz: seen.append((i, float(t))))
    assert len(info.trajectory) == 5 and [i for i, _ in seen] == [0, 1, 2, 3]
    x.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    x2, _ = ug.sample(model, ug.DPMSolverPP(2), steps=4, noise=z)
    assert not x2.requires_grad


# ---- bad input -------------------------------------------------------------------------------
class _NeedsEnergy(ug.solvers.Solver, register=False):
    requires = frozenset({"energy"})


def test_sample_errors():
    model = GM.model(ug.VP.linear(), "eps")
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        ug.sample(model, ug.DDIM(), steps=0, shape=(2, 2))
    with pytest.raises(ValueError, match="unknown solver 'ddim2'; valid names are .*DDIM"):
        ug.sample(model, "ddim2", steps=5, shape=(2, 2))
    with pytest.raises(ValueError, match="strictly decreasing"):
        ug.sample(model, ug.DDIM(), schedule=torch.tensor([0.5, 0.7, 0.1]), shape=(2, 2))
    with pytest.raises(ug.IncompatibleSolverError, match="_NeedsEnergy requires energy; this model .* provides"):
        ug.sample(ug.Model(lambda z, t: z, ug.VP.linear()), _NeedsEnergy(), steps=3, shape=(2, 2))
    with pytest.raises(ValueError, match="device meta disagrees with noise on cpu"):
        ug.sample(model, ug.DDIM(), steps=3, noise=torch.randn(2, 2), device="meta")
    with pytest.raises(TypeError, match="model must be a unigen Model"):
        ug.sample(lambda z, t: z, ug.DDIM(), steps=3, shape=(2, 2))
    with pytest.raises(ValueError, match="pass shape"):
        ug.sample(model, ug.DDIM(), steps=3)
    with pytest.raises(ValueError, match="one per batch item"):
        ug.sample(model, ug.DDPM(), steps=3, noise=torch.randn(3, 2), generator=gens([1, 2]))
    with pytest.raises(ug.SingularConversionError, match="grid starts at t=1"):
        ug.sample(GM.model(ug.FlowMatching(), "eps"), ug.DDIM(), steps=3, shape=(2, 2))


def test_solver_constructor_errors():
    with pytest.raises(ValueError, match="order must be 1, 2 or 3, got 4"):
        ug.DPMSolverPP(4)
    with pytest.raises(ValueError, match="unknown clock 'lambda'; valid clocks are t, sigma"):
        ug.Euler(clock="lambda")
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        ug.DDIM(eta=-1)
    with pytest.raises(ValueError, match="variant must be 'bh1' or 'bh2'"):
        ug.UniPC(2, variant="bh3")
    with pytest.raises(ValueError, match="unknown method 'rk45'; torchdiffeq methods are"):
        ug.Adaptive("rk45")
    with pytest.raises(ValueError, match="variance must be 'small'"):
        ug.DDPM("medium")


def test_every_solver_module_registers_a_solver():
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(ug.solvers.__path__):
        if mod.name.startswith("_") or mod.name in ug.solvers.INFRASTRUCTURE_MODULES:
            continue
        m = importlib.import_module(f"unigen.solvers.{mod.name}")
        assert any(getattr(c, "__module__", None) == m.__name__ for c in ug.solvers.REGISTRY.values()), mod.name


def test_singlestep_warmup_costs_one_extra_call():
    model = GM.model(ug.VP.linear(), "eps")
    s = ug.DPMSolver(3, warmup="singlestep")
    _, info = ug.sample(model, s, steps=20, shape=(2, 2))
    assert info.nfe == s.expected_nfe(20, False) == 21
    with pytest.raises(ValueError, match="warmup must be 'lower_order' or 'singlestep'"):
        ug.DPMSolver(3, warmup="rk")
    with pytest.raises(ValueError, match="solver_type must be 'midpoint' or 'taylor'"):
        ug.DPMSolverPP(2, solver_type="heun")


def test_progress_bar_is_optional():
    model = GM.model(ug.VP.linear(), "eps")
    try:
        import tqdm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"progress=True needs tqdm: pip install 'unigen\[progress\]'"):
            ug.sample(model, ug.DDIM(), steps=3, shape=(2, 2), progress=True)
    else:
        x, _ = ug.sample(model, ug.DDIM(), steps=3, shape=(2, 2), progress=True)
        assert torch.isfinite(x).all()
