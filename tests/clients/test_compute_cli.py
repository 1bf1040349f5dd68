"""Compute API with the unmodified `openstack` CLI: hosts of two cells as hypervisors and services."""

import shutil
import tempfile

import pytest

from conftest import Cloud, start_cloud, stop


@pytest.fixture(scope="module")
def cells_cloud():
    d = tempfile.mkdtemp(prefix="tessera-compute-")
    proc, line = start_cloud(d, "[all_in_one]\ncells = 2\nhosts_per_cell = 2\n")
    yield Cloud(d, proc, line)
    stop(proc)
    shutil.rmtree(d, ignore_errors=True)


HOSTS = {"cell1-compute1", "cell1-compute2", "cell2-compute1", "cell2-compute2"}


def test_hypervisors_of_both_cells(cells_cloud):
    hv = cells_cloud.os("hypervisor", "list", "-f", "json")
    assert {h["Hypervisor Hostname"] for h in hv} == HOSTS
    assert all(h["State"] == "up" and h["Hypervisor Type"] == "fake" for h in hv)
    one = cells_cloud.os("hypervisor", "show", hv[0]["ID"], "-f", "json")
    assert one["hypervisor_hostname"] in HOSTS and one["service_host"] in HOSTS


def test_compute_services_of_both_cells(cells_cloud):
    svcs = cells_cloud.os("compute", "service", "list", "-f", "json")
    computes = [s for s in svcs if s["Binary"] == "nova-compute"]
    assert {s["Host"] for s in computes} == HOSTS
    assert all(s["Zone"] == "nova" and s["Status"] == "enabled" and s["State"] == "up" for s in computes)
    conductors = {s["Host"] for s in svcs if s["Binary"] == "nova-conductor"}
    # The cells' conductors, and the super conductor on this host (beside the scheduler).
    assert {"cell1-conductor", "cell2-conductor"} < conductors, conductors
    schedulers = [s for s in svcs if s["Binary"] == "nova-scheduler"]
    assert len(schedulers) == 1 and schedulers[0]["Host"] in conductors and schedulers[0]["State"] == "up"
    only = cells_cloud.os("compute", "service", "list", "--host", "cell2-compute2", "-f", "json")
    assert [s["Host"] for s in only] == ["cell2-compute2"]


def test_availability_zones(cells_cloud):
    # As admin the CLI reads the detailed list, which also has the internal zone of the conductors.
    zones = cells_cloud.os("availability zone", "list", "--compute", "--long", "-f", "json")
    by_zone = {}
    for z in zones:
        by_zone.setdefault(z["Zone Name"], set()).add(z["Host Name"])
    assert by_zone["nova"] == HOSTS
    # The cells' conductors, and the scheduler and super conductor of this host.
    assert {"cell1-conductor", "cell2-conductor"} < by_zone["internal"], by_zone
    assert {z["Zone Status"] for z in zones} == {"available"}


def test_non_admins_are_refused(cells_cloud):
    c = cells_cloud
    c.os("project", "create", "hv-p")
    c.os("user", "create", "--password", "hv-pw-1", "hv-u")
    c.os("role", "add", "--project", "hv-p", "--user", "hv-u", "member")
    r = c.os("hypervisor", "list", env=c.user_env("hv-u", "hv-pw-1", "hv-p"), check=False)
    assert r.returncode != 0 and "403" in r.stderr


