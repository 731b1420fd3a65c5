"""The toy trainer: datasets, networks, fit (quality, divergence, bad data), save/load, metric."""

import math
import sys

import pytest
import torch

import unigen as ug
from helpers import require
from unigen import checkpoints, metrics, networks, toy_data
from unigen import train as T

N_EVAL = 2000


def sw(a, b):
    return metrics.sliced_wasserstein(a, b, n_projections=256, generator=torch.Generator().manual_seed(5))


# ---------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["eight_gaussians", "two_moons", "checkerboard", "swiss_roll"])
def test_toy_datasets(name):
    gen = toy_data.DATASETS[name]
    x = gen(5000, torch.Generator().manual_seed(0))
    assert x.shape == (5000, 2) and x.dtype == torch.get_default_dtype() and torch.isfinite(x).all()
    assert gen(7, torch.Generator().manual_seed(0), dtype=torch.float32).dtype == torch.float32
    assert torch.equal(x, gen(5000, torch.Generator().manual_seed(0)))  # reproducible
    std = x.std(0)
    assert float(x.mean(0).abs().max()) < 0.3 and bool(((std > 0.5) & (std < 1.5)).all()), (x.mean(0), std)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        gen(0)


def test_checkerboard_lies_on_dark_cells():
    x = toy_data.checkerboard(4000, torch.Generator().manual_seed(0))
    cells = torch.floor(x + 2.0).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all() and x.abs().max() <= 2.0


def test_digits_shape_and_range():
    require("sklearn")
    x = toy_data.digits()
    assert x.shape == (1797, 1, 8, 8) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert toy_data.digits(5, torch.Generator().manual_seed(0)).shape == (5, 1, 8, 8)


def test_digits_without_sklearn_says_what_to_install(monkeypatch):
    toy_data._digits_table.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'unigen\[data\]'"):
        toy_data.digits()
    toy_data._digits_table.cache_clear()


# ---------------------------------------------------------------------------------------
# training reaches the data
# ---------------------------------------------------------------------------------------
def _quality(model, data_fn, solver, steps):
    ref = data_fn(N_EVAL, torch.Generator().manual_seed(101))
    ref2 = data_fn(N_EVAL, torch.Generator().manual_seed(102))
    xs, _ = ug.sample(model, solver, steps=steps, shape=(N_EVAL, 2), generator=torch.Generator().manual_seed(103))
    # the best Gaussian: what a network that learned only the first two moments would give
    chol = torch.linalg.cholesky(torch.cov(ref2.T))
    gauss = ref2.mean(0) + torch.randn(N_EVAL, 2, generator=torch.Generator().manual_seed(104)) @ chol.T
    return sw(xs, ref), sw(ref2, ref), sw(gauss, ref)


@pytest.mark.parametrize(
    "dataset, process, parametrization, steps, solver, sample_steps",
    [
        ("eight_gaussians", ug.FlowMatching(), "velocity", 500, ug.Euler(), 50),
        ("two_moons", ug.VP.linear(), "eps", 700, ug.DPMSolverPP(2), 20),
    ],
    ids=["eight_gaussians-fm-velocity", "two_moons-vp-eps"],
)
def test_fit_reaches_the_data(dataset, process, parametrization, steps, solver, sample_steps):
    """Trained (float32, seed 0): sliced W2 to fresh data below 3x the data-vs-data noise floor
    (two independent samples of 2000) and below half the distance of the best Gaussian fit,
    which is about where an untrained network starts (its skip term is the Gaussian-optimal
    linear predictor). Measured (d / floor, d / Gaussian, d / untrained): eight_gaussians at 500
    steps 1.16, 0.36, 0.32 (1000 steps: 0.98, 0.30, 0.27); two_moons at 700 steps 1.60, 0.38, 0.20
    (1200 steps: 1.28, 0.30, 0.16)."""
    data_fn = toy_data.DATASETS[dataset]
    data = lambda n, g: data_fn(n, g, dtype=torch.float32)
    model = T.fit(data, process, parametrization, steps=steps, generator=torch.Generator().manual_seed(0))
    assert len(model.history) == steps and all(math.isfinite(v) for v in model.history)
    d, floor, gauss = _quality(model, data_fn, solver, sample_steps)
    untrained = T.fit(data, process, parametrization, steps=1, lr=1e-12, generator=torch.Generator().manual_seed(0))
    d0, _, _ = _quality(untrained, data_fn, solver, sample_steps)
    assert d < 3 * floor and d < 0.5 * gauss and d < 0.5 * d0, (d, floor, gauss, d0)


