"""Solvers as data: the program a solver builds, the executor that runs it, the caches around it.

Independent references: the paper's closed-form coefficients computed here from the process's
alpha and sigma, central finite differences for gradients, and hand-written programs.
"""

import math

import pytest
import torch

import unigen as ug
from unigen.solvers import XI, FixedProgram, Grid, H, Lin, Q, Stage, Step, Z, multistep_order
from unigen.sample import prepared_grid
from unigen.solvers.executor import compile_program, conversion

from helpers import mixture

GM = mixture(dim=2, k=3, seed=4)


def grid(process, times):
    return Grid(process, torch.tensor(times, dtype=torch.float64), torch.float64, "cpu")


def test_dpmsolverpp_2m_program_has_the_papers_coefficients():
    """Lu et al. 2022b, eq. for 2M: z_t = (s_t/s_s) z - a_t (e^-h - 1) [(1 + 1/(2r)) x0_0 - x0_-1/(2r)]."""
    p = ug.VP.linear()
    times = [1.0, 0.6, 0.3, 0.05]
    program = ug.DPMSolverPP(2).program(grid(p, times))
    a = [float(p.alpha(torch.tensor(t))) for t in times]
    s = [float(p.sigma(torch.tensor(t))) for t in times]
    lam = [math.log(x / y) for x, y in zip(a, s)]
    step = program.steps[1]
    h, h_prev = lam[2] - lam[1], lam[1] - lam[0]
    r = h_prev / h
    c = -a[2] * math.expm1(-h)
    assert step.update.terms["z"] == pytest.approx(s[2] / s[1], rel=1e-14)
    assert step.update.terms[("q", 0, "x0")] == pytest.approx(c * (1 + 1 / (2 * r)), rel=1e-13)
    assert step.update.terms[("h", 0)] == pytest.approx(-c / (2 * r), rel=1e-13)
    assert [len(st.stages) for st in program.steps] == [1, 1, 1] and program.nfe == 3
    text = str(program)
    assert "DPMSolverPP(2M)" in text and "x0[0]" in text and "H[0]" in text and f"{s[2] / s[1]:.6g}" in text


def test_unipc_program_reuses_the_corrector_evaluation():
    """UniPC evaluates at the predicted point of step i, t_{i+1}, and reads it back as H[0] in step i+1."""
    program = ug.UniPC(2).program(grid(ug.VP.linear(), [1.0, 0.6, 0.3, 0.05]))
    times = [[round(st.node.time, 12) for st in step.stages] for step in program.steps]
    assert times == [[1.0, 0.6], [0.3], []]  # the last step has no corrector: no call
    assert ("h", 0) in program.steps[2].update.terms and program.nfe == 3


def test_program_is_differentiable_in_its_coefficients():
    """d x / d c by the executor's autograd equals a central finite difference of the same run."""
    model = GM.model(ug.VP.linear(), "eps")
    g = grid(ug.VP.linear(), [1.0, 0.5, 0.2, 0.02])
    program = ug.DPMSolverPP(2).program(g)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    base = program.coefficients()

    def run(values, grad=False):
        solver = FixedProgram(program.with_coefficients(values), g.times, order=2)
        return ug.sample(model, solver, schedule=torch.tensor(g.times), noise=z, grad=grad)[0]

    ref = ug.sample(model, ug.DPMSolverPP(2), schedule=torch.tensor(g.times), noise=z)[0]
    torch.testing.assert_close(run(base), ref, rtol=1e-14, atol=1e-14)
    params = [torch.tensor(v, requires_grad=True) for v in base]
    run(params, grad=True).sum().backward()
    for j in range(len(base)):
        eps = 1e-6 * max(1.0, abs(base[j]))
        up, down = list(base), list(base)
        up[j] += eps
        down[j] -= eps
        fd = float((run(up).sum() - run(down).sum()) / (2 * eps))
        grad = 0.0 if params[j].grad is None else float(params[j].grad)  # None: never read (the last store)
        assert grad == pytest.approx(fd, rel=1e-6, abs=1e-8), j


def test_with_coefficients_checks_the_count():
    program = ug.DDIM().program(grid(ug.VP.linear(), [1.0, 0.5, 0.1]))
    with pytest.raises(ValueError, match="expected 6 coefficients"):
        program.with_coefficients([1.0])


