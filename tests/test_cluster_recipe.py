"""README's Ray cluster recipe ("Against a running cluster"), run for real from a fresh machine.

The commands are read from README.md's fenced block (so the README cannot drift from what this
test runs) and executed in order, with only these changes, all for running beside other Ray
instances on a shared machine:

* a throwaway ``HOME`` (Ray keeps its token in ``~/.ray/auth_token``), without ``RAY_AUTH_TOKEN`` /
  ``RAY_AUTH_TOKEN_PATH`` / ``RAY_ADDRESS``: the recipe must create its own token and never sees or
  touches the user's;
* ``ray start --head``: free ports instead of 6379 / 8265 (and for the other ports the head opens) and
  a private ``--temp-dir``;
* ``ray job submit``: a ``--submission-id`` and, after the README's ``stitchnas search pooling
  --backend ray --address auto``, a tiny search (ResNet-20 at width 0.25, 8x8 digits, one epoch, two
  candidates) with ``--out`` in a temporary folder;
* the final ``ray stop`` is not run: it stops every Ray process on the machine, other people's too.
  The test ends the processes its head node started instead, by id (those whose environment carries
  this test's marker).

Besides the job's result files it checks that token authentication is really on: a ``ray job
submit`` without the token, and HTTP requests with none or a wrong one, are refused.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SECTION = "## Distributed search on Ray"
MARKER = "STITCHNAS_CLUSTER_RECIPE_TEST"
#: What replaces the README's search options: seconds, not hours.
TINY_SEARCH = ["--space", "resnet20", "--width-scale", "0.25", "--input-size", "8", "--epochs", "1",
               "--candidates", "2", "--device", "cpu", "--hv-reference", "space", "--no-export", "--no-progress"]
NUM_CANDIDATES = 2
#: Ports the head opens besides the GCS and the dashboard: their defaults clash with other Rays.
OTHER_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
               "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port")

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(sys.platform != "linux", reason="teardown reads /proc/PID/environ")]


def recipe() -> list[list[str]]:
    """The commands of README's cluster block, one argv each (continuations joined, comments dropped)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", 1)]
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", section, re.S) if "ray start --head" in b]
    assert len(blocks) == 1, "README: expected one ```bash block with `ray start --head` in the Ray section"
    lines = blocks[0].replace("\\\n", " ").splitlines()
    return [argv for argv in (shlex.split(line, comments=True) for line in lines) if argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replace_option(argv: list[str], name: str, value: str) -> list[str]:
    hits = [i for i, a in enumerate(argv) if a.startswith(f"{name}=")]
    assert len(hits) == 1, f"README: expected {name}=... once in {shlex.join(argv)}"
    argv = list(argv)
    argv[hits[0]] = f"{name}={value}"
    return argv


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment holds ``MARKER=marker``: the ones this test's commands started."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:  # gone, or not ours
                pass
    return pids


def stop_marked(marker: str, grace_s: float = 10.0, timeout_s: float = 30.0) -> list[int]:
    """SIGTERM the marked processes, SIGKILL what is left after ``grace_s``; returns survivors."""
    deadline = time.monotonic() + timeout_s
    kill_after = time.monotonic() + grace_s
    while (pids := marked_pids(marker)) and time.monotonic() < deadline:
        sig = signal.SIGKILL if time.monotonic() > kill_after else signal.SIGTERM
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(0.5)
    return marked_pids(marker)


def http(url: str, token: str | None = None, timeout_s: float = 10.0) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def wait_for_dashboard(base: str, token: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if http(f"{base}/api/version", token, timeout_s=2)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dashboard at {base} did not answer within {timeout_s:g}s")
        time.sleep(0.5)


def run(argv: list[str], env: dict[str, str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=REPO, text=True, timeout=timeout_s, **kwargs)


def test_the_readme_cluster_recipe_works_from_a_fresh_machine(tmp_path):
    commands = recipe()
    assert [argv[:2] for argv in commands] == [
        ["export", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"], ["ray", "get-auth-token"], ["ray", "start"],
        ["ray", "job"], ["ray", "stop"]], "README's cluster block changed: update this test"
    export, generate, start, submit, _stop = commands

    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "runs" / "tiny"
    ray_tmp = tempfile.mkdtemp(prefix="ray-recipe-")  # short: Ray's unix socket paths must stay < 108 chars
    marker = uuid.uuid4().hex
    dropped = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", **{MARKER: marker})
    assert shutil.which("ray", path=env["PATH"]) and shutil.which("stitchnas", path=env["PATH"])

    # export A=B C=D
    env.update(item.split("=", 1) for item in export[1:])
    assert env["RAY_AUTH_MODE"] == "token", "README: token authentication stays on"

    job_id = f"recipe_{marker[:12]}"
    job_logs = ""
    try:
        # ray get-auth-token --generate > /dev/null
        assert generate[-2:] == [">", "/dev/null"], "README: the token is not printed"
        made = run(generate[:-2], env, 60, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert made.returncode == 0, made.stderr
        token = (home / ".ray" / "auth_token").read_text().strip()
        assert token, "ray get-auth-token --generate wrote no token to ~/.ray/auth_token"

        # ray start --head ... on free ports, in a private temp dir
        port, dash = free_port(), free_port()
        head = replace_option(replace_option(start, "--port", str(port)), "--dashboard-port", str(dash))
        assert "--node-ip-address=127.0.0.1" in head and "--dashboard-host=127.0.0.1" in head
        head += [f"--temp-dir={ray_tmp}", *(f"--{name}={free_port()}" for name in OTHER_PORTS)]
        started = run(head, env, 120, capture_output=True)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        base = f"http://127.0.0.1:{dash}"
        wait_for_dashboard(base, token, 60)

        # Authentication is really on: no token, or a wrong one, is refused.
        assert http(f"{base}/api/jobs/")[0] == 401
        assert http(f"{base}/api/jobs/", token="not-the-token")[0] == 403
        tokenless_home = tmp_path / "tokenless_home"
        tokenless_home.mkdir()
        anonymous = {**env, "HOME": str(tokenless_home), "RAY_AUTH_MODE": "disabled"}
        refused = run(["ray", "job", "submit", f"--address={base}", "--", "echo", "should-not-run"], anonymous,
                      60, capture_output=True)
        assert refused.returncode != 0 and "Unauthorized" in refused.stdout + refused.stderr, (
            refused.stdout[-2000:] + refused.stderr[-2000:])

        # ray job submit --address http://127.0.0.1:8265 --working-dir . -- stitchnas search pooling
        #     --backend ray --address auto <tiny search> --out ABS
        sep = submit.index("--")
        client, entrypoint = submit[:sep], submit[sep + 1:]
        client = [a.replace("http://127.0.0.1:8265", base) for a in client]
        assert base in client, "README: ray job submit --address http://127.0.0.1:8265"
        out_given = entrypoint[entrypoint.index("--out") + 1]
        assert Path(out_given).is_absolute(), "README: --out must be an absolute path"
        keep = entrypoint.index("auto") + 1
        assert entrypoint[:keep] == ["stitchnas", "search", "pooling", "--backend", "ray", "--address", "auto"]
        argv = client + [f"--submission-id={job_id}", "--"] + entrypoint[:keep] + TINY_SEARCH + ["--out", str(out)]
        for _ in range(30):  # the dashboard can answer before the node's job agent is up
            job = run(argv, env, 300, capture_output=True)
            if job.returncode == 0 or "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        code, body = http(f"{base}/api/jobs/{job_id}/logs", token)
        job_logs = json.loads(body).get("logs", "") if code == 200 else body
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:] + job_logs[-3000:]
        code, body = http(f"{base}/api/jobs/{job_id}", token)
        assert code == 200 and json.loads(body)["status"] == "SUCCEEDED", body + job_logs[-3000:]
        code, body = http(f"{base}/api/jobs/", token)
        assert code == 200 and [j["submission_id"] for j in json.loads(body)] == [job_id], body
    finally:
        left = stop_marked(marker)  # in place of the README's `ray stop` (see the module docstring)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, f"Ray processes still running after the teardown: {left}"

    from stitchnas.core.io import ResultsTable, read_json
    from stitchnas.search.front import RESULT_COLUMNS

    rows = ResultsTable(out / "results.csv", RESULT_COLUMNS).rows()
    assert len({r["candidate"] for r in rows}) == len(rows) == NUM_CANDIDATES, job_logs[-3000:]
    assert all(r["status"] == "ok" and r["val_acc"] > 0 for r in rows), rows
    front = read_json(out / "pareto.json", "front")
    assert front["num_candidates"] == NUM_CANDIDATES and front["hypervolume"] > 0, front
    assert "Pareto front (" in job.stdout and "hypervolume:" in job.stdout
