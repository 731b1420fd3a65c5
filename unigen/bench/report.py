"""Reporting for NFE-vs-quality sweeps: markdown tables, log-log plots and the JSON run record.

Shared by ``benchmarks/nfe_quality.py`` and ``unigen bench``.
"""

from __future__ import annotations

import json
import math
import pathlib
import platform
import re
import sys
import time

import torch

from .. import __version__
from .harness import get_problem, sweep


RISE = "^"  # marks an error larger than the same row's at the previous budget
GRIDS = {"logsnr": "steps uniform in log-SNR", "uniform": "steps uniform in t", "karras": "Karras et al.'s rho = 7 grid",
         "quadratic": "steps quadratic in t"}


def _fmt(v, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "inf"
    return format(v, spec)


def _signed(v) -> str:
    return _fmt(v, "+.3g")


def _is_nll(r: dict) -> bool:
    return r["solver"].startswith("NLL ")


def _endpoint_text(ref: dict) -> str:
    """Where every sample of the table ends (every run's grid, and the reference, end there)."""
    sigma, t = ref.get("sigma_end"), ref.get("t_end")
    if sigma is None:
        return "every row and the reference end at the same time"
    if sigma == 0.0:
        return (f"every row ends at sigma = 0 (t = {t:g}), on clean data: the solvers' last step lands on the "
                "model's x0 prediction, the reference integrates the ODE down to sigma = 0, and the data are "
                "compared as they are")
    return (f"every row, the reference included, stops at t = {t:g} (sigma = {sigma:.3g}) without a final "
            "denoising call, and the data are taken to the same time (alpha x0 + sigma noise), "
            "so every sampler is compared at the same endpoint")


def _rises(row: list) -> set:
    """Budgets whose error exceeds the row's error at the previous budget that ran (real NFE larger)."""
    out, prev = set(), None
    for b, nfe, err in row:
        if err is None or not math.isfinite(err):
            continue
        if prev is not None and nfe > prev[0] and abs(err) > abs(prev[1]):
            out.add(b)
        prev = (nfe, err)
    return out


def _grid(records, is_nll: bool, budgets: list, name) -> tuple[list, dict]:
    """The rows of one table: (label, [cell per budget]) and the notes its cells need."""
    runs = [r for r in records if r["budget"] is not None and _is_nll(r) == is_nll]
    cells = {(r["solver"], r["budget"]): r for r in runs}
    notes = {"skip": False, "error": False, "short": [], "rise": [], "stochastic": False, "none": False, "inf": False}
    rows = []
    for s in dict.fromkeys(r["solver"] for r in runs):
        key = "nll_err" if is_nll else "rmse"
        ok = [(b, cells[s, b]) for b in budgets if (s, b) in cells and not cells[s, b].get("error")]
        rise = _rises([(b, r["nfe"], r[key]) for b, r in ok])
        row = []
        for b in budgets:
            r = cells.get((s, b))
            if r is None:
                row.append("skip")
                notes["skip"] = True
                continue
            if r.get("error"):
                row.append("error")
                notes["error"] = True
                continue
            mark = RISE if b in rise else ""
            if mark:
                notes["rise"].append((name(s), b))
            if is_nll:
                cell = f"{_fmt(r['nll'])} ({_signed(r['nll_err'])}{mark})"
            else:
                notes["none"] |= r["rmse"] is None
                cell = f"{_fmt(r['rmse'])}{mark} / {_fmt(r['sw2'])}"
            notes["inf"] |= "inf" in cell
            if r["nfe"] != b:
                cell += f" [{r['nfe']} NFE]"
                notes["short"].append((name(s), b, r["nfe"]))
            row.append(cell)
        stochastic = not is_nll and any(r["stochastic"] for r in runs if r["solver"] == s)
        notes["stochastic"] |= stochastic
        rows.append((name(s) + (" (stochastic)" if stochastic else ""), row))
    return rows, notes


def _markdown(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows]


def _budget_note(notes: dict, budgets: list, per_step: str) -> list:
    text = [", ".join(f"NFE {b}" for b in budgets) + ": a budget of model calls (NFE = number of function, i.e. "
            f"network, evaluations); each row takes the most steps whose calls fit the budget{per_step}"]
    if notes["short"]:
        s, b, nfe = notes["short"][0]
        text.append(f"[k NFE]: the row's real number of model calls, shown where it is below the budget because no "
                    f"step count costs exactly the budget (e.g. {s} at NFE {b}: {nfe} calls); elsewhere the real NFE "
                    "equals the budget")
    return text


MULTISTEP = re.compile(r"\(\dM\)|UniPC|DEIS")  # labels of multistep methods (they reuse earlier model calls)


def _where(rises: list) -> str:
    """'Heun at NFE 6 and 10; UniPC(3) at NFE 6' from [(row, budget), ...]."""
    rows = {}
    for s, b in rises:
        rows.setdefault(s, []).append(str(b))
    return "; ".join(f"{s} at NFE " + (" and ".join(bs) if len(bs) < 3 else ", ".join(bs[:-1]) + " and " + bs[-1])
                     for s, bs in rows.items())


def _common_notes(notes: dict, lines: list, what: str) -> None:
    if notes["rise"]:
        multi = any(MULTISTEP.search(s) for s, _ in notes["rise"])
        lines.append(f"- {RISE}: the {what} is larger than the same row's at the previous budget, although more calls "
                     f"were spent ({_where(notes['rise'])}). This is the pre-asymptotic regime: with so few steps each "
                     "step is too long for the method's order to pay off, its error is not yet the smooth C / NFE^order "
                     "of many steps, and error terms of opposite sign can cancel at one step count and not at the next (an "
                     "error that changes sign between budgets is small near the change by chance)"
                     + ("; multistep methods also extrapolate from earlier steps over very long steps and start "
                        "with lower-order steps, which makes high order erratic at very few steps" if multi else "")
                     + ". It is not a bug of the run; the error decreases with NFE once the steps are short enough")
    if notes["skip"]:
        lines.append("- skip: no step count of this solver fits the budget")
    if notes["error"]:
        lines.append("- error: the run failed; the message is in the JSON record")
    if notes["inf"]:
        lines.append("- inf: the run returned non-finite values")


def _sampler_table(ref: dict, records: list, budgets: list) -> list:
    rows, notes = _grid(records, False, budgets, lambda s: s)
    if not rows:
        return []
    n, trained = ref["n_samples"], ref.get("trained")
    what = "a small trained model" if trained else f"the exact {ref['dim']}-D Gaussian-mixture model (no network error)"
    data = "held-out data points" if trained else "exact samples"
    lines = [f"### {ref['problem']}: samplers on {what}, process {ref['process']}, {n} samples", ""]
    lines += _markdown(["solver", *(f"NFE {b}" for b in budgets)], rows)
    sd, floor = ref.get("sw2_floor_sd"), ref["sw2_floor"]
    noise = 2 * math.sqrt(2) * sd if sd is not None else None  # 2 sd of the difference of two draws
    grids = [r.get("schedule") for r in records if r["budget"] is not None and not _is_nll(r)]
    usual = max(set(grids), key=grids.count) if grids else "default"
    usual = f"{usual}: {GRIDS[usual]}" if usual in GRIDS else usual
    grid = f"its grid ({usual}" + ("; or the one its label names)" if len(set(grids)) > 1 else ")")
    orders = any(re.search(r"\(\d[MS]?\)", label) for label, _ in rows)
    lines += ["", "Legend:",
              f"- solver: the sampler with its default settings on {grid}"
              + ("; a number in parentheses is its order (M multistep, S single-step"
                 + ("; UniPC and DEIS are multistep" if any(re.search("UniPC|DEIS", label) for label, _ in rows) else "")
                 + ")" if orders else "")
              + ("; (stochastic): it draws fresh noise at every step" if notes["stochastic"] else ""),
              *("- " + t for t in _budget_note(notes, budgets, "")),
              "- cell = RMSE / SW2: RMSE, the endpoint root-mean-square distance of the samples to the reference "
              "solve from the same noise, i.e. the solver's error alone"
              + (" (- for a stochastic solver, which does not follow the ODE)" if notes["none"] else "")
              + f"; SW2, the sliced Wasserstein-2 distance to {n} {data}, i.e. sample quality; lower is better for both",
              f"- reference: dopri5 at rtol = atol = {_ref_tol(ref)} in float64 from the same noise, "
              f"{ref['nfe']} NFE, SW2 {_fmt(ref['sw2'])}",
              f"- endpoint: {_endpoint_text(ref)}" + _other_ends(ref, records)]
    floor_text = f"- SW2 floor {floor:.3g}" + (
        f" +- {sd:.2g}: mean +- sd of SW2 for {ref.get('floor_draws', 1)} independent sets of {n} {data}: what a "
        f"perfect sampler gets, and how much one draw of {n} scatters; SW2 values closer than {noise:.2g} (2 sd of "
        "the difference of two draws) are not distinguishable" if sd is not None
        else f": SW2 of {n} independent {data}, what a perfect sampler gets")
    if trained and noise is not None:
        gap = ref["sw2"] - floor
        floor_text += (f". The reference's SW2 ({_fmt(ref['sw2'])}) is above the floor by {gap:.2g}: the trained "
                       "model's own error, which no sampler removes" if gap > noise else
                       f". The reference's SW2 ({_fmt(ref['sw2'])}) is within sampling noise of the floor: the trained "
                       f"model's own error is not resolved with {n} samples")
    floor_text += (". Deterministic solvers start from the reference's noise, so their SW2 tends to the reference's "
                   "as NFE grows" + ("; a stochastic solver draws its own noise, so its SW2 carries its own sampling "
                                     "noise" if notes["stochastic"] else ""))
    lines.append(floor_text)
    below = [(r["solver"], r["budget"], r["sw2"]) for r in records if r["budget"] is not None and not _is_nll(r)
             and not r.get("error") and r.get("sw2") is not None and r["sw2"] < ref["sw2"]]
    if below and noise is not None:
        s, b, v = min(below, key=lambda x: x[2])
        verdict = ("within sampling noise: the reference's SW2 is itself one draw of "
                   f"{n} samples, so a lower value is the luck of a draw, not a better sampler" if ref["sw2"] - v < noise
                   else "more than sampling noise: check the run")
        lines.append(f"- below the reference: {len(below)} cell(s) have a lower SW2 than the reference's "
                     f"{_fmt(ref['sw2'])}, at most by {ref['sw2'] - v:.2g} ({s} at NFE {b}: {_fmt(v)}), {verdict}")
    _common_notes(notes, lines, "RMSE")
    return lines


def _other_ends(ref: dict, records: list) -> str:
    """The rows whose grid ends elsewhere (a user grid): compared with the reference and data at their own end."""
    odd = {}
    for r in records:
        if r["budget"] is not None and not _is_nll(r) and r.get("t_end") not in (None, ref.get("t_end")):
            odd.setdefault(r["solver"], r)
    if not odd:
        return ""
    return ("; except " + ", ".join(f"{s} (t = {r['t_end']:g}, sigma = {r['sigma_end']:.3g})" for s, r in odd.items())
            + ", whose grid ends elsewhere: the reference and the data are taken to that end for it")


def _ref_tol(ref: dict) -> str:
    label = ref["solver"]
    return label[label.index("rtol ") + 5:].rstrip(")") if "rtol " in label else "1e-10"


def _nll_table(ref: dict, records: list, budgets: list) -> list:
    rows, notes = _grid(records, True, budgets, lambda s: s.removeprefix("NLL "))
    if not rows:
        return []
    unit = ref.get("nll_unit", "nats/dim")
    exact = ref.get("nll_exact")
    target = f"the closed form {exact:.4f}" if exact is not None else f"the accurate solve {ref.get('nll', math.nan):.4f}"
    lines = [f"### {ref['problem']}: likelihood of {ref.get('nll_samples')} held-out points ({unit})", ""]
    lines += _markdown(["method", *(f"NFE {b}" for b in budgets)], rows)
    lines += ["", "Legend:",
              "- method: a torchdiffeq fixed-step integrator of the probability-flow ODE with the exact divergence, on "
              "the problem's default grid run from data to noise",
              *("- " + t for t in _budget_note(notes, budgets, " (euler 1, midpoint 2, rk4 4 calls per step)")),
              f"- cell = NLL (error): NLL, the mean negative log-likelihood in {unit}"
              + (" of the uniformly dequantised data" if unit == "bits/dim" else "")
              + f"; error, NLL minus {target}"]
    if ref.get("nll") is not None:
        tol = f" at rtol = atol = {ref['nll_tol']:g}" if ref.get("nll_tol") is not None else ""
        lines.append(f"- accurate solve: dopri5{tol} gives {ref['nll']:.4f} in {ref['nll_nfe']} NFE"
                     + (f"; closed form: -log p(x) / D of the exact model, {exact:.4f}" if exact is not None else ""))
    elif exact is not None:
        lines.append(f"- closed form: -log p(x) / D of the exact model, {exact:.4f}")
    _common_notes(notes, lines, "|error|")
    return lines


def table(records: list[dict]) -> str:
    """Markdown for one problem: the samplers' table (one row per solver, one column per budget,
    cell ``RMSE / SW2``) and, when measured, the likelihood table (cell ``NLL (error)``), each
    followed by a legend that defines every column, symbol and the common endpoint."""
    ref = next(r for r in records if r["budget"] is None)
    budgets = sorted({r["budget"] for r in records if r["budget"] is not None})
    parts = _sampler_table(ref, records, budgets)
    nll = _nll_table(ref, records, budgets)
    if not parts and not nll:
        return f"### {ref['problem']}: no runs (reference dopri5: {ref['nfe']} NFE)"
    if parts and nll:
        parts.append("")
    return "\n".join(parts + nll)


def _curve(ax, runs, key, ls, label):
    pts = [(r["nfe"], abs(r[key])) for r in runs if r.get(key) is not None and math.isfinite(r[key]) and r[key] != 0]
    if pts:
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], ls, marker="o", ms=3, label=label)


