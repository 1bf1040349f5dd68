#!/usr/bin/env bash
# Run OpenStack's own Tempest (tempest==47.0.0 from PyPI, in its own venv) against a fresh all-in-one:
# the Networking API tests for networks, subnets, ports, routers, security groups and floating IPs.
# Cinder and Swift are unavailable. Prints the pass/fail/skip counts and the failing tests by name; the full
# results are left in $TEMPEST_OUT (default /tmp/tessera-tempest).
#
#   scripts/tempest.sh [REGEX]      (default: the network API modules listed below)
#   TESSERA_BIN=path/to/tessera scripts/tempest.sh   (default: a debug build of this checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${TEMPEST_VENV:-$root/.venv-tempest}
out=${TEMPEST_OUT:-/tmp/tessera-tempest}
concurrency=${TEMPEST_CONCURRENCY:-2}
regex=${1:-'^tempest\.api\.network\.(test_networks|test_networks_negative|test_ports|test_routers|test_routers_negative|test_security_groups|test_security_groups_negative|test_floating_ips|test_floating_ips_negative|test_extensions|admin\.test_external_network_extension|admin\.test_floating_ips_admin_actions|admin\.test_routers|admin\.test_ports|admin\.test_quotas)\b'}

if [ ! -x "$venv/bin/tempest" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'tempest==47.0.0'
fi
if [ -z "${TESSERA_BIN:-}" ]; then
    cargo build -q -p tessera
    TESSERA_BIN=$root/target/debug/tessera
fi

# With root and network namespaces, the cloud runs in a namespace of its own with its network data plane on
# (bridges, DHCP, routers: router interfaces go ACTIVE as Tempest waits for), and Tempest with it; elsewhere
# the data plane is off. TEMPEST_DATA_PLANE=0 keeps it off.
data_plane=false
if [ -z "${TEMPEST_NETNS:-}" ] && [ "${TEMPEST_DATA_PLANE:-1}" = 1 ] && [ "$(id -u)" = 0 ]; then
    ns="tsr-tempest-$$"
    if ip netns add "$ns" 2>/dev/null; then
        ip -n "$ns" link set lo up
        set +e
        TEMPEST_NETNS=$ns TESSERA_BIN=$TESSERA_BIN ip netns exec "$ns" "$0" "$@"
        rc=$?
        set -e
        for p in "$out"/state/network-agent/dhcp/*/pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
        ip netns del "$ns"
        exit $rc
    fi
fi
[ -n "${TEMPEST_NETNS:-}" ] && data_plane=true
echo "== network data plane: $data_plane"

rm -rf "$out" && mkdir -p "$out"
read -r pi pg pp pc pn < <(python3 -c '
import socket
s=[socket.socket() for _ in range(5)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
cat > "$out/tessera.conf" <<CONF
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
[network_agent]
data_plane = $data_plane
[quotas]
quota_network = -1
quota_subnet = -1
quota_port = -1
quota_router = -1
quota_floatingip = -1
quota_security_group = -1
quota_security_group_rule = -1
CONF
"$TESSERA_BIN" --config "$out/tessera.conf" all-in-one --state-dir "$out/state" > "$out/ready" 2> "$out/tessera.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do grep -q ready "$out/ready" 2>/dev/null && break; sleep 0.5; done
grep -q ready "$out/ready" || { echo "tessera did not start"; tail -20 "$out/tessera.log"; exit 1; }
password=$(cat "$out/state/admin-password")

# The external network all-in-one made, and the extensions the service lists.
read -r public exts < <(python3 - "$pi" "$pn" "$password" <<'PY'
import json, sys, urllib.request
pi, pn, pw = sys.argv[1:]
body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": pw}}},
                 "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
r = urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{pi}/v3/auth/tokens", json.dumps(body).encode(), {"Content-Type": "application/json"}))
tok = r.headers["X-Subject-Token"]
get = lambda p: json.load(urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{pn}{p}", headers={"X-Auth-Token": tok})))
public = get("/v2.0/networks?name=public")["networks"][0]["id"]
exts = ",".join(e["alias"] for e in get("/v2.0/extensions")["extensions"])
print(public, exts)
PY
)

cd "$out"
# A workspace of its own (tempest keeps a registry of workspaces by name in ~/.tempest).
ws_name="tessera-$$"
"$venv/bin/tempest" init --name "$ws_name" ws > /dev/null 2>&1
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; "$venv/bin/tempest" workspace remove --name "$ws_name" > /dev/null 2>&1 || true' EXIT
cat > ws/etc/tempest.conf <<CONF
[DEFAULT]
log_dir = $out/ws/logs
log_file = tempest.log
[auth]
use_dynamic_credentials = true
create_isolated_networks = true
admin_username = admin
admin_password = $password
admin_project_name = admin
admin_domain_name = Default
default_credentials_domain_name = Default
[identity]
uri_v3 = http://127.0.0.1:$pi/v3
auth_version = v3
region = RegionOne
[identity-feature-enabled]
api_v2 = false
api_v3 = true
[network]
public_network_id = $public
floating_network_name = public
project_network_cidr = 10.100.0.0/16
project_network_mask_bits = 28
project_network_v6_cidr = 2001:db8::/48
project_network_v6_mask_bits = 64
project_networks_reachable = false
shared_physical_network = false
# Waits for port status (router interfaces going ACTIVE once the network agent has plugged them) give up
# after this many seconds (without the data plane, ports stay DOWN).
build_timeout = ${TEMPEST_BUILD_TIMEOUT:-60}
[network-feature-enabled]
api_extensions = $exts
ipv6 = true
ipv6_subnet_attributes = true
port_security = true
floating_ips = true
[service_available]
cinder = false
swift = false
neutron = true
nova = true
glance = true
[validation]
run_validation = false
CONF
cd ws
set +e
"$venv/bin/tempest" run --regex "$regex" --concurrency "$concurrency" > "$out/run.log" 2>&1
set -e
"$venv/bin/stestr" last --subunit > "$out/results.subunit" 2>/dev/null || true
grep -E "^(Totals|=======| - (Passed|Skipped|Failed|Expected Fail|Unexpected Success):|Sum of execute time)" "$out/run.log" | tail -8
echo "failed tests:"
"$venv/bin/stestr" failing --list 2>/dev/null | sed 's/\[.*//' | sort -u || true
