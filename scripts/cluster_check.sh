#!/usr/bin/env bash
# A real two-node Ray cluster on one machine (issue 16). Needs root; not part of CI.
#
# Two network namespaces joined by a veth pair, with addresses that exist only inside them
# (10.213.0.1/24 and 10.213.0.2/24; no default route, nothing else reachable); a Ray head node in
# the first, a worker node in the second, token authentication on. A small `stitchnas search
# pooling --backend ray` is submitted with `ray job submit`, and the worker node is killed
# (SIGKILL, every process of its namespace) once it has scored two candidates. Checks:
#   * both nodes scored candidates (trial_nodes.csv: the node of every candidate);
#   * the results equal an in-process run of the same search (accuracies and FLOPs, exactly);
#   * the kill is survived: the job succeeds, every candidate is in results.csv exactly once,
#     and the trial that died with the node was retried (--max-failures) on the head.
# Prints a summary; exits non-zero if a check fails. Teardown (also on failure or Ctrl-C): every
# process in the two namespaces (`ip netns pids`, TERM then KILL; not `ray stop`, which would
# stop every Ray process on the machine), then the namespaces (the veth pair goes with them).
# Both nodes see the same file system, so `--out` is shared storage, as on a real cluster.
#
# Usage (repository root, stitchnas installed in the active environment):
#   sudo env PATH="$PATH" scripts/cluster_check.sh [WORK_DIR]
# WORK_DIR (default: a new /tmp/stitchnas-cluster.XXXX) keeps the runs, logs and summary.txt;
# it is removed after a passing check unless given.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

[ "$(id -u)" = 0 ] || { echo "cluster_check: needs root (network namespaces)" >&2; exit 2; }
for tool in ip ray stitchnas python; do
    command -v "$tool" > /dev/null || { echo "cluster_check: '$tool' not on PATH" >&2; exit 2; }
done