def _plain(v, _pos=None) -> str:
    return f"{v:g}"


def _log_ticks(lo: float, hi: float) -> list:
    """Readable ticks over [lo, hi] on a log axis: at most 8 of m x 10^k, the mantissas m thinned from
    1, 1.2, 1.5, ... 8 down to 1 alone as the range widens."""
    if not (lo > 0 and hi > lo):
        return []
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8), (1, 1.5, 2, 3, 4, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in mantissas]
        ticks = [float(f"{t:.6g}") for t in ticks if lo <= t <= hi]
        if len(ticks) <= 8:
            break
    else:  # many decades: every k-th power of ten
        ticks = ticks[:: math.ceil(len(ticks) / 8)]
    if len(ticks) < 2:  # a narrow range: the ends, rounded
        ticks = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    return ticks


def _plain_ticks(ax, xticks: list) -> None:
    """Plain-number ticks (4, 6, 10, 20; 0.01, 0.02, ...) instead of matplotlib's 4x10^0 labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(xticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = ax.get_ylim()
    ticks = _log_ticks(lo, hi)
    if ticks:
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(_plain))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylim(lo, hi)


def figure(records: list[dict]):
    """The matplotlib figure of :func:`plot` (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ref = next(r for r in records if r["budget"] is None)
    runs = [r for r in records if r["budget"] is not None and not r.get("error")]
    has_nll = any(_is_nll(r) for r in runs)
    fig, axes = plt.subplots(1, 3 if has_nll else 2, figsize=(19 if has_nll else 13, 5))
    for s in dict.fromkeys(r["solver"] for r in runs):
        rs = sorted((r for r in runs if r["solver"] == s), key=lambda r: r["nfe"])
        if _is_nll(rs[0]):
            _curve(axes[2], rs, "nll_err", "-", s.removeprefix("NLL "))
            continue
        ls = "--" if rs[0]["stochastic"] else "-"
        _curve(axes[0], rs, "rmse", ls, s)
        _curve(axes[1], rs, "sw2", ls, s + (" (stochastic)" if rs[0]["stochastic"] else ""))
    trained = ref.get("trained")
    floor = "data-vs-data" if trained else "exact-vs-exact"
    sd = ref.get("sw2_floor_sd")
    axes[1].axhline(ref["sw2_floor"], color="k", lw=1, ls=":", label=f"{floor} floor" + (" (+- sd)" if sd else ""))
    if sd:
        axes[1].axhspan(max(ref["sw2_floor"] - sd, 1e-12), ref["sw2_floor"] + sd, color="k", alpha=0.08)
    axes[1].axhline(ref["sw2"], color="0.4", lw=1, ls="-.", label=f"reference dopri5 ({ref['nfe']} NFE)")
    where = "" if ref.get("sigma_end") in (None, 0.0) else f" at t = {ref['t_end']:g}"
    axes[0].set(xlabel="NFE", ylabel=f"endpoint RMSE vs dopri5 (rtol {_ref_tol(ref)})", title=f"{ref['problem']}: ODE error")
    axes[1].set(xlabel="NFE", ylabel="sliced W2 vs " + ("held-out data" if trained else "exact samples") + where,
                title=f"{ref['problem']}: sample quality")
    if has_nll:
        what = "closed form" if ref.get("nll_exact") is not None else "dopri5 rtol 1e-7"
        axes[2].set(xlabel="NFE", ylabel=f"|NLL error| ({ref.get('nll_unit', 'nats/dim')}) vs {what}",
                    title=f"{ref['problem']}: likelihood (torchdiffeq fixed step)")
        axes[2].legend(fontsize=7)
    xticks = sorted({r["budget"] for r in runs})
    for ax in axes:
        if ax.has_data():
            _plain_ticks(ax, xticks)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot(records: list[dict], path: pathlib.Path) -> bool:
    """Log-log panels against NFE with plain-number ticks: endpoint RMSE, SW2 (with its floor band
    and the reference's value) and, when measured, |NLL error|. False without matplotlib."""
    fig = figure(records)
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run(dims, kinds, budgets, n, specs, out: pathlib.Path, *, seed: int = 0, quick: bool = False, plots: bool = True,
        problems=None, tune=None, progress: bool = False, runner=None, nll_samples: int | None = 200,
        train_steps=None, cache_dir="~/.cache/unigen") -> dict:
    """Sweep every problem, print a table each, write JSON (and PNGs) next to ``out``.

    ``problems``: names for :func:`~unigen.bench.harness.get_problem` (oracles ``gmm{d}-{kind}``
    and trained ``moons-fm``, ``digits-fm``, ...); default every ``gmm{d}-{kind}`` of dims x kinds.
    ``tune(problem)``: a dict of :func:`~unigen.bench.harness.sweep` arguments for one problem
    (e.g. ``solvers``, ``n_samples``, ``nll_samples``, ``nll_methods``) overriding the common ones. ``train_steps``: an
    int, or a dict problem name -> steps. ``runner``: a sharding runner
    (:mod:`unigen.bench.distributed`); only its main rank prints and writes.
    """
    main = runner is None or runner.is_main
    echo = (lambda *a, **k: print(*a, **k)) if main else (lambda *a, **k: None)  # noqa: E731
    names = list(problems) if problems is not None else [f"gmm{d}-{k}" for d in dims for k in kinds]
    start = time.perf_counter()
    results, plot_paths, skipped = [], [], []
    if main:
        out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        steps = train_steps.get(name) if isinstance(train_steps, dict) else train_steps
        shared = runner is not None and getattr(runner, "world_size", 1) > 1
        if shared and not main:
            runner.barrier()  # rank 0 trains and saves a missing checkpoint first; the others load it
        try:
            problem = get_problem(name, seed=seed, train_steps=steps, cache_dir=cache_dir,
                                  log=lambda m: echo(m, file=sys.stderr))
        except ImportError as e:  # digits without scikit-learn
            echo(f"[{name}] skipped: {e}", file=sys.stderr)
            skipped.append(name)
            continue
        finally:
            if shared and main:
                runner.barrier()
        t0 = time.perf_counter()
        kw = {"solvers": specs, "nfe_budgets": budgets, "n_samples": n, "seed": seed, "nll_samples": nll_samples,
              "log": lambda m: print(m, file=sys.stderr), "progress": progress, "runner": runner}
        kw.update(tune(problem) if tune is not None else {})
        recs = sweep(problem, **kw)
        if not main:
            continue
        echo(table(recs))
        echo(f"\n({problem.name}: {time.perf_counter() - t0:.1f} s)\n", flush=True)
        results.extend(recs)
        if plots:
            png = out.with_name(f"{out.stem}_{problem.name}.png")
            if plot(recs, png):
                plot_paths.append(str(png))
            elif not plot_paths and name == names[0]:
                echo("matplotlib is not installed: skipping plots (pip install 'unigen[plot]')")
    wall = time.perf_counter() - start
    if not main:
        return {}
    payload = {
        "benchmark": "nfe_quality",
        "mode": "quick" if quick else "full",
        "settings": {"problems": names, "dims": dims, "processes": kinds, "budgets": budgets, "n_samples": n,
                     "seed": seed, "nll_samples": nll_samples, "solvers": [s.label for s in specs],
                     "reference": "dopri5 rtol=atol=1e-10 float64",
                     "endpoint": "every run and the reference end at the grid's last time (t_end, sigma_end in "
                                 "each record); the data are taken to that time: alpha x0 + sigma noise",
                     "sw2_floor": "mean (sw2_floor_sd: standard deviation) of SW2 over floor_draws independent "
                                  "data sets of n_samples against the comparison set",
                     "nll": "PF-ODE exact divergence; accurate: dopri5 rtol=atol=1e-7; per budget: torchdiffeq "
                            "euler/midpoint/rk4 on the problem's default grid",
                     "world_size": getattr(runner, "world_size", 1), "skipped": skipped},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "unigen": __version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
        "wall_seconds": wall,
        "plots": plot_paths,
        "records": results,
    }
    out.write_text(json.dumps(payload, indent=1, default=float))
    print(f"wrote {out}" + (f" and {len(plot_paths)} plot(s)" if plot_paths else "") + f" in {wall:.1f} s")
    return payload
