"""Connecting to Ray and checking what the cluster can run (shared by the Tune stage and the
Ray Train trainer).

A local Ray is started bound to 127.0.0.1 (``include_dashboard=False``); ``"auto"`` or
``host:port`` joins a running cluster. Ray's token authentication is left as Ray configures it
(on by default for clusters it starts). Ray is imported inside the functions only.

Workers get the thread policy's OpenMP wait setting through the job's ``runtime_env`` (they
import torch before any trial code runs; :func:`stitchnas.core.threads.worker_env`); each trial
or Train worker then sets its thread count from the CPUs Ray gave it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

RAY_ENV_DEFAULTS = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # trials keep the driver's working directory
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard files per trial
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the legacy reporter prints nothing per experiment
}


def set_env_defaults() -> None:
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _probe_address(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast with one line when nothing listens at ``host:port`` (ray.init would hang)."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: expected 'auto', 'host:port' or 'ray://host:port'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise ValueError(f"--address {address}: cannot reach a Ray cluster there ({err.strerror or err})") from None


def worker_runtime_env(local: bool) -> dict[str, dict[str, str]] | None:
    """The ``runtime_env`` that gives Ray's workers the thread policy's wait setting, or None
    when they have it anyway: a local Ray's workers inherit this process's environment, and a
    variable the submitted job's own ``runtime_env`` sets is left to it (Ray refuses both)."""
    from stitchnas.core.threads import worker_env

    env = worker_env()
    if local:
        env = {k: v for k, v in env.items() if os.environ.get(k) != v}
    try:  # the runtime_env of `ray job submit`, as Ray hands it to the driver
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")) or {}
        taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        taken = set()
    env = {k: v for k, v in env.items() if k not in taken}
    return {"env_vars": env} if env else None


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray bound to 127.0.0.1 (``address`` None or ``"local"``) or join a cluster."""
    import ray

    set_env_defaults()
    if address in (None, "", "local"):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
                 runtime_env=worker_runtime_env(local=True))
        return
    if address.startswith(("http://", "https://")):
        raise ValueError(f"--address {address}: that is a dashboard/job-submission URL; pass the cluster "
                         "address (host:port of the head node), 'ray://host:port' or 'auto'")
    if address != "auto":
        _probe_address(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=worker_runtime_env(local=False))
    except ConnectionError as err:
        raise ValueError(f"--address {address}: no running Ray cluster found ({str(err).splitlines()[0]})") from None


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the Ray already initialised in this process, or connect/start one and shut it down
    at the end (only what this context started)."""
    import ray

    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "", "local", "auto") and address.split("://", 1)[-1] != current:
            raise ValueError(f"--address {address}: this process is already connected to the Ray cluster at {current}")
        yield
        return
    init_ray(address, num_cpus)
    try:
        yield
    finally:
        ray.shutdown()


def cluster_nodes() -> list[dict[str, float]]:
    """Resources of every alive node of the connected cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_resources(cpus_per_trial: float, gpus_per_trial: float, nodes: Sequence[dict[str, float]]) -> None:
    """One-line ``ValueError`` when no single node of the cluster can host one trial."""
    if not nodes:
        raise ValueError("Ray cluster: no alive nodes")
    max_cpu = max(float(n.get("CPU", 0)) for n in nodes)
    max_gpu = max(float(n.get("GPU", 0)) for n in nodes)
    if cpus_per_trial > max_cpu:
        raise ValueError(f"--cpus-per-trial: a trial needs {cpus_per_trial:g} CPUs but the largest node of the "
                         f"Ray cluster has {max_cpu:g}")
    if gpus_per_trial > 0 and max_gpu == 0:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster has no GPUs")
    if gpus_per_trial > max_gpu:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial:g}: the largest node of the Ray cluster has "
                         f"{max_gpu:g} GPUs")