def test_fit_is_reproducible_and_options_run(capsys):
    kw = dict(steps=20, batch_size=64, generator=None)
    a = T.fit("eight_gaussians", ug.VP.linear(), "v", **kw)
    b = T.fit("eight_gaussians", ug.VP.linear(), "v", **kw)
    assert a.history == b.history
    c = T.fit(toy_data.eight_gaussians(500, torch.Generator().manual_seed(0)), ug.EDM(), "denoiser", steps=20,
              batch_size=64, ema=0.9, lr_schedule="constant", log_every=10, skip=False)
    assert "step     10" in capsys.readouterr().out
    x, info = ug.sample(c, ug.Heun(clock="sigma"), steps=5, shape=(8, 2))
    assert torch.isfinite(x).all() and info.nfe > 0
    seen = []
    T.fit("two_moons", ug.FlowMatching(), "velocity", steps=3, batch_size=16, callback=lambda k, v: seen.append(k))
    assert seen == [0, 1, 2]


def test_tiny_convnet_trains_on_images():
    g = torch.Generator().manual_seed(0)
    # two blurry "glyphs" in [-1, 1]
    base = torch.zeros(2, 1, 8, 8)
    base[0, 0, 2:6, 3:5] = 1.0
    base[1, 0, 3:5, 1:7] = 1.0
    data = (2 * base[torch.randint(0, 2, (256,), generator=g)] - 1 + 0.1 * torch.randn(256, 1, 8, 8, generator=g)).float()
    model = T.fit(data, ug.VP.linear(), "eps", steps=60, batch_size=32, lr=2e-3)
    assert isinstance(model.net.net, networks.TinyConvNet)
    h = model.history
    assert sum(h[-15:]) / 15 < 0.8 * sum(h[:15]) / 15
    x, _ = ug.sample(model, ug.DDIM(), steps=5, shape=(4, 1, 8, 8), dtype=torch.float32)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.slow
def test_fit_digits():
    """VP eps on scikit-learn's digits (1400 train / 397 held out), TinyConvNet, 400 steps of batch 32
    (~12 s on one core), DPM-Solver++(2) with 10 steps: sliced W2 to held-out digits 0.095 against
    a train-vs-test floor of 0.060, i.e. 1.59x (fit seeds 1, 2, 3: 1.73x, 1.72x, 1.69x; 600 steps
    of batch 64: 1.54x); untrained 0.74, 12x."""
    require("sklearn")
    data = toy_data.digits(dtype=torch.float32)
    perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(0))
    train, test = data[perm[:1400]], data[perm[1400:]]
    model = T.fit(train, ug.VP.linear(), "eps", steps=400, batch_size=32, generator=torch.Generator().manual_seed(0))
    xs, _ = ug.sample(model, ug.DPMSolverPP(2), steps=10, shape=(397, 1, 8, 8), dtype=torch.float32,
                      generator=torch.Generator().manual_seed(3))
    floor = sw(train[:397], test)
    assert sw(xs, test) < 2 * floor, (sw(xs, test), floor)


# ---------------------------------------------------------------------------------------
# divergence and bad data
# ---------------------------------------------------------------------------------------
class NaNAfter(torch.nn.Module):
    """A network that returns NaN from its k-th call on (0-based)."""

    def __init__(self, k):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.k, self.calls = k, 0
        self.event_shape = (2,)

    def forward(self, z, c):
        out = self.lin(z)
        self.calls += 1
        return out * float("nan") if self.calls > self.k else out


def test_nan_loss_names_the_step():
    with pytest.raises(FloatingPointError, match="loss became nan at step 3"):
        T.fit("eight_gaussians", ug.VP.linear(), steps=10, batch_size=8, net=NaNAfter(3).double())


