#!/usr/bin/env bash
# Run every test: Rust unit and in-process integration tests (on SQLite, and on PostgreSQL / MariaDB when
# TESSERA_TEST_POSTGRES_URL / TESSERA_TEST_MYSQL_URL are set, and the RabbitMQ bus when TESSERA_TEST_RABBIT_URL
# is — see scripts/start-test-databases.sh), then the
# client-compatibility suite, which spawns `tessera all-in-one` and drives the unmodified, pinned `openstack`
# CLI from a venv created here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f .test-databases.env ] && [ -z "${TESSERA_TEST_POSTGRES_URL:-}${TESSERA_TEST_MYSQL_URL:-}${TESSERA_TEST_RABBIT_URL:-}" ]; then
  # shellcheck disable=SC1091
  set -a; source ./.test-databases.env; set +a
fi
echo "== database backends: sqlite${TESSERA_TEST_POSTGRES_URL:+ postgresql}${TESSERA_TEST_MYSQL_URL:+ mysql}"
echo "== bus backends: in-process${TESSERA_TEST_RABBIT_URL:+ rabbitmq}"

echo "== cargo build"
cargo build --workspace --all-targets --quiet

echo "== cargo test"
cargo test --workspace --quiet -- --test-threads=2

venv=.venv
if ! "$venv/bin/python" -c 'import openstackclient, pytest' 2>/dev/null \
   || ! cmp -s tests/clients/requirements.txt "$venv/.requirements" ; then
  echo "== creating $venv with the pinned OpenStack clients"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
  cp tests/clients/requirements.txt "$venv/.requirements"
fi

echo "== client compatibility suite (openstack CLI)"
TESSERA_BIN="$PWD/target/debug/tessera" PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pytest" -q tests/clients
