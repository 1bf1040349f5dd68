"""Servers with the unmodified `openstack` CLI against `all-in-one --cells 2 --hosts-per-cell 2`: the Cells v2
boot landing in both cells, cell0 for what cannot be placed, power actions, networks auto/none, delete; and
a cloud killed with SIGKILL in the middle of boots that finishes or rolls back every one of them on restart."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import TESSERA, Cloud, start_cloud, stop

PER_TINY = 1 + 512 + 1  # VCPU + MEMORY_MB + DISK_GB of m1.tiny


@pytest.fixture(scope="module")
def cells_cloud():
    d = tempfile.mkdtemp(prefix="tessera-servers-")
    proc, line = start_cloud(d, "[all_in_one]\ncells = 2\nhosts_per_cell = 2\n[quota]\ninstances = 20\ncores = 40\n")
    c = Cloud(d, proc, line)
    img = os.path.join(d, "img.raw")
    with open(img, "wb") as f:
        f.write(os.urandom(64 * 1024))
    c.os("image", "create", "--disk-format", "raw", "--container-format", "bare", "--file", img, "cirros")
    yield c
    stop(proc)
    shutil.rmtree(d, ignore_errors=True)


def manage(c, *args):
    return subprocess.run([TESSERA, "--config", os.path.join(c.state_dir, "tessera.conf"), "manage", "cell_v2", *args],
                          capture_output=True, text=True, timeout=60)


def total_usage(c):
    """Sum of every provider's usages, read with openstacksdk (one process, not one CLI run per provider)."""
    import openstack.config
    import openstack.connection
    cfg = openstack.config.OpenStackConfig(config_files=[os.path.join(c.state_dir, "clouds.yaml")])
    conn = openstack.connection.Connection(config=cfg.get_one("tessera"))
    total = 0
    for rp in conn.placement.resource_providers():
        r = conn.placement.get(f"/resource_providers/{rp.id}/usages")
        total += sum(r.json()["usages"].values())
    conn.close()
    return total


def test_multi_create_lands_in_both_cells(cells_cloud):
    c = cells_cloud
    c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--no-network", "--wait",
         "--min", "8", "--max", "8", "vm", "-f", "json")
    servers = c.os("server", "list", "--long", "-f", "json")
    mine = [s for s in servers if s["Name"].startswith("vm-")]
    assert len(mine) == 8 and all(s["Status"] == "ACTIVE" for s in mine), mine
    hosts = {s["Host"] for s in mine}
    assert any(h.startswith("cell1-") for h in hosts) and any(h.startswith("cell2-") for h in hosts), hosts
    shown = c.os("server", "show", "vm-3", "-f", "json")
    assert shown["OS-EXT-SRV-ATTR:host"] in hosts and shown["status"] == "ACTIVE"
    assert shown["addresses"] == {} and shown["flavor"]["original_name"] == "m1.tiny"
    listed = manage(c, "list_hosts")
    assert listed.returncode == 0
    for h in hosts:
        cell = h.split("-")[0]
        assert any(line.split("|")[1].strip() == cell and line.split("|")[3].strip() == h
                   for line in listed.stdout.splitlines() if line.startswith("|")), listed.stdout
    assert total_usage(c) >= 8 * PER_TINY


def test_an_impossible_flavor_ends_in_cell0(cells_cloud):
    c = cells_cloud
    c.os("flavor", "create", "--vcpus", "1", "--ram", "64", "--disk", "100000", "too-big")
    p = c.os("server", "create", "--flavor", "too-big", "--image", "cirros", "--no-network", "--wait", "big",
             check=False)
    assert p.returncode != 0
    s = c.os("server", "show", "big", "-f", "json")
    assert s["status"] == "ERROR"
    assert s["fault"]["message"].startswith("No valid host was found"), s["fault"]
    r = manage(c, "verify_instance", "--uuid", s["id"])
    assert r.returncode == 0 and "is in cell: cell0 (00000000-0000-0000-0000-000000000000)" in r.stdout, r.stdout
    c.os("server", "delete", "--wait", "big")


def test_power_actions(cells_cloud):
    c = cells_cloud
    c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--no-network", "--wait", "pwr")
    c.os("server", "stop", "pwr")
    for _ in range(100):
        if c.os("server", "show", "pwr", "-f", "json")["status"] == "SHUTOFF":
            break
        time.sleep(0.1)
    assert c.os("server", "show", "pwr", "-f", "json")["status"] == "SHUTOFF"
    p = c.os("server", "stop", "pwr", check=False)
    assert p.returncode != 0 and "409" in p.stderr + p.stdout
    c.os("server", "start", "pwr")
    c.os("server", "reboot", "--hard", "--wait", "pwr")
    assert c.os("server", "show", "pwr", "-f", "json")["status"] == "ACTIVE"
    c.os("server", "delete", "--wait", "pwr")


