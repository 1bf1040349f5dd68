#!/usr/bin/env bash
# Network data plane figures (release build, all-in-one on SQLite inside a network namespace of its own, its
# network agent wiring that namespace): how long a burst of ports bound to the host takes to turn ACTIVE once
# their taps appear (the agent plugs them into the bridge, filters them and reports them), and the time a
# server boot takes with its VIF plugged and network-vif-plugged awaited, against the same boot with the
# wait off ([DEFAULT] vif_plugging_timeout = 0). Needs root, iproute2, dnsmasq, nftables, iptables.
#
#   bench/dataplane.sh [PORTS]      (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
ports=${1:-100}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, bridges)"; exit 1; }
cargo build --release -q -p tessera
bin=$PWD/target/release/tessera
dir=$(mktemp -d /tmp/tessera-dataplane-bench.XXXXXX)
ns="tsr-bench-$$"
ip netns add "$ns"
ip -n "$ns" link set lo up
pid=
cleanup() {
    kill $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    for p in "$dir"/state*/network-agent/dhcp/*/pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
    for n in "$dir"/state*/network-agent/namespaces/*; do [ -f "$n" ] && ip netns del "$(basename "$n")" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# One run of the cloud: $1 = state dir name, $2 = vif_plugging_timeout. Sets pi, pc, pn (its ports) and pid.
start() {
    read -r pi pg pp pc pn < <(python3 -c '
import socket
s=[socket.socket() for _ in range(5)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
    cat > "$dir/$1.conf" <<CONF
[DEFAULT]
host = bench-host
osapi_compute_listen_port = $pc
vif_plugging_timeout = $2
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
[quota]
instances = -1
cores = -1
ram = -1
[network_agent]
data_plane = true
CONF
    ip netns exec "$ns" "$bin" --config "$dir/$1.conf" all-in-one --state-dir "$dir/$1" > "$dir/$1.out" 2> "$dir/$1.log" &
    pid=$!
    for _ in $(seq 1 120); do grep -q ready "$dir/$1.out" 2>/dev/null && break; sleep 0.5; done
    grep -q ready "$dir/$1.out" || { echo "tessera did not start" >&2; tail "$dir/$1.log" >&2; exit 1; }
}

measure() {
    ip netns exec "$ns" python3 - "$@" <<'PY'
import json, statistics, subprocess, sys, time, urllib.request
pi, pc, pn, pw, ports, mode = sys.argv[1:]
ports = int(ports)
body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": pw}}},
                 "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{pi}/v3/auth/tokens", json.dumps(body).encode(), {"Content-Type": "application/json"}))
tok = r.headers["X-Subject-Token"]

def call(port, method, path, body=None, headers=None):
    h = {"X-Auth-Token": tok, "Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode() if body else None, h, method=method)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")

net = call(pn, "POST", "/v2.0/networks", {"network": {"name": "bench"}})["network"]["id"]
call(pn, "POST", "/v2.0/subnets", {"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.99.0.0/20"}})
if mode == "ports":
    made = [call(pn, "POST", "/v2.0/ports", {"port": {"network_id": net, "binding:host_id": "bench-host",
                                                       "device_owner": "compute:bench"}})["port"]["id"]
            for _ in range(ports)]
    time.sleep(1)
    t0 = time.time()
    for p in made:
        subprocess.run(["ip", "tuntap", "add", "dev", "tap" + p[:11], "mode", "tap"], check=True)
        subprocess.run(["ip", "link", "set", "tap" + p[:11], "up"], check=True)
    taps = time.time() - t0
    while True:
        st = call(pn, "GET", f"/v2.0/ports?network_id={net}&device_owner=compute:bench&fields=status")["ports"]
        if all(p["status"] == "ACTIVE" for p in st):
            break
        if time.time() - t0 > 300:
            sys.exit("ports did not turn ACTIVE within 300 s")
        time.sleep(0.05)
    print(f"{ports} ports bound to the host: all ACTIVE {time.time() - t0:.2f} s after their taps began to appear "
          f"(making the {ports} taps took {taps:.2f} s)")
    for p in made:
        subprocess.run(["ip", "link", "del", "tap" + p[:11]], check=True)
else:
    # A raw 1 MiB image through the Image API (its endpoint from the catalog).
    cat = json.loads(urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{pi}/v3/auth/catalog", headers={"X-Auth-Token": tok})).read())
    glance = next(e["url"] for s in cat["catalog"] if s["type"] == "image" for e in s["endpoints"] if e["interface"] == "public")
    def g(method, path, body=None, ctype="application/json"):
        req = urllib.request.Request(glance + path, body, {"X-Auth-Token": tok, "Content-Type": ctype}, method=method)
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read() or b"null")
    im = g("POST", "/v2/images", json.dumps({"name": "b", "disk_format": "raw", "container_format": "bare", "visibility": "public"}).encode())
    g("PUT", f"/v2/images/{im['id']}/file", b"\0" * (1 << 20), "application/octet-stream")
    times = []
    for i in range(int(ports)):
        t0 = time.time()
        s = call(pc, "POST", "/v2.1/servers", {"server": {"name": f"b{i}", "imageRef": im["id"], "flavorRef": "1",
                                                           "networks": [{"uuid": net}]}},
                 {"OpenStack-API-Version": "compute 2.37"})["server"]["id"]
        while True:
            st = call(pc, "GET", f"/v2.1/servers/{s}")["server"]["status"]
            if st in ("ACTIVE", "ERROR"):
                break
            time.sleep(0.02)
        times.append(time.time() - t0)
        assert st == "ACTIVE", st
    times.sort()
    print(f"server boot to ACTIVE, {mode}: p50 {statistics.median(times) * 1000:.0f} ms, "
          f"p95 {times[min(len(times) - 1, round(0.95 * (len(times) - 1)))] * 1000:.0f} ms ({len(times)} boots, one at a time)")
PY
}

start state1 300
pw=$(cat "$dir/state1/admin-password")
measure "$pi" "$pc" "$pn" "$pw" "$ports" ports
measure "$pi" "$pc" "$pn" "$pw" 20 "with network-vif-plugged awaited"
kill "$pid"; wait "$pid" 2>/dev/null || true
start state2 0
pw=$(cat "$dir/state2/admin-password")
measure "$pi" "$pc" "$pn" "$pw" 20 "without the wait (vif_plugging_timeout = 0)"
