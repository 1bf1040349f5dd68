//! Networking API over HTTP on every configured database backend: IPAM under concurrent port creates, bad
//! input that must change nothing, project isolation, routers and floating IPs, list paging.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use tessera_test_harness::{each_backend, Backend, Cloud};

async fn call(c: &Cloud, method: http::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = c
        .http
        .request(method, c.network_url(path))
        .header("X-Auth-Token", token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json::<Value>().await.unwrap_or(Value::Null))
}

async fn post(c: &Cloud, path: &str, t: &str, body: Value) -> Value {
    let (s, v) = call(c, http::Method::POST, path, t, Some(body)).await;
    assert_eq!(s, 201, "POST {path}: {v}");
    v
}

async fn network_with_subnet(c: &Cloud, t: &str, name: &str, cidr: &str) -> (String, String) {
    let n = post(c, "/v2.0/networks", t, json!({"network": {"name": name}})).await;
    let nid = n["network"]["id"].as_str().unwrap().to_string();
    let s = post(
        c,
        "/v2.0/subnets",
        t,
        json!({"subnet": {"network_id": nid, "ip_version": 4, "cidr": cidr}}),
    )
    .await;
    (nid, s["subnet"]["id"].as_str().unwrap().to_string())
}

async fn count(c: &Cloud, path: &str, key: &str, t: &str) -> usize {
    let (s, v) = call(c, http::Method::GET, path, t, None).await;
    assert_eq!(s, 200, "{v}");
    v[key].as_array().unwrap().len()
}

fn error_type(v: &Value) -> &str {
    v["NeutronError"]["type"].as_str().unwrap_or("")
}

#[tokio::test]
async fn concurrent_port_creates_never_share_an_address() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let t = c.admin_token().await;
        // A /27: 29 addresses in the default pool (.2 to .30).
        let (nid, _) = network_with_subnet(&c, &t, "small", "10.20.0.0/27").await;
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let (http, url, t, nid) = (
                c.http.clone(),
                c.network_url("/v2.0/ports"),
                t.clone(),
                nid.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let r = http
                    .post(url)
                    .header("X-Auth-Token", &t)
                    .json(&json!({"port": {"network_id": nid}}))
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                (s, r.json::<Value>().await.unwrap())
            }));
        }
        let mut ips = Vec::new();
        let mut full = 0;
        for task in tasks {
            let (s, v) = task.await.unwrap();
            match s {
                201 => ips.push(
                    v["port"]["fixed_ips"][0]["ip_address"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                ),
                409 => {
                    assert_eq!(error_type(&v), "IpAddressGenerationFailure", "{v}");
                    full += 1;
                }
                other => panic!("unexpected {other}: {v}"),
            }
        }
        assert_eq!(ips.len(), 29, "every address of the pool handed out once");
        assert_eq!(full, 11);
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ips.len(),
            "an address was handed out twice: {ips:?}"
        );
        assert!(
            !ips.contains(&"10.20.0.1".to_string()),
            "the gateway is not for ports"
        );
        // Deleting a port frees its address for the next one.
        let (_, v) = call(
            &c,
            http::Method::GET,
            &format!("/v2.0/ports?network_id={nid}&limit=1"),
            &t,
            None,
        )
        .await;
        let first = v["ports"][0].clone();
        let (s, _) = call(
            &c,
            http::Method::DELETE,
            &format!("/v2.0/ports/{}", first["id"].as_str().unwrap()),
            &t,
            None,
        )
        .await;
        assert_eq!(s, 204);
        let p = post(&c, "/v2.0/ports", &t, json!({"port": {"network_id": nid}})).await;
        assert_eq!(
            p["port"]["fixed_ips"][0]["ip_address"],
            first["fixed_ips"][0]["ip_address"]
        );
        c.stop().await;
    });
}

