#!/usr/bin/env bash
# Networking API figures (release build, all-in-one on SQLite): port creation throughput and latency with one
# client and with four concurrent clients (tessera-loadgen), then `GET /v2.0/ports` (all ports, as admin) at
# 10,000 ports: p50/p95 over repeated requests, timed to the last byte.
#
#   bench/network.sh [PORTS]        (default 10000; a /16 subnet holds them)
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-10000}
cargo build --release -q -p tessera -p tessera-loadgen
bin=$PWD/target/release/tessera
loadgen=$PWD/target/release/tessera-loadgen
dir=$(mktemp -d /tmp/tessera-network-bench.XXXXXX)
pid=
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
read -r pi pg pp pc pn < <(python3 -c '
import socket
s=[socket.socket() for _ in range(5)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
cat > "$dir/bench.conf" <<CONF
[DEFAULT]
osapi_compute_listen_port = $pc
[identity]
bind_port = $pi
[image]
bind_port = $pg
[placement]
bind_port = $pp
[network]
bind_port = $pn
[quotas]
quota_port = -1
[all_in_one]
hosts_per_cell = 0
[network_agent]
# The API alone by default (its agent would wire this machine and serve DHCP for the bench's 10,000 ports);
# BENCH_DATA_PLANE=auto measures with the agent following along.
data_plane = ${BENCH_DATA_PLANE:-false}
CONF
"$bin" --config "$dir/bench.conf" all-in-one --state-dir "$dir/state" > "$dir/out" 2> "$dir/log" &
pid=$!
for _ in $(seq 1 120); do grep -q ready "$dir/out" 2>/dev/null && break; sleep 0.5; done
grep -q ready "$dir/out" || { echo "tessera did not start"; tail "$dir/log"; exit 1; }
exec python3 - "$pi" "$pn" "$(cat "$dir/state/admin-password")" "$loadgen" "$total" "$pid" <<'PY'
import json, statistics, subprocess, sys, time, urllib.request
pi, pn, pw, loadgen, total, pid = sys.argv[1:]
total = int(total)
body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": pw}}},
                 "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{pi}/v3/auth/tokens", json.dumps(body).encode(), {"Content-Type": "application/json"}))
tok = r.headers["X-Subject-Token"]
base = f"http://127.0.0.1:{pn}"

def call(method, path, body=None):
    req = urllib.request.Request(base + path, json.dumps(body).encode() if body else None,
                                 {"X-Auth-Token": tok, "Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")

net = call("POST", "/v2.0/networks", {"network": {"name": "bench"}})["network"]["id"]
call("POST", "/v2.0/subnets", {"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.200.0.0/16"}})

def load(n, conc):
    out = subprocess.run([loadgen, "ports", base, tok, net, str(n), str(conc)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)

def rss_mb():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

print(f"tessera network bench: {total} ports, all-in-one on SQLite (release), RSS at start {rss_mb():.1f} MB")
one = load(1000, 1)
print(f"port create, 1 client:    {one['per_second']:7.1f} ports/s  p50 {one['p50_ms']:.2f} ms  p95 {one['p95_ms']:.2f} ms  (1,000 ports)")
four = load(1000, 4)
print(f"port create, 4 clients:   {four['per_second']:7.1f} ports/s  p50 {four['p50_ms']:.2f} ms  p95 {four['p95_ms']:.2f} ms  (1,000 ports)")
rest = total - 2000
if rest > 0:
    t0 = time.time()
    fill = load(rest, 4)
    print(f"filled to {total} ports in {time.time() - t0:.1f} s ({fill['per_second']:.1f} ports/s with 4 clients)")
times = []
count = 0
for _ in range(20):
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(base + "/v2.0/ports", headers={"X-Auth-Token": tok})) as r:
        raw = r.read()
    times.append((time.perf_counter() - t0) * 1000)
    count = len(json.loads(raw)["ports"])
times.sort()
p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
print(f"GET /v2.0/ports ({count} ports, {len(raw) / 1e6:.1f} MB): p50 {statistics.median(times):.1f} ms  p95 {p95:.1f} ms")
print(f"server RSS after: {rss_mb():.1f} MB")
PY