def test_hand_written_program_runs_and_counts_its_calls():
    """A two-step program written by hand (DDIM, then a stochastic DDPM-like step) through the executor."""
    p = ug.VP.linear()
    g = grid(p, [0.8, 0.4, 0.1])
    model = GM.model(p, "eps")
    a, s = g.alpha, g.sigma
    steps = (
        Step((Stage(g.node(0), Z),), a[1] * Q(0, "x0") + s[1] * Q(0, "eps"), store=(Q(0, "eps"),)),
        Step((Stage(g.node(1), Z),), a[2] * Q(0, "x0") + 0.5 * s[2] * (Q(0, "eps") + H(0)) + 0.0 * XI(0)),
    )
    solver = FixedProgram(ug.solvers.Program(steps, "hand"), g.times)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    x, info = ug.sample(model, solver, schedule=torch.tensor(g.times), noise=z)
    assert info.nfe == 2
    # the same two steps by hand through the model
    t = lambda v: torch.full((4,), v, dtype=torch.float64)  # noqa: E731
    p0 = model.predict(z, t(g.times[0]))
    z1 = a[1] * p0.x0 + s[1] * p0.eps
    p1 = model.predict(z1, t(g.times[1]))
    torch.testing.assert_close(x, a[2] * p1.x0 + 0.5 * s[2] * (p1.eps + p0.eps), rtol=1e-13, atol=1e-13)


def test_programs_that_read_what_does_not_exist_are_refused():
    g = grid(ug.VP.linear(), [0.8, 0.4])
    with pytest.raises(ValueError, match="not evaluated before it"):
        Step((Stage(g.node(0), Q(0, "x0")),), Z)
    with pytest.raises(ValueError, match="does not have"):
        Step((), Q(0, "x0"))
    bad = ug.solvers.Program((Step((Stage(g.node(0), Z),), H(0)),), "bad")
    with pytest.raises(ValueError, match=r"reads H\[0\] but only 0 quantities were stored"):
        compile_program(bad, "eps", torch.float64, "cpu")


def test_lin_is_an_immutable_linear_combination():
    a = 2.0 * Z - Q(0, "x0") / 4.0 + H(1)
    assert a.terms == {"z": 2.0, ("q", 0, "x0"): -0.25, ("h", 1): 1.0}
    assert (a - a).terms == {} and repr(a - a) == "0"
    assert (0.0 * XI(0)).terms == {}
    with pytest.raises(AttributeError):
        a.terms = {}
    with pytest.raises(TypeError):
        Z * Z
    node = grid(ug.VP.linear(), [0.5, 0.1]).node(0)
    with pytest.raises(AttributeError):
        node.alpha = 2.0


@pytest.mark.parametrize("src,dst", [("eps", "x0"), ("v", "eps"), ("velocity", "x0"), ("x0", "score"), ("denoiser", "velocity")])
def test_conversion_coefficients_match_convert(src, dst):
    p = ug.VP.cosine()
    node = grid(p, [0.7, 0.2]).node(0)
    z, out = torch.randn(3, 2), torch.randn(3, 2)
    cz, co = conversion(node, src, dst)
    torch.testing.assert_close(cz * z + co * out, ug.convert(out, z, torch.tensor(0.7), p, src, dst), rtol=1e-13, atol=1e-13)


def test_conversion_refuses_a_singular_read():
    node = grid(ug.FlowMatching(), [1.0, 0.5]).node(0)  # alpha = 0
    assert conversion(node, "velocity", "x0") == pytest.approx((1.0, -1.0))
    with pytest.raises(ug.SingularConversionError, match="does not determine 'x0'"):
        conversion(node, "eps", "x0")