def test_auto_network_addresses_and_delete(cells_cloud):
    c = cells_cloud
    # No network named: the CLI sends networks "auto"; the project has no network, so the Networking service
    # auto-allocates one (with a router to the external network `public`) and the server gets a port on it.
    s = c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--wait", "net1", "-f", "json")
    addrs = s["addresses"]
    assert list(addrs) == ["auto_allocated_network"], addrs
    assert addrs["auto_allocated_network"][0].startswith("10.128."), addrs
    ports = c.os("port", "list", "--server", "net1", "-f", "json")
    assert len(ports) == 1 and ports[0]["Fixed IP Addresses"][0]["ip_address"] == addrs["auto_allocated_network"][0]
    before = total_usage(c)
    c.os("server", "delete", "--wait", "net1")
    assert c.os("port", "list", "--device-owner", "compute:nova", "-f", "json") == []
    assert total_usage(c) == before - PER_TINY
    names = [s["Name"] for s in c.os("server", "list", "-f", "json")]
    assert "net1" not in names
    p = c.os("server", "show", "net1", check=False)
    assert p.returncode != 0


def test_bad_requests_are_nova_errors(cells_cloud):
    c = cells_cloud
    p = c.os("server", "create", "--flavor", "no-such-flavor", "--image", "cirros", "--no-network", "x", check=False)
    assert p.returncode != 0
    p = c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--network", "nonexistent", "x",
             check=False)
    assert p.returncode != 0
    names = [s["Name"] for s in c.os("server", "list", "-f", "json")]
    assert "x" not in names


def test_a_killed_cloud_finishes_or_rolls_back_its_boots(tmp_path):
    """SIGKILL while twelve boots are in flight (fake spawns take a second); after a restart every server is
    ACTIVE, SHUTOFF (a guest the fake driver lost with the process) or ERROR with a fault, none stays in BUILD,
    no build request is left, and placement holds allocations for exactly the servers that keep them."""
    d = str(tmp_path)
    conf = "[all_in_one]\ncells = 2\nhosts_per_cell = 2\n[fake]\nspawn_delay_ms = 1000\n[quota]\ninstances = -1\ncores = -1\nram = -1\n"
    proc, line = start_cloud(d, conf)
    c = Cloud(d, proc, line)
    try:
        img = os.path.join(d, "img.raw")
        with open(img, "wb") as f:
            f.write(os.urandom(4096))
        c.os("image", "create", "--disk-format", "raw", "--container-format", "bare", "--file", img, "cirros")
        c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--no-network",
             "--min", "12", "--max", "12", "crash")
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)
    proc, line = start_cloud(d, conf)
    c = Cloud(d, proc, line)
    try:
        states = []
        for _ in range(200):
            states = c.os("server", "list", "-f", "json")
            if len(states) == 12 and all(s["Status"] in ("ACTIVE", "SHUTOFF", "ERROR") for s in states):
                break
            time.sleep(0.2)
        assert len(states) == 12 and all(s["Status"] in ("ACTIVE", "SHUTOFF", "ERROR") for s in states), states
        for s in states:
            if s["Status"] == "ERROR":
                assert c.os("server", "show", s["ID"], "-f", "json").get("fault"), s
        import sqlite3
        with sqlite3.connect(os.path.join(d, "nova_api.sqlite")) as db:
            assert db.execute("SELECT COUNT(*) FROM build_requests").fetchone()[0] == 0
        keep = sum(1 for s in states if s["Status"] in ("ACTIVE", "SHUTOFF"))
        for _ in range(50):
            if total_usage(c) == keep * PER_TINY:
                break
            time.sleep(0.2)
        assert total_usage(c) == keep * PER_TINY, (keep, states)
        # And everything can be deleted.
        c.os("server", "delete", "--wait", *[s["ID"] for s in states])
        assert total_usage(c) == 0
    finally:
        stop(proc)


def test_server_groups_keep_members_apart_or_together(cells_cloud):
    c = cells_cloud
    anti = c.os("server", "group", "create", "--policy", "anti-affinity", "sg-anti", "-f", "json")
    assert anti["policy"] == "anti-affinity" or anti.get("policies") == "anti-affinity", anti
    aff = c.os("server", "group", "create", "--policy", "affinity", "sg-aff", "-f", "json")
    c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--no-network", "--wait",
         "--hint", f"group={anti['id']}", "--min", "3", "--max", "3", "sga", "-f", "json")
    c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--no-network", "--wait",
         "--hint", f"group={aff['id']}", "--min", "2", "--max", "2", "sgf", "-f", "json")
    servers = c.os("server", "list", "--long", "-f", "json")
    apart = [s for s in servers if s["Name"].startswith("sga-")]
    together = [s for s in servers if s["Name"].startswith("sgf-")]
    assert len(apart) == 3 and len({s["Host"] for s in apart}) == 3, apart
    assert len(together) == 2 and len({s["Host"] for s in together}) == 1, together
    shown = c.os("server", "group", "show", "sg-anti", "-f", "json")
    assert sorted(shown["members"].split(", ") if isinstance(shown["members"], str) else shown["members"]) == \
        sorted(s["ID"] for s in apart), shown
    names = {g["Name"] for g in c.os("server", "group", "list", "-f", "json")}
    assert {"sg-anti", "sg-aff"} <= names
    # An unknown group is refused before anything is written.
    p = c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--no-network",
             "--hint", "group=4f1c1c43-0000-4000-8000-000000000000", "nope", check=False)
    assert p.returncode != 0 and "could not be found" in p.stderr, p.stderr
    c.os("server", "delete", "--wait", *[s["ID"] for s in apart + together])
    c.os("server", "group", "delete", "sg-anti", "sg-aff")
    assert not {"sg-anti", "sg-aff"} & {g["Name"] for g in c.os("server", "group", "list", "-f", "json")}
