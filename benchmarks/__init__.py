"""unigen's benchmark scripts, a package so that they import each other without path edits.

Run each as a module from the repository root, e.g. ``python -m benchmarks.speed --quick``,
``python -m benchmarks.peers --quick``, ``python -m benchmarks.nfe_quality --quick``,
``python -m benchmarks.optimized_schedules --quick``, ``python -m benchmarks.cli_examples``.
The peer libraries (k-diffusion, diffusers, flow_matching) are imported in one place,
``benchmarks.peer_samplers``. Results go to ``benchmarks/results/``.
"""