#[tokio::test]
async fn bad_input_gets_neutron_errors_and_changes_nothing() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let t = c.admin_token().await;
        let (nid, sid) = network_with_subnet(&c, &t, "n1", "10.30.0.0/24").await;
        let (_, sid2) = network_with_subnet(&c, &t, "n2", "10.30.0.0/25").await;
        let ports_before = count(&c, "/v2.0/ports", "ports", &t).await;
        // An address outside the subnet.
        let (s, v) = call(&c, http::Method::POST, "/v2.0/ports", &t,
            Some(json!({"port": {"network_id": nid, "fixed_ips": [{"subnet_id": sid, "ip_address": "10.31.0.5"}]}}))).await;
        assert_eq!((s, error_type(&v)), (400, "InvalidIpForSubnet"), "{v}");
        // A duplicate fixed IP.
        post(
            &c,
            "/v2.0/ports",
            &t,
            json!({"port": {"network_id": nid, "fixed_ips": [{"ip_address": "10.30.0.9"}]}}),
        )
        .await;
        let (s, v) = call(
            &c,
            http::Method::POST,
            "/v2.0/ports",
            &t,
            Some(json!({"port": {"network_id": nid, "fixed_ips": [{"ip_address": "10.30.0.9"}]}})),
        )
        .await;
        assert_eq!((s, error_type(&v)), (409, "IpAddressAlreadyAllocated"), "{v}");
        // An unknown security group.
        let (s, v) = call(&c, http::Method::POST, "/v2.0/ports", &t,
            Some(json!({"port": {"network_id": nid, "security_groups": ["00000000-0000-0000-0000-00000000dead"]}}))).await;
        assert_eq!((s, error_type(&v)), (404, "SecurityGroupNotFound"), "{v}");
        assert_eq!(count(&c, "/v2.0/ports", "ports", &t).await, ports_before + 1);
        // Overlapping CIDRs on one router.
        let r = post(&c, "/v2.0/routers", &t, json!({"router": {"name": "r"}})).await;
        let rid = r["router"]["id"].as_str().unwrap().to_string();
        let (s, v) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &t,
            Some(json!({"subnet_id": sid})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &t,
            Some(json!({"subnet_id": sid2})),
        )
        .await;
        assert_eq!((s, error_type(&v)), (400, "BadRequest"), "{v}");
        assert!(
            v["NeutronError"]["message"]
                .as_str()
                .unwrap()
                .contains("overlaps"),
            "{v}"
        );
        assert_eq!(
            count(&c, &format!("/v2.0/ports?device_id={rid}"), "ports", &t).await,
            1
        );
        // Deleting a network with ports in use.
        let (s, v) = call(
            &c,
            http::Method::DELETE,
            &format!("/v2.0/networks/{nid}"),
            &t,
            None,
        )
        .await;
        assert_eq!((s, error_type(&v)), (409, "NetworkInUse"), "{v}");
        let (s, _) = call(&c, http::Method::GET, &format!("/v2.0/subnets/{sid}"), &t, None).await;
        assert_eq!(s, 200, "the refused delete kept the subnet");
        // Overlapping subnets on one network, a malformed body, an unknown attribute.
        let (s, v) = call(
            &c,
            http::Method::POST,
            "/v2.0/subnets",
            &t,
            Some(json!({"subnet": {"network_id": nid, "ip_version": 4, "cidr": "10.30.0.128/25"}})),
        )
        .await;
        assert_eq!((s, error_type(&v)), (400, "InvalidInput"), "{v}");
        let (s, v) = call(
            &c,
            http::Method::POST,
            "/v2.0/networks",
            &t,
            Some(json!({"network": {"nmae": "x"}})),
        )
        .await;
        assert_eq!((s, error_type(&v)), (400, "HTTPBadRequest"), "{v}");
        let (s, v) = call(
            &c,
            http::Method::POST,
            "/v2.0/subnets",
            &t,
            Some(json!({"subnet": {"network_id": nid, "ip_version": 4, "cidr": "10.40.0.1/24"}})),
        )
        .await;
        assert_eq!((s, error_type(&v)), (400, "InvalidInput"), "{v}");
        c.stop().await;
    });
}

