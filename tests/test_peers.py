"""benchmarks.peers: unigen reproduces diffusers / k-diffusion / flow_matching runs, and every
disagreement the benchmark reports is exactly the difference it names.

Each test skips where its peer is not installed at all (never with UNIGEN_REQUIRE_PEERS=1); an
installed peer that fails to load fails the test. Small sizes (n = 16, dim 2, float64).
"""

import itertools
import json
import math
import sys

import pytest
import torch

import unigen as ug
from helpers import peer_installed, require
from unigen.bench import gmm_problem

F64 = torch.float64
TOL = 1e-6

require("numpy")
# the benchmark under test and its peer loader: a broken import is a collection error, never a skip
from benchmarks import peer_samplers, peers  # noqa: E402


def _rel(a, b):
    return float((a - b).abs().max() / a.abs().max())


def _noise(pb, n=16, seed=1):
    return pb.noise(n, torch.Generator().manual_seed(seed))


def _need(module: str, load):
    """The peer's entry point from ``load()``; a skip only where the peer is not installed at all
    (helpers.require's rule, checked without importing: k_diffusion's package __init__ needs a
    training stack). An installed peer that ``load()`` cannot load fails the test."""
    if not peer_installed(module):
        require(module)  # skips (or fails under UNIGEN_REQUIRE_PEERS=1)
    obj, why = load()
    if obj is None:
        pytest.fail(f"{module} is installed but does not load: {why}", pytrace=False)
    return obj


def _kd():
    return _need("k_diffusion", peer_samplers.load_kdiffusion)


def _diffusers():
    return _need("diffusers", peer_samplers.load_diffusers)


def _ode_solver():
    return _need("flow_matching", peer_samplers.load_flow_matching)


def _peer(plist, sampler, grid_prefix=""):
    return next(p for p in plist if p.sampler == sampler and p.grid.startswith(grid_prefix))


# ---------------------------------------------------------------------------------------
# the claimed 1e-6 agreements: every peer with a unigen twin, on every problem it runs on
# ---------------------------------------------------------------------------------------
EXPECTED_DIFFERENT = {("ODESolver(midpoint)", "fm")}  # first-order final step (pinned below)


@pytest.mark.parametrize("library", ["diffusers", "k-diffusion", "flow_matching"])
def test_twins_agree(library):
    plist = {"diffusers": lambda: peers.diffusers_peers(_diffusers()),
             "k-diffusion": lambda: peers.kdiffusion_peers(_kd()),
             "flow_matching": lambda: peers.flow_matching_peers(_ode_solver())}[library]()
    checked = 0
    for kind in ("vp", "fm", "ddpm"):
        pb = gmm_problem(2, kind)
        z = _noise(pb)
        for p in plist:
            if p.twin is None or not p.applies(pb) or (p.sampler, kind) in EXPECTED_DIFFERENT:
                continue
            run = p.run(pb, z, None if p.budgets == () else 6, 7)
            assert run.nfe == (p.nfe_of(6) if p.budgets != () else run.nfe) and run.nfe > 0
            assert torch.isfinite(run.x).all()
            rel = _rel(run.x, p.twin(pb, run, 7))
            assert rel <= TOL, f"{p.library} {p.sampler} on {kind} ({p.grid}): {rel:.2e}"
            checked += 1
    assert checked >= {"diffusers": 10, "k-diffusion": 15, "flow_matching": 4}[library]


# ---------------------------------------------------------------------------------------
# diffusers: the stated differences
# ---------------------------------------------------------------------------------------
def test_diffusers_float32_table_is_why_the_table_is_rebuilt():
    D = _diffusers()
    s = D.DDIMScheduler()
    ref = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    err = float(((s.alphas_cumprod.to(F64) - ref) / ref).abs().max())
    assert 1e-8 < err < 1e-4  # diffusers' float32 cumprod
    peers.float64_table(s)
    torch.testing.assert_close(s.alphas_cumprod, gmm_problem(2, "ddpm").process.alphas_cumprod, rtol=1e-14, atol=0)


