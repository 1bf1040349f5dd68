#!/usr/bin/env bash
# Boot pipeline figures (issue 5): an all-in-one with 2 cells and 100 fake-driver hosts (50 per cell,
# SQLite databases and in-process buses, the defaults), N servers booted through the Compute API one POST
# each (CONCURRENCY at a time, m1.tiny, networks "none"), waited for until all are ACTIVE, listed with
# 50 × GET /servers/detail?limit=1000, deleted (CONCURRENCY at a time) and waited for until the listing is
# empty. The load client is compiled (crates/loadgen) so it costs the two cores little.
#
#   bench/boot.sh [SERVERS] [CONCURRENCY]        (default: 1000 8)
#
# Nova is not run here (it needs RabbitMQ, Keystone, Glance and Placement around it); its figures on this
# machine are quoted from the issue in docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
conc=${2:-8}
cargo build --release -p tessera -p tessera-loadgen --quiet
dir=$(mktemp -d /tmp/tessera-boot-bench.XXXXXX)
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
[all_in_one]
cells = 2
hosts_per_cell = 50
[quota]
instances = -1
cores = -1
ram = -1
CONF
target/release/tessera --config "$dir/bench.conf" all-in-one --state-dir "$dir" > "$dir/ready" 2> "$dir/log" &
pid=$!
for _ in $(seq 1 600); do
  grep -q ready "$dir/ready" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { tail -20 "$dir/log"; exit 1; }
  sleep 0.2
done
grep -q ready "$dir/ready" || { echo "all-in-one did not start" >&2; tail -20 "$dir/log"; exit 1; }
echo "== $(cat "$dir/ready")"
pw=$(cat "$dir/admin-password")
token=$(curl -s -i -X POST "http://127.0.0.1:$pi/v3/auth/tokens" -H 'Content-Type: application/json' \
  -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"},\"password\":\"$pw\"}}},\"scope\":{\"project\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"}}}}}" \
  | awk 'tolower($1)=="x-subject-token:"{print $2}' | tr -d '\r')
img=$(curl -s -X POST "http://127.0.0.1:$pg/v2/images" -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \
  -d '{"name":"bench","disk_format":"raw","container_format":"bare"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
head -c 65536 /dev/urandom | curl -s -f -X PUT "http://127.0.0.1:$pg/v2/images/$img/file" -H "X-Auth-Token: $token" \
  -H 'Content-Type: application/octet-stream' --data-binary @-
rss_idle=$(ps -o rss= -p $pid)
echo "== booting $n servers, $conc at a time, on 100 fake hosts in 2 cells"
out=$(target/release/tessera-loadgen servers "http://127.0.0.1:$pc/v2.1" "$token" "$img" "$n" "$conc")
rss=$(ps -o rss= -p $pid)
python3 - "$out" "$rss_idle" "$rss" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"servers                          {r['servers']} (concurrency {r['concurrency']})")
print(f"boot (POST → all ACTIVE)         {r['boot_per_s']:.1f} servers/s ({r['boot_seconds']:.2f} s; POSTs took {r['post_seconds']:.2f} s)")
print(f"GET /servers/detail?limit=1000   p50 {r['detail_p50_ms']:.1f} ms, p95 {r['detail_p95_ms']:.1f} ms")
print(f"delete (DELETE → list empty)     {r['delete_per_s']:.1f} servers/s ({r['delete_seconds']:.2f} s)")
print(f"RSS of the all-in-one            {int(sys.argv[2])/1024:.1f} MB idle, {int(sys.argv[3])/1024:.1f} MB after the run")
PY