TAG="sncc$$"
NS_HEAD="${TAG}h" NS_WORKER="${TAG}w"
HEAD_IP=10.213.0.1 WORKER_IP=10.213.0.2
if [ $# -ge 1 ]; then WORK=$(realpath -m "$1"); KEEP=1; mkdir -p "$WORK"; else WORK=$(mktemp -d /tmp/stitchnas-cluster.XXXX); KEEP=0; fi
RAY_TMP=$(mktemp -d /tmp/sncc.XXXX)  # short: Ray's unix socket paths must stay under 108 characters
JOB_ID="cluster_check_$$"
# The search: ResNet-20 placements (36) on the embedded digits at 32 px, one candidate per trial.
SEARCH=(search pooling --space resnet20 --width-scale 0.5 --input-size 32 --epochs 4 --seed 0 --device cpu
        --threads 1 --hv-reference space --no-export --no-progress)
RAY_FLAGS=(--backend ray --address auto --candidates-per-trial 1 --cpus-per-trial 1 --max-failures 3)
KILL_AFTER=2  # candidates the worker node scores before it is killed
FAILED=0
created=()

log() { echo "cluster_check: $*" >&2; }

stop_namespace() {  # every process in the namespace: TERM, then KILL what is left after 10 s
    local ns=$1 pids i
    for i in $(seq 1 40); do
        pids=$(ip netns pids "$ns" 2> /dev/null | tr '\n' ' ')
        [ -z "${pids// /}" ] && return 0
        # shellcheck disable=SC2086
        if [ "$i" -le 20 ]; then kill -TERM $pids 2> /dev/null; else kill -KILL $pids 2> /dev/null; fi
        sleep 0.5
    done
    log "processes left in $ns: $(ip netns pids "$ns" | tr '\n' ' ')"
    return 1
}

teardown() {
    local rc=$? ns
    trap - EXIT INT TERM
    for ns in "${created[@]}"; do
        stop_namespace "$ns" || rc=1
        ip netns del "$ns" || rc=1
    done
    rm -rf "$RAY_TMP"
    if [ "$rc" = 0 ] && [ "$KEEP" = 0 ]; then rm -rf "$WORK"; else log "outputs kept in $WORK"; fi
    exit "$rc"
}
trap teardown EXIT
trap 'log interrupted; exit 130' INT TERM

in_ns() {  # in_ns NS HOME_DIR CMD...: the cluster's environment; the namespaces may leave loopback
    local ns=$1 home=$2
    shift 2
    ip netns exec "$ns" env -u RAY_AUTH_TOKEN -u RAY_AUTH_TOKEN_PATH -u RAY_ADDRESS -u RAY_API_SERVER_ADDRESS \
        HOME="$home" RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 RAY_USAGE_STATS_ENABLED=0 \
        OMP_NUM_THREADS=1 "$@"
}

# --------------------------------------------------------------------------- 1. the in-process reference
log "in-process reference run"
OMP_NUM_THREADS=1 stitchnas "${SEARCH[@]}" --out "$WORK/local" > "$WORK/local.log" 2>&1 \
    || { log "the in-process run failed: $(tail -5 "$WORK/local.log")"; exit 1; }

# --------------------------------------------------------------------------- 2. the network
ip netns add "$NS_HEAD" && created+=("$NS_HEAD") || exit 1
ip netns add "$NS_WORKER" && created+=("$NS_WORKER") || exit 1
ip -n "$NS_HEAD" link set lo up && ip -n "$NS_WORKER" link set lo up || exit 1
ip link add "${TAG}a" netns "$NS_HEAD" type veth peer name "${TAG}b" netns "$NS_WORKER" || exit 1
ip -n "$NS_HEAD" addr add "$HEAD_IP/24" dev "${TAG}a" && ip -n "$NS_HEAD" link set "${TAG}a" up || exit 1
ip -n "$NS_WORKER" addr add "$WORKER_IP/24" dev "${TAG}b" && ip -n "$NS_WORKER" link set "${TAG}b" up || exit 1
for ns in "$NS_HEAD" "$NS_WORKER"; do
    if ip -n "$ns" route show default | grep -q .; then log "$ns has a default route"; exit 1; fi
done

# --------------------------------------------------------------------------- 3. the cluster
HOME_HEAD="$WORK/home-head" HOME_WORKER="$WORK/home-worker"
mkdir -p "$HOME_HEAD" "$HOME_WORKER/.ray"
in_ns "$NS_HEAD" "$HOME_HEAD" ray get-auth-token --generate > /dev/null 2> "$WORK/token.log" || { log "no token"; exit 1; }
install -m 600 "$HOME_HEAD/.ray/auth_token" "$HOME_WORKER/.ray/auth_token"  # "copy the token to every node"
common=(--num-cpus=1 --num-gpus=0 --object-store-memory=200000000 --disable-usage-stats)
log "ray head on $HEAD_IP (namespace $NS_HEAD)"
in_ns "$NS_HEAD" "$HOME_HEAD" ray start --head --node-ip-address="$HEAD_IP" --port=6379 \
    --dashboard-host=127.0.0.1 --dashboard-port=8265 --temp-dir="$RAY_TMP/h" "${common[@]}" \
    > "$WORK/head.log" 2>&1 || { log "head failed: $(tail -5 "$WORK/head.log")"; exit 1; }
log "ray worker on $WORKER_IP (namespace $NS_WORKER)"
in_ns "$NS_WORKER" "$HOME_WORKER" ray start --address="$HEAD_IP:6379" --node-ip-address="$WORKER_IP" \
    --temp-dir="$RAY_TMP/w" "${common[@]}" \
    > "$WORK/worker.log" 2>&1 || { log "worker failed: $(tail -5 "$WORK/worker.log")"; exit 1; }
for i in $(seq 1 60); do
    alive=$(in_ns "$NS_HEAD" "$HOME_HEAD" ray status --address="$HEAD_IP:6379" 2> /dev/null | grep -c ' node_')
    [ "$alive" = 2 ] && break
    sleep 1
done
[ "$alive" = 2 ] || { log "the cluster has $alive alive nodes, expected 2"; exit 1; }
# token authentication is on: the dashboard refuses a request without the token
unauth=$(in_ns "$NS_HEAD" "$HOME_HEAD" python -c "
import urllib.error, urllib.request
try:
    print(urllib.request.urlopen('http://127.0.0.1:8265/api/jobs/', timeout=10).status)
except urllib.error.HTTPError as err:
    print(err.code)")

# --------------------------------------------------------------------------- 4. the job, and the kill
log "submitting the search (job $JOB_ID)"
for i in $(seq 1 30); do  # the dashboard can answer before the head's job agent is up
    in_ns "$NS_HEAD" "$HOME_HEAD" ray job submit --address http://127.0.0.1:8265 --working-dir "$REPO" \
        --submission-id "$JOB_ID" --no-wait -- stitchnas "${SEARCH[@]}" "${RAY_FLAGS[@]}" --out "$WORK/ray" \
        > "$WORK/submit.log" 2>&1 && break
    grep -q "No available agent" "$WORK/submit.log" || { log "submit failed: $(tail -5 "$WORK/submit.log")"; exit 1; }
    sleep 2
done
job_status() {  # the job's status from the dashboard's REST API, with the token
    in_ns "$NS_HEAD" "$HOME_HEAD" python -c "
import json, sys, urllib.request
token = open(sys.argv[1]).read().strip()
request = urllib.request.Request('http://127.0.0.1:8265/api/jobs/' + sys.argv[2], headers={'Authorization': 'Bearer ' + token})
print(json.load(urllib.request.urlopen(request, timeout=10))['status'])" "$HOME_HEAD/.ray/auth_token" "$JOB_ID" 2> /dev/null
}
rows() { [ -f "$1" ] && echo $(($(wc -l < "$1") - 1)) || echo 0; }
start=$SECONDS killed_at=""
while [ $((SECONDS - start)) -lt 900 ]; do
    status=$(job_status)
    case "$status" in SUCCEEDED|FAILED|STOPPED) break ;; esac
    if [ -z "$killed_at" ] && [ -f "$WORK/ray/trial_nodes.csv" ] \
            && [ "$(grep -c ",$WORKER_IP\$" "$WORK/ray/trial_nodes.csv")" -ge "$KILL_AFTER" ]; then
        killed_at=$(rows "$WORK/ray/results.csv")
        log "killing the worker node after $killed_at candidates"
        ip netns pids "$NS_WORKER" | xargs -r kill -KILL
    fi
    sleep 0.5
done
in_ns "$NS_HEAD" "$HOME_HEAD" ray job logs --address http://127.0.0.1:8265 "$JOB_ID" > "$WORK/job.log" 2>&1
job_s=$((SECONDS - start))
log "job $status after ${job_s}s"

# --------------------------------------------------------------------------- 5. the checks
python - "$WORK" "$HEAD_IP" "$WORKER_IP" "${status:-UNKNOWN}" "$job_s" "${killed_at:-}" "$unauth" \
    "stitchnas ${SEARCH[*]} ${RAY_FLAGS[*]}" <<'PY' | tee "$WORK/summary.txt"
import datetime, glob, json, math, os, sys
from stitchnas.core.io import ResultsTable
from stitchnas.search.front import RESULT_COLUMNS
from stitchnas.backends.tune_search import TRIAL_NODE_COLUMNS, TRIAL_NODES_FILE

work, head_ip, worker_ip, status, job_s, killed_at, unauth, command = sys.argv[1:]
checks = {}
local = {r["candidate"]: r for r in ResultsTable(f"{work}/local/results.csv", RESULT_COLUMNS).rows()}
ray_rows, nodes = [], []
if os.path.exists(f"{work}/ray/results.csv"):
    ray_rows = ResultsTable(f"{work}/ray/results.csv", RESULT_COLUMNS).rows()
if os.path.exists(f"{work}/ray/{TRIAL_NODES_FILE}"):
    nodes = ResultsTable(f"{work}/ray/{TRIAL_NODES_FILE}", TRIAL_NODE_COLUMNS).rows()
remote = {r["candidate"]: r for r in ray_rows}
print(f"two-node Ray cluster check (issue 16), {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
print(f"job: {command}")
print(f"token authentication: a request without the token gets HTTP {unauth}")
checks["token auth on"] = unauth == "401"
print(f"job {status} in {job_s} s; {len(ray_rows)} rows in results.csv, {len(local)} in the in-process run")
checks["job succeeded"] = status == "SUCCEEDED"

per_node = {}
for r in nodes:
    n = per_node.setdefault(r["node_ip"], {"ids": set(), "candidates": 0, "trials": set()})
    n["ids"].add(r["node_id"]); n["candidates"] += 1; n["trials"].add(r["trial"])
for ip, n in sorted(per_node.items()):
    role = {head_ip: "head", worker_ip: "worker"}.get(ip, "?")
    print(f"  {ip} ({role}, node {','.join(sorted(i[:12] for i in n['ids']))}): {n['candidates']} candidates "
          f"in {len(n['trials'])} trials")
checks["both nodes scored candidates"] = set(per_node) == {head_ip, worker_ip} and all(
    n["candidates"] > 0 for n in per_node.values())

keys = [r["candidate"] for r in ray_rows]
complete = len(keys) == len(set(keys)) and set(keys) == set(local) and len(local) > 0
complete = complete and sorted(r["candidate"] for r in nodes) == sorted(keys)
print(f"candidates: {len(set(keys))} distinct of {len(local)}, {len(keys) - len(set(keys))} repeated, "
      f"{len(set(local) - set(keys))} missing, {sum(r['status'] != 'ok' for r in ray_rows)} not ok")
checks["nothing lost or repeated"] = complete and all(r["status"] == "ok" for r in ray_rows)
same = [c for c in local if c in remote and remote[c]["val_acc"] == local[c]["val_acc"]
        and (remote[c]["flops"], remote[c]["label"]) == (local[c]["flops"], local[c]["label"])]
print(f"equal to the in-process run (val_acc, FLOPs, label, exactly): {len(same)} of {len(local)} candidates")
checks["equal to the in-process run"] = len(same) == len(local) > 0

retried = 0  # trials Tune restarted after a failure (the one on the killed node)
for path in glob.glob(f"{work}/ray/tune/*/experiment_state-*.json"):
    for entry in json.load(open(path)).get("trial_data", []):
        data = json.loads(entry[1]) if isinstance(entry, list) and len(entry) > 1 else {}
        retried += int(data.get("num_failures", 0) or 0) > 0
after = nodes[int(killed_at):] if killed_at else []
print(f"worker node killed: {'yes, with ' + killed_at + ' of ' + str(len(local)) + ' candidates recorded' if killed_at else 'no (the search ended first)'}; "
      f"trials retried: {retried}; candidates recorded after the kill: {len(after)} "
      f"({sum(r['node_ip'] == head_ip for r in after)} on the head)")
checks["kill survived"] = bool(killed_at) and retried > 0 and checks["job succeeded"] and checks["nothing lost or repeated"]
for name, ok in checks.items():
    print(f"  {'PASS' if ok else 'FAIL'}  {name}")
print(f"kill survived: {'yes' if checks['kill survived'] else 'no'}")
sys.exit(0 if all(checks.values()) else 1)
PY
[ "${PIPESTATUS[0]}" = 0 ] || FAILED=1
[ "$FAILED" = 0 ] && log "PASS" || log "FAIL (job log: $WORK/job.log)"
exit "$FAILED"
