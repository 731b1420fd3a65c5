import os

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