def test_flavors_with_the_cli(cells_cloud):
    c = cells_cloud
    names = [f["Name"] for f in c.os("flavor", "list", "-f", "json")]
    assert names == ["m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge"]
    f = c.os("flavor", "create", "--ram", "256", "--vcpus", "1", "--disk", "1", "--property", "hw:mem_page_size=small",
             "cli.flavor", "-f", "json")
    assert f["ram"] == 256 and f["name"] == "cli.flavor"
    c.os("flavor", "set", "--property", "k=v", "cli.flavor")
    shown = c.os("flavor", "show", "cli.flavor", "-f", "json")
    assert shown["properties"] == {"hw:mem_page_size": "small", "k": "v"}
    c.os("flavor", "unset", "--property", "k", "cli.flavor")
    assert c.os("flavor", "show", "cli.flavor", "-f", "json")["properties"] == {"hw:mem_page_size": "small"}
    r = c.os("flavor", "create", "--ram", "256", "--vcpus", "1", "--disk", "1", "cli.flavor", check=False)
    assert r.returncode != 0 and "409" in r.stderr
    priv = c.os("flavor", "create", "--ram", "64", "--vcpus", "1", "--private", "--project", "admin", "cli.private",
                "-f", "json")
    assert priv["os-flavor-access:is_public"] is False
    assert "cli.private" in [f["Name"] for f in c.os("flavor", "list", "--private", "-f", "json")]
    c.os("flavor", "delete", "cli.flavor", "cli.private")
    assert "cli.flavor" not in [f["Name"] for f in c.os("flavor", "list", "--all", "-f", "json")]


def test_keypairs_with_the_cli(cells_cloud, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    c = cells_cloud
    pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    keyfile = tmp_path / "id.pub"
    keyfile.write_text(pub + " test@example\n")
    kp = c.os("keypair", "create", "--public-key", str(keyfile), "cli-imported", "-f", "json")
    assert kp["name"] == "cli-imported" and kp["type"] == "ssh" and len(kp["fingerprint"]) == 47
    # No key given: the client (at 2.92+) makes one and sends its public half; the private key is printed.
    r = c.os("keypair", "create", "cli-generated", check=False)
    assert r.returncode == 0, r.stderr
    assert "PRIVATE KEY" in r.stdout
    names = sorted(k["Name"] for k in c.os("keypair", "list", "-f", "json"))
    assert names == ["cli-generated", "cli-imported"]
    assert c.os("keypair", "show", "cli-imported", "-f", "json")["fingerprint"] == kp["fingerprint"]
    r = c.os("keypair", "create", "--public-key", str(keyfile), "cli-imported", check=False)
    assert r.returncode != 0 and "409" in r.stderr
    c.os("keypair", "delete", "cli-imported", "cli-generated")
    assert c.os("keypair", "list", "-f", "json") == []


def test_disable_and_force_down_a_compute_service(cells_cloud):
    c = cells_cloud
    c.os("compute", "service", "set", "--disable", "--disable-reason", "maintenance", "cell1-compute2", "nova-compute")
    s = c.os("compute", "service", "list", "--host", "cell1-compute2", "--long", "-f", "json")[0]
    assert s["Status"] == "disabled" and s["Disabled Reason"] == "maintenance"
    c.os("compute", "service", "set", "--down", "cell1-compute2", "nova-compute")
    assert c.os("compute", "service", "list", "--host", "cell1-compute2", "-f", "json")[0]["State"] == "down"
    c.os("compute", "service", "set", "--enable", "--up", "cell1-compute2", "nova-compute")
    s = c.os("compute", "service", "list", "--host", "cell1-compute2", "-f", "json")[0]
    assert (s["Status"], s["State"]) == ("enabled", "up")


def test_aggregates_and_zones_with_the_cli(cells_cloud):
    c = cells_cloud
    agg = c.os("aggregate", "create", "--zone", "az-cli", "--property", "ssd=true", "agg-cli", "-f", "json")
    assert agg["availability_zone"] == "az-cli"
    c.os("aggregate", "add", "host", "agg-cli", "cell2-compute1")
    shown = c.os("aggregate", "show", "agg-cli", "-f", "json")
    assert shown["hosts"] == ["cell2-compute1"] and shown["properties"] == {"ssd": "true"}
    zones = {z["Zone Name"] for z in c.os("availability zone", "list", "--compute", "-f", "json")}
    assert "az-cli" in zones
    r = c.os("aggregate", "add", "host", "agg-cli", "no-such-host", check=False)
    assert r.returncode != 0 and "404" in r.stderr
    c.os("aggregate", "remove", "host", "agg-cli", "cell2-compute1")
    c.os("aggregate", "delete", "agg-cli")
    assert c.os("aggregate", "list", "-f", "json") == []
