#!/usr/bin/env bash
# Image data path figures: upload (PUT /v2/images/{id}/file) and download (GET .../file) throughput of a
# file of SIZE_MIB (default 1024) over HTTP on 127.0.0.1, next to a plain `cp` of the same file on the
# same disk (followed by an fsync of the copy, as the upload fsyncs before the image turns active), and the
# server's RSS before and at its peak during the upload. Release build, embedded defaults (SQLite), a fresh
# state directory under $TMPDIR (default /tmp); the client is curl.
#
#   bench/image.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }
cargo build --release -p tessera --quiet
bin=target/release/tessera
dir=$(mktemp -d "${TMPDIR:-/tmp}/tessera-bench-image-XXXXXX")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
iport=$(free_port)
gport=$(free_port)
printf '[identity]\nbind_port = %s\n[image]\nbind_port = %s\n[placement]\nbind_port = %s\n[network]\nbind_port = %s\n' "$iport" "$gport" "$(free_port)" "$(free_port)" > "$dir/bench.conf"
"$bin" --config "$dir/bench.conf" all-in-one --state-dir "$dir/state" > "$dir/out" 2> "$dir/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q ready "$dir/out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$dir/out" || { cat "$dir/log"; exit 1; }

pw=$(cat "$dir/state/admin-password")
body="{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"},\"password\":\"$pw\"}}},\"scope\":{\"project\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"}}}}}"
token=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$iport/v3/auth/tokens" \
  | awk 'tolower($1)=="x-subject-token:" {print $2}' | tr -d '\r')
[ -n "$token" ] || { echo "could not get a token" >&2; exit 1; }
img="http://127.0.0.1:$gport/v2/images"
id=$(curl -sf -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \
  -d '{"name": "bench", "disk_format": "raw", "container_format": "bare"}' "$img" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

echo "== writing a ${mib} MiB file of random data"
src="$dir/src.raw"
head -c "$((mib * 1024 * 1024))" /dev/urandom > "$src"
sync "$src"
bytes=$(stat -c %s "$src")

now() { date +%s.%N; }
mibps() { awk -v b="$bytes" -v s="$1" -v e="$2" 'BEGIN {printf "%.0f", b / 1048576 / (e - s)}'; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }

echo "== cp (+ fsync of the copy)"
t0=$(now); cp "$src" "$dir/copy.raw"; sync "$dir/copy.raw"; t1=$(now)
cp_rate=$(mibps "$t0" "$t1")
rm -f "$dir/copy.raw"

echo "== upload: PUT /v2/images/$id/file"
rss_before=$(rss_kb)
echo "$rss_before" > "$dir/peak"
( while kill -0 $pid 2>/dev/null && [ ! -e "$dir/upload.done" ]; do
    r=$(rss_kb); [ "$r" -gt "$(cat "$dir/peak")" ] && echo "$r" > "$dir/peak"; sleep 0.05
  done ) &
sampler=$!
t0=$(now)
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "X-Auth-Token: $token" \
  -H 'Content-Type: application/octet-stream' -T "$src" "$img/$id/file")
t1=$(now)
touch "$dir/upload.done"; wait $sampler
[ "$code" = 204 ] || { echo "upload failed: HTTP $code" >&2; tail -5 "$dir/log"; exit 1; }
up_rate=$(mibps "$t0" "$t1")
rss_peak=$(cat "$dir/peak")

echo "== download: GET /v2/images/$id/file"
t0=$(now)
curl -sf -H "X-Auth-Token: $token" -o "$dir/down.raw" "$img/$id/file"
sync "$dir/down.raw"
t1=$(now)
down_rate=$(mibps "$t0" "$t1")
cmp -s "$src" "$dir/down.raw" || { echo "downloaded data differs" >&2; exit 1; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
printf '\n%-52s %s\n' "figure (${mib} MiB file)" "value"
printf '%-52s %s MiB/s\n' "cp + fsync" "$cp_rate"
printf '%-52s %s MiB/s (%s of cp)\n' "upload, PUT /v2/images/{id}/file (fsync included)" "$up_rate" "$(ratio "$up_rate" "$cp_rate")"
printf '%-52s %s MiB/s (%s of cp)\n' "download, GET /v2/images/{id}/file to a file + fsync" "$down_rate" "$(ratio "$down_rate" "$cp_rate")"
printf '%-52s %s MB\n' "server RSS before the upload" "$(mb "$rss_before")"
printf '%-52s %s MB (+%s MB)\n' "server RSS peak during the upload" "$(mb "$rss_peak")" "$(mb $((rss_peak - rss_before)))"
