"""unigen.compile: the sampling loop compiled whole (torch.compile) or captured (CUDA graph).

The reference for every compiled run is the eager ``ug.sample`` with the same settings, in
float64. A custom dynamo backend counts the graphs it is handed: one graph per sampler
proves the loop has no graph break, and a model called from Python only while tracing
proves that later calls replay the graph without running the loop's Python.
"""

import pytest
import torch

import unigen as ug
from unigen.compile import compiled_sampler

FIXED_STEP = {
    "DDIM": ug.DDIM,
    "Euler": ug.Euler,
    "Heun": ug.Heun,
    "DPMSolverPP(2)": lambda: ug.DPMSolverPP(2),
    "UniPC(2)": lambda: ug.UniPC(2),
}
STEPS = 5
CUDA = torch.cuda.is_available()


class CountingBackend:
    """A torch.compile backend that records each FX graph, then runs it through aot_eager.

    Dynamo may trace a frame twice (a restart after specialising Python floats); only the
    last graph handed over is the one that runs.
    """

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    def model_calls(self) -> int:
        """Network evaluations (tanh nodes) in the graph that runs."""
        return sum(n.target in (torch.tanh, torch.ops.aten.tanh.default) for n in self.graphs[-1].graph.nodes)


def _net():
    def fn(z, t):
        return torch.tanh(z) * (0.5 + 0.25 * t)  # time-dependent, nonlinear: a wrong coefficient shows
    return fn


def _noise(shape=(6, 3), device="cpu", dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)


@pytest.mark.parametrize("name", list(FIXED_STEP))
def test_compiled_loop_is_one_graph_and_matches_eager(name):
    """fullgraph=True compiles the whole loop into ONE graph holding every model call; it equals
    eager ug.sample to 1e-12, also on new noise (the same graph, no retrace)."""
    model = ug.Model(_net(), ug.VP.linear(), "eps")
    z = _noise()
    ref, info = ug.sample(model, FIXED_STEP[name](), steps=STEPS, noise=z)
    backend = CountingBackend()
    run = compiled_sampler(model, FIXED_STEP[name](), STEPS, shape=z.shape, dtype=z.dtype, backend=backend)
    out = run(z)
    graphs = len(backend.graphs)
    assert backend.model_calls() == info.nfe == run.nfe  # one graph, every model call inside it
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    z2 = 2.0 * z
    out2 = run(z2)
    assert len(backend.graphs) == graphs
    torch.testing.assert_close(out2, ug.sample(model, FIXED_STEP[name](), steps=STEPS, noise=z2)[0], rtol=1e-12,
                               atol=1e-12)


def test_compiled_denoiser_grid_ending_at_zero():
    """EDM denoiser on a Karras grid to sigma = 0: the final step onto x0_hat is inside the graph too."""
    model = ug.Model(_net(), ug.EDM(), "denoiser")
    z = 80.0 * _noise()
    for solver in (ug.Heun(clock="sigma"), ug.DPMSolverPP(2)):
        ref = ug.sample(model, solver, steps=STEPS, schedule="karras", t_end=0.0, noise=z)[0]
        run = compiled_sampler(model, solver, STEPS, "karras", t_end=0.0, shape=z.shape, dtype=z.dtype,
                               backend="aot_eager")
        assert run.grid.ends_at_zero
        torch.testing.assert_close(run(z), ref, rtol=1e-12, atol=1e-12)


def test_host_sync_in_the_loop_is_a_compile_error():
    """The fullgraph check has teeth: a Python branch on a tensor value (a host sync) cannot compile."""
    def syncing(z, t):
        return z if t > 0.5 else -z  # bool(tensor): a device-to-host sync and a graph break

    model = ug.Model(syncing, ug.VP.linear(), "eps")
    run = compiled_sampler(model, "DDIM", STEPS, shape=(2, 2), dtype=torch.float64, backend="eager")
    with pytest.raises(Exception, match="(?i)graph break|unsupported|item|tensor"):
        run(_noise((2, 2)))


def test_eager_mode_is_ug_sample_bit_for_bit():
    model = ug.Model(_net(), ug.FlowMatching(), "velocity")
    z = _noise()
    run = compiled_sampler(model, "Heun", STEPS, shape=z.shape, dtype=z.dtype, mode="eager")
    ref, info = ug.sample(model, "Heun", steps=STEPS, noise=z)
    assert torch.equal(run(z), ref) and run.nfe == info.nfe


def test_argument_errors():
    model = ug.Model(_net(), ug.VP.linear(), "eps")
    with pytest.raises(ValueError, match="mode must be one of"):
        compiled_sampler(model, "DDIM", STEPS, shape=(2, 2), mode="jit")
    with pytest.raises(TypeError, match="apply to mode='compile' only"):
        compiled_sampler(model, "DDIM", STEPS, shape=(2, 2), mode="eager", backend="eager")
    run = compiled_sampler(model, "DDIM", STEPS, shape=(2, 2), dtype=torch.float64, mode="eager")
    with pytest.raises(ValueError, match="built for noise of shape"):
        run(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="adapts its steps on the host"):
        compiled_sampler(model, ug.Adaptive(), STEPS, shape=(2, 2))


@pytest.mark.skipif(CUDA, reason="checks the error raised without CUDA")
def test_cuda_graph_without_cuda_is_a_clear_error():
    model = ug.Model(_net(), ug.VP.linear(), "eps")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        compiled_sampler(model, "DDIM", STEPS, shape=(2, 2), mode="cuda_graph")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        compiled_sampler(model, "DDIM", STEPS, shape=(2, 2), mode="cuda_graph", device="cuda")


@pytest.mark.slow
def test_inductor_cpu_matches_eager_to_rounding():
    """Inductor (C++ codegen) reorders float operations: equal to rounding, not bit for bit."""
    model = ug.Model(_net(), ug.VP.linear(), "eps")
    z = _noise()
    run = compiled_sampler(model, ug.DPMSolverPP(2), STEPS, shape=z.shape, dtype=z.dtype)
    torch.testing.assert_close(run(z), ug.sample(model, ug.DPMSolverPP(2), steps=STEPS, noise=z)[0], rtol=1e-10,
                               atol=1e-10)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(FIXED_STEP))
def test_cuda_graph_matches_eager(name):
    """Captured once, replayed with new noise each call: equals eager ug.sample on the GPU."""
    model = ug.Model(_net(), ug.VP.linear(), "eps")
    run = compiled_sampler(model, FIXED_STEP[name](), STEPS, shape=(6, 3), dtype=torch.float64, device="cuda",
                           mode="cuda_graph")
    for seed in (0, 1):
        z = torch.randn(6, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).cuda()
        ref = ug.sample(model, FIXED_STEP[name](), steps=STEPS, noise=z)[0]
        out = run(z)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert out.data_ptr() != run._static_out.data_ptr()  # callers get a copy, not the static buffer


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_compiled_on_cuda_matches_eager():
    model = ug.Model(_net(), ug.VP.linear(), "eps")
    z = _noise(device="cuda")
    run = compiled_sampler(model, ug.UniPC(2), STEPS, shape=z.shape, dtype=z.dtype, device="cuda",
                           backend="aot_eager")
    torch.testing.assert_close(run(z), ug.sample(model, ug.UniPC(2), steps=STEPS, noise=z)[0], rtol=1e-12,
                               atol=1e-12)
