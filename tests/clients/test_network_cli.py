"""The Networking API through the unmodified `openstack` CLI: networks, subnets, ports with chosen addresses,
routers with gateways and interfaces, security groups and rules, floating IPs, quotas, tags."""

import time


def test_network_subnet_port_lifecycle(cloud):
    net = cloud.os("network", "create", "cli-net", "-f", "json")
    assert net["status"] == "ACTIVE" and net["mtu"] == 1450 and net["router:external"] is False
    sub = cloud.os("subnet", "create", "--network", "cli-net", "--subnet-range", "10.90.0.0/24",
                   "--dns-nameserver", "10.90.0.53", "cli-sub", "-f", "json")
    assert sub["gateway_ip"] == "10.90.0.1"
    assert sub["allocation_pools"] == [{"start": "10.90.0.2", "end": "10.90.0.254"}]
    assert sub["dns_nameservers"] == ["10.90.0.53"]
    port = cloud.os("port", "create", "--network", "cli-net", "--fixed-ip", "subnet=cli-sub,ip-address=10.90.0.50",
                    "cli-port", "-f", "json")
    assert port["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "10.90.0.50"}]
    assert port["mac_address"].startswith("fa:16:3e:")
    assert port["status"] == "DOWN"
    # The same address again, an address outside the subnet: refused, nothing made.
    p = cloud.os("port", "create", "--network", "cli-net", "--fixed-ip", "ip-address=10.90.0.50", "dup", check=False)
    assert p.returncode != 0 and "already allocated" in p.stderr, p.stderr
    p = cloud.os("port", "create", "--network", "cli-net", "--fixed-ip", "subnet=cli-sub,ip-address=10.91.0.5", "out",
                 check=False)
    assert p.returncode != 0 and "not a valid IP for the specified subnet" in p.stderr, p.stderr
    names = [x["Name"] for x in cloud.os("port", "list", "--network", "cli-net", "-f", "json")]
    assert names == ["cli-port"]
    listed = {n["Name"]: n for n in cloud.os("network", "list", "--long", "-f", "json")}
    assert listed["cli-net"]["Network Type"] == "vxlan"
    assert listed["cli-net"]["Subnets"] == [sub["id"]]
    # A network with a port in use stays.
    p = cloud.os("network", "delete", "cli-net", check=False)
    assert p.returncode != 0 and "still in use" in p.stderr, p.stderr
    cloud.os("port", "delete", "cli-port")
    cloud.os("network", "delete", "cli-net")
    assert "cli-net" not in [n["Name"] for n in cloud.os("network", "list", "-f", "json")]


def test_router_gateway_interface_and_floating_ip(cloud):
    cloud.os("network", "create", "--external", "--share", "cli-public", "-f", "json")
    cloud.os("subnet", "create", "--network", "cli-public", "--subnet-range", "172.30.4.0/24", "--no-dhcp",
             "cli-public-sub", "-f", "json")
    cloud.os("network", "create", "cli-priv", "-f", "json")
    cloud.os("subnet", "create", "--network", "cli-priv", "--subnet-range", "10.91.0.0/24", "cli-priv-sub",
             "-f", "json")
    cloud.os("network", "create", "cli-priv2", "-f", "json")
    cloud.os("subnet", "create", "--network", "cli-priv2", "--subnet-range", "10.91.0.128/25", "cli-priv2-sub",
             "-f", "json")
    router = cloud.os("router", "create", "cli-router", "-f", "json")
    cloud.os("router", "set", "--external-gateway", "cli-public", "cli-router")
    cloud.os("router", "add", "subnet", "cli-router", "cli-priv-sub")
    shown = cloud.os("router", "show", "cli-router", "-f", "json")
    gw = shown["external_gateway_info"]
    assert gw["enable_snat"] is True and gw["external_fixed_ips"][0]["ip_address"].startswith("172.30.4.")
    assert [i["ip_address"] for i in shown["interfaces_info"]] == ["10.91.0.1"]
    # An overlapping subnet on the same router is refused.
    p = cloud.os("router", "add", "subnet", "cli-router", "cli-priv2-sub", check=False)
    assert p.returncode != 0 and "overlaps" in p.stderr, p.stderr
    port = cloud.os("port", "create", "--network", "cli-priv", "fip-target", "-f", "json")
    fip = cloud.os("floating", "ip", "create", "--port", "fip-target", "cli-public", "-f", "json")
    assert fip["fixed_ip_address"] == port["fixed_ips"][0]["ip_address"]
    assert fip["router_id"] == router["id"]
    assert fip["floating_ip_address"].startswith("172.30.4.")
    cloud.os("floating", "ip", "unset", "--port", fip["id"])
    assert cloud.os("floating", "ip", "show", fip["id"], "-f", "json")["port_id"] is None
    cloud.os("floating", "ip", "delete", fip["id"])
    cloud.os("port", "delete", "fip-target")
    cloud.os("router", "remove", "subnet", "cli-router", "cli-priv-sub")
    cloud.os("router", "unset", "--external-gateway", "cli-router")
    cloud.os("router", "delete", "cli-router")
    for n in ("cli-priv", "cli-priv2", "cli-public"):
        cloud.os("network", "delete", n)


def test_security_groups_and_rules(cloud):
    groups = cloud.os("security", "group", "list", "-f", "json")
    assert "default" in [g["Name"] for g in groups]
    sg = cloud.os("security", "group", "create", "--description", "web", "cli-web", "-f", "json")
    assert len(sg["rules"]) == 2  # egress IPv4 and IPv6
    rule = cloud.os("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "80:81",
                    "--remote-ip", "192.0.2.0/24", "cli-web", "-f", "json")
    assert (rule["port_range_min"], rule["port_range_max"], rule["remote_ip_prefix"]) == (80, 81, "192.0.2.0/24")
    p = cloud.os("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "80:81",
                 "--remote-ip", "192.0.2.0/24", "cli-web", check=False)
    assert p.returncode != 0 and "already exists" in p.stderr, p.stderr
    rules = cloud.os("security", "group", "rule", "list", "cli-web", "-f", "json")
    assert len(rules) == 3
    cloud.os("network", "create", "sg-net", "-f", "json")
    cloud.os("subnet", "create", "--network", "sg-net", "--subnet-range", "10.92.0.0/24", "sg-sub", "-f", "json")
    port = cloud.os("port", "create", "--network", "sg-net", "--security-group", "cli-web", "sg-port", "-f", "json")
    assert port["security_group_ids"] == [sg["id"]]
    p = cloud.os("security", "group", "delete", "cli-web", check=False)
    assert p.returncode != 0 and "in use" in p.stderr, p.stderr
    p = cloud.os("port", "create", "--network", "sg-net", "--security-group", "no-such-group", "x", check=False)
    assert p.returncode != 0
    cloud.os("port", "delete", "sg-port")
    cloud.os("security", "group", "rule", "delete", rule["id"])
    cloud.os("security", "group", "delete", "cli-web")
    cloud.os("network", "delete", "sg-net")


def test_quotas_tags_and_availability(cloud):
    env = cloud.openrc_env()
    project = env["OS_PROJECT_NAME"]
    cloud.os("quota", "set", "--networks", "7", project)
    q = cloud.os("quota", "show", "--network", project, "-f", "json")
    limits = {r["Resource"]: r["Limit"] for r in q} if isinstance(q, list) else q
    assert limits["networks"] == 7, q
    net = cloud.os("network", "create", "--tag", "red", "--tag", "blue", "tagged", "-f", "json")
    assert sorted(net["tags"]) == ["blue", "red"]
    assert [n["Name"] for n in cloud.os("network", "list", "--tags", "red", "-f", "json")] == ["tagged"]
    assert cloud.os("network", "list", "--not-tags", "red", "--name", "tagged", "-f", "json") == []
    cloud.os("subnet", "create", "--network", "tagged", "--subnet-range", "10.93.0.0/28", "tagged-sub", "-f", "json")
    cloud.os("port", "create", "--network", "tagged", "tp", "-f", "json")
    avail = cloud.os("ip", "availability", "show", "tagged", "-f", "json")
    assert avail["total_ips"] == 13 and avail["used_ips"] == 1, avail
    cloud.os("port", "delete", "tp")
    cloud.os("network", "delete", "tagged")
    cloud.os("quota", "set", "--networks", "100", project)


def test_servers_on_networks_ports_and_floating_ips(cloud, tmp_path):
    img = tmp_path / "disk.raw"
    img.write_bytes(b"\0" * 65536)
    cloud.os("image", "create", "--disk-format", "raw", "--container-format", "bare", "--file", str(img),
             "net-img", "-f", "json")
    cloud.os("network", "create", "srv-net", "-f", "json")
    cloud.os("subnet", "create", "--network", "srv-net", "--subnet-range", "10.94.0.0/24", "srv-sub", "-f", "json")
    cloud.os("network", "create", "srv-net2", "-f", "json")
    cloud.os("subnet", "create", "--network", "srv-net2", "--subnet-range", "10.95.0.0/24", "srv-sub2", "-f", "json")
    s = cloud.os("server", "create", "--flavor", "m1.tiny", "--image", "net-img", "--network", "srv-net", "--wait",
                 "vm-net", "-f", "json")
    assert s["status"] == "ACTIVE"
    addr = s["addresses"]["srv-net"][0]
    assert addr.startswith("10.94.0.")
    ports = cloud.os("port", "list", "--server", "vm-net", "-f", "json")
    assert [p["Fixed IP Addresses"][0]["ip_address"] for p in ports] == [addr]
    port = cloud.os("port", "show", ports[0]["ID"], "-f", "json")
    assert port["device_owner"] == "compute:nova" and port["binding_host_id"], port
    # A second network, then a port of the user's own, attached and detached.
    cloud.os("server", "add", "network", "vm-net", "srv-net2")
    shown = cloud.os("server", "show", "vm-net", "-f", "json")["addresses"]
    assert sorted(shown) == ["srv-net", "srv-net2"], shown
    mine = cloud.os("port", "create", "--network", "srv-net2", "--fixed-ip", "ip-address=10.95.0.77", "mine",
                    "-f", "json")
    cloud.os("server", "add", "port", "vm-net", "mine")
    assert "10.95.0.77" in cloud.os("server", "show", "vm-net", "-f", "json")["addresses"]["srv-net2"]
    cloud.os("server", "remove", "port", "vm-net", "mine")
    cloud.os("server", "remove", "network", "vm-net", "srv-net2")
    assert list(cloud.os("server", "show", "vm-net", "-f", "json")["addresses"]) == ["srv-net"]
    assert cloud.os("port", "show", "mine", "-f", "json")["device_id"] == "", "the user's port is unbound, kept"
    # A floating IP through a router to an external network.
    cloud.os("network", "create", "--external", "srv-ext", "-f", "json")
    cloud.os("subnet", "create", "--network", "srv-ext", "--subnet-range", "172.31.9.0/24", "--no-dhcp",
             "srv-ext-sub", "-f", "json")
    cloud.os("router", "create", "srv-router", "-f", "json")
    cloud.os("router", "set", "--external-gateway", "srv-ext", "srv-router")
    cloud.os("router", "add", "subnet", "srv-router", "srv-sub")
    fip = cloud.os("floating", "ip", "create", "srv-ext", "-f", "json")["floating_ip_address"]
    cloud.os("server", "add", "floating", "ip", "vm-net", fip)
    assert cloud.os("floating", "ip", "show", fip, "-f", "json")["fixed_ip_address"] == addr
    # The Networking service tells the Compute API (os-server-external-events); the server's compute host
    # reads its ports again, and the floating address shows among the server's addresses.
    shown = []
    for _ in range(50):
        shown = cloud.os("server", "show", "vm-net", "-f", "json")["addresses"]["srv-net"]
        if fip in shown:
            break
        time.sleep(0.2)
    assert shown == [addr, fip], shown
    # No network at all.
    bare = cloud.os("server", "create", "--flavor", "m1.tiny", "--image", "net-img", "--nic", "none", "--wait",
                    "vm-bare", "-f", "json")
    assert bare["addresses"] == {}
    cloud.os("server", "delete", "--wait", "vm-net", "vm-bare")
    assert cloud.os("port", "list", "--device-owner", "compute:nova", "-f", "json") == []
    assert cloud.os("floating", "ip", "show", fip, "-f", "json")["port_id"] is None
    cloud.os("port", "delete", "mine")
    cloud.os("floating", "ip", "delete", fip)
    cloud.os("router", "remove", "subnet", "srv-router", "srv-sub")
    cloud.os("router", "delete", "srv-router")
    for n in ("srv-net", "srv-net2", "srv-ext"):
        cloud.os("network", "delete", n)
