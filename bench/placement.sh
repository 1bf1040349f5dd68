#!/usr/bin/env bash
# Placement figures next to openstack-placement 16.0.0 in one run (see bench/placement_bench.py for what is
# measured). Needs PostgreSQL on 127.0.0.1 (scripts/start-test-databases.sh starts one and writes its admin
# URL to .test-databases.env; or set TESSERA_TEST_POSTGRES_URL), a C compiler and python3-dev (uWSGI is built
# by pip). The upstream service is installed from PyPI into bench/.venv-placement on first use.
#
#   [RUNS=K] bench/placement.sh [SIZES...]   (default: 1000 10000; K runs of each server, 3 by default,
#                                           figures are their medians)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .test-databases.env ] && source .test-databases.env
pg=${TESSERA_TEST_POSTGRES_URL:?PostgreSQL is needed: run scripts/start-test-databases.sh or set TESSERA_TEST_POSTGRES_URL}
command -v psql >/dev/null || { echo "psql is needed (postgresql-client)" >&2; exit 1; }
venv=bench/.venv-placement
if ! [ -x "$venv/bin/uwsgi" ] || ! "$venv/bin/python" -c 'import placement' 2>/dev/null; then
  echo "== installing openstack-placement 16.0.0, uWSGI and psycopg2 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check openstack-placement==16.0.0 uwsgi psycopg2-binary
fi
cargo build --release -p tessera -p tessera-loadgen --quiet
exec python3 bench/placement_bench.py "$PWD/target/release/tessera" "$PWD/target/release/tessera-loadgen" "$PWD/$venv" "$pg" "$@"
