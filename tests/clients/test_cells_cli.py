"""`tessera manage cell_v2 …` end to end with the binary: nova-manage's commands, output and exit codes."""

import os
import re
import sqlite3
import subprocess
import uuid

from conftest import TESSERA, start_cloud, stop

CELL0 = "00000000-0000-0000-0000-000000000000"


def manage(conf, *args):
    return subprocess.run([TESSERA, "--config", conf, "manage", "cell_v2", *args],
                          capture_output=True, text=True, timeout=60)


def write_conf(d, api_url=None):
    conf = os.path.join(d, "nova.conf")
    with open(conf, "w") as f:
        f.write(f"[DEFAULT]\nstate_path = {d}\ntransport_url = inproc://default\n"
                f"[api_database]\nconnection = {api_url or f'sqlite:///{d}/api.sqlite'}\n"
                f"[database]\nconnection = sqlite:///{d}/main.sqlite\n")
    return conf


def add_compute_node(db_path, host):
    with sqlite3.connect(db_path) as c:
        c.execute(
            "INSERT INTO compute_nodes (uuid, service_id, host, hypervisor_hostname, hypervisor_type, "
            "hypervisor_version, vcpus, memory_mb, local_gb, vcpus_used, memory_mb_used, local_gb_used, running_vms, "
            "cpu_allocation_ratio, ram_allocation_ratio, disk_allocation_ratio, mapped, created_at, updated_at, deleted) "
            "VALUES (?, NULL, ?, ?, 'fake', 1, 8, 8192, 100, 0, 0, 0, 0, 4.0, 1.0, 1.0, 0, 0, 0, 0)",
            (str(uuid.uuid4()), host, host))


def add_instance(db_path, host):
    u = str(uuid.uuid4())
    with sqlite3.connect(db_path) as c:
        c.execute(
            "INSERT INTO instances (uuid, project_id, user_id, host, vm_state, power_state, flavor, memory_mb, vcpus, "
            "root_gb, ephemeral_gb, locked, progress, launch_index, created_at, updated_at, deleted) "
            "VALUES (?, 'p1', 'u1', ?, 'active', 1, '{}', 512, 1, 1, 0, 0, 0, 0, 1, 1, 0)", (u, host))
    return u