#[tokio::test]
async fn projects_see_their_own_and_shared_networks_only() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let admin = c.admin_token().await;
        c.project_with_member(&admin, "pa", "ua", "pw-a-123").await;
        c.project_with_member(&admin, "pb", "ub", "pw-b-123").await;
        let ta = c.login("ua", "pw-a-123", Some("pa")).await.subject_token();
        let tb = c.login("ub", "pw-b-123", Some("pb")).await.subject_token();
        let (na, _) = network_with_subnet(&c, &ta, "a-net", "10.50.0.0/24").await;
        let shared = post(
            &c,
            "/v2.0/networks",
            &admin,
            json!({"network": {"name": "shared", "shared": true}}),
        )
        .await;
        let shared = shared["network"]["id"].as_str().unwrap().to_string();
        post(
            &c,
            "/v2.0/subnets",
            &admin,
            json!({"subnet": {"network_id": shared, "ip_version": 4, "cidr": "10.60.0.0/24"}}),
        )
        .await;
        let names = |v: &Value| {
            v["networks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let (_, v) = call(&c, http::Method::GET, "/v2.0/networks?sort_key=name", &tb, None).await;
        // All-in-one's external network `public` is visible to everybody too.
        assert_eq!(names(&v), ["public", "shared"]);
        let (s, v) = call(&c, http::Method::GET, &format!("/v2.0/networks/{na}"), &tb, None).await;
        assert_eq!((s, error_type(&v)), (404, "NetworkNotFound"));
        let (s, _) = call(
            &c,
            http::Method::DELETE,
            &format!("/v2.0/networks/{na}"),
            &tb,
            None,
        )
        .await;
        assert_eq!(s, 404);
        let (s, v) = call(
            &c,
            http::Method::DELETE,
            &format!("/v2.0/networks/{shared}"),
            &tb,
            None,
        )
        .await;
        assert_eq!((s, error_type(&v)), (403, "PolicyNotAuthorized"));
        // A member may put a port on a shared network, but not choose its address there.
        let p = post(&c, "/v2.0/ports", &tb, json!({"port": {"network_id": shared}})).await;
        assert_eq!(
            p["port"]["project_id"],
            c.login("ub", "pw-b-123", Some("pb")).await.body["token"]["project"]["id"]
        );
        assert!(
            p["port"].get("binding:host_id").is_none(),
            "binding details are for admins"
        );
        let (s, _) = call(
            &c,
            http::Method::POST,
            "/v2.0/ports",
            &tb,
            Some(json!({"port": {"network_id": shared, "fixed_ips": [{"ip_address": "10.60.0.77"}]}})),
        )
        .await;
        assert_eq!(s, 403);
        let (s, v) = call(
            &c,
            http::Method::POST,
            "/v2.0/networks",
            &tb,
            Some(json!({"network": {"name": "x", "shared": true}})),
        )
        .await;
        assert_eq!((s, error_type(&v)), (403, "PolicyNotAuthorized"));
        // Each project got its own default security group.
        let (_, v) = call(&c, http::Method::GET, "/v2.0/security-groups", &tb, None).await;
        let groups = v["security_groups"].as_array().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0]["name"], "default");
        assert_eq!(groups[0]["security_group_rules"].as_array().unwrap().len(), 4);
        assert_eq!(p["port"]["security_groups"], json!([groups[0]["id"]]));
        c.stop().await;
    });
}