def test_huge_learning_rate_diverges_with_step():
    data = toy_data.eight_gaussians(500, torch.Generator().manual_seed(0), dtype=torch.float32)
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at step \d+"):
        T.fit(data, ug.VP.linear(), steps=50, lr=1e10, grad_clip=None)


def test_bad_data_and_arguments():
    vp = ug.VP.linear()
    with pytest.raises(ValueError, match=r"data must have shape \[N, \*event\]"):
        T.fit(torch.randn(100), vp, steps=1)
    with pytest.raises(TypeError, match="data must be a floating tensor"):
        T.fit(torch.ones(10, 2, dtype=torch.long), vp, steps=1)
    bad = torch.randn(10, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"data contains 1 non-finite values \(first in sample 3\)"):
        T.fit(bad, vp, steps=1)
    with pytest.raises(ValueError, match=r"data samples have shape \(3,\) but the net expects event shape \(2,\)"):
        T.fit(torch.randn(10, 3), vp, steps=1, net=networks.MLP(2))
    with pytest.raises(ValueError, match="unknown dataset 'moons'; valid names are eight_gaussians"):
        T.fit("moons", vp, steps=1)
    with pytest.raises(ValueError, match="no default network for event shape"):
        T.fit(torch.randn(10, 2, 3), vp, steps=1)
    with pytest.raises(ValueError, match="data sampler data\\(n, generator\\) must return"):
        T.fit(lambda n, g: torch.randn(n), vp, steps=1)
    with pytest.raises(ValueError, match="unknown parametrization 'noise'"):
        T.fit("two_moons", vp, "noise", steps=1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        T.fit("two_moons", vp, steps=0)
    with pytest.raises(ValueError, match="unknown weighting"):
        T.fit("two_moons", vp, weighting="l2", steps=1)
    with pytest.raises(TypeError, match="process must be a unigen Process"):
        T.fit("two_moons", "vp", steps=1)


# ---------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "process, parametrization",
    [
        (ug.VP.linear(beta_min=0.2, beta_max=15.0), "eps"),
        (ug.VP.discrete(torch.linspace(1e-4, 0.02, 50)), "v"),
        (ug.EDM(sigma_data=0.7), "denoiser"),
        (ug.FlowMatching(), "velocity"),
        (ug.SubVP(), "score"),
    ],
    ids=["vp", "ddpm", "edm", "fm", "subvp"],
)
def test_save_load_round_trip(tmp_path, process, parametrization):
    model = T.fit("two_moons", process, parametrization, steps=5, batch_size=32, lr=1e-2)
    path = tmp_path / "model.pt"
    checkpoints.save(model, path)
    back = checkpoints.load(path)
    assert type(back.process) is type(process) and repr(back.process) == repr(process)
    assert back.parametrization == parametrization and back.history == model.history
    assert getattr(back.process, "sigma_data", None) == getattr(process, "sigma_data", None)
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    lo, hi = process.t_min, process.t_max
    t = lo + (hi - lo) * (0.01 + 0.98 * torch.rand(16, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        assert torch.equal(model(z, t).out, back(z, t).out)


def test_save_load_custom_process_and_net(tmp_path):
    aff = ug.Affine(alpha=lambda t: 1 - t, sigma=lambda t: t)
    net = networks.MLP(2, hidden=16, depth=1)
    model = T.fit("two_moons", aff, "velocity", steps=3, batch_size=16, net=net)
    path = tmp_path / "m.pt"
    checkpoints.save(model, path)
    with pytest.raises(ValueError, match="pass process= to load"):
        checkpoints.load(path)
    back = checkpoints.load(path, process=aff)
    z, t = torch.randn(4, 2), torch.full((4,), 0.3)
    with torch.no_grad():
        assert torch.equal(model(z, t).out, back(z, t).out)

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, z, c):
            return self.lin(z)

    m2 = T.fit("two_moons", ug.VP.linear(), steps=2, batch_size=8, net=Custom().double())
    checkpoints.save(m2, path)
    with pytest.raises(ValueError, match="custom network body; pass net="):
        checkpoints.load(path)
    back2 = checkpoints.load(path, net=Custom())
    with torch.no_grad():
        assert torch.equal(m2(z, t).out, back2(z, t).out)
    with pytest.raises(TypeError, match="save\\(\\) needs a model returned by fit"):
        checkpoints.save(ug.GaussianMixture(torch.zeros(1, 2), [1.0]).model(ug.VP.linear()), path)


def test_names_documented_under_train_are_still_there():
    """README and the tutorials reach these as unigen.train.<name>; they live in their own modules."""
    for name in ("eight_gaussians", "two_moons", "checkerboard", "swiss_roll", "digits", "DATASETS"):
        assert getattr(T, name) is getattr(toy_data, name)
    assert (T.MLP, T.TinyConvNet) == (networks.MLP, networks.TinyConvNet)
    assert (T.save, T.load) == (checkpoints.save, checkpoints.load)
    assert T.sliced_wasserstein is metrics.sliced_wasserstein


def test_checkpoint_written_before_the_process_registry_loads(tmp_path):
    """The "process" entry as the trainer wrote it before unigen.process.from_config existed
    (one float per field; VPDiscrete's betas as a list) still loads, into the same process."""
    betas = torch.linspace(1e-4, 0.02, 50, dtype=torch.float64)
    old_layout = [
        (ug.VP.linear(beta_min=0.2, beta_max=15.0), {"class": "VPLinear", "beta_min": 0.2, "beta_max": 15.0}),
        (ug.SubVP(), {"class": "SubVP", "beta_min": 0.1, "beta_max": 20.0}),
        (ug.VP.cosine(), {"class": "VPCosine", "s": 0.008}),
        (ug.VE(), {"class": "VE", "sigma_min": 0.01, "sigma_max": 50.0}),
        (ug.EDM(sigma_data=0.7), {"class": "EDM", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.7}),
        (ug.FlowMatching(), {"class": "FlowMatching"}),
        (ug.Cosine(), {"class": "Cosine"}),
        (ug.VP.discrete(betas, rescale_zero_terminal_snr=True),
         {"class": "VPDiscrete", "betas": betas.tolist(), "rescale_zero_terminal_snr": True}),
    ]
    model = T.fit("two_moons", ug.VP.linear(), "eps", steps=2, batch_size=8)
    path = tmp_path / "old.pt"
    checkpoints.save(model, path)
    payload = torch.load(path, weights_only=True)
    assert payload["process"] == {"class": "VPLinear", "beta_min": 0.1, "beta_max": 20.0}  # the layout is unchanged
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    for process, record in old_layout:
        payload["process"] = record
        torch.save(payload, path)
        back = checkpoints.load(path).process
        assert type(back) is type(process) and repr(back) == repr(process), record["class"]
        tt = process.t_min + (process.t_max - process.t_min) * t
        assert torch.equal(back.alpha(tt), process.alpha(tt)) and torch.equal(back.sigma(tt), process.sigma(tt))
    payload["process"] = {"class": "NotAProcess", "x": 1.0}
    torch.save(payload, path)
    with pytest.raises(ValueError, match="pass process= to load"):
        checkpoints.load(path)


# ---------------------------------------------------------------------------------------
# sliced Wasserstein
# ---------------------------------------------------------------------------------------
def test_sliced_wasserstein():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 4, generator=g)
    assert sw(a, a) == 0.0
    m = torch.tensor([1.0, -2.0, 0.5, 0.0])
    # a translation by m: every projection moves by theta.m, so SW^2 = E(theta.m)^2 = |m|^2/D
    got = metrics.sliced_wasserstein(a[:500], a[:500] + m, n_projections=10000, generator=torch.Generator().manual_seed(1))
    assert abs(got - float(m.norm()) / 2.0) < 0.03
    # unequal sizes use matched quantiles; still ~0 for two samples of one law
    b = torch.randn(1000, 4, generator=g)
    assert sw(a, b) < 0.1
    # and they agree with equal sizes where the quantile grid is the sorted sample itself
    assert abs(sw(a[:1000], b) - sw(b, a[:1000])) < 1e-12
    with pytest.raises(ValueError, match="same event size"):
        sw(a, torch.randn(10, 3))