def test_cell_lifecycle_with_nova_manage_exit_codes(tmp_path):
    d = str(tmp_path)
    conf = write_conf(d)
    r = manage(conf, "list_cells")
    assert r.returncode == 0, r.stderr
    assert "Name" in r.stdout and "Database Connection" in r.stdout

    r = manage(conf, "map_cell0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.path.exists(f"{d}/main.sqlite_cell0"), "cell0's database is derived from [database] connection"
    r = manage(conf, "map_cell0")
    assert r.returncode == 0 and "Cell0 is already setup" in r.stdout

    cell1_db = f"{d}/cell1.sqlite"
    args = ["create_cell", "--name", "cell1", "--database_connection", f"sqlite:///{cell1_db}",
            "--transport-url", "rabbit://guest:s3cret@127.0.0.1:5672/", "--verbose"]
    r = manage(conf, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    cell1 = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f-]{36}", cell1)
    assert os.path.exists(cell1_db), "create_cell creates the cell's schema"
    # The same database/transport pair again: 2.
    r = manage(conf, *args)
    assert r.returncode == 2 and f"already exists for another cell with uuid {cell1}" in r.stdout
    # A transport nobody speaks: 1.
    r = manage(conf, "create_cell", "--name", "x", "--database_connection", f"sqlite:///{d}/x.sqlite",
               "--transport-url", "carrier-pigeon://coop")
    assert r.returncode == 1 and "Invalid transport URL" in r.stdout

    r = manage(conf, "list_cells")
    assert r.returncode == 0
    assert "rabbit://guest:****@127.0.0.1:5672/" in r.stdout and "s3cret" not in r.stdout
    lines = [l for l in r.stdout.splitlines() if l.startswith("|")]
    assert [l.split("|")[1].strip() for l in lines] == ["Name", "cell0", "cell1"]
    assert "none:///" in r.stdout and CELL0 in r.stdout
    assert "s3cret" in manage(conf, "list_cells", "--verbose").stdout

    # Hosts: nothing to discover yet (--strict says so), then a compute node appears in cell1.
    assert manage(conf, "discover_hosts", "--strict").returncode == 1
    add_compute_node(cell1_db, "cmp1")
    r = manage(conf, "discover_hosts", "--verbose")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Skipping cell0 since it does not contain hosts." in r.stdout
    assert "Creating host mapping for compute host 'cmp1'" in r.stdout
    assert f"Found 1 unmapped computes in cell: {cell1}" in r.stdout
    assert manage(conf, "discover_hosts", "--strict").returncode == 1
    r = manage(conf, "list_hosts")
    assert r.returncode == 0 and re.search(rf"\|\s+cell1\s+\|\s+{cell1}\s+\|\s+cmp1\s+\|", r.stdout), r.stdout
    assert manage(conf, "list_hosts", "--cell_uuid", str(uuid.uuid4())).returncode == 1

    # Instances: mapped by map_instances, checked by verify_instance.
    inst = add_instance(cell1_db, "cmp1")
    assert manage(conf, "verify_instance", "--uuid", inst).returncode == 1
    r = manage(conf, "map_instances", "--cell_uuid", cell1)
    assert r.returncode == 0, r.stdout + r.stderr
    r = manage(conf, "verify_instance", "--uuid", inst)
    assert r.returncode == 0 and f"Instance {inst} is in cell: cell1 ({cell1})" in r.stdout
    assert manage(conf, "map_instances", "--cell_uuid", cell1, "--max-count", "0").returncode == 127

    # The host has an instance, the cell has hosts and instances.
    assert manage(conf, "delete_host", "--cell_uuid", cell1, "--host", "cmp1").returncode == 4
    assert manage(conf, "delete_host", "--cell_uuid", cell1, "--host", "nope").returncode == 2
    assert manage(conf, "delete_host", "--cell_uuid", CELL0, "--host", "cmp1").returncode == 3
    assert manage(conf, "delete_cell", "--cell_uuid", cell1).returncode == 2
    assert manage(conf, "delete_cell", "--cell_uuid", cell1, "--force").returncode == 3

    # Enable/disable rules.
    assert manage(conf, "update_cell", "--cell_uuid", CELL0, "--disable").returncode == 5
    assert manage(conf, "update_cell", "--cell_uuid", cell1, "--disable", "--enable").returncode == 4
    assert manage(conf, "update_cell", "--cell_uuid", cell1, "--disable").returncode == 0
    assert re.search(r"\|\s+cell1\s+\|.*\|\s+True\s+\|", manage(conf, "list_cells").stdout)
    r = manage(conf, "update_cell", "--cell_uuid", cell1, "--database_connection", f"sqlite:///{d}/main.sqlite_cell0")
    assert r.returncode == 3, "cell0's database belongs to another cell"
    assert manage(conf, "update_cell", "--cell_uuid", str(uuid.uuid4()), "--enable").returncode == 1

    # The instance is deleted but still mapped: 3; then the cell goes with --force only.
    with sqlite3.connect(cell1_db) as c:
        c.execute("UPDATE instances SET deleted = id WHERE uuid = ?", (inst,))
    assert manage(conf, "verify_instance", "--uuid", inst).returncode == 3
    assert manage(conf, "delete_cell", "--cell_uuid", cell1).returncode == 2
    r = manage(conf, "delete_cell", "--cell_uuid", cell1, "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cell1" not in manage(conf, "list_cells").stdout
    assert manage(conf, "verify_instance", "--uuid", inst).returncode == 1
    with sqlite3.connect(cell1_db) as c:
        assert c.execute("SELECT mapped FROM compute_nodes").fetchall() == [(0,)], "--force unmaps the nodes"
    assert manage(conf, "delete_cell", "--cell_uuid", cell1).returncode == 1


def test_simple_cell_setup_maps_the_configured_cell(tmp_path):
    d = str(tmp_path)
    conf = write_conf(d)
    # No compute hosts yet: 1.
    r = manage(conf, "simple_cell_setup")
    assert r.returncode == 1 and "No hosts found to map to cell, exiting." in r.stdout
    add_compute_node(f"{d}/main.sqlite", "solo")
    inst = add_instance(f"{d}/main.sqlite", "solo")
    r = manage(conf, "simple_cell_setup", "--transport-url", "rabbit://u:p@127.0.0.1/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Cell0 is already setup" in r.stdout
    assert manage(conf, "verify_instance", "--uuid", inst).returncode == 0
    assert "solo" in manage(conf, "list_hosts").stdout


def test_an_unreachable_api_database_is_error_255(tmp_path):
    conf = write_conf(str(tmp_path), api_url="postgresql://nova:pw@127.0.0.1:1/nova_api")
    r = manage(conf, "list_cells")
    assert r.returncode == 255
    assert r.stdout.startswith("An error has occurred:")
    assert "pw" not in r.stdout, "the password is masked"


def test_all_in_one_cells_are_ordinary_cell_mappings(tmp_path):
    """`all-in-one` with `[all_in_one] cells = 2` creates its cells as create_cell does; `manage cell_v2`
    works against the running cloud's state directory, and a restart keeps the same cells."""
    d = str(tmp_path)
    proc, line = start_cloud(d, "[all_in_one]\ncells = 2\nhosts_per_cell = 2\n")
    try:
        assert "cells cell0, cell1, cell2 (4 compute hosts)" in line, line
        conf = os.path.join(d, "tessera.conf")
        r = manage(conf, "list_cells")
        assert r.returncode == 0, r.stdout + r.stderr
        rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[2:-1]]
                for l in r.stdout.splitlines() if l.startswith("|")}
        assert rows["cell0"][0] == CELL0 and rows["cell0"][1] == "none:///"
        assert rows["cell1"][1] == "inproc://cell1" and rows["cell1"][2].endswith("/cell1.sqlite")
        assert rows["cell2"][1] == "inproc://cell2" and rows["cell2"][2].endswith("/cell2.sqlite")
        assert os.path.exists(os.path.join(d, "cell2.sqlite")) and os.path.exists(os.path.join(d, "cell0.sqlite"))
        # The hosts registered through their cells' conductors and were discovered into their cells.
        r = manage(conf, "list_hosts")
        hosts = {l.split("|")[3].strip(): l.split("|")[1].strip() for l in r.stdout.splitlines()
                 if l.startswith("|") and "compute" in l}
        assert hosts == {"cell1-compute1": "cell1", "cell1-compute2": "cell1",
                         "cell2-compute1": "cell2", "cell2-compute2": "cell2"}, r.stdout
        with sqlite3.connect(os.path.join(d, "cell2.sqlite")) as c:
            assert sorted(c.execute("SELECT service_binary, host FROM services").fetchall()) == [
                ("nova-compute", "cell2-compute1"), ("nova-compute", "cell2-compute2"),
                ("nova-conductor", "cell2-conductor")]
        assert manage(conf, "discover_hosts", "--strict").returncode == 1, "nothing left to discover"
    finally:
        stop(proc)
    proc, line = start_cloud(d, "[all_in_one]\ncells = 2\n")
    try:
        r = manage(os.path.join(d, "tessera.conf"), "list_cells")
        assert sum(1 for l in r.stdout.splitlines() if l.startswith("| cell")) == 3, r.stdout
    finally:
        stop(proc)