#[tokio::test]
async fn routers_floating_ips_and_list_paging() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let t = c.admin_token().await;
        let ext = post(
            &c,
            "/v2.0/networks",
            &t,
            json!({"network": {"name": "ext", "router:external": true}}),
        )
        .await;
        let ext = ext["network"]["id"].as_str().unwrap().to_string();
        post(&c, "/v2.0/subnets", &t, json!({"subnet": {"network_id": ext, "ip_version": 4, "cidr": "172.24.4.0/24", "enable_dhcp": false}})).await;
        let (nid, sid) = network_with_subnet(&c, &t, "private", "10.70.0.0/24").await;
        let port = post(&c, "/v2.0/ports", &t, json!({"port": {"network_id": nid}})).await;
        let pid = port["port"]["id"].as_str().unwrap().to_string();
        let fip = post(
            &c,
            "/v2.0/floatingips",
            &t,
            json!({"floatingip": {"floating_network_id": ext}}),
        )
        .await;
        let fid = fip["floatingip"]["id"].as_str().unwrap().to_string();
        assert_eq!(fip["floatingip"]["status"], "DOWN");
        // No router between the port's subnet and the external network yet.
        let (s, v) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/floatingips/{fid}"),
            &t,
            Some(json!({"floatingip": {"port_id": pid}})),
        )
        .await;
        assert_eq!(
            (s, error_type(&v)),
            (404, "ExternalGatewayForFloatingIPNotFound"),
            "{v}"
        );
        let r = post(
            &c,
            "/v2.0/routers",
            &t,
            json!({"router": {"name": "r", "external_gateway_info": {"network_id": ext}}}),
        )
        .await;
        let rid = r["router"]["id"].as_str().unwrap().to_string();
        assert_eq!(r["router"]["external_gateway_info"]["enable_snat"], true);
        let (s, _) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &t,
            Some(json!({"subnet_id": sid})),
        )
        .await;
        assert_eq!(s, 200);
        let (s, v) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/floatingips/{fid}"),
            &t,
            Some(json!({"floatingip": {"port_id": pid}})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["floatingip"]["router_id"], rid);
        assert_eq!(
            v["floatingip"]["fixed_ip_address"],
            port["port"]["fixed_ips"][0]["ip_address"]
        );
        // The interface is needed by the floating IP; the router by its interface.
        let (s, v) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            &t,
            Some(json!({"subnet_id": sid})),
        )
        .await;
        assert_eq!(
            (s, error_type(&v)),
            (409, "RouterInterfaceInUseByFloatingIP"),
            "{v}"
        );
        let (s, v) = call(
            &c,
            http::Method::DELETE,
            &format!("/v2.0/routers/{rid}"),
            &t,
            None,
        )
        .await;
        assert_eq!((s, error_type(&v)), (409, "RouterInUse"), "{v}");
        // Deleting the port lets the floating IP go.
        let (s, _) = call(&c, http::Method::DELETE, &format!("/v2.0/ports/{pid}"), &t, None).await;
        assert_eq!(s, 204);
        let (_, v) = call(
            &c,
            http::Method::GET,
            &format!("/v2.0/floatingips/{fid}"),
            &t,
            None,
        )
        .await;
        assert_eq!(v["floatingip"]["port_id"], Value::Null);
        // Paging: 5 networks more, pages of 2 following the next links.
        for i in 0..5 {
            post(
                &c,
                "/v2.0/networks",
                &t,
                json!({"network": {"name": format!("page-{i}")}}),
            )
            .await;
        }
        let mut seen = Vec::new();
        let mut path = "/v2.0/networks?limit=2&sort_key=name&sort_dir=asc&fields=name&fields=id".to_string();
        for _ in 0..10 {
            let (s, v) = call(&c, http::Method::GET, &path, &t, None).await;
            assert_eq!(s, 200, "{v}");
            for n in v["networks"].as_array().unwrap() {
                assert!(n.get("mtu").is_none(), "fields= keeps only what is asked");
                seen.push(n["name"].as_str().unwrap().to_string());
            }
            let next = v["networks_links"]
                .as_array()
                .and_then(|l| l.iter().find(|l| l["rel"] == "next"))
                .cloned();
            match next {
                Some(l) => path = l["href"].as_str().unwrap().to_string(),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted);
        // ext, private, page-0 to page-4, and all-in-one's public.
        assert_eq!(seen.len(), 8, "{seen:?}");
        c.stop().await;
    });
}

