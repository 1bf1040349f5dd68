//! The Compute API over HTTP on every backend: version documents and microversion negotiation, and the
//! services, hypervisors and zones of a two-cell all-in-one with two fake hosts per cell.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use tessera_db::Db;
use tessera_test_harness::{each_backend, Backend, Cloud, TestDb};

async fn get(c: &Cloud, token: &str, path: &str, mv: Option<&str>) -> (u16, Value, http::HeaderMap) {
    let mut rb = c.http.get(c.compute_url(path)).header("X-Auth-Token", token);
    if let Some(v) = mv {
        rb = rb.header("OpenStack-API-Version", format!("compute {v}"));
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    let h = r.headers().clone();
    (s, r.json().await.unwrap_or(Value::Null), h)
}

#[tokio::test]
async fn services_hypervisors_and_zones_across_cells() {
    each_backend!(|b: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(&b, dir.path()).await;
        let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
        cfg.set("all_in_one", "cells", "2").unwrap();
        cfg.set("all_in_one", "hosts_per_cell", "2").unwrap();
        let c = Cloud::start_with(&b, db, dir, cfg).await;
        let token = c.admin_token().await;

        // Version documents need no token and name the range.
        let r = c
            .http
            .get(format!("{}/", c.aio.compute.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let v21 = v["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == "v2.1")
            .unwrap()
            .clone();
        assert_eq!(v21["min_version"], "2.1");
        assert_eq!(v21["status"], "CURRENT");
        let r = c.http.get(c.compute_url("")).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["version"]["id"], "v2.1");

        // Negotiation: echoed in both headers, Vary on both; 406 out of range; 400 malformed.
        let (s, _, h) = get(&c, &token, "/os-services", Some("2.53")).await;
        assert_eq!(s, 200);
        assert_eq!(h["openstack-api-version"], "compute 2.53");
        assert_eq!(h["x-openstack-nova-api-version"], "2.53");
        let vary: Vec<&str> = h.get_all("vary").iter().map(|v| v.to_str().unwrap()).collect();
        assert!(vary.contains(&"OpenStack-API-Version") && vary.contains(&"X-OpenStack-Nova-API-Version"));
        let (s, body, _) = get(&c, &token, "/os-services", Some("2.999")).await;
        assert_eq!(s, 406);
        assert_eq!(body["computeFault"]["code"], 406);
        let (s, body, _) = get(&c, &token, "/os-services", Some("2.x")).await;
        assert_eq!(s, 400);
        assert_eq!(body["badRequest"]["code"], 400);
        let (_, _, h) = get(&c, &token, "/os-services", Some("latest")).await;
        assert_eq!(
            h["x-openstack-nova-api-version"],
            format!("2.{}", tessera_compute::api::microversion::MAX)
        );

        // Services of both cells (2 computes and a conductor each) and of cell0 (scheduler and super
        // conductor), all up.
        let (_, v, _) = get(&c, &token, "/os-services", None).await;
        let svcs = v["services"].as_array().unwrap();
        assert_eq!(svcs.len(), 8, "{v}");
        let sched: Vec<&Value> = svcs.iter().filter(|s| s["binary"] == "nova-scheduler").collect();
        assert_eq!(sched.len(), 1, "{v}");
        assert_eq!(sched[0]["zone"], "internal");
        assert!(svcs
            .iter()
            .all(|s| s["state"] == "up" && s["status"] == "enabled"));
        assert!(svcs[0]["id"].is_i64(), "integer ids before 2.53");
        let computes: Vec<&Value> = svcs.iter().filter(|s| s["binary"] == "nova-compute").collect();
        assert_eq!(computes.len(), 4);
        assert!(computes.iter().all(|s| s["zone"] == "nova"));
        assert!(svcs
            .iter()
            .filter(|s| s["binary"] == "nova-conductor")
            .all(|s| s["zone"] == "internal"));
        let (_, v, _) = get(
            &c,
            &token,
            "/os-services?binary=nova-compute&host=cell2-compute1",
            Some("2.53"),
        )
        .await;
        let one = &v["services"][0];
        assert_eq!(v["services"].as_array().unwrap().len(), 1);
        assert_eq!(one["id"].as_str().unwrap().len(), 36, "uuid ids from 2.53");
        assert_eq!(one["forced_down"], false);

        // Disable, force down, enable a compute (2.53: by uuid, flat body; 2.1: by host and binary).
        let uuid = one["id"].as_str().unwrap().to_string();
        let put = |path: String, mv: &'static str, body: Value| {
            let c = &c;
            let token = token.clone();
            async move {
                let r = c
                    .http
                    .put(c.compute_url(&path))
                    .header("X-Auth-Token", &token)
                    .header("OpenStack-API-Version", format!("compute {mv}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                (s, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let (s, v) = put(
            format!("/os-services/{uuid}"),
            "2.53",
            serde_json::json!({"status": "disabled", "disabled_reason": "maintenance"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["service"]["status"], "disabled");
        assert_eq!(v["service"]["disabled_reason"], "maintenance");
        // The disabled compute's provider carries COMPUTE_STATUS_DISABLED (the scheduler's placement query
        // leaves it out); enabling removes it.
        let traits_of = |host: &'static str| {
            let c = &c;
            let token = token.clone();
            async move {
                let r: Value = c
                    .http
                    .get(c.placement_url(&format!("/resource_providers?name={host}")))
                    .header("X-Auth-Token", &token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let rp = r["resource_providers"][0]["uuid"].as_str().unwrap().to_string();
                let t: Value = c
                    .http
                    .get(c.placement_url(&format!("/resource_providers/{rp}/traits")))
                    .header("X-Auth-Token", &token)
                    .header("OpenStack-API-Version", "placement 1.6")
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                t["traits"].clone()
            }
        };
        assert_eq!(
            traits_of("cell2-compute1").await,
            serde_json::json!(["COMPUTE_STATUS_DISABLED"])
        );
        let (s, v) = put(
            format!("/os-services/{uuid}"),
            "2.53",
            serde_json::json!({"forced_down": true}),
        )
        .await;
        assert_eq!(
            (s, v["service"]["state"].clone()),
            (200, serde_json::json!("down"))
        );
        let (s, _) = put(
            format!("/os-services/{uuid}"),
            "2.53",
            serde_json::json!({"status": "enabled", "disabled_reason": "x"}),
        )
        .await;
        assert_eq!(s, 400);
        let (s, _) = put(format!("/os-services/{uuid}"), "2.53", serde_json::json!({})).await;
        assert_eq!(s, 400);
        let conductor = svcs.iter().find(|s| s["binary"] == "nova-conductor").unwrap()["host"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, v, _) = get(
            &c,
            &token,
            &format!("/os-services?host={conductor}"),
            Some("2.53"),
        )
        .await;
        let cuuid = v["services"][0]["id"].as_str().unwrap().to_string();
        let (s, _) = put(
            format!("/os-services/{cuuid}"),
            "2.53",
            serde_json::json!({"status": "disabled"}),
        )
        .await;
        assert_eq!(s, 400, "only nova-compute services can be updated");
        let (s, v) = put(
            "/os-services/enable".into(),
            "2.11",
            serde_json::json!({"host": "cell2-compute1", "binary": "nova-compute"}),
        )
        .await;
        assert_eq!(
            (s, v["service"]["status"].clone()),
            (200, serde_json::json!("enabled"))
        );
        let (s, _) = put(
            "/os-services/force-down".into(),
            "2.11",
            serde_json::json!({"host": "cell2-compute1", "binary": "nova-compute", "forced_down": false}),
        )
        .await;
        assert_eq!(s, 200);
        let (_, v, _) = get(&c, &token, "/os-services?host=cell2-compute1", None).await;
        assert_eq!(v["services"][0]["state"], "up");
        assert_eq!(traits_of("cell2-compute1").await, serde_json::json!([]));
        assert_eq!(v["services"][0]["status"], "enabled");

        // Hypervisors: one per host, both cells; stats up to 2.87 only.
        let (_, v, _) = get(&c, &token, "/os-hypervisors", None).await;
        let names: Vec<&str> = v["hypervisors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["hypervisor_hostname"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 4);
        for h in [
            "cell1-compute1",
            "cell1-compute2",
            "cell2-compute1",
            "cell2-compute2",
        ] {
            assert!(names.contains(&h), "{names:?}");
        }
        let (_, v, _) = get(&c, &token, "/os-hypervisors/detail", Some("2.87")).await;
        let h0 = &v["hypervisors"][0];
        assert_eq!(h0["vcpus"], 16);
        assert_eq!(h0["hypervisor_type"], "fake");
        assert_eq!(h0["state"], "up");
        let (_, v, _) = get(&c, &token, "/os-hypervisors/detail", Some("2.88")).await;
        let h0 = v["hypervisors"][0].clone();
        assert!(h0.get("vcpus").is_none() && h0.get("uptime").is_some());
        let id = h0["id"].as_str().unwrap().to_string();
        let (s, v, _) = get(&c, &token, &format!("/os-hypervisors/{id}"), Some("2.88")).await;
        assert_eq!(s, 200);
        assert_eq!(v["hypervisor"]["service"]["host"], h0["service"]["host"]);
        let (s, v, _) = get(&c, &token, "/os-hypervisors/not-a-uuid", Some("2.53")).await;
        assert_eq!(s, 400, "{v}");
        let (s, v, _) = get(
            &c,
            &token,
            &format!("/os-hypervisors/{}", uuid::Uuid::new_v4()),
            Some("2.53"),
        )
        .await;
        assert_eq!(s, 404);
        assert_eq!(v["itemNotFound"]["code"], 404);
        let (_, v, _) = get(&c, &token, "/os-hypervisors?limit=3", Some("2.53")).await;
        assert_eq!(v["hypervisors"].as_array().unwrap().len(), 3);
        assert!(v["hypervisors_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker="));

        // Aggregates: none yet.
        let (s, v, _) = get(&c, &token, "/os-aggregates", Some("2.41")).await;
        assert_eq!(s, 200);
        assert_eq!(v["aggregates"], serde_json::json!([]));

        // Zones.
        let (_, v, _) = get(&c, &token, "/os-availability-zone", None).await;
        assert_eq!(v["availabilityZoneInfo"][0]["zoneName"], "nova");
        assert_eq!(v["availabilityZoneInfo"][0]["zoneState"]["available"], true);
        let (_, v, _) = get(&c, &token, "/os-availability-zone/detail", None).await;
        let zones: Vec<&str> = v["availabilityZoneInfo"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| z["zoneName"].as_str().unwrap())
            .collect();
        assert_eq!(zones, vec!["internal", "nova"]);

        // Members of other projects: 403 with Nova's body; no token: 401.
        c.project_with_member(&token, "p-compute", "u-compute", "pw-compute-1")
            .await;
        let r = c.login("u-compute", "pw-compute-1", Some("p-compute")).await;
        let user_token = r.subject_token();
        let (s, v, _) = get(&c, &user_token, "/os-hypervisors", None).await;
        assert_eq!(s, 403);
        assert_eq!(v["forbidden"]["code"], 403);
        let (s, _, _) = get(&c, &user_token, "/os-availability-zone", None).await;
        assert_eq!(s, 200);
        let r = c.http.get(c.compute_url("/os-services")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        c.stop().await;
    });
}

async fn send(
    c: &Cloud,
    token: &str,
    method: http::Method,
    path: &str,
    mv: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = c
        .http
        .request(method, c.compute_url(path))
        .header("X-Auth-Token", token)
        .header("OpenStack-API-Version", format!("compute {mv}"));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn flavors_defaults_crud_specs_and_access() {
    use http::Method;
    use serde_json::json;
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let admin = c.admin_token().await;
        let (_, v, _) = get(&c, &admin, "/flavors/detail", None).await;
        let names: Vec<&str> = v["flavors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            vec!["m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge"]
        );
        assert_eq!(v["flavors"][0]["swap"], "", "swap is \"\" before 2.75");
        let (_, v, _) = get(&c, &admin, "/flavors/1", Some("2.75")).await;
        assert_eq!(v["flavor"]["ram"], 512);
        assert_eq!(v["flavor"]["swap"], 0);

        // Create: 200 with the flavor; duplicates 409; bad input 400 and nothing written.
        let (s, v) = send(&c, &admin, Method::POST, "/flavors", "2.55",
            Some(json!({"flavor": {"name": "t.custom", "ram": "256", "vcpus": 1, "disk": 0, "id": "custom-1", "description": "d"}}))).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["flavor"]["ram"], 256);
        assert_eq!(v["flavor"]["description"], "d");
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            "/flavors",
            "2.1",
            Some(json!({"flavor": {"name": "t.custom", "ram": 256, "vcpus": 1, "disk": 0}})),
        )
        .await;
        assert_eq!(s, 409, "{v}");
        assert_eq!(v["conflictingRequest"]["code"], 409);
        for bad in [
            json!({"flavor": {"name": "x", "ram": 0, "vcpus": 1, "disk": 0}}),
            json!({"flavor": {"name": "x", "ram": 1, "vcpus": "one", "disk": 0}}),
            json!({"flavor": {"name": " x", "ram": 1, "vcpus": 1, "disk": 0}}),
            json!({"flavor": {"name": "x", "ram": 1, "vcpus": 1}}),
            json!({"flavor": {"name": "x", "ram": 1, "vcpus": 1, "disk": 0, "color": "red"}}),
            json!({"flavour": {}}),
        ] {
            let (s, v) = send(&c, &admin, Method::POST, "/flavors", "2.1", Some(bad.clone())).await;
            assert_eq!(s, 400, "{bad} -> {v}");
            assert_eq!(v["badRequest"]["code"], 400);
        }
        let (_, v, _) = get(&c, &admin, "/flavors", None).await;
        assert_eq!(v["flavors"].as_array().unwrap().len(), 6);

        // Extra specs.
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            "/flavors/custom-1/os-extra_specs",
            "2.1",
            Some(json!({"extra_specs": {"hw:cpu_policy": "dedicated", "k": "v"}})),
        )
        .await;
        assert_eq!(s, 200);
        let (_, v, _) = get(&c, &admin, "/flavors/custom-1/os-extra_specs/k", None).await;
        assert_eq!(v, json!({"k": "v"}));
        let (s, _) = send(
            &c,
            &admin,
            Method::PUT,
            "/flavors/custom-1/os-extra_specs/k",
            "2.1",
            Some(json!({"other": "v"})),
        )
        .await;
        assert_eq!(s, 400);
        let (s, _) = send(
            &c,
            &admin,
            Method::DELETE,
            "/flavors/custom-1/os-extra_specs/k",
            "2.1",
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (_, v, _) = get(&c, &admin, "/flavors/custom-1", Some("2.61")).await;
        assert_eq!(v["flavor"]["extra_specs"], json!({"hw:cpu_policy": "dedicated"}));

        // A private flavor: invisible to a member until shared with their project.
        let (s, v) = send(&c, &admin, Method::POST, "/flavors", "2.1",
            Some(json!({"flavor": {"name": "t.private", "ram": 64, "vcpus": 1, "disk": 0, "id": "priv", "os-flavor-access:is_public": false}}))).await;
        assert_eq!(s, 200, "{v}");
        let (pid, _) = c
            .project_with_member(&admin, "p-flavor", "u-flavor", "pw-flavor-1")
            .await;
        let user = c
            .login("u-flavor", "pw-flavor-1", Some("p-flavor"))
            .await
            .subject_token();
        let (s, _, _) = get(&c, &user, "/flavors/priv", None).await;
        assert_eq!(s, 404);
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            "/flavors/priv/action",
            "2.7",
            Some(json!({"addTenantAccess": {"tenant": pid}})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["flavor_access"][0]["tenant_id"], pid);
        let (s, _, _) = get(&c, &user, "/flavors/priv", None).await;
        assert_eq!(s, 200);
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            "/flavors/1/action",
            "2.7",
            Some(json!({"addTenantAccess": {"tenant": pid}})),
        )
        .await;
        assert_eq!(s, 409, "public flavors take no access list from 2.7");
        // Members cannot manage flavors.
        let (s, v) = send(
            &c,
            &user,
            Method::POST,
            "/flavors",
            "2.1",
            Some(json!({"flavor": {"name": "mine", "ram": 64, "vcpus": 1, "disk": 0}})),
        )
        .await;
        assert_eq!(s, 403, "{v}");
        let (s, _) = send(&c, &user, Method::DELETE, "/flavors/custom-1", "2.1", None).await;
        assert_eq!(s, 403);

        // Delete: 202, then 404; limits and markers page by id.
        let (s, _) = send(&c, &admin, Method::DELETE, "/flavors/custom-1", "2.1", None).await;
        assert_eq!(s, 202);
        let (s, v, _) = get(&c, &admin, "/flavors/custom-1", None).await;
        assert_eq!((s, v["itemNotFound"]["code"].clone()), (404, json!(404)));
        let (_, v, _) = get(&c, &admin, "/flavors?limit=2&marker=2", None).await;
        let ids: Vec<&str> = v["flavors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["3", "4"]);
        assert!(v["flavors_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker=4"));
        let (s, _, _) = get(&c, &admin, "/flavors?marker=nope", None).await;
        assert_eq!(s, 400);
        c.stop().await;
    });
}

#[tokio::test]
async fn keypairs_per_user_by_microversion() {
    use http::Method;
    use serde_json::json;
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let admin = c.admin_token().await;
        // 2.1: generated key, 200; 2.2: 201 with type; 2.92: public key required.
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            "/os-keypairs",
            "2.1",
            Some(json!({"keypair": {"name": "gen"}})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert!(v["keypair"]["private_key"]
            .as_str()
            .unwrap()
            .contains("OPENSSH PRIVATE KEY"));
        let public = v["keypair"]["public_key"].as_str().unwrap().to_string();
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            "/os-keypairs",
            "2.2",
            Some(json!({"keypair": {"name": "imported", "public_key": public, "type": "ssh"}})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["keypair"]["type"], "ssh");
        assert!(v["keypair"].get("private_key").is_none());
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            "/os-keypairs",
            "2.92",
            Some(json!({"keypair": {"name": "nokey"}})),
        )
        .await;
        assert_eq!(s, 400);
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            "/os-keypairs",
            "2.92",
            Some(json!({"keypair": {"name": "me@host.x", "public_key": public}})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            "/os-keypairs",
            "2.91",
            Some(json!({"keypair": {"name": "me@host.y", "public_key": public}})),
        )
        .await;
        assert_eq!(s, 400, "@ is allowed from 2.92 only");
        // Bad keys and duplicates.
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            "/os-keypairs",
            "2.2",
            Some(json!({"keypair": {"name": "bad", "public_key": "ssh-rsa bm90IGEga2V5"}})),
        )
        .await;
        assert_eq!(s, 400, "{v}");
        assert!(v["badRequest"]["message"]
            .as_str()
            .unwrap()
            .contains("fingerprint"));
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            "/os-keypairs",
            "2.2",
            Some(json!({"keypair": {"name": "imported", "public_key": public}})),
        )
        .await;
        assert_eq!(s, 409, "{v}");
        // Listing wraps each item; paging by name from 2.35.
        let (_, v, _) = get(&c, &admin, "/os-keypairs", Some("2.35")).await;
        let names: Vec<&str> = v["keypairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["keypair"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["gen", "imported", "me@host.x"]);
        let (_, v, _) = get(&c, &admin, "/os-keypairs?limit=1&marker=gen", Some("2.35")).await;
        assert_eq!(v["keypairs"][0]["keypair"]["name"], "imported");
        let (_, v, _) = get(&c, &admin, "/os-keypairs/gen", Some("2.2")).await;
        assert_eq!(v["keypair"]["deleted"], false);
        assert!(v["keypair"]["id"].is_i64());

        // Another user sees none of them and cannot name the admin's user id.
        c.project_with_member(&admin, "p-kp", "u-kp", "pw-kp-1").await;
        let user = c.login("u-kp", "pw-kp-1", Some("p-kp")).await.subject_token();
        let (_, v, _) = get(&c, &user, "/os-keypairs", None).await;
        assert_eq!(v["keypairs"], json!([]));
        let (s, _, _) = get(&c, &user, "/os-keypairs/gen", None).await;
        assert_eq!(s, 404);
        let admin_id = c
            .login("admin", tessera_test_harness::ADMIN_PASSWORD, Some("admin"))
            .await
            .body["token"]["user"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (s, _, _) = get(
            &c,
            &user,
            &format!("/os-keypairs?user_id={admin_id}"),
            Some("2.10"),
        )
        .await;
        assert_eq!(s, 403);
        // Delete: 202 at 2.1, 204 from 2.2, 404 after.
        let (s, _) = send(&c, &admin, Method::DELETE, "/os-keypairs/gen", "2.1", None).await;
        assert_eq!(s, 202);
        let (s, _) = send(&c, &admin, Method::DELETE, "/os-keypairs/imported", "2.2", None).await;
        assert_eq!(s, 204);
        let (s, v) = send(&c, &admin, Method::DELETE, "/os-keypairs/imported", "2.2", None).await;
        assert_eq!(s, 404, "{v}");
        c.stop().await;
    });
}

#[tokio::test]
async fn aggregates_zones_and_placement_mirroring() {
    use http::Method;
    use serde_json::json;
    each_backend!(|b: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(&b, dir.path()).await;
        let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
        cfg.set("all_in_one", "hosts_per_cell", "2").unwrap();
        let c = Cloud::start_with(&b, db, dir, cfg).await;
        let admin = c.admin_token().await;
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            "/os-aggregates",
            "2.41",
            Some(json!({"aggregate": {"name": "agg1", "availability_zone": "az1"}})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let id = v["aggregate"]["id"].as_i64().unwrap();
        let agg_uuid = v["aggregate"]["uuid"].as_str().unwrap().to_string();
        assert_eq!(v["aggregate"]["availability_zone"], "az1");
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            "/os-aggregates",
            "2.1",
            Some(json!({"aggregate": {"name": "agg1"}})),
        )
        .await;
        assert_eq!(s, 409);
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            "/os-aggregates",
            "2.1",
            Some(json!({"aggregate": {}})),
        )
        .await;
        assert_eq!(s, 400);

        let add = |host: &'static str| json!({"add_host": {"host": host}});
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            &format!("/os-aggregates/{id}/action"),
            "2.1",
            Some(add("cell1-compute1")),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["aggregate"]["hosts"], json!(["cell1-compute1"]));
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            &format!("/os-aggregates/{id}/action"),
            "2.1",
            Some(add("cell1-compute1")),
        )
        .await;
        assert_eq!(s, 409);
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            &format!("/os-aggregates/{id}/action"),
            "2.1",
            Some(add("nowhere")),
        )
        .await;
        assert_eq!(s, 404);
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            &format!("/os-aggregates/{id}/action"),
            "2.1",
            Some(json!({"frobnicate": {}})),
        )
        .await;
        assert_eq!(s, 400);

        // The host is now in az1 for services and zones, and its provider is in the placement aggregate.
        let (_, v, _) = get(&c, &admin, "/os-services?binary=nova-compute", None).await;
        let zones: std::collections::BTreeMap<String, String> = v["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["host"].as_str().unwrap().to_string(),
                    s["zone"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(zones["cell1-compute1"], "az1");
        assert_eq!(zones["cell1-compute2"], "nova");
        let (_, v, _) = get(&c, &admin, "/os-availability-zone", None).await;
        let names: Vec<&str> = v["availabilityZoneInfo"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| z["zoneName"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["az1", "nova"]);
        let r = c
            .http
            .get(c.placement_url("/resource_providers?name=cell1-compute1"))
            .header("X-Auth-Token", &admin)
            .send()
            .await
            .unwrap();
        let rp: Value = r.json().await.unwrap();
        let rp_uuid = rp["resource_providers"][0]["uuid"].as_str().unwrap().to_string();
        let r = c
            .http
            .get(c.placement_url(&format!("/resource_providers/{rp_uuid}/aggregates")))
            .header("X-Auth-Token", &admin)
            .header("OpenStack-API-Version", "placement 1.19")
            .send()
            .await
            .unwrap();
        let aggs: Value = r.json().await.unwrap();
        assert_eq!(aggs["aggregates"], json!([agg_uuid]));

        // Metadata, then removal and deletion rules.
        let (s, v) = send(
            &c,
            &admin,
            Method::POST,
            &format!("/os-aggregates/{id}/action"),
            "2.1",
            Some(json!({"set_metadata": {"metadata": {"ssd": "true", "availability_zone": "az2"}}})),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(v["aggregate"]["availability_zone"], "az2");
        assert_eq!(v["aggregate"]["metadata"]["ssd"], "true");
        let (s, _) = send(
            &c,
            &admin,
            Method::DELETE,
            &format!("/os-aggregates/{id}"),
            "2.1",
            None,
        )
        .await;
        assert_eq!(s, 400, "an aggregate with hosts cannot be deleted");
        let (s, _) = send(
            &c,
            &admin,
            Method::POST,
            &format!("/os-aggregates/{id}/action"),
            "2.1",
            Some(json!({"remove_host": {"host": "cell1-compute1"}})),
        )
        .await;
        assert_eq!(s, 200);
        let r = c
            .http
            .get(c.placement_url(&format!("/resource_providers/{rp_uuid}/aggregates")))
            .header("X-Auth-Token", &admin)
            .header("OpenStack-API-Version", "placement 1.19")
            .send()
            .await
            .unwrap();
        let aggs: Value = r.json().await.unwrap();
        assert_eq!(aggs["aggregates"], json!([]));
        let (s, _) = send(
            &c,
            &admin,
            Method::DELETE,
            &format!("/os-aggregates/{id}"),
            "2.1",
            None,
        )
        .await;
        assert_eq!(s, 200);
        let (s, _, _) = get(&c, &admin, &format!("/os-aggregates/{id}"), None).await;
        assert_eq!(s, 404);
        let (s, _, _) = get(&c, &admin, "/os-aggregates/abc", None).await;
        assert_eq!(s, 400);
        c.stop().await;
    });
}

#[tokio::test]
async fn deleting_services() {
    use http::Method;
    let b = Backend::Sqlite;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(&b, dir.path()).await;
    let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
    cfg.set("all_in_one", "hosts_per_cell", "2").unwrap();
    cfg.set("DEFAULT", "report_interval", "3600").unwrap();
    let c = Cloud::start_with(&b, db, dir, cfg).await;
    let admin = c.admin_token().await;
    let (_, v, _) = get(&c, &admin, "/os-services", Some("2.53")).await;
    let id_of = |host: &str| {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["host"] == host)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (one, two) = (id_of("cell1-compute1"), id_of("cell1-compute2"));
    // An instance on compute2: its service cannot go.
    let api = Db::connect(&c.aio.config.get_str("api_database", "connection"), 1)
        .await
        .unwrap();
    let cell1 = tessera_compute::cells::cell_list(&api)
        .await
        .unwrap()
        .into_iter()
        .find(|c| !c.is_cell0())
        .unwrap();
    let cdb = Db::connect(&cell1.database_connection, 1).await.unwrap();
    sqlx::query(
        "INSERT INTO instances (uuid, project_id, user_id, host, vm_state, power_state, flavor, memory_mb, vcpus, \
         root_gb, ephemeral_gb, locked, progress, launch_index, created_at, updated_at, deleted) \
         VALUES ('i-1', 'p', 'u', 'cell1-compute2', 'active', 1, '{}', 1, 1, 1, 0, 0, 0, 0, 1, 1, 0)",
    )
    .execute(cdb.pool())
    .await
    .unwrap();
    let (s, v) = send(
        &c,
        &admin,
        Method::DELETE,
        &format!("/os-services/{two}"),
        "2.53",
        None,
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["conflictingRequest"]["code"], 409);
    // compute1 goes with its node, host mapping and provider.
    let (s, _) = send(
        &c,
        &admin,
        Method::DELETE,
        &format!("/os-services/{one}"),
        "2.53",
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (_, v, _) = get(&c, &admin, "/os-services", Some("2.53")).await;
    assert!(v["services"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["host"] != "cell1-compute1"));
    let (_, v, _) = get(&c, &admin, "/os-hypervisors", Some("2.53")).await;
    assert_eq!(v["hypervisors"].as_array().unwrap().len(), 1);
    assert!(tessera_compute::cells::host_mapping_get(&api, "cell1-compute1")
        .await
        .unwrap()
        .is_none());
    let r: Value = c
        .http
        .get(c.placement_url("/resource_providers?name=cell1-compute1"))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["resource_providers"], serde_json::json!([]));
    // Before 2.53 ids are integers.
    let (_, v, _) = get(&c, &admin, "/os-services?binary=nova-conductor", None).await;
    let cid = v["services"][0]["id"].as_i64().unwrap();
    let (s, _) = send(
        &c,
        &admin,
        Method::DELETE,
        &format!("/os-services/{cid}"),
        "2.1",
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = send(
        &c,
        &admin,
        Method::DELETE,
        "/os-services/not-a-number",
        "2.1",
        None,
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = send(
        &c,
        &admin,
        Method::DELETE,
        &format!("/os-services/{one}"),
        "2.53",
        None,
    )
    .await;
    assert_eq!(s, 404);
    cdb.close().await;
    api.close().await;
    c.stop().await;
}
