"""Placement with the unmodified `openstack` CLI and the osc-placement plugin against `tessera all-in-one`."""

import uuid


def test_placement_with_the_cli(cloud):
    pv = ("--os-placement-api-version", "1.39")
    rp = cloud.os(*pv, "resource provider", "create", "cli-cn1", "-f", "json")
    assert rp["name"] == "cli-cn1" and rp["generation"] == 0 and rp["root_provider_uuid"] == rp["uuid"]
    child = cloud.os(*pv, "resource provider", "create", "cli-cn1-numa0", "--parent-provider", rp["uuid"], "-f", "json")
    assert child["parent_provider_uuid"] == rp["uuid"]
    names = [r["name"] for r in cloud.os(*pv, "resource provider", "list", "-f", "json")]
    assert "cli-cn1" in names and "cli-cn1-numa0" in names
    assert cloud.os(*pv, "resource provider", "show", rp["uuid"], "-f", "json")["name"] == "cli-cn1"

    cloud.os(*pv, "resource provider", "inventory", "set", rp["uuid"], "--resource", "VCPU=4",
             "--resource", "VCPU:allocation_ratio=2.0", "--resource", "MEMORY_MB=2048", "--resource", "DISK_GB=20")
    inv = {i["resource_class"]: i for i in cloud.os(*pv, "resource provider", "inventory", "list", rp["uuid"], "-f", "json")}
    assert inv["VCPU"]["total"] == 4 and inv["VCPU"]["allocation_ratio"] == 2.0 and inv["MEMORY_MB"]["total"] == 2048

    cloud.os(*pv, "resource class", "create", "CUSTOM_FPGA_X")
    assert any(c["name"] == "CUSTOM_FPGA_X" for c in cloud.os(*pv, "resource class", "list", "-f", "json"))
    cloud.os(*pv, "trait", "create", "CUSTOM_GOLD")
    traits = cloud.os(*pv, "resource provider", "trait", "set", "--trait", "CUSTOM_GOLD", "--trait", "HW_CPU_X86_AVX2",
                      rp["uuid"], "-f", "json")
    assert sorted(t["name"] for t in traits) == ["CUSTOM_GOLD", "HW_CPU_X86_AVX2"]
    gen = cloud.os(*pv, "resource provider", "show", rp["uuid"], "-f", "json")["generation"]
    agg = str(uuid.uuid4())
    aggs = cloud.os(*pv, "resource provider", "aggregate", "set", "--aggregate", agg, "--generation", str(gen),
                    rp["uuid"], "-f", "json")
    assert [a["uuid"] for a in aggs] == [agg]
    # A stale generation is refused.
    r = cloud.os(*pv, "resource provider", "aggregate", "set", "--aggregate", agg, "--generation", str(gen),
                 rp["uuid"], check=False)
    assert r.returncode != 0 and "409" in r.stderr

    # The all-in-one's own compute host is a provider too; look only at the ones made here.
    ours = {rp["uuid"], child["uuid"]}
    cands = cloud.os(*pv, "allocation candidate", "list", "--resource", "VCPU=1", "--resource", "MEMORY_MB=512", "-f", "json")
    assert [c["resource provider"] for c in cands if c["resource provider"] in ours] == [rp["uuid"]]
    cands = cloud.os(*pv, "allocation candidate", "list", "--resource", "VCPU=1", "--required", "CUSTOM_GOLD",
                     "--member-of", agg, "-f", "json")
    assert len(cands) == 1
    assert [c for c in cloud.os(*pv, "allocation candidate", "list", "--resource", "VCPU=9", "-f", "json")
            if c["resource provider"] in ours] == []

    consumer = str(uuid.uuid4())
    project, user = str(uuid.uuid4()), str(uuid.uuid4())
    cloud.os(*pv, "resource provider", "allocation", "set", consumer, "--allocation",
             f"rp={rp['uuid']},VCPU=2,MEMORY_MB=512", "--project-id", project, "--user-id", user,
             "--consumer-type", "INSTANCE")
    shown = cloud.os(*pv, "resource provider", "allocation", "show", consumer, "-f", "json")
    assert shown[0]["resource_provider"] == rp["uuid"] and shown[0]["resources"] == {"VCPU": 2, "MEMORY_MB": 512}
    usage = {u["resource_class"]: u["usage"] for u in cloud.os(*pv, "resource provider", "usage", "show", rp["uuid"], "-f", "json")}
    assert usage["VCPU"] == 2 and usage["MEMORY_MB"] == 512 and usage["DISK_GB"] == 0
    # Beyond capacity (4 × 2.0 = 8 VCPU): refused, nothing changes.
    r = cloud.os(*pv, "resource provider", "allocation", "set", consumer, "--allocation",
                 f"rp={rp['uuid']},VCPU=9", "--project-id", project, "--user-id", user, "--consumer-type", "INSTANCE",
                 check=False)
    assert r.returncode != 0 and "409" in r.stderr
    r = cloud.os(*pv, "resource provider", "delete", rp["uuid"], check=False)
    assert r.returncode != 0
    cloud.os(*pv, "resource provider", "allocation", "delete", consumer)
    cloud.os(*pv, "resource provider", "delete", child["uuid"])
    cloud.os(*pv, "resource provider", "delete", rp["uuid"])
    assert cloud.os(*pv, "resource provider", "show", rp["uuid"], check=False).returncode != 0


def test_placement_needs_admin(cloud):
    cloud.os("project", "create", "plc")
    cloud.os("user", "create", "--password", "pw", "plc-user")
    cloud.os("role", "add", "--project", "plc", "--user", "plc-user", "member")
    r = cloud.os("resource", "provider", "list", env=cloud.user_env("plc-user", "pw", "plc"), check=False)
    assert r.returncode != 0 and "403" in r.stderr