#[tokio::test]
async fn agents_report_fetch_their_work_and_bring_ports_up() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let t = c.admin_token().await;
        c.project_with_member(&t, "pm", "um", "pw-m-123").await;
        let tm = c.login("um", "pw-m-123", Some("pm")).await.subject_token();
        // Agents report (several compute hosts' L2 agents from one machine, and its DHCP and L3 agents).
        let report = json!({"report": {"host": "h1", "agents": [
            {"agent_type": "Linux bridge agent", "binary": "tessera-network-agent", "configurations": {"data_plane": true}, "start_flag": true},
            {"agent_type": "Linux bridge agent", "host": "h2", "configurations": {"data_plane": true}},
            {"agent_type": "DHCP agent", "configurations": {}},
            {"agent_type": "L3 agent", "configurations": {}}]}});
        let (s, v) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/report_state",
            &t,
            Some(report.clone()),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        // Reporting again refreshes the same records.
        let (s, _) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/report_state",
            &t,
            Some(report),
        )
        .await;
        assert_eq!(s, 200);
        let (s, v) = call(&c, http::Method::GET, "/v2.0/agents", &t, None).await;
        assert_eq!(s, 200, "{v}");
        // (the cloud's own agent reports too, for its host)
        let agents: Vec<&Value> = v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["host"] == "h1" || a["host"] == "h2")
            .collect();
        assert_eq!(agents.len(), 4, "{v}");
        assert!(agents.iter().all(|a| a["alive"] == json!(true)), "{v}");
        let (_, v) = call(
            &c,
            http::Method::GET,
            "/v2.0/agents?agent_type=Linux%20bridge%20agent&host=h2",
            &t,
            None,
        )
        .await;
        assert_eq!(v["agents"].as_array().unwrap().len(), 1, "{v}");
        let l3 = agents.iter().find(|a| a["agent_type"] == "L3 agent").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        // Members neither see agents nor call the agent RPC.
        let (s, v) = call(&c, http::Method::GET, "/v2.0/agents", &tm, None).await;
        assert_eq!((s, error_type(&v)), (403, "PolicyNotAuthorized"), "{v}");
        let (s, _) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/sync",
            &tm,
            Some(json!({"sync": {"host": "h1"}})),
        )
        .await;
        assert_eq!(s, 403);
        let (s, v) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/agents/{l3}"),
            &t,
            Some(json!({"agent": {"description": "the routers", "admin_state_up": true}})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["agent"]["description"], "the routers");
        let (s, v) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/agents/{l3}"),
            &t,
            Some(json!({"agent": {"host": "elsewhere"}})),
        )
        .await;
        assert_eq!(s, 400, "{v}");

        // A network with DHCP, a router on it, and a port bound to h2.
        let (nid, sid) = network_with_subnet(&c, &tm, "agent-net", "10.90.0.0/24").await;
        let r = post(&c, "/v2.0/routers", &tm, json!({"router": {"name": "agent-r"}})).await;
        let rid = r["router"]["id"].as_str().unwrap().to_string();
        let (s, _) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/routers/{rid}/add_router_interface"),
            &tm,
            Some(json!({"subnet_id": sid})),
        )
        .await;
        assert_eq!(s, 200);
        let p = post(&c, "/v2.0/ports", &t,
            json!({"port": {"network_id": nid, "binding:host_id": "h2", "device_owner": "compute:nova", "device_id": "vm-1"}})).await;
        let pid = p["port"]["id"].as_str().unwrap().to_string();
        assert_eq!(p["port"]["status"], "DOWN");
        let sync = |since: Option<u64>, wait: u64| json!({"sync": {"host": "h1", "hosts": ["h1", "h2"], "since": since, "wait": wait, "l2": true, "dhcp": true, "l3": true}});
        let (s, st) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/sync",
            &t,
            Some(sync(None, 0)),
        )
        .await;
        assert_eq!(s, 200, "{st}");
        let ports: Vec<&str> = st["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ports, [pid.as_str()], "{st}");
        assert_eq!(st["networks"][&nid]["id"], json!(nid));
        assert_eq!(st["subnets"][&sid]["cidr"], "10.90.0.0/24");
        // The port's default group allows its own group in: its members' addresses come along.
        let groups = st["security_groups"].as_object().unwrap();
        assert_eq!(groups.len(), 1, "{st}");
        let members = st["remote_groups"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_array()
            .unwrap()
            .clone();
        assert!(members.contains(&p["port"]["fixed_ips"][0]["ip_address"]), "{st}");
        // The DHCP port was made for this host, holding an address in the subnet; the router is this host's.
        let dhcp = st["dhcp"].as_array().unwrap();
        assert_eq!(dhcp.len(), 1, "{st}");
        assert_eq!(dhcp[0]["port"]["device_owner"], "network:dhcp");
        assert_eq!(dhcp[0]["port"]["binding:host_id"], "h1");
        assert_eq!(dhcp[0]["port"]["fixed_ips"][0]["subnet_id"], json!(sid));
        assert!(dhcp[0]["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == json!(pid)));
        let routers = st["routers"].as_array().unwrap();
        assert_eq!(routers.len(), 1);
        assert_eq!(routers[0]["ports"][0]["device_owner"], "network:router_interface");
        // A second L3 host gets no router while the first lives.
        let (_, other) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/sync",
            &t,
            Some(json!({"sync": {"host": "h9", "l3": true, "dhcp": true}})),
        )
        .await;
        assert_eq!(other["routers"].as_array().unwrap().len(), 0, "{other}");
        assert_eq!(other["dhcp"].as_array().unwrap().len(), 0, "{other}");
        // A long poll answers as soon as something changes (after a sync that changed nothing itself: the
        // first one made the DHCP port).
        let (_, st) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/sync",
            &t,
            Some(sync(None, 0)),
        )
        .await;
        let rev = st["revision"].as_u64().unwrap();
        let waiter = {
            let (http, url, t) = (c.http.clone(), c.network_url("/v2.0/agent-rpc/sync"), t.clone());
            let body = sync(Some(rev), 20);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let v: Value = http
                    .post(url)
                    .header("X-Auth-Token", &t)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (started.elapsed(), v)
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (s, _) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/ports/{pid}"),
            &t,
            Some(json!({"port": {"name": "renamed"}})),
        )
        .await;
        assert_eq!(s, 200);
        let (elapsed, v) = waiter.await.unwrap();
        assert!(
            elapsed < std::time::Duration::from_secs(15),
            "the long poll waited it out: {elapsed:?}"
        );
        assert!(v["revision"].as_u64().unwrap() > rev);
        assert_eq!(v["ports"][0]["name"], "renamed");
        // Plugged: ACTIVE; a bad status is refused.
        let (s, v) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/port_status",
            &t,
            Some(json!({"status": {"host": "h2", "ports": {&pid: "ACTIVE"}}})),
        )
        .await;
        assert_eq!((s, &v["changed"]), (200, &json!(1)), "{v}");
        let (_, v) = call(&c, http::Method::GET, &format!("/v2.0/ports/{pid}"), &tm, None).await;
        assert_eq!(v["port"]["status"], "ACTIVE", "{v}");
        let (s, _) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/port_status",
            &t,
            Some(json!({"status": {"host": "h2", "ports": {&pid: "SHINY"}}})),
        )
        .await;
        assert_eq!(s, 400);
        // Bound elsewhere: DOWN until that host's agent plugs it.
        let (_, v) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/ports/{pid}"),
            &t,
            Some(json!({"port": {"binding:host_id": "h3"}})),
        )
        .await;
        assert_eq!(v["port"]["status"], "DOWN", "{v}");
        let (_, st) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/sync",
            &t,
            Some(sync(None, 0)),
        )
        .await;
        assert_eq!(st["ports"].as_array().unwrap().len(), 0, "{st}");
        // Deleting the subnet takes the DHCP port's address with it; the network goes with its DHCP port.
        let (s, v) = call(&c, http::Method::DELETE, &format!("/v2.0/ports/{pid}"), &t, None).await;
        assert_eq!(s, 204, "{v}");
        let (s, _) = call(
            &c,
            http::Method::PUT,
            &format!("/v2.0/routers/{rid}/remove_router_interface"),
            &tm,
            Some(json!({"subnet_id": sid})),
        )
        .await;
        assert_eq!(s, 200);
        let (s, v) = call(
            &c,
            http::Method::DELETE,
            &format!("/v2.0/networks/{nid}"),
            &tm,
            None,
        )
        .await;
        assert_eq!(s, 204, "{v}");
        let (_, st) = call(
            &c,
            http::Method::POST,
            "/v2.0/agent-rpc/sync",
            &t,
            Some(sync(None, 0)),
        )
        .await;
        assert_eq!(st["dhcp"].as_array().unwrap().len(), 0, "{st}");
        let (s, _) = call(&c, http::Method::DELETE, &format!("/v2.0/agents/{l3}"), &t, None).await;
        assert_eq!(s, 204);
        assert_eq!(count(&c, "/v2.0/agents?host=h1", "agents", &t).await, 2);
        c.stop().await;
    });
}
