"""The network data plane without VMs: an all-in-one runs in a network namespace of its own (its "host"), with
its network agent wiring that namespace; another namespace with one end of a veth plays a guest on a port made
with the unmodified `openstack` CLI. The guest gets its address by DHCP, reaches its router and, through the
router's SNAT, the external network; it is reached from the host through its floating IP once a security group
rule lets it, and not after the rule goes. A server booted with `--wait` goes ACTIVE once its port is plugged
(network-vif-plugged). Skipped, saying why, where namespaces or the tools are missing."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import Cloud, start_cloud, stop

TOOLS = ["ip", "dnsmasq", "iptables-restore", "nft", "busybox"]


def _why_not():
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (Debian: iproute2 dnsmasq-base iptables nftables busybox)"
    probe = f"tsr-probe-{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"the kernel refuses network namespaces here: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        return "bridged traffic does not reach iptables here (no br_netfilter): security groups cannot be tested"
    return None


WHY = _why_not()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"data plane test skipped: {WHY}")

HOST = "dp-host"
CONF = f"[DEFAULT]\nhost = {HOST}\nvif_plugging_timeout = 60\n"


def sh(*args, check=True, timeout=30):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def wait_for(what, fn, timeout=30):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def diagnostics(dp, network_id):
    """What the agent did, for a failure's message."""
    out = []
    hosts = os.path.join(dp.state_dir, "network-agent", "dhcp", network_id, "host")
    if os.path.exists(hosts):
        with open(hosts) as f:
            out.append("dnsmasq hosts:\n" + f.read())
    log = os.path.join(dp.state_dir, "network-agent", "dhcp", network_id, "log")
    if os.path.exists(log):
        with open(log) as f:
            out.append("dnsmasq log:\n" + f.read()[-3000:])
    out.append(sh("ps", "-eo", "pid,user,args", check=False).stdout)
    out.append(sh("ip", "-n", dp.netns, "-o", "link", check=False).stdout)
    out.append(sh("ip", "netns", "exec", dp.netns, "iptables", "-S", check=False).stdout)
    with open(os.path.join(dp.state_dir, "tessera.log")) as f:
        out.append("log:\n" + "\n".join(l for l in f.read().splitlines() if "WARN" in l or "ERROR" in l)[-4000:])
    return "\n".join(out)


UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "leased $ip/$mask router $router" ;;
esac
exit 0
"""

def plug_guest(host_ns, guest_ns, port):
    """A namespace playing the guest of `port`: one end of a veth, with the port's MAC; the other end, in the
    host's namespace, is the port's tap."""
    tap = "tap" + port["id"][:11]
    sh("ip", "netns", "add", guest_ns)
    sh("ip", "-n", guest_ns, "link", "set", "lo", "up")
    sh("ip", "-n", host_ns, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", guest_ns)
    sh("ip", "-n", guest_ns, "link", "set", "eth0", "address", port["mac_address"])
    sh("ip", "-n", guest_ns, "link", "set", "eth0", "up")
    sh("ip", "-n", host_ns, "link", "set", tap, "up")


def lease(state_dir, guest_ns):
    """Ask for an address by DHCP from inside the guest (busybox udhcpc)."""
    script = os.path.join(state_dir, "udhcpc.sh")
    with open(script, "w") as f:
        f.write(UDHCPC_SCRIPT)
    os.chmod(script, 0o755)
    return sh("ip", "netns", "exec", guest_ns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "5", "-T", "2",
              "-s", script, timeout=40, check=False)


FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())"


@pytest.fixture(scope="module")
def dp():
    tag = uuid.uuid4().hex[:6]
    host_ns, guest_ns = f"tsr-host-{tag}", f"tsr-guest-{tag}"
    sh("ip", "netns", "add", host_ns)
    sh("ip", "-n", host_ns, "link", "set", "lo", "up")
    state_dir = tempfile.mkdtemp(prefix="tessera-dataplane-")
    proc, line = start_cloud(state_dir, CONF, netns=host_ns, data_plane=True)
    c = Cloud(state_dir, proc, line, netns=host_ns)
    c.guest_ns = guest_ns
    c.extra = []
    yield c
    for p in c.extra:
        p.kill()
    stop(c.proc)
    clean_up(state_dir, [*getattr(c, "made_ns", []), guest_ns, host_ns])


def clean_up(state_dir, namespaces):
    """Stop the test's dnsmasq daemons (they outlive the agent, as Neutron's do) and remove its namespaces."""
    for root, _, files in os.walk(os.path.join(state_dir, "network-agent")):
        if "pid" in files:
            try:
                with open(os.path.join(root, "pid")) as f:
                    os.kill(int(f.read().strip()), 15)
            except (OSError, ValueError):
                pass
    for ns in namespaces:
        sh("ip", "netns", "del", ns, check=False)
    shutil.rmtree(state_dir, ignore_errors=True)


def test_agents_report_the_data_plane(dp):
    agents = dp.os("network", "agent", "list", "-f", "json")
    kinds = {(a["Agent Type"], a["Host"]) for a in agents}
    assert {("Linux bridge agent", HOST), ("DHCP agent", HOST), ("L3 agent", HOST)} <= kinds, agents
    assert all(a["Alive"] for a in agents), agents
    l2 = [a for a in agents if a["Agent Type"] == "Linux bridge agent" and a["Host"] == HOST][0]
    shown = dp.os("network", "agent", "show", l2["ID"], "-f", "json")
    assert shown["configuration"]["data_plane"] is True, shown


def test_guest_in_a_namespace(dp):
    net = dp.os("network", "create", "dp-net", "-f", "json")
    sub = dp.os("subnet", "create", "--network", "dp-net", "--subnet-range", "10.77.0.0/24", "dp-sub", "-f", "json")
    router = dp.os("router", "create", "dp-router", "-f", "json")
    dp.made_ns = {f"qdhcp-{net['id']}", f"qrouter-{router['id']}"}
    dp.os("router", "set", "--external-gateway", "public", "dp-router")
    dp.os("router", "add", "subnet", "dp-router", "dp-sub")
    # The router's ports come up once its namespace is wired.
    wait_for("router ports ACTIVE", lambda: all(
        p["Status"] == "ACTIVE" for p in dp.os("port", "list", "--router", "dp-router", "-f", "json")))
    port = dp.os("port", "create", "--network", "dp-net", "--host", HOST, "--device-owner", "compute:nova",
                 "dp-guest", "-f", "json")
    assert port["status"] == "DOWN"
    fixed = port["fixed_ips"][0]["ip_address"]

    # The guest: a namespace with one end of a veth; the other end is the port's tap on the host.
    g, tap = dp.guest_ns, "tap" + port["id"][:11]
    plug_guest(dp.netns, g, port)
    wait_for("the guest's port ACTIVE", lambda: dp.os("port", "show", port["id"], "-f", "json")["status"] == "ACTIVE")

    # DHCP hands the guest the port's address and the router.
    leased = lease(dp.state_dir, g)
    assert f"leased {fixed}/24 router {sub['gateway_ip']}" in leased.stdout, \
        leased.stdout + leased.stderr + diagnostics(dp, net["id"])
    # The router answers, and SNAT takes the guest to the external network (the host's 172.24.4.1).
    sh("ip", "netns", "exec", g, "busybox", "ping", "-c", "1", "-W", "3", sub["gateway_ip"])
    sh("ip", "netns", "exec", g, "busybox", "ping", "-c", "1", "-W", "3", "172.24.4.1")
    # ARP speaks only for the port's own address: the router answers the guest, not a guest claiming another.
    arping = ("ip", "netns", "exec", g, "busybox", "arping", "-c", "1", "-w", "2", "-I", "eth0")
    assert sh(*arping, sub["gateway_ip"], check=False).returncode == 0
    sh("ip", "-n", g, "addr", "add", "10.77.0.250/32", "dev", "eth0")
    spoofed = sh(*arping, "-s", "10.77.0.250", sub["gateway_ip"], check=False)
    assert spoofed.returncode != 0, spoofed.stdout
    sh("ip", "-n", g, "addr", "del", "10.77.0.250/32", "dev", "eth0")

    # A floating IP reaches the guest from the host once a rule lets the traffic in.
    fip = dp.os("floating", "ip", "create", "public", "--port", port["id"], "-f", "json")["floating_ip_address"]
    web = os.path.join(dp.state_dir, "web")
    os.makedirs(web)
    with open(os.path.join(web, "index.html"), "w") as f:
        f.write("hello from the guest\n")
    server = subprocess.Popen(["ip", "netns", "exec", g, "python3", "-m", "http.server", "8080", "--directory", web],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dp.extra.append(server)
    url = f"http://{fip}:8080/"

    def fetch():
        return sh("ip", "netns", "exec", dp.netns, "python3", "-c", FETCH, url, check=False, timeout=10)

    wait_for("the guest's web server", lambda: sh("ip", "netns", "exec", g, "python3", "-c", FETCH,
                                                 "http://127.0.0.1:8080/", check=False).returncode == 0)
    assert fetch().returncode != 0, "the default security group let the host in"
    sg = port["security_group_ids"][0]
    rule = dp.os("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "8080", sg, "-f", "json")
    got = wait_for("the rule to open port 8080", lambda: (lambda p: p.returncode == 0 and p.stdout)(fetch()))
    assert "hello from the guest" in got
    dp.os("security", "group", "rule", "delete", rule["id"])
    wait_for("the rule's removal to close port 8080", lambda: fetch().returncode != 0)

    # Killed and started again, the cloud's agent wires the same again: DHCP, the router, the floating IP.
    dp.proc.send_signal(signal.SIGKILL)
    dp.proc.wait(timeout=10)
    dp.proc, _ = start_cloud(dp.state_dir, CONF, netns=dp.netns, data_plane=True)
    wait_for("a lease after the restart", lambda: f"leased {fixed}/24" in lease(dp.state_dir, g).stdout, timeout=60)
    ping = ("ip", "netns", "exec", g, "busybox", "ping", "-c", "1", "-W", "2", sub["gateway_ip"])
    try:
        wait_for("the router after the restart", lambda: sh(*ping, check=False).returncode == 0)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnostics(dp, net['id'])}") from None
    rule = dp.os("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "8080", sg, "-f", "json")
    got = wait_for("the floating IP after the restart", lambda: (lambda p: p.returncode == 0 and p.stdout)(fetch()))
    assert "hello from the guest" in got
    dp.os("security", "group", "rule", "delete", rule["id"])

    # Gone ports go down: the guest's end removed, the port is DOWN again.
    sh("ip", "-n", dp.netns, "link", "del", tap)
    wait_for("the guest's port DOWN", lambda: dp.os("port", "show", port["id"], "-f", "json")["status"] == "DOWN")


def test_server_boot_waits_for_its_port_to_be_plugged(dp):
    image = os.path.join(dp.state_dir, "img.raw")
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    dp.os("image", "create", "--disk-format", "raw", "--container-format", "bare", "--file", image, "--public",
          "dp-img")
    s = dp.os("server", "create", "--flavor", "m1.tiny", "--image", "dp-img", "--network", "dp-net", "--wait",
              "dp-vm", "-f", "json")
    assert s["status"] == "ACTIVE", s
    ports = dp.os("port", "list", "--server", s["id"], "-f", "json")
    assert [p["Status"] for p in ports] == ["ACTIVE"], ports
    tap = "tap" + ports[0]["ID"][:11]
    links = sh("ip", "-n", dp.netns, "-o", "link", "show", tap).stdout
    assert "master brq" in links, links
    with open(os.path.join(dp.state_dir, "tessera.log")) as f:
        log = f.read()
    assert "network-vif-plugged" in log
    dp.os("server", "delete", "--wait", s["id"])
    # The tap goes with the server.
    assert sh("ip", "-n", dp.netns, "link", "show", tap, check=False).returncode != 0


def test_two_hosts_share_a_vxlan_network(tmp_path):
    """A second host (`serve network-agent` in a namespace of its own, joined to the first by a veth as the
    underlay): its guest gets DHCP from the first host's DNS server over VXLAN and reaches the first host's guest."""
    tag = uuid.uuid4().hex[:6]
    h1, h2, g1, g2 = (f"tsr-{n}-{tag}" for n in ("vh1", "vh2", "vg1", "vg2"))
    procs = []
    state_dir = tempfile.mkdtemp(prefix="tessera-vxlan-")
    made = []
    try:
        for ns in (h1, h2):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", h1, "link", "add", "u1", "type", "veth", "peer", "name", "u2", "netns", h2)
        sh("ip", "-n", h1, "addr", "add", "192.168.254.1/24", "dev", "u1")
        sh("ip", "-n", h2, "addr", "add", "192.168.254.2/24", "dev", "u2")
        sh("ip", "-n", h1, "link", "set", "u1", "up")
        sh("ip", "-n", h2, "link", "set", "u2", "up")
        proc, line = start_cloud(state_dir, "[DEFAULT]\nhost = vx-h1\nbind_host = 192.168.254.1\n"
                                 "[network_agent]\nlocal_ip = 192.168.254.1\n", netns=h1, data_plane=True)
        procs.append(proc)
        c = Cloud(state_dir, proc, line, netns=h1)
        env = c.openrc_env()
        with open(os.path.join(state_dir, "admin-password")) as f:
            password = f.read().strip()
        conf2 = tmp_path / "h2.conf"
        conf2.write_text(
            f"[DEFAULT]\nhost = vx-h2\nstate_path = {tmp_path}/h2\n"
            f"[neutron]\nauth_url = {env['OS_AUTH_URL']}\nusername = admin\npassword = {password}\n"
            f"project_name = admin\nuser_domain_name = Default\nproject_domain_name = Default\n"
            f"[network_agent]\ndata_plane = true\nlocal_ip = 192.168.254.2\nenable_dhcp = false\nenable_l3 = false\n")
        from conftest import TESSERA
        agent = subprocess.Popen(["ip", "netns", "exec", h2, TESSERA, "--config", str(conf2), "serve", "network-agent"],
                                 stdout=subprocess.DEVNULL, stderr=open(tmp_path / "h2.log", "w"))
        procs.append(agent)
        wait_for("the second host's agent", lambda: any(
            a["Host"] == "vx-h2" and a["Alive"] for a in c.os("network", "agent", "list", "-f", "json")))

        net = c.os("network", "create", "vx-net", "-f", "json")
        assert net["provider:network_type"] == "vxlan", net
        made.append(f"qdhcp-{net['id']}")
        c.os("subnet", "create", "--network", "vx-net", "--subnet-range", "10.88.0.0/24", "vx-sub")
        ports = {}
        for host, hns, gns in (("vx-h1", h1, g1), ("vx-h2", h2, g2)):
            p = c.os("port", "create", "--network", "vx-net", "--host", host, "--device-owner", "compute:nova",
                     f"vx-{host}", "-f", "json")
            plug_guest(hns, gns, p)
            ports[host] = p
        for p in ports.values():
            wait_for(f"port {p['name']} ACTIVE", lambda p=p: c.os("port", "show", p["id"], "-f", "json")["status"] == "ACTIVE")
        for host, gns in (("vx-h1", g1), ("vx-h2", g2)):
            fixed = ports[host]["fixed_ips"][0]["ip_address"]
            leased = lease(state_dir, gns)
            assert f"leased {fixed}/24" in leased.stdout, leased.stdout + leased.stderr + (tmp_path / "h2.log").read_text()[-3000:]
        # Guests on the two hosts reach each other (their default group lets its members in).
        sh("ip", "netns", "exec", g2, "busybox", "ping", "-c", "1", "-W", "3", ports["vx-h1"]["fixed_ips"][0]["ip_address"])
        sh("ip", "netns", "exec", g1, "busybox", "ping", "-c", "1", "-W", "3", ports["vx-h2"]["fixed_ips"][0]["ip_address"])
        links = sh("ip", "-n", h2, "-o", "-d", "link", "show", "type", "vxlan").stdout
        assert "local 192.168.254.2" in links, links
    finally:
        for p in reversed(procs):
            stop(p)
        clean_up(state_dir, made + [g1, g2, h1, h2])
