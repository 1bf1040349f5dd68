"""Roles as separate processes over RabbitMQ, deployed the way Nova's services are: an all-in-one running the
control plane only (`[all_in_one] cells = 0`, its super conductor on a RabbitMQ API-level bus), a cell created
with `manage cell_v2 create_cell` on its own RabbitMQ virtual host, and that cell's conductor and two compute
hosts as `tessera serve conductor` / `tessera serve compute` processes (the compute hosts hold no database
URL). Checked with the unmodified `openstack` CLI: hosts and services listed, servers booted across the two
hosts, a compute host killed with SIGKILL and restarted (a stop sent meanwhile waits in its queue), delete.

Needs TESSERA_TEST_RABBIT_URL (scripts/start-test-databases.sh starts RabbitMQ and the `tessera_cell1`
virtual host); skipped without it."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import TESSERA, Cloud, start_cloud, stop

RABBIT = os.environ.get("TESSERA_TEST_RABBIT_URL", "")

pytestmark = pytest.mark.skipif(not RABBIT, reason="TESSERA_TEST_RABBIT_URL is not set (no RabbitMQ to test with)")


def vhost_url(vhost):
    base = RABBIT.split("?")[0].rstrip("/")
    head, _, tail = base.partition("://")
    hostpart = tail.split("/")[0]
    return f"{head}://{hostpart}/{vhost}"


def serve(d, name, conf_text, role):
    conf = os.path.join(d, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    log = open(os.path.join(d, f"{name}.log"), "w")
    proc = subprocess.Popen([TESSERA, "--config", conf, "serve", role], stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.time() + 150
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "tessera serving" in line or proc.poll() is not None:
            break
    if proc.poll() is not None:
        with open(os.path.join(d, f"{name}.log")) as f:
            raise RuntimeError(f"{name} did not start:\n{f.read()[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def deployment():
    d = tempfile.mkdtemp(prefix="tessera-multiprocess-")
    run = uuid.uuid4().hex[:6]
    proc, line = start_cloud(d, f"[all_in_one]\ncells = 0\nhosts_per_cell = 0\n"
                                f"[DEFAULT]\ntransport_url = {vhost_url('')}\n")
    c = Cloud(d, proc, line)
    conf = os.path.join(d, "tessera.conf")
    cell_bus = vhost_url("tessera_cell1")
    cell_db = f"sqlite:///{d}/cell1-{run}.sqlite"
    p = subprocess.run([TESSERA, "--config", conf, "manage", "cell_v2", "create_cell", "--name", "cell1",
                        "--transport-url", cell_bus, "--database_connection", cell_db],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    with open(os.path.join(d, "admin-password")) as f:
        pw = f.read().strip()
    auth = c.openrc_env()["OS_AUTH_URL"]
    placement = (f"[placement]\nauth_url = {auth}\nusername = admin\npassword = {pw}\nproject_name = admin\n"
                 "user_domain_name = Default\nproject_domain_name = Default\n")
    procs = {}
    procs["conductor"] = serve(d, "conductor", f"[DEFAULT]\nhost = cond-{run}\ntransport_url = {cell_bus}\n"
                                               f"[database]\nconnection = {cell_db}\n{placement}", "conductor")
    hosts = [f"mp{run}-1", f"mp{run}-2"]
    # Spawns take a while so a test can kill a host in the middle of one.
    compute_confs = {h: f"[DEFAULT]\nhost = {h}\ntransport_url = {cell_bus}\n{placement}"
                        f"[fake]\nspawn_delay_ms = 6000\n" for h in hosts}
    for h in hosts:
        procs[h] = serve(d, h, compute_confs[h], "compute")
    p = subprocess.run([TESSERA, "--config", conf, "manage", "cell_v2", "discover_hosts", "--verbose"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    img = os.path.join(d, "img.raw")
    with open(img, "wb") as f:
        f.write(os.urandom(64 * 1024))
    c.os("image", "create", "--disk-format", "raw", "--container-format", "bare", "--file", img, "cirros")
    c.run, c.hosts, c.procs, c.compute_confs = run, hosts, procs, compute_confs
    yield c
    for p in procs.values():
        stop(p)
    stop(proc)
    shutil.rmtree(d, ignore_errors=True)


def test_hosts_and_services_of_separate_processes_are_listed(deployment):
    c = deployment
    hv = {h["Hypervisor Hostname"]: h for h in c.os("hypervisor", "list", "-f", "json")}
    assert set(c.hosts) <= set(hv), hv
    assert all(hv[h]["State"] == "up" for h in c.hosts)
    services = c.os("compute", "service", "list", "-f", "json")
    pairs = {(s["Binary"], s["Host"]) for s in services}
    assert ("nova-conductor", f"cond-{c.run}") in pairs, pairs
    for h in c.hosts:
        assert ("nova-compute", h) in pairs, pairs
    assert any(b == "nova-scheduler" for b, _ in pairs)


def test_boot_stop_across_a_killed_compute_host_and_delete(deployment):
    c = deployment
    c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--no-network", "--wait",
         "--min", "4", "--max", "4", "mp", "-f", "json")
    servers = {s["Name"]: s for s in c.os("server", "list", "--long", "-f", "json")}
    assert len(servers) == 4 and all(s["Status"] == "ACTIVE" for s in servers.values()), servers
    assert {s["Host"] for s in servers.values()} == set(c.hosts), servers
    # Kill the first host's process; a stop sent to one of its servers waits in the host's queue.
    victim = c.hosts[0]
    c.procs[victim].send_signal(signal.SIGKILL)
    c.procs[victim].wait(timeout=10)
    name = next(n for n, s in servers.items() if s["Host"] == victim)
    c.os("server", "stop", name)
    c.procs[victim] = serve(c.state_dir, victim + "-again", c.compute_confs[victim], "compute")
    # The fake driver keeps guests in memory, so the restarted host has none: its servers end SHUTOFF (the
    # stop included), the other host's stay ACTIVE.
    deadline = time.time() + 60
    while time.time() < deadline:
        now = {s["Name"]: s for s in c.os("server", "list", "--long", "-f", "json")}
        if all(now[n]["Status"] == ("SHUTOFF" if s["Host"] == victim else "ACTIVE") for n, s in servers.items()):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"servers did not settle: {now}")
    c.os("server", "delete", "--wait", *servers)
    assert c.os("server", "list", "-f", "json") == []
    for rp in c.os("resource", "provider", "list", "-f", "json"):
        usages = c.os("resource", "provider", "usage", "show", rp["uuid"], "-f", "json")
        assert all(u["usage"] == 0 for u in usages), (rp, usages)


def test_compute_hosts_killed_mid_spawn_end_their_builds_in_error_and_release_claims(deployment):
    c = deployment
    c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--no-network",
         "--min", "2", "--max", "2", "spawn", "-f", "json")
    # Wait until both builds reached their hosts (a host assigned, still BUILD), then kill both hosts.
    deadline = time.time() + 30
    while time.time() < deadline:
        now = c.os("server", "list", "--long", "-f", "json")
        if len(now) == 2 and all(s["Host"] and s["Status"] == "BUILD" for s in now):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"builds did not reach their hosts: {now}")
    for h in c.hosts:
        c.procs[h].send_signal(signal.SIGKILL)
        c.procs[h].wait(timeout=10)
    for h in c.hosts:
        c.procs[h] = serve(c.state_dir, h + "-after-kill", c.compute_confs[h], "compute")
    deadline = time.time() + 60
    while time.time() < deadline:
        now = c.os("server", "list", "-f", "json")
        if all(s["Status"] == "ERROR" for s in now):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"interrupted builds did not end in ERROR: {now}")
    shown = c.os("server", "show", now[0]["ID"], "-f", "json")
    assert shown.get("fault"), shown
    for rp in c.os("resource", "provider", "list", "-f", "json"):
        usages = c.os("resource", "provider", "usage", "show", rp["uuid"], "-f", "json")
        assert all(u["usage"] == 0 for u in usages), (rp, usages)
    c.os("server", "delete", "--wait", *[s["ID"] for s in now])


def test_a_cell_conductor_killed_mid_boot_is_waited_for(deployment):
    c = deployment
    c.os("server", "create", "--flavor", "m1.tiny", "--image", "cirros", "--no-network", "cond", "-f", "json")
    deadline = time.time() + 30
    while time.time() < deadline:
        now = c.os("server", "list", "--long", "-f", "json")
        if len(now) == 1 and now[0]["Host"] and now[0]["Status"] == "BUILD":
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the build did not reach its host: {now}")
    # The host's report of the finished spawn waits in the conductor's queue until a conductor is back.
    cond_conf = open(os.path.join(c.state_dir, "conductor.conf")).read()
    c.procs["conductor"].send_signal(signal.SIGKILL)
    c.procs["conductor"].wait(timeout=10)
    time.sleep(2)
    c.procs["conductor"] = serve(c.state_dir, "conductor-again", cond_conf, "conductor")
    deadline = time.time() + 60
    while time.time() < deadline:
        now = c.os("server", "list", "-f", "json")
        if now[0]["Status"] != "BUILD":
            break
        time.sleep(1)
    assert now[0]["Status"] == "ACTIVE", now
    c.os("server", "delete", "--wait", now[0]["ID"])


def test_a_compute_host_without_placement_credentials_is_refused(deployment):
    c = deployment
    conf = os.path.join(c.state_dir, "bare-compute.conf")
    with open(conf, "w") as f:
        f.write(f"[DEFAULT]\nhost = lonely\ntransport_url = {vhost_url('tessera_cell1')}\n")
    p = subprocess.run([TESSERA, "--config", conf, "serve", "compute"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "[placement]" in p.stderr, p.stderr
    p = subprocess.run([TESSERA, "--config", conf, "serve", "scheduler"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "super conductor" in p.stderr, p.stderr
