#!/usr/bin/env bash
# Identity figures: token validation (HEAD /v3/auth/tokens) and token issue (password) throughput over HTTP,
# and the RSS of an idle all-in-one. Runs a release build of tessera with production defaults (Argon2id
# m=19 MiB, t=2) on SQLite in a fresh state directory on 127.0.0.1; load comes from wrk on the same machine.
#
#   bench/identity.sh [DURATION_SECONDS]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release -p tessera --quiet
bin=target/release/tessera
dir=$(mktemp -d /tmp/tessera-bench-XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
printf '[identity]\nbind_port = %s\n[image]\nbind_port = %s\n[placement]\nbind_port = %s\n[network]\nbind_port = %s\n' "$port" "$(free_port)" "$(free_port)" "$(free_port)" > "$dir/bench.conf"
"$bin" --config "$dir/bench.conf" all-in-one --state-dir "$dir" > "$dir/out" 2> "$dir/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q ready "$dir/out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$dir/out" || { cat "$dir/log"; exit 1; }
ready_ms=$(sed -n 's/.*ready in \([0-9]*\) ms.*/\1/p' "$dir/out")
sleep 1
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
idle_rss=$(rss_kb)

url="http://127.0.0.1:$port/v3"
pw=$(cat "$dir/admin-password")
body="{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"},\"password\":\"$pw\"}}},\"scope\":{\"project\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"}}}}}"
token=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' -d "$body" "$url/auth/tokens" | awk 'tolower($1)=="x-subject-token:" {print $2}' | tr -d '\r')
[ -n "$token" ] || { echo "could not get a token" >&2; exit 1; }

cat > "$dir/validate.lua" <<LUA
wrk.method = "HEAD"
wrk.headers["X-Auth-Token"] = "$token"
wrk.headers["X-Subject-Token"] = "$token"
LUA
cat > "$dir/issue.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
LUA

rate() { awk '/Requests\/sec/ {print $2}'; }
non2xx() { awk '/Non-2xx/ {print $NF}'; }
echo "== token validation: HEAD /v3/auth/tokens, wrk -t2 -c64 -d${dur}s"
wrk -t2 -c64 -d"${dur}s" -s "$dir/validate.lua" "$url/auth/tokens" > "$dir/validate.txt"
cat "$dir/validate.txt"
echo "== token issue (password): POST /v3/auth/tokens, wrk -t2 -c8 -d${dur}s"
wrk -t2 -c8 -d"${dur}s" -s "$dir/issue.lua" "$url/auth/tokens" > "$dir/issue.txt"
cat "$dir/issue.txt"
loaded_rss=$(rss_kb)

printf '\n%-48s %s\n' "figure" "tessera"
printf '%-48s %s\n' "token validation, HEAD /v3/auth/tokens (req/s)" "$(rate < "$dir/validate.txt")"
printf '%-48s %s\n' "  non-2xx responses" "$(non2xx < "$dir/validate.txt" || true)"
printf '%-48s %s\n' "token issue, password (req/s)" "$(rate < "$dir/issue.txt")"
printf '%-48s %s\n' "  non-2xx responses" "$(non2xx < "$dir/issue.txt" || true)"
printf '%-48s %s MB\n' "all-in-one idle RSS" "$(awk -v k="$idle_rss" 'BEGIN {printf "%.1f", k/1024}')"
printf '%-48s %s MB\n' "all-in-one RSS after the load" "$(awk -v k="$loaded_rss" 'BEGIN {printf "%.1f", k/1024}')"
printf '%-48s %s ms\n' "all-in-one start (first start, incl. bootstrap)" "$ready_ms"