def test_multistep_order_is_the_one_warmup_policy():
    g = grid(ug.VP.linear(), [1.0, 0.8, 0.6, 0.4, 0.2, 0.1])  # 5 steps < 15
    assert [multistep_order(g, i, 3, True) for i in range(5)] == [1, 2, 3, 2, 1]
    assert [multistep_order(g, i, 3, False) for i in range(5)] == [1, 2, 3, 3, 3]
    fm = grid(ug.FlowMatching(), [1.0, 0.8, 0.6, 0.4, 0.2, 0.1])  # lambda_0 = -inf is never a node
    assert [multistep_order(fm, i, 3, False) for i in range(5)] == [1, 1, 2, 3, 3]
    long = grid(ug.VP.linear(), torch.linspace(1, 0.01, 21).tolist())
    assert multistep_order(long, 19, 3, True) == 3 and multistep_order(long, 19, 3, "always") == 1
    with pytest.raises(ValueError, match="lower_order_final must be True, False or 'always'"):
        ug.UniPC(2, lower_order_final="yes")


def test_plans_are_cached_by_value_not_by_object_or_repr():
    """Equal configurations share a plan; a private coefficient change gets its own (no stale plan)."""
    g = grid(ug.VP.linear(), [1.0, 0.6, 0.3, 0.1, 0.05])
    a, b = (ug.DPMSolverPP(3, lower_order_final=False, match_reference_3m=False) for _ in range(2))
    assert a.plan(g, "eps") is b.plan(g, "eps")
    b._d2 = 1.0  # the published 3M coefficient, set behind the constructor's back
    assert repr(a) == repr(b) and a.plan(g, "eps") is not b.plan(g, "eps")
    model = GM.model(ug.VP.linear(), "eps")
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    xa = ug.sample(model, a, schedule=torch.tensor(g.times), noise=z)[0]
    xb = ug.sample(model, b, schedule=torch.tensor(g.times), noise=z)[0]
    xref = ug.sample(model, ug.DPMSolverPP(3, match_reference_3m=True, lower_order_final=False), schedule=torch.tensor(g.times), noise=z)[0]
    assert not torch.allclose(xa, xb) and torch.equal(xb, xref)


def test_equal_processes_share_grids_and_a_new_model_object_is_a_cache_hit():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    one, two, other = ug.VP.discrete(betas), ug.VP.discrete(betas.clone()), ug.VP.discrete(betas * 1.01)
    assert one.value_key() == two.value_key() and one.value_key() != other.value_key()
    ts = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    m1, m2, m3 = (GM.model(p, "eps") for p in (one, two, other))
    g1 = prepared_grid(m1, ug.DDIM(), ts, torch.float64, torch.device("cpu"))
    assert prepared_grid(m2, ug.DDIM(), ts, torch.float64, torch.device("cpu")) is g1
    assert prepared_grid(m3, ug.DDIM(), ts, torch.float64, torch.device("cpu")) is not g1
    affine = ug.process.Affine(alpha=lambda t: 1 - t, sigma=lambda t: t)  # no config: the object is its key
    assert affine.value_key() is affine


# ---- found by review: shared grids, redefined classes, singular starts, bad programs ------------------
def test_a_shared_grid_still_checks_each_models_start():
    """A transferred model whose source is singular at the start is refused even after a plain model of
    the same process and output type has used the same (cached, value-keyed) grid."""
    gm = ug.analytic.ring_mixture()
    good = gm.model(ug.FlowMatching(), "velocity")
    bad = gm.model(ug.FlowMatching(), "eps").to(parametrization="velocity")
    ts = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    ug.sample(good, "Euler", schedule=ts, shape=(2, 2))
    with pytest.raises(ug.SingularConversionError, match="reads a eps-model"):
        ug.sample(bad, "Euler", schedule=ts, shape=(2, 2))


def test_a_redefined_process_class_does_not_reuse_the_old_grids():
    def make(power):
        class MyVE(ug.process.Affine):
            configurable = True

            def __init__(self):
                super().__init__(alpha=lambda t: torch.ones_like(t), sigma=lambda t: 0.01 + 10 * t**power, t_min=0.0, t_max=1.0)

        return MyVE()

    one, two = make(1), make(2)
    assert one.value_key() != two.value_key()


def test_singlestep_warmup_out_of_pure_noise_takes_a_first_order_step():
    gm = ug.analytic.ring_mixture()
    m = gm.model(ug.FlowMatching(), "velocity")
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, info = ug.sample(m, ug.DPMSolverPP(3, warmup="singlestep"), steps=20, noise=z)
    ref, _ = ug.sample(m, ug.DPMSolverPP(3), steps=20, noise=z)
    assert torch.isfinite(x).all() and info.nfe == 20
    assert float((x - ref).abs().max()) < 1e-2  # both third order; the warm-up differs only in its first steps


