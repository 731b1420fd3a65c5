r"""Speed of unigen's sampling loop against k-diffusion and diffusers, eager, compiled and graphed.

One package, four sections (``--sections``; default all), one JSON (``benchmarks/results/speed.json``).
Run it as ``python -m benchmarks.speed`` from the repository root (``benchmarks/speed/__main__.py``).
Modules: ``common`` (device, models, timing), ``cases`` (one runner per library, the compared
configurations), one module per section (``overhead``, ``throughput``, ``compiled``,
``model_share``); the peers are imported by ``benchmarks.peer_samplers``.

1. ``overhead``: per-step solver overhead with a nearly free model, against the peers on the
   same grid (the headline: unigen's overhead <= 0.5x k-diffusion's and <= 0.2x diffusers'),
   and the setup a first call with a new model pays, against the peers' per-call setup.
2. ``throughput``: samples/s against batch size and data dimension, unigen vs the peers on the
   same algorithm (Euler, DDIM, DPM++(2M), Heun), with the trivial model and a small MLP.
3. ``compile``: the whole sampling loop under ``torch.compile`` (``unigen.compile``: one graph,
   no breaks, no host syncs) and, on CUDA, as one captured CUDA graph: per-step time eager vs
   compiled vs graphed.
4. ``model-fraction``: with a ~10M-parameter network, the share of sampling wall time spent in
   the network, per solver: what is left for solver overhead to waste.

Everything runs with ``torch.set_num_threads(1)`` (``--threads``) so numbers are stable and
comparable across machines with different core counts; ``--device cuda`` runs the CUDA paths
(CUDA graphs, ``reduce-overhead``), which are skipped on a CPU-only machine.

What is measured
----------------
Section 1 (overhead). A sampler's wall time with a nearly free model is the bookkeeping it
adds to every step: computing coefficients, converting parametrizations, indexing
schedules, allocating temporaries. Each case runs a full sampling loop (grid construction
included, as a user sees it) on float32 data of shape [batch, 2].

Two models:

* ``trivial``: ``out = 0.5 * z``, one elementwise multiply, so solver bookkeeping dominates;
* ``oracle``:  the exact 8-component Gaussian-mixture posterior mean in 2-D
  (:class:`unigen.analytic.GaussianMixture`), a realistic but still cheap model (CPU only).

For every case and batch size the loop is timed at 10, ``--steps`` (50) and 110 steps
(median of ``--repeats`` repeats after warm-up, ``time.perf_counter``, garbage collector
off while timing, as ``timeit`` does). The model's own cost is measured by replaying the exact
calls a run made (same tensors, same time arguments) in a tight loop, so

    us/step            = T(50) / 50
    overhead us/step   = (T(50) - M(50)) / 50                       (what a 50-step run pays)
    marginal overhead  = ((T(110) - M(110)) - (T(10) - M(10))) / 100 (per extra step)
    setup us           = one-off cost (intercept of overhead against steps)

with T the run time and M the model time of the same run. "Steps" are solver steps: Heun
makes about two model calls per step in every library. The ratio column is unigen's
overhead divided by the peer's, with unigen configured like the peer (same process,
parametrization and grid family); the target is <= 0.5 against k-diffusion and <= 0.2
against diffusers. A sanity column checks that the paired runs compute the same thing:
unigen is run on the peer's exact grid and the relative max difference of the outputs is
reported.

First-call setup (the section's last row, ``--fc-steps`` 10,20 at batch ``--fc-batch`` 64,
trivial model, DPM++(2M) and UniPC(2)): what unigen derives for a run (grid, plan) may be
cached per process or model, so a first call with a NEW model can pay more than a repeated
one. Each first call runs on a new process, ``ug.Model`` and solver (diffusers: a new
scheduler; k-diffusion keeps no state), built outside the timing; two untimed first calls
come before (the process's own first use of each code path is not a model's cost). Calls are
timed in loops of >= 15 ms (quick: 4 ms), a loop of warm calls (the same runner again) right
before a loop of as many first calls (each on objects built before the clock starts), median
of ``--fc-repeats`` (21) repeats. With F(n) the first call, W(n) the warm call and w the
least-squares slope of W over the row's step counts (some peers' cost per step grows with
the number of steps, so 110 steps are added only when one step count is given),

    first-call setup us = F(n) - n w
    warm-call setup us  = W(n) - n w
    first - warm us     = median of the paired differences F - W (less exposed to machine load)

next to the peers' per-call setup measured the same way (diffusers: ``set_timesteps(n)`` and
the loop's preamble; k-diffusion: ``get_sigmas_karras`` and the sampler's preamble), whose
grid construction alone is also timed by itself ("grid alone"). For unigen, "new model, same
process" is first - warm with a new model and solver on the process already used. Ratio =
unigen's first-call setup over the peer's, unigen configured like the peer.

Section 2 (throughput). samples/s = batch / T(run) for a full run of ``--tp-steps`` (10)
steps, the same pairs of cases as section 1 (unigen configured like each peer), for every
batch x dim. Models: ``trivial`` and ``mlp`` (input [z, t] -> 64 -> 64 -> dim, SiLU; the same
weights for every library, called in each library's convention). Ratio = unigen's
samples/s over the peer's (> 1: unigen is faster).

Section 3 (compile). VP.linear, eps model, log-SNR grid of ``--compile-steps`` (20) steps,
float32, trivial model. us/step = T(run)/steps for: ``ug.sample`` (the public eager call),
``eager`` (``compiled_sampler(mode="eager")``: the prepared loop without host-side setup),
``aot_eager`` (torch.compile, no code generation: dynamo's graph and guards), ``inductor``
(fused C++/Triton kernels), and on CUDA ``cuda_graph`` (one replay per run) and
``inductor+cudagraphs`` (``mode="reduce-overhead"``). "compile s" is the first call's time.
Agreement is the relative max difference to ``ug.sample``.

Section 4 (model fraction). An MLP of dim 64, width ``--mf-width`` (2048: 4 linear layers,
8.7M parameters), batch ``--mf-batch``, ``--mf-steps`` (20) steps, float32. The network is
wrapped by a timer (``time.perf_counter`` on CPU; CUDA events on GPU, summed after the run);
fraction = model time / wall time of the fastest of ``--repeats`` runs (the median is kept
too). Graphed (CUDA): the model calls of a run are captured as a graph of their own and
fraction = T(model graph) / T(sampler graph).

Peers are imported lazily (``benchmarks.peer_samplers``) and skipped cleanly when absent.
k-diffusion's package ``__init__`` imports a training stack (accelerate, wandb, torchvision,
...); only its ``sampling.py`` is loaded, with a stub for the one helper it takes from ``utils``.
The diffusers loop is the standard pipeline loop (``set_timesteps``, then per timestep
``scale_model_input`` -> model -> ``step(...).prev_sample``, under ``torch.no_grad()``);
``DDIMScheduler`` is built with ``clip_sample=False`` so it runs plain DDIM.

Usage (from the repository root)::

    python -m benchmarks.speed                          # everything, writes benchmarks/results/speed.json
    python -m benchmarks.speed --quick                  # small sizes, fewer repeats (< 60 s on one core)
    python -m benchmarks.speed --quick --no-peers
    python -m benchmarks.speed --sections overhead compile --device cuda
    python -m benchmarks.speed --sections overhead --profile   # also cProfile unigen's loops
    python -m benchmarks.speed --sections overhead --first-call-only --update   # the first-call row alone
"""
