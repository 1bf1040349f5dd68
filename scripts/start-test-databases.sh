#!/usr/bin/env bash
# Start PostgreSQL, MariaDB and RabbitMQ on 127.0.0.1 for the database and bus test matrix and write their
# URLs to .test-databases.env. Idempotent. Needs root (it manages the Debian clusters and creates a test user).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.test-databases.env
: > "$out"

if command -v pg_ctlcluster >/dev/null; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h | grep -q "^$ver main"; then
    pg_createcluster "$ver" main >/dev/null
  fi
  sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "/etc/postgresql/$ver/main/postgresql.conf"
  pg_ctlcluster "$ver" main start 2>/dev/null || true
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
  su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='tessera'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"CREATE ROLE tessera LOGIN CREATEDB PASSWORD 'tessera'\""
  echo "TESSERA_TEST_POSTGRES_URL=postgresql://tessera:tessera@127.0.0.1:5432/postgres" >> "$out"
  echo "postgresql $ver ready on 127.0.0.1:5432"
fi

if command -v mariadbd >/dev/null || command -v mysqld >/dev/null; then
  if ! mysqladmin ping --silent 2>/dev/null; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    (mysqld_safe --bind-address=127.0.0.1 --port=3306 >/dev/null 2>&1 &)
    for _ in $(seq 1 100); do mysqladmin ping --silent 2>/dev/null && break; sleep 0.2; done
  fi
  mysql -uroot -e "CREATE USER IF NOT EXISTS 'tessera'@'127.0.0.1' IDENTIFIED BY 'tessera'; GRANT ALL ON *.* TO 'tessera'@'127.0.0.1'; CREATE USER IF NOT EXISTS 'tessera'@'localhost' IDENTIFIED BY 'tessera'; GRANT ALL ON *.* TO 'tessera'@'localhost'; FLUSH PRIVILEGES;"
  echo "TESSERA_TEST_MYSQL_URL=mysql+pymysql://tessera:tessera@127.0.0.1:3306/mysql" >> "$out"
  echo "mariadb ready on 127.0.0.1:3306"
fi

if command -v rabbitmq-server >/dev/null; then
  # Listening on 127.0.0.1 only: AMQP, the Erlang port mapper (started by the first rabbitmqctl too) and
  # the node's distribution port.
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_NODENAME=rabbit@localhost
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  if ! rabbitmqctl -q -n rabbit@localhost status >/dev/null 2>&1; then
    (rabbitmq-server >/tmp/rabbitmq-server.log 2>&1 &)
    for _ in $(seq 1 150); do rabbitmqctl -q -n rabbit@localhost await_startup >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  rabbitmqctl -q -n rabbit@localhost list_users 2>/dev/null | grep -q '^tessera' \
    || rabbitmqctl -q -n rabbit@localhost add_user tessera tessera >/dev/null
  # The default virtual host carries the API-level bus in tests; each cell gets its own, as Nova advises.
  for vh in / tessera_cell1 tessera_cell2; do
    [ "$vh" = / ] || rabbitmqctl -q -n rabbit@localhost add_vhost "$vh" >/dev/null 2>&1 || true
    rabbitmqctl -q -n rabbit@localhost set_permissions -p "$vh" tessera '.*' '.*' '.*' >/dev/null
  done
  echo "TESSERA_TEST_RABBIT_URL=rabbit://tessera:tessera@127.0.0.1:5672/" >> "$out"
  echo "rabbitmq ready on 127.0.0.1:5672"
fi
