import os
import re

import pytest
import torch
from hypothesis import HealthCheck, settings


# "ci": small, derandomized (stable in CI); "dev": many random examples for local hunting.
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# identities are checked in float64 (diffrax's conftest does the same)
torch.set_default_dtype(torch.float64)
# the suite is many small tensor ops: intra-op threads only add overhead, and on a shared
# 2-core runner they oversubscribe the cores (measured: up to ~100x slower per op)
torch.set_num_threads(1)


# ---- skip policy ----------------------------------------------------------------------------------
# A skipped test is a test that did not run: the run fails on any skip outside this allow-list.
#   (a) CUDA-only tests where CUDA is absent (and the one no-CUDA check where it is present);
#   (b) a peer whose distribution is not installed at all (helpers.require, or pytest.importorskip
#       of an absent module): README's test command runs without peers. UNIGEN_REQUIRE_PEERS=1
#       (CI, which installs them) forbids (b) too. An installed peer that fails to import is a
#       failure, never an allowed skip.
CUDA_SKIPS = {
    "needs a CUDA GPU": lambda: not torch.cuda.is_available(),
    "checks the error raised without CUDA": torch.cuda.is_available,
}
_IMPORTORSKIP = re.compile(r"^could not import '([^']+)'")
_bad_skips: list[str] = []


def skip_allowed(reason: str) -> bool:
    # imported here, not at the top: helpers builds its processes under the float64 default set above
    from helpers import PEER_SKIP_PREFIX, REQUIRE_PEERS, peer_installed

    reason = reason.removeprefix("Skipped: ")
    if reason in CUDA_SKIPS:
        return CUDA_SKIPS[reason]()
    if reason.startswith(PEER_SKIP_PREFIX):
        module = reason[len(PEER_SKIP_PREFIX):].split(" ")[0]
    elif (m := _IMPORTORSKIP.match(reason)) is not None:
        module = m.group(1)
    else:
        return False
    return not REQUIRE_PEERS and not peer_installed(module)


def _record(report):
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if not skip_allowed(reason):
        _bad_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report):
    _record(report)


def pytest_collectreport(report):
    _record(report)  # module-level skips


def pytest_terminal_summary(terminalreporter):
    if _bad_skips:
        terminalreporter.section("skips outside the allow-list (the run fails)", sep="=", red=True, bold=True)
        terminalreporter.line("allowed: CUDA-only tests without CUDA; a peer that is not installed at all "
                              "(not with UNIGEN_REQUIRE_PEERS=1). Disallowed here:")
        for line in _bad_skips:
            terminalreporter.line(f"  {line}")


def pytest_sessionfinish(session, exitstatus):
    if _bad_skips and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