class _NoFloat32:
    """The torch module as seen by a diffusers scheduler module, with float32 meaning float64."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.mark.parametrize("case", ["pp2", "pp3", "dpm2", "euler", "flowmatch"])
def test_float32_state_is_the_whole_gap(case, monkeypatch):
    """DPMSolverMultistep, EulerDiscrete and FlowMatchEuler round their state to float32 in step();
    with float32 meaning float64 in the scheduler's module they agree with unigen to rounding."""
    D = _diffusers()
    kind, cls, run_fn, solver = {
        "pp2": ("ddpm", D.DPMSolverMultistepScheduler, lambda c: peers.diffusers_run(c, {}), lambda: ug.DPMSolverPP(2)),
        "pp3": ("ddpm", D.DPMSolverMultistepScheduler, lambda c: peers.diffusers_run(c, {"solver_order": 3}),
                lambda: ug.DPMSolverPP(3, match_reference_3m=True)),
        "dpm2": ("ddpm", D.DPMSolverMultistepScheduler,
                 lambda c: peers.diffusers_run(c, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
                 lambda: ug.DPMSolver(2)),
        "euler": ("ddpm", D.EulerDiscreteScheduler, lambda c: peers.diffusers_run(c, {}, "sigmas", True),
                  lambda: ug.Euler(clock="sigma")),
        "flowmatch": ("fm", D.FlowMatchEulerDiscreteScheduler, peers.flowmatch_run, ug.DDIM),
    }[case]
    pb = gmm_problem(2, kind)
    z = _noise(pb, n=64)
    run = run_fn(cls)(pb, z, 30, 0)
    twin = ug.sample(pb.model, solver(), schedule=run.ts, noise=z)[0]
    rel32 = _rel(run.x, twin)
    assert 1e-9 < rel32 < 2e-5  # float32 rounding of the state, nothing algorithmic
    monkeypatch.setattr(sys.modules[cls.__module__], "torch", _NoFloat32())
    rel64 = _rel(run_fn(cls)(pb, z, 30, 0).x, twin)
    # what remains: Euler/FlowMatch keep float32 sigmas / timesteps (numpy) in set_timesteps
    assert rel64 < (1e-11 if cls is D.DPMSolverMultistepScheduler else min(1e-7, rel32 / 5))


def test_unipc3_gap_is_lower_order_final_at_every_step_count():
    D = _diffusers()
    pb = gmm_problem(2, "ddpm")
    z = _noise(pb)
    run = peers.diffusers_run(D.UniPCMultistepScheduler, {"solver_order": 3})(pb, z, 20, 0)
    assert _rel(run.x, ug.sample(pb.model, ug.UniPC(3), schedule=run.ts, noise=z)[0]) > 1e-3
    # diffusers lowers the order at the end at every step count: min(p, i + 1, n - i)
    assert _rel(run.x, ug.sample(pb.model, ug.UniPC(3, lower_order_final="always"), schedule=run.ts, noise=z)[0]) <= TOL
    short = peers.diffusers_run(D.UniPCMultistepScheduler, {"solver_order": 3})(pb, z, 12, 0)  # < 15: same rule
    assert _rel(short.x, ug.sample(pb.model, ug.UniPC(3), schedule=short.ts, noise=z)[0]) <= TOL


def _lam(proc, t):
    a, s = float(proc.alpha(torch.tensor([t], dtype=F64))), float(proc.sigma(torch.tensor([t], dtype=F64)))
    return a, s, (math.inf if s == 0.0 else math.log(a / s))


def _x0(pb, z, t):
    return pb.model.predict(z, torch.full((z.shape[0],), float(t), dtype=F64)).x0


def _dpmpp1(pb, z, s, t):
    """DPM-Solver++ first order (DDIM): z_t = (sigma_t/sigma_s) z - alpha_t (e^-h - 1) x0_s."""
    _, s_s, l_s = _lam(pb.process, s)
    a_t, s_t, l_t = _lam(pb.process, t)
    return (s_t / s_s) * z - a_t * math.expm1(-(l_t - l_s)) * _x0(pb, z, s)


def _dpmpp_2s(pb, z, s, u, t):
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1) with the stage at u, r = (lam_u - lam_s)/h."""
    _, s_s, l_s = _lam(pb.process, s)
    a_t, s_t, l_t = _lam(pb.process, t)
    r = (_lam(pb.process, u)[2] - l_s) / (l_t - l_s)
    m_s, m_u = _x0(pb, z, s), _x0(pb, _dpmpp1(pb, z, s, u), u)
    return (s_t / s_s) * z - a_t * math.expm1(-(l_t - l_s)) * ((1 - 0.5 / r) * m_s + 0.5 / r * m_u)


def test_dpmsolver_singlestep_gap_is_the_stage_placement():
    D = _diffusers()
    pb = gmm_problem(2, "ddpm")
    proc, z = pb.process, _noise(pb)
    run = peers.diffusers_run(D.DPMSolverSinglestepScheduler, {})(pb, z, 6, 0)
    ts = [float(t) for t in run.ts]
    assert run.nfe == 6 and len(ts) == 7 and ts[-1] == 0.0
    # diffusers' orders for 6 steps: [1, 2, 1, 2, 1, 1]: 2S steps with the stage on the grid
    x = _dpmpp_2s(pb, z, ts[0], ts[1], ts[2])
    x = _dpmpp_2s(pb, x, ts[2], ts[3], ts[4])
    x = _dpmpp1(pb, _dpmpp1(pb, x, ts[4], ts[5]), ts[5], ts[6])
    assert _rel(run.x, x) <= TOL
    r = (_lam(proc, ts[1])[2] - _lam(proc, ts[0])[2]) / (_lam(proc, ts[2])[2] - _lam(proc, ts[0])[2])
    assert abs(r - 0.5) > 0.05  # the grid stage is not the log-SNR midpoint
    # unigen's 2S is the same formula with the stage at the log-SNR midpoint
    s, t = ts[0], ts[2]
    mid = float(proc.t_from_log_snr(0.5 * (proc.log_snr(torch.tensor(s, dtype=F64)) + proc.log_snr(torch.tensor(t, dtype=F64)))))
    solver = ug.DPMSolverPP(2, multistep=False, lower_order_final=False)
    y = ug.sample(pb.model, solver, schedule=torch.tensor([s, t], dtype=F64), noise=z)[0]
    assert _rel(y, _dpmpp_2s(pb, z, s, mid, t)) <= 1e-10


# ---------------------------------------------------------------------------------------
# k-diffusion: the stated differences
# ---------------------------------------------------------------------------------------
def _kd_setup(K, kind="vp", steps=6):
    pb = gmm_problem(2, kind)
    proc, z = pb.process, _noise(pb)
    sig = peers.kd_sigmas(K, pb, "karras", steps)
    ts = torch.cat([proc.t_from_log_snr(-2.0 * torch.log(sig[:-1])).clamp(proc.t_min, proc.t_max), torch.zeros(1, dtype=F64)])
    D = ug.interop.to_kdiffusion_denoiser(pb.model)
    return pb, z, sig, ts, D, z / float(proc.alpha(ts[:1]))


def _two_stage(D, x, sigmas, mid):
    """Euler in sigma to the stage level mid(s, s'), then the full step with the stage's slope
    (the last step, onto sigma = 0, plain Euler)."""
    ones = x.new_ones(x.shape[0])
    for s, sn in itertools.pairwise(sigmas):
        d = (x - D(x, s * ones)) / s
        if float(sn) == 0.0:
            x = x + d * (sn - s)
            continue
        sm = mid(s, sn)
        x2 = x + d * (sm - s)
        x = x + (x2 - D(x2, sm * ones)) / sm * (sn - s)
    return x


def test_dpm2_gap_is_the_stage_level():
    K = _kd()
    pb, z, sig, ts, D, x0 = _kd_setup(K)
    x = K.sample_dpm_2(D, x0, sig, disable=True)
    assert _rel(x, _two_stage(D, x0, sig, lambda a, b: (a * b).sqrt())) <= 1e-12
    y = ug.sample(pb.model, ug.Midpoint(clock="sigma"), schedule=ts, noise=z)[0]
    assert _rel(y, _two_stage(D, x0, sig, lambda a, b: 0.5 * (a + b))) <= 1e-10
    assert _rel(x, y) > 1e-3


def test_lms_order1_is_euler_sigma():
    K = _kd()
    pb, z, sig, ts, D, x0 = _kd_setup(K)
    y = ug.sample(pb.model, ug.Euler(clock="sigma"), schedule=ts, noise=z)[0]
    assert _rel(K.sample_lms(D, x0, sig, disable=True, order=1), y) <= 1e-10
    assert _rel(K.sample_lms(D, x0, sig, disable=True), y) > 1e-3  # order 4: a different method


@pytest.mark.parametrize("name", ["sample_dpmpp_2s_ancestral", "sample_dpmpp_sde"])
def test_stochastic_2s_at_eta0_is_singlestep_dpmpp2(name):
    K = _kd()
    pb, z, sig, ts, D, x0 = _kd_setup(K, "ddpm")
    x = getattr(K, name)(D, x0, sig, disable=True, eta=0.0, noise_sampler=lambda a, b: torch.zeros_like(x0))
    y, info = ug.sample(pb.model, ug.DPMSolverPP(2, multistep=False), schedule=ts, noise=z)
    assert _rel(x, y) <= TOL and info.nfe == 2 * 6 - 1


def test_3m_sde_at_eta0_is_reference_3m_coefficient():
    K = _kd()
    pb, z, sig, ts, D, x0 = _kd_setup(K, "vp", steps=10)
    x = K.sample_dpmpp_3m_sde(D, x0, sig, disable=True, eta=0.0)
    kw = {"solver_type": "taylor", "lower_order_final": False}
    ref = ug.sample(pb.model, ug.DPMSolverPP(3, match_reference_3m=True, **kw), schedule=ts, noise=z)[0]
    ours = ug.sample(pb.model, ug.DPMSolverPP(3, match_reference_3m=False, **kw), schedule=ts, noise=z)[0]
    default = ug.sample(pb.model, ug.DPMSolverPP(3, **kw), schedule=ts, noise=z)[0]
    assert _rel(x, ref) <= TOL
    assert _rel(x, ours) > 1e-4  # the corrected 2 psi_3 coefficient (third order) differs
    assert _rel(x, default) <= TOL  # DPMSolverPP(3)'s default is the published one (measured at low NFE)


def test_2m_sde_shares_draws_with_unigen():
    K = _kd()
    pb, z, sig, ts, D, x0 = _kd_setup(K, "fm")
    x = K.sample_dpmpp_2m_sde(D, x0, sig, disable=True, noise_sampler=peers._iid_noise_sampler(x0, 3))
    gen = torch.Generator().manual_seed(3)
    y = ug.sample(pb.model, ug.SDEDPMSolverPP(2, eta=1.0, lower_order_final=False), schedule=ts, noise=z, generator=gen)[0]
    assert _rel(x, y) <= 1e-10
    other = peers._iid_noise_sampler(x0, 4)
    assert _rel(x, K.sample_dpmpp_2m_sde(D, x0, sig, disable=True, noise_sampler=other)) > 1e-2  # draws matter


# ---------------------------------------------------------------------------------------
# flow_matching: the stated difference (the step onto sigma = 0)
# ---------------------------------------------------------------------------------------
def test_flow_matching_midpoint_gap_is_the_final_step():
    S = _ode_solver()
    pb = gmm_problem(2, "fm")
    z = _noise(pb)
    p = _peer(peers.flow_matching_peers(S), "ODESolver(midpoint)")
    run = p.run(pb, z, 6, 0)
    ts = run.ts
    assert float(ts[-1]) == 0.0 and run.nfe == 12
    y, info = ug.sample(pb.model, ug.Midpoint(), schedule=ts, noise=z)
    assert info.nfe == 2 * 5 + 1 and _rel(run.x, y) > 1e-3
    u = lambda x, t: -pb.model.predict(x, (1.0 - t).expand(x.shape[0])).velocity
    x_short = S(velocity_model=u).sample(x_init=z, step_size=None, method="midpoint", time_grid=1.0 - ts[:-1])
    y_short = ug.sample(pb.model, ug.Midpoint(), schedule=ts[:-1], noise=z)[0]
    assert _rel(x_short, y_short) <= 1e-12
    assert _rel(y, _x0(pb, x_short, ts[-2])) <= 1e-12  # unigen's last step: the jump to x0_hat


# ---------------------------------------------------------------------------------------
# the script: reference route, best_peer, --quick
# ---------------------------------------------------------------------------------------
def test_reference_through_flow_matching_view():
    pb = gmm_problem(2, "vp")
    z = _noise(pb, n=8)
    got = peers.reference(pb, z, 1.0, 0.05)
    torch.testing.assert_close(got, pb.reference(z, 1.0, 0.05)[0], rtol=0, atol=1e-8)
    assert peers.reference(pb, z, 1.0, 0.05) is got  # cached


def test_best_peer_picks_lowest_deterministic_rmse():
    rec = lambda prob, lib, s, b, rmse, sto=False: {"problem": prob, "library": lib, "sampler": s, "grid": "g",
                                                    "steps": b, "nfe": b, "budget": b, "rmse": rmse, "stochastic": sto}
    records = [rec("p", "a", "x", 10, 0.3), rec("p", "b", "y", 10, 0.1), rec("p", "c", "z", 10, 0.01, True),
               rec("p", "d", "w", 20, 0.05), rec("p", "e", "v", 10, None), rec("q", "a", "x", 10, math.inf),
               rec("q", "b", "y", 10, 0.2)]
    best = peers.best_peer(records, 10)
    assert best == {"p": {"library": "b", "sampler": "y", "grid": "g", "steps": 10, "nfe": 10, "rmse": 0.1},
                    "q": {"library": "b", "sampler": "y", "grid": "g", "steps": 10, "nfe": 10, "rmse": 0.2}}
    assert peers.best_peer(records, 20)["p"]["rmse"] == 0.05


def test_quick_writes_json(tmp_path):
    _ode_solver()
    out = tmp_path / "peers_quick.json"
    assert peers.main(["--quick", "--processes", "fm", "--n", "24", "--budgets", "10", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    recs = data["records"]
    assert recs and {r["problem"] for r in recs} == {"gmm2-fm"}
    assert not [r for r in recs if str(r["note"]).startswith(("UNEXPLAINED", "error"))]
    assert data["best_peer"]["gmm2-fm"]["10"]["nfe"] <= 10 and data["meta"]["dtype"] == "float64"