def test_times_object_and_explicit_grids_with_a_range_are_handled():
    from unigen.schedules import Times

    m = ug.analytic.ring_mixture().model(ug.VP.linear(), "eps")
    ts = torch.linspace(0.9, 0.1, 11, dtype=torch.float64)
    z = torch.randn(4, 2, dtype=torch.float64)
    a, info = ug.sample(m, "DDIM", schedule=Times(ts), noise=z)
    b, _ = ug.sample(m, "DDIM", schedule=ts, noise=z)
    assert info.nfe == 10 and torch.equal(a, b)
    with pytest.raises(ValueError, match="t_start/t_end apply to a named schedule"):
        ug.sample(m, "DDIM", schedule=ts, noise=z, t_start=0.5)


def test_compiled_sampler_counts_the_real_grids_calls():
    m = ug.analytic.ring_mixture().model(ug.FlowMatching(), "velocity")
    s = ug.DPMSolver(3, warmup="singlestep")
    cs = ug.compiled_sampler(m, s, steps=10, shape=(4, 2), mode="eager", dtype=torch.float64)
    _, info = ug.sample(m, s, steps=10, shape=(4, 2), dtype=torch.float64)
    assert cs.nfe == info.nfe == 10


def test_program_building_blocks_refuse_bad_input():
    g = grid(ug.VP.linear(), [0.8, 0.4])
    with pytest.raises(ValueError, match="indices >= 0"):
        XI(-1)
    with pytest.raises(ValueError, match="indices >= 0"):
        H(-1)
    with pytest.raises(ValueError, match="unknown quantity 'foo'"):
        Q(0, "foo")
    with pytest.raises(ValueError, match="must be finite"):
        Lin({"z": float("nan")})
    with pytest.raises(ValueError, match="unknown symbol"):
        Lin({"w": 1.0})
    with pytest.raises(TypeError, match="store must be a tuple of Lin"):
        Step((Stage(g.node(0), Z),), Q(0, "x0"), store=Q(0, "x0"))
    with pytest.raises(TypeError, match="stages must be a tuple of Stage"):
        Step((Z,), Z)
    with pytest.raises(TypeError, match="update must be a Lin"):
        Step((), 1.0)
    with pytest.raises(TypeError, match="node must be a Node"):
        Stage(0.5, Z)
    program = ug.DDIM().program(g)
    with pytest.raises(ValueError, match="must be 0-dim"):
        program.with_coefficients([torch.ones(2)] * len(program.coefficients()))


def test_register_parametrization_checks_its_row():
    from unigen.parametrization import register_parametrization

    with pytest.raises(ValueError, match="must map c .* to a pair of numbers"):
        register_parametrization("not_a_pair", lambda c: 1.0)
    with pytest.raises(ValueError, match="invariant to scaling"):
        register_parametrization("v_in_ve", lambda c: (-c.sigma, c.alpha), inputs="ve")
    with pytest.raises(ValueError, match="must map c"):
        register_parametrization("velocity_in_ve", lambda c: (c.d_alpha, c.d_sigma), inputs="ve")
    assert "not_a_pair" not in ug.PARAMETRIZATIONS and "v_in_ve" not in ug.PARAMETRIZATIONS


def test_solver_arguments_are_recorded_without_hashing_the_solver():
    """Solver.arguments() (what a scheduler config stores) needs no hash of the solver: subclasses
    that define __eq__ (so are unhashable) or are dataclasses construct and report their arguments."""
    class Scaled(ug.DDIM):
        def __init__(self, eta=0.0, gain=1.0):
            super().__init__(eta=eta)
            self.gain = gain

        def __eq__(self, other):
            return type(other) is type(self) and other.gain == self.gain

    s = Scaled(gain=2.0)
    assert s.arguments() == {"eta": 0.0, "gain": 2.0}
    assert ug.UniPC(3, lower_order_final="always").arguments()["order"] == 3  # the argument, not the attribute (4)
    assert type(s)(**s.arguments()) == s
