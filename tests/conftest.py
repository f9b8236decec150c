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

    from stitchnas.backends.cluster import init_ray

    init_ray(None, num_cpus=2)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


#: The stitching tests' data: 8x8 digits, 240 training images (search_train 120 -> 3 steps/epoch).
STITCH_DATA_OPTIONS = dict(name="digits", input_size=8, seed=1, max_train_samples=240)


@pytest.fixture(scope="session")
def stitch_data_spec():
    from stitchnas.data import DataSpec

    return DataSpec(**STITCH_DATA_OPTIONS)


@pytest.fixture(scope="session")
def stitch_data(stitch_data_spec):
    from stitchnas.data import load_data

    return load_data(stitch_data_spec)


@pytest.fixture(scope="session")
def tiny_vit_family(tmp_path_factory, stitch_data_spec):
    """``family(depth, epochs)``: the folder of three tiny ViT anchors (vit_digits presets at that
    depth) trained on :data:`STITCH_DATA_OPTIONS`, trained once per session and setting."""
    from stitchnas.methods.anchors import AnchorTrainConfig, train_anchors
    from stitching.trainer import StitchTrainConfig

    folders = {}

    def family(depth: int, epochs: int):
        if (depth, epochs) not in folders:
            out = tmp_path_factory.mktemp(f"vit_family_d{depth}_e{epochs}") / "family"
            train = StitchTrainConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=1)
            train_anchors(AnchorTrainConfig("vit_digits", stitch_data_spec, train, {"depth": depth}), out,
                          progress=False)
            folders[depth, epochs] = out
        return folders[depth, epochs]

    return family


@pytest.fixture(autouse=True)
def _weights_only_exports(request):
    """Exports write ``model.pt`` only, except in test_portable_export.py, which tests the
    portable artifacts every export writes by default: tracing and checking a ``torch.export``
    program costs about a second per model, and most other tests export several."""
    if request.module.__name__.rsplit(".", 1)[-1] == "test_portable_export":
        yield
        return
    from stitchnas.search.export import export_formats

    with export_formats("pt"):
        yield
