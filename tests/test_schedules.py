import math

import pytest
import torch

import unigen as ug
from helpers import DDPM_BETAS, NAMES, PROCESSES

NAMED = ("uniform", "logsnr", "karras", "quadratic")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("schedule", NAMED)
def test_named_grids_are_valid(name, schedule):
    p = PROCESSES[name]
    kw = {"t_start": 0.95 * p.t_max} if math.isinf(float(p.log_snr(torch.tensor(p.t_max)))) else {}
    for steps in (1, 2, 7, 50):
        if steps == 1 and schedule in ("logsnr", "karras") and p.sigma(torch.tensor(ug.schedules.sample_range(p)[1])) == 0:
            continue
        ts = ug.make_grid(p, schedule, steps, **kw)
        assert ts.shape == (steps + 1,) and ts.dtype == torch.float64
        assert (ts[1:] < ts[:-1]).all()
        assert ts[0] <= p.t_max and ts[-1] >= p.t_min


def test_logsnr_grid_is_uniform_in_log_snr():
    p = ug.VP.linear()
    ts = ug.make_grid(p, "logsnr", 10)
    lam = p.log_snr(ts)
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, d.mean().expand(10), rtol=1e-9, atol=1e-9)
    assert ts[0] == 1.0 and ts[-1] == pytest.approx(1e-3)


def test_karras_grid_matches_edm_formula():
    p = ug.EDM(0.002, 80.0)
    n = 18
    ts = ug.make_grid(p, "karras", n, t_end=0.0)  # EDM: N levels then sigma_N = 0
    i = torch.arange(n, dtype=torch.float64)
    rho = 7.0
    ref = (80.0 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    torch.testing.assert_close(ts[:-1], ref, rtol=1e-12, atol=0)
    assert ts[-1] == 0.0
    # default EDM range ends at sigma_min
    ts = ug.make_grid(p, "karras", n)
    assert ts[-1] == pytest.approx(0.002) and ts[0] == 80.0


def test_quadratic_grid():
    p = ug.FlowMatching()
    ts = ug.make_grid(p, "quadratic", 4, t_start=1.0, t_end=0.0)
    torch.testing.assert_close(ts, torch.tensor([1.0, 9 / 16, 1 / 4, 1 / 16, 0.0]))


@pytest.mark.parametrize(
    "spacing, steps, idx",
    [
        ("leading", 10, [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("trailing", 10, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("linspace", 4, [999, 666, 333, 0]),
    ],
)
def test_diffusers_spacings(spacing, steps, idx):
    p = ug.VP.discrete(DDPM_BETAS)
    ts = ug.make_grid(p, spacing, steps)
    torch.testing.assert_close(p.timestep(ts[:-1]), torch.tensor(idx, dtype=torch.float64), rtol=0, atol=1e-9)
    assert ts[-1] == 0.0  # the final step lands on the clean point (set_alpha_to_one=True)
    # the discrete grid visits alpha_bar exactly at the model timesteps
    torch.testing.assert_close(p.alpha(ts[:-1]) ** 2, p.alphas_cumprod[idx], rtol=1e-12, atol=0)


def test_tensor_schedule_is_used_exactly():
    p = ug.VP.linear()
    ts = torch.tensor([0.9, 0.5, 0.3, 0.01])
    torch.testing.assert_close(ug.make_grid(p, ts), ts)


def test_schedule_errors():
    p = ug.VP.linear()
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        ug.make_grid(p, "logsnr", 0)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'; valid names are uniform, logsnr, karras"):
        ug.make_grid(p, "cosine", 10)
    with pytest.raises(ValueError, match="strictly decreasing .* an increase at index 1"):
        ug.make_grid(p, torch.tensor([0.9, 0.5, 0.6]))
    with pytest.raises(ValueError, match="a duplicated time at index 0"):
        ug.make_grid(p, torch.tensor([0.9, 0.9, 0.6]))
    with pytest.raises(ValueError, match="domain"):
        ug.make_grid(p, torch.tensor([1.5, 0.5]))
    with pytest.raises(ValueError, match="at least 2 times"):
        ug.make_grid(p, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="diffusers spacing for VP.discrete"):
        ug.make_grid(p, "trailing", 10)
    with pytest.raises(ValueError, match="t_start must exceed t_end"):
        ug.make_grid(p, "uniform", 10, t_start=0.2, t_end=0.5)
    with pytest.raises(ValueError, match="infinite at t_start=1"):
        ug.make_grid(ug.FlowMatching(), "logsnr", 10)
    with pytest.raises(ValueError, match="<= the 1000 training timesteps"):
        ug.make_grid(ug.VP.discrete(DDPM_BETAS), "leading", 2000)
    with pytest.raises(ValueError, match="disagrees with a schedule tensor"):
        ug.make_grid(p, torch.tensor([0.9, 0.1]), steps=5)


# ---- schedules as objects (one protocol) ---------------------------------------------------------
def test_every_name_is_a_schedule_object_with_one_protocol():
    from unigen.schedules import Schedule

    p = ug.VP.linear()
    for name, sched in ug.SCHEDULES.items():
        assert isinstance(sched, Schedule) and sched.name == name
        if sched.needs_model or name in ("leading", "trailing", "linspace"):
            continue
        torch.testing.assert_close(sched.times(p, 6), ug.make_grid(p, name, 6), rtol=0, atol=0)


def test_a_user_schedule_object_flows_through_sample():
    """A Schedule subclass (uniform in sigma) is accepted by make_grid and sample, with no registration."""
    from unigen.schedules import Schedule, check_grid

    class UniformSigma(Schedule):
        name = "uniform_sigma"

        def times(self, process, steps, t_start=None, t_end=None, **context):
            s = torch.linspace(0.99, 0.05, steps + 1, dtype=torch.float64)
            return check_grid(process.t_from_log_snr(torch.log((1 - s * s) / (s * s))), process)

    p = ug.VP.linear()
    ts = ug.make_grid(p, UniformSigma(), 5)
    torch.testing.assert_close(p.sigma(ts), torch.linspace(0.99, 0.05, 6, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    model = ug.Model(lambda z, t: 0.1 * z, p, "eps")
    x, info = ug.sample(model, "DDIM", steps=5, schedule=UniformSigma(), shape=(3, 2))
    torch.testing.assert_close(info.times, ts)


def test_schedule_errors_are_clear():
    from unigen.schedules import Karras, get_schedule, register_schedule

    with pytest.raises(ValueError, match="unknown schedule 'cosine'; valid names are uniform, logsnr"):
        get_schedule("cosine")
    with pytest.raises(ValueError, match="depends on the model: pass it to ug.sample"):
        ug.make_grid(ug.VP.linear(), "optimized", 5)
    with pytest.raises(ValueError, match="a schedule needs a new name, got 'karras'"):
        register_schedule(Karras())
    with pytest.raises(ValueError, match="rho must be a finite number > 0"):
        Karras(rho=0)
