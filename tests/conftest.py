import os

# Every Ray process started by the tests binds 127.0.0.1 and never talks to another address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# The test models are tiny, so per-op overhead dominates: one thread per process is as fast and
# stays fast when several processes (Ray workers, other jobs) share the 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray per test module (2 CPUs, 127.0.0.1); yields its GCS address."""
    pytest.importorskip("ray")
    import ray

    from stitchnas.ray_cluster import init_ray

    init_ray(None, num_cpus=2)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
