//! `/servers` over HTTP: the Cells v2 boot across two cells (multi-create, placement claims, cell0 burial),
//! listings merged across cells with markers and sort keys, power actions, delete in every state, project
//! isolation, bad input that leaves nothing behind, reschedules to alternates, and the 2.69 records of a
//! cell that does not answer.

#![allow(clippy::unwrap_used)]

use http::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tessera_test_harness::{each_backend, Backend, Cloud, TestDb};

async fn call(
    c: &Cloud,
    method: Method,
    path: &str,
    token: &str,
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
    let bytes = r.bytes().await.unwrap_or_default();
    (s, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// An active image (1 KiB of data).
async fn image(c: &Cloud, token: &str) -> String {
    let r = c
        .http
        .post(c.image_url("/v2/images"))
        .header("X-Auth-Token", token)
        .json(&json!({"name": "img", "disk_format": "raw", "container_format": "bare"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .http
        .put(c.image_url(&format!("/v2/images/{id}/file")))
        .header("X-Auth-Token", token)
        .header("Content-Type", "application/octet-stream")
        .body(vec![7u8; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    id
}

/// Poll until every listed server satisfies `done` (bounded).
async fn wait_servers(c: &Cloud, token: &str, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut last = Vec::new();
    for _ in 0..200 {
        let (s, v) = call(
            c,
            Method::GET,
            &format!("/servers/detail{query}"),
            token,
            "2.100",
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        last = v["servers"].as_array().unwrap().clone();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("servers did not settle: {last:?}");
}

/// Some servers listed, all in `st` (an empty listing is not done: a server may not show yet).
fn all_status(st: &'static str) -> impl Fn(&[Value]) -> bool {
    move |l: &[Value]| !l.is_empty() && l.iter().all(|s| s["status"] == st)
}

async fn usage_total(c: &Cloud, token: &str) -> i64 {
    let r = c
        .http
        .get(c.placement_url("/resource_providers"))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let mut total = 0;
    for p in v["resource_providers"].as_array().unwrap() {
        let u: Value = c
            .http
            .get(c.placement_url(&format!(
                "/resource_providers/{}/usages",
                p["uuid"].as_str().unwrap()
            )))
            .header("X-Auth-Token", token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        total += u["usages"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_i64().unwrap())
            .sum::<i64>();
    }
    total
}

async fn api_count(c: &Cloud, table: &str) -> i64 {
    use sqlx::Row;
    let db = &c.aio.compute.api.api_db;
    let r = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
        .fetch_one(db.pool())
        .await
        .unwrap();
    r.try_get::<i64, _>("n").unwrap()
}

/// How many ports the Networking service has for a server.
async fn ports_of(c: &Cloud, t: &str, server: &str) -> usize {
    let r = c
        .http
        .get(c.network_url(&format!("/v2.0/ports?device_id={server}")))
        .header("X-Auth-Token", t)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["ports"].as_array().unwrap().len()
}

/// A cloud on SQLite with one cell of `hosts` compute hosts and the given `(group, option, value)` settings,
/// its admin token and an active image.
async fn one_cell(hosts: &str, settings: &[(&str, &str, &str)]) -> (Cloud, String, String) {
    let b = Backend::Sqlite;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(&b, dir.path()).await;
    let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
    cfg.set("all_in_one", "hosts_per_cell", hosts).unwrap();
    for (g, k, v) in settings {
        cfg.set(g, k, *v).unwrap();
    }
    let c = Cloud::start_with(&b, db, dir, cfg).await;
    let t = c.admin_token().await;
    let img = image(&c, &t).await;
    (c, t, img)
}

fn two_cells(b: &Backend, dir: &std::path::Path, db: &TestDb, hosts: &str) -> tessera_config::Config {
    let _ = b;
    let mut cfg = tessera_test_harness::test_config(dir, &db.url);
    cfg.set("all_in_one", "cells", "2").unwrap();
    cfg.set("all_in_one", "hosts_per_cell", hosts).unwrap();
    cfg
}

#[tokio::test]
async fn servers_boot_list_act_and_delete_across_cells() {
    each_backend!(|b: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(&b, dir.path()).await;
        let cfg = two_cells(&b, dir.path(), &db, "2");
        let c = Cloud::start_with(&b, db, dir, cfg).await;
        let t = c.admin_token().await;
        let img = image(&c, &t).await;

        // Eight at once, no network: 202 with the first server; all ACTIVE, spread over both cells.
        let (s, v) = call(&c, Method::POST, "/servers", &t, "2.100", Some(json!({"server": {
            "name": "vm", "flavorRef": "1", "imageRef": img, "networks": "none", "min_count": 8, "max_count": 8,
            "metadata": {"role": "test"}}}))).await;
        assert_eq!(s, 202, "{v}");
        assert!(v["server"]["adminPass"].is_string());
        let first = v["server"]["id"].as_str().unwrap().to_string();
        let servers = wait_servers(&c, &t, "", |l| l.len() == 8 && all_status("ACTIVE")(l)).await;
        let hosts: std::collections::BTreeSet<&str> = servers
            .iter()
            .map(|s| s["OS-EXT-SRV-ATTR:host"].as_str().unwrap())
            .collect();
        assert!(
            hosts.iter().any(|h| h.starts_with("cell1")) && hosts.iter().any(|h| h.starts_with("cell2")),
            "{hosts:?}"
        );
        let one = servers.iter().find(|s| s["id"] == first.as_str()).unwrap();
        assert_eq!(one["metadata"]["role"], "test");
        assert_eq!(one["flavor"]["original_name"], "m1.tiny");
        assert_eq!(one["OS-EXT-AZ:availability_zone"], "nova");
        assert_eq!(one["addresses"], json!({}));
        assert_eq!(one["host_status"], "UP");
        assert_eq!(api_count(&c, "build_requests").await, 0);
        assert_eq!(usage_total(&c, &t).await, 8 * (1 + 512 + 1));

        // Pages of three across the cells come back in the same order as one listing, no repeats.
        let (_, all) = call(&c, Method::GET, "/servers", &t, "2.1", None).await;
        let order: Vec<String> = all["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(order.len(), 8);
        let mut paged = Vec::new();
        let mut marker = String::new();
        for _ in 0..5 {
            let q = if marker.is_empty() {
                "/servers?limit=3".to_string()
            } else {
                format!("/servers?limit=3&marker={marker}")
            };
            let (s, v) = call(&c, Method::GET, &q, &t, "2.1", None).await;
            assert_eq!(s, 200, "{v}");
            let page: Vec<String> = v["servers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string())
                .collect();
            if page.is_empty() {
                break;
            }
            assert_eq!(v["servers_links"].is_array(), page.len() == 3, "{v}");
            marker = page.last().unwrap().clone();
            paged.extend(page);
        }
        assert_eq!(paged, order);
        let (_, v) = call(
            &c,
            Method::GET,
            "/servers?sort_key=display_name&sort_dir=asc",
            &t,
            "2.1",
            None,
        )
        .await;
        let names: Vec<&str> = v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["vm-1", "vm-2", "vm-3", "vm-4", "vm-5", "vm-6", "vm-7", "vm-8"]
        );
        let (s, v) = call(
            &c,
            Method::GET,
            "/servers?marker=00000000-0000-0000-0000-00000000ffff",
            &t,
            "2.1",
            None,
        )
        .await;
        assert_eq!((s, v["badRequest"]["code"].as_i64()), (400, Some(400)));
        let (_, v) = call(&c, Method::GET, "/servers/detail?name=vm-3", &t, "2.1", None).await;
        assert_eq!(v["servers"].as_array().unwrap().len(), 1);
        let (_, v) = call(&c, Method::GET, "/servers/detail?status=SHUTOFF", &t, "2.1", None).await;
        assert!(v["servers"].as_array().unwrap().is_empty());

        // networks "auto": the project has no network, so it gets its auto-allocated one (a router to the
        // all-in-one's default external network `public`), and the server a port on it.
        let (s, v) = call(
            &c,
            Method::POST,
            "/servers",
            &t,
            "2.100",
            Some(json!({"server": {
            "name": "auto", "flavorRef": "1", "imageRef": img, "networks": "auto"}})),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        let auto = v["server"]["id"].as_str().unwrap().to_string();
        wait_servers(&c, &t, "?name=auto", all_status("ACTIVE")).await;
        let (_, v) = call(&c, Method::GET, &format!("/servers/{auto}"), &t, "2.100", None).await;
        let addr = v["server"]["addresses"]["auto_allocated_network"][0]["addr"]
            .as_str()
            .unwrap_or_default();
        assert!(addr.starts_with("10.128.0."), "{v}");
        assert_eq!(ports_of(&c, &t, &auto).await, 1);

        // Power actions and their state guards.
        let act = |body: Value| {
            let c = &c;
            let t = t.clone();
            let first = first.clone();
            async move {
                call(
                    c,
                    Method::POST,
                    &format!("/servers/{first}/action"),
                    &t,
                    "2.100",
                    Some(body),
                )
                .await
            }
        };
        assert_eq!(act(json!({"os-start": null})).await.0, 409);
        assert_eq!(act(json!({"os-stop": null})).await.0, 202);
        let shut = wait_servers(&c, &t, "?status=SHUTOFF", |l| l.len() == 1).await;
        assert_eq!(shut[0]["OS-EXT-STS:power_state"], 4);
        let (s, v) = act(json!({"os-stop": null})).await;
        assert_eq!(s, 409, "{v}");
        assert!(v["conflictingRequest"]["message"]
            .as_str()
            .unwrap()
            .contains("vm_state stopped"));
        assert_eq!(act(json!({"reboot": {"type": "SOFT"}})).await.0, 409);
        assert_eq!(act(json!({"reboot": {"type": "bogus"}})).await.0, 400);
        assert_eq!(act(json!({"os-start": null})).await.0, 202);
        wait_servers(&c, &t, "?status=SHUTOFF", |l| l.is_empty()).await;
        assert_eq!(act(json!({"reboot": {"type": "HARD"}})).await.0, 202);
        wait_servers(&c, &t, "", |l| l.len() == 9 && all_status("ACTIVE")(l)).await;
        assert_eq!(act(json!({"os-pause-everything": null})).await.0, 400);

        // Nothing fits: ERROR with the NoValidHost fault, in cell0, nothing claimed.
        let (s, _) = call(
            &c,
            Method::POST,
            "/flavors",
            &t,
            "2.1",
            Some(json!({"flavor": {
            "name": "hugedisk", "id": "hugedisk", "vcpus": 1, "ram": 64, "disk": 100000}})),
        )
        .await;
        assert_eq!(s, 200);
        let (s, v) = call(
            &c,
            Method::POST,
            "/servers",
            &t,
            "2.100",
            Some(json!({"server": {
            "name": "big", "flavorRef": "hugedisk", "imageRef": img, "networks": "none"}})),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        let big = v["server"]["id"].as_str().unwrap().to_string();
        let l = wait_servers(&c, &t, "?name=big", all_status("ERROR")).await;
        assert!(
            l[0]["fault"]["message"]
                .as_str()
                .unwrap()
                .starts_with("No valid host was found"),
            "{l:?}"
        );
        let m = tessera_compute::cells::instance_mapping_get(&c.aio.compute.api.api_db, &big)
            .await
            .unwrap()
            .unwrap();
        let cell0 =
            tessera_compute::cells::cell_get(&c.aio.compute.api.api_db, tessera_compute::cells::CELL0_UUID)
                .await
                .unwrap()
                .unwrap();
        assert_eq!(m.cell_id, Some(cell0.id));
        assert_eq!(usage_total(&c, &t).await, 9 * (1 + 512 + 1));

        // Another project sees none of it and can touch none of it.
        c.project_with_member(&t, "other", "eve", "pw-eve-123").await;
        let r = c.login("eve", "pw-eve-123", Some("other")).await;
        let eve = r.subject_token();
        let (_, v) = call(&c, Method::GET, "/servers/detail", &eve, "2.1", None).await;
        assert!(v["servers"].as_array().unwrap().is_empty());
        assert_eq!(
            call(&c, Method::GET, &format!("/servers/{first}"), &eve, "2.1", None)
                .await
                .0,
            404
        );
        assert_eq!(
            call(
                &c,
                Method::DELETE,
                &format!("/servers/{first}"),
                &eve,
                "2.1",
                None
            )
            .await
            .0,
            404
        );
        assert_eq!(
            call(
                &c,
                Method::POST,
                &format!("/servers/{first}/action"),
                &eve,
                "2.1",
                Some(json!({"os-stop": null}))
            )
            .await
            .0,
            404
        );
        assert_eq!(
            call(&c, Method::GET, "/servers?all_tenants=1", &eve, "2.1", None)
                .await
                .0,
            403
        );

        // Bad input: Nova's error bodies, and nothing written.
        let before = api_count(&c, "instance_mappings").await;
        let bad = [
            json!({"server": {"flavorRef": "1", "imageRef": img, "networks": "none"}}),
            json!({"server": {"name": "x", "imageRef": img, "networks": "none"}}),
            json!({"server": {"name": "x", "flavorRef": "nope", "imageRef": img, "networks": "none"}}),
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": "00000000-0000-0000-0000-000000000001", "networks": "none"}}),
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": img}}),
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": img, "networks": "none", "min_count": 3, "max_count": 2}}),
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": img, "networks": "none", "bogus": 1}}),
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": img, "networks": "none", "metadata": {"k": 1}}}),
            json!({"server": {"name": " x", "flavorRef": "1", "imageRef": img, "networks": "none"}}),
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": img, "networks": [{"uuid": "00000000-0000-0000-0000-000000000002"}]}}),
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": img, "networks": "none", "key_name": "nokey"}}),
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": img, "networks": "none", "availability_zone": "nowhere"}}),
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": img, "networks": "none",
                   "block_device_mapping_v2": [{"source_type": "volume", "destination_type": "volume", "uuid": img, "boot_index": 0}]}}),
            json!({"nothing": {}}),
        ];
        for body in bad {
            let (s, v) = call(&c, Method::POST, "/servers", &t, "2.100", Some(body.clone())).await;
            assert_eq!(s, 400, "{body} → {v}");
            assert_eq!(v["badRequest"]["code"], 400, "{v}");
        }
        let r = c
            .http
            .post(c.compute_url("/servers"))
            .header("X-Auth-Token", &t)
            .header("Content-Type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // Quota: eleven where ten are allowed (nine in use) is refused whole; 2..5 gives what fits (1 → refused).
        let (s, v) = call(&c, Method::POST, "/servers", &t, "2.100", Some(json!({"server": {
            "name": "q", "flavorRef": "1", "imageRef": img, "networks": "none", "min_count": 2, "max_count": 5}}))).await;
        assert_eq!(s, 403, "{v}");
        assert!(
            v["forbidden"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Quota exceeded for instances"),
            "{v}"
        );
        assert_eq!(api_count(&c, "instance_mappings").await, before);
        assert_eq!(api_count(&c, "build_requests").await, 0);

        // Delete everything (ACTIVE, ERROR in cell0); allocations and addresses go, listings empty.
        let (_, v) = call(&c, Method::GET, "/servers", &t, "2.1", None).await;
        for s in v["servers"].as_array().unwrap() {
            let (st, body) = call(
                &c,
                Method::DELETE,
                &format!("/servers/{}", s["id"].as_str().unwrap()),
                &t,
                "2.1",
                None,
            )
            .await;
            assert_eq!(st, 204, "{body}");
        }
        wait_servers(&c, &t, "", |l| l.is_empty()).await;
        assert_eq!(
            call(&c, Method::GET, &format!("/servers/{first}"), &t, "2.1", None)
                .await
                .0,
            404
        );
        assert_eq!(
            call(&c, Method::DELETE, &format!("/servers/{first}"), &t, "2.1", None)
                .await
                .0,
            404
        );
        for _ in 0..100 {
            if usage_total(&c, &t).await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(usage_total(&c, &t).await, 0);
        assert_eq!(ports_of(&c, &t, &auto).await, 0, "the server's port went with it");
        // Deleted servers stay visible to admins asking for them.
        let (_, v) = call(&c, Method::GET, "/servers/detail?deleted=true", &t, "2.1", None).await;
        assert!(v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "DELETED"));
        assert_eq!(v["servers"].as_array().unwrap().len(), 10);
        c.stop().await;
    });
}

#[tokio::test]
async fn a_failed_spawn_is_rescheduled_to_an_alternate() {
    let (c, t, img) = one_cell("2", &[]).await;
    let fake = |i: usize| c.aio.computes[i].driver.as_fake().unwrap();
    fake(0).set_failing(Some("disk on fire"));

    // Whichever host is picked first, both servers end ACTIVE on the healthy host.
    let (s, v) = call(
        &c,
        Method::POST,
        "/servers",
        &t,
        "2.100",
        Some(json!({"server": {
        "name": "r", "flavorRef": "1", "imageRef": img, "networks": "none", "min_count": 2}})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let l = wait_servers(&c, &t, "", |l| l.len() == 2 && all_status("ACTIVE")(l)).await;
    let healthy = c.aio.computes[1].cfg.host.clone();
    assert!(
        l.iter().all(|s| s["OS-EXT-SRV-ATTR:host"] == healthy.as_str()),
        "{l:?}"
    );
    assert_eq!(
        usage_total(&c, &t).await,
        2 * (1 + 512 + 1),
        "the failed host's claims are gone"
    );

    // Both hosts failing: ERROR, the retries exhausted, nothing claimed.
    fake(1).set_failing(Some("disk on fire"));
    let (s, _) = call(
        &c,
        Method::POST,
        "/servers",
        &t,
        "2.100",
        Some(json!({"server": {
        "name": "doomed", "flavorRef": "1", "imageRef": img, "networks": "none"}})),
    )
    .await;
    assert_eq!(s, 202);
    let l = wait_servers(&c, &t, "?name=doomed", all_status("ERROR")).await;
    let msg = l[0]["fault"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Exceeded maximum number of retries") || msg.contains("disk on fire"),
        "{msg}"
    );
    assert_eq!(usage_total(&c, &t).await, 2 * (1 + 512 + 1));
    c.stop().await;
}

#[tokio::test]
async fn a_cell_that_does_not_answer_gives_partial_records_from_2_69() {
    let b = Backend::Sqlite;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(&b, dir.path()).await;
    let cfg = two_cells(&b, dir.path(), &db, "1");
    let c = Cloud::start_with(&b, db, dir, cfg).await;
    let t = c.admin_token().await;
    let img = image(&c, &t).await;
    let (s, _) = call(
        &c,
        Method::POST,
        "/servers",
        &t,
        "2.100",
        Some(json!({"server": {
        "name": "d", "flavorRef": "1", "imageRef": img, "networks": "none", "min_count": 4}})),
    )
    .await;
    assert_eq!(s, 202);
    let l = wait_servers(&c, &t, "", |l| l.len() == 4 && all_status("ACTIVE")(l)).await;
    let in_cell2: Vec<String> = l
        .iter()
        .filter(|s| s["OS-EXT-SRV-ATTR:host"].as_str().unwrap().starts_with("cell2"))
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!in_cell2.is_empty() && in_cell2.len() < 4, "spread: {l:?}");

    // Cell2's database stops answering the API.
    let cells = tessera_compute::cells::cell_list(&c.aio.compute.api.api_db)
        .await
        .unwrap();
    let cell2 = cells.iter().find(|c| c.name.as_deref() == Some("cell2")).unwrap();
    c.aio.compute.api.cell_db(cell2).await.unwrap().close().await;

    let (s, v) = call(&c, Method::GET, "/servers/detail", &t, "2.69", None).await;
    assert_eq!(s, 200, "{v}");
    let list = v["servers"].as_array().unwrap();
    assert_eq!(list.len(), 4);
    let unknown: Vec<&Value> = list.iter().filter(|s| s["status"] == "UNKNOWN").collect();
    assert_eq!(unknown.len(), in_cell2.len());
    assert!(unknown
        .iter()
        .all(|s| s["tenant_id"].is_string() && s["created"].is_string() && s.get("name").is_none()));
    let (_, v) = call(&c, Method::GET, "/servers/detail", &t, "2.68", None).await;
    assert_eq!(v["servers"].as_array().unwrap().len(), 4 - in_cell2.len());
    let (s, v) = call(
        &c,
        Method::GET,
        &format!("/servers/{}", in_cell2[0]),
        &t,
        "2.69",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["server"]["status"], "UNKNOWN");
    assert_eq!(v["server"]["OS-EXT-AZ:availability_zone"], "UNKNOWN");
    c.stop().await;
}

/// Boots a crashed process left half-way: one recorded but never cast to the super conductor, one whose
/// instance row was created in a cell but never mapped. After `recover`, both are ACTIVE once, nothing is
/// left in build requests, and placement holds exactly their two claims.
#[tokio::test]
async fn recovery_finishes_boots_left_half_way() {
    use tessera_compute::boot::{self, BootInstance, SuperConductor};
    let b = Backend::Sqlite;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(&b, dir.path()).await;
    let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
    cfg.set("all_in_one", "hosts_per_cell", "1").unwrap();
    let c = Cloud::start_with(&b, db, dir, cfg).await;
    let t = c.admin_token().await;
    let api = c.aio.compute.api.api_db.clone();
    let project = {
        // The admin project's id, from a token validation.
        let r = c
            .http
            .get(c.url("/v3/auth/tokens"))
            .header("X-Auth-Token", &t)
            .header("X-Subject-Token", &t)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["token"]["project"]["id"].as_str().unwrap().to_string()
    };
    let spec = tessera_compute::scheduler::RequestSpec {
        project_id: project.clone(),
        user_id: "u".into(),
        vcpus: 1,
        memory_mb: 512,
        disk_gb: 1,
        ..Default::default()
    };
    let before = tessera_types::now_epoch_micros();
    let mut list: Vec<BootInstance> = (0..2)
        .map(|k| BootInstance {
            uuid: uuid::Uuid::new_v4().to_string(),
            project_id: project.clone(),
            user_id: "u".into(),
            display_name: format!("half-{k}"),
            flavor: json!({"flavorid": "1", "name": "m1.tiny", "vcpus": 1, "memory_mb": 512, "root_gb": 1,
                           "ephemeral_gb": 0, "swap": 0, "extra_specs": {}}),
            vcpus: 1,
            memory_mb: 512,
            root_gb: 1,
            created_at: before,
            ..Default::default()
        })
        .collect();
    boot::record(&api, &spec, &mut list, None).await.unwrap();
    // The second one got as far as its row in cell1 (say, on another host) before the crash.
    let cell1 = tessera_compute::cells::cell_list(&api)
        .await
        .unwrap()
        .into_iter()
        .find(|c| !c.is_cell0())
        .unwrap();
    let cdb = c.aio.compute.api.cell_db(&cell1).await.unwrap();
    let mut orphan = list[1].as_row();
    orphan.host = Some("gone-host".into());
    tessera_compute::celldb::instance_create(&cdb, &orphan)
        .await
        .unwrap();

    let sched = std::sync::Arc::new(tessera_compute::scheduler::Scheduler::new(
        api.clone(),
        c.aio.placement_client.clone(),
        tessera::aio::scheduler_config(&c.aio.config).unwrap(),
    ));
    let sc = SuperConductor::new(api.clone(), sched, c.aio.buses.clone());
    assert_eq!(sc.recover(tessera_types::now_epoch_micros()).await.unwrap(), 2);
    let l = wait_servers(&c, &t, "", |l| l.len() == 2 && all_status("ACTIVE")(l)).await;
    let ids: std::collections::BTreeSet<&str> = l.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(
        l.iter().all(|s| s["OS-EXT-SRV-ATTR:host"] == "cell1-compute1"),
        "{l:?}"
    );
    assert_eq!(api_count(&c, "build_requests").await, 0);
    assert_eq!(usage_total(&c, &t).await, 2 * (1 + 512 + 1));
    c.stop().await;
}

/// The same boot with the API-level bus on RabbitMQ (`[DEFAULT] transport_url = rabbit://…`): the API casts
/// to the super conductor through the broker. Skipped without TESSERA_TEST_RABBIT_URL.
#[tokio::test]
async fn boots_cast_through_a_rabbitmq_api_bus() {
    let Ok(url) = std::env::var("TESSERA_TEST_RABBIT_URL") else {
        eprintln!("TESSERA_TEST_RABBIT_URL is not set: skipping the RabbitMQ boot test");
        return;
    };
    // Its own virtual host (scripts/start-test-databases.sh makes it), apart from the CLI suite's.
    let url = format!("{}/tessera_cell2", url.trim_end_matches('/'));
    let (c, t, img) = one_cell("2", &[("DEFAULT", "transport_url", &url)]).await;
    let (s, v) = call(
        &c,
        Method::POST,
        "/servers",
        &t,
        "2.100",
        Some(json!({"server": {
        "name": "mq", "flavorRef": "1", "imageRef": img, "networks": "none", "min_count": 3}})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let l = wait_servers(&c, &t, "", |l| l.len() == 3 && all_status("ACTIVE")(l)).await;
    for s in &l {
        let (st, _) = call(
            &c,
            Method::DELETE,
            &format!("/servers/{}", s["id"].as_str().unwrap()),
            &t,
            "2.1",
            None,
        )
        .await;
        assert_eq!(st, 204);
    }
    wait_servers(&c, &t, "", |l| l.is_empty()).await;
    assert_eq!(usage_total(&c, &t).await, 0);
    c.stop().await;
}

/// Server groups: the API per microversion, bad input, quotas, and the scheduler keeping (anti-)affinity —
/// on two hosts in two cells.
#[tokio::test]
async fn server_groups_place_members_by_policy() {
    each_backend!(|b: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(&b, dir.path()).await;
        let mut cfg = two_cells(&b, dir.path(), &db, "1");
        cfg.set("quota", "server_group_members", "2").unwrap();
        let c = Cloud::start_with(&b, db, dir, cfg).await;
        let t = c.admin_token().await;
        let img = image(&c, &t).await;
        let group = |body: Value, mv: &'static str| {
            let (c, t) = (&c, t.clone());
            async move { call(c, Method::POST, "/os-server-groups", &t, mv, Some(body)).await }
        };

        // Bad input, per microversion.
        for (body, mv) in [
            (
                json!({"server_group": {"name": "g", "policies": ["affinity", "anti-affinity"]}}),
                "2.1",
            ),
            (
                json!({"server_group": {"name": "g", "policies": ["soft-affinity"]}}),
                "2.14",
            ),
            (
                json!({"server_group": {"name": "g", "policy": "affinity"}}),
                "2.63",
            ),
            (
                json!({"server_group": {"name": "g", "policy": "affinity", "rules": {"max_server_per_host": 2}}}),
                "2.64",
            ),
            (
                json!({"server_group": {"name": "g", "policy": "anti-affinity", "rules": {"max_server_per_host": 0}}}),
                "2.64",
            ),
            (
                json!({"server_group": {"name": "", "policy": "affinity"}}),
                "2.64",
            ),
            (json!({"server_group": {"policy": "affinity"}}), "2.64"),
        ] {
            let (s, v) = group(body.clone(), mv).await;
            assert_eq!(s, 400, "{body} at {mv}: {v}");
            assert_eq!(v["badRequest"]["code"], 400, "{v}");
        }
        assert_eq!(api_count(&c, "instance_groups").await, 0);

        // Views per microversion.
        let (s, v) = group(
            json!({"server_group": {"name": "old", "policies": ["anti-affinity"]}}),
            "2.1",
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["server_group"]["policies"], json!(["anti-affinity"]));
        assert_eq!(v["server_group"]["metadata"], json!({}));
        assert!(v["server_group"].get("project_id").is_none());
        let old = v["server_group"]["id"].as_str().unwrap().to_string();
        let (s, v) = group(
            json!({"server_group": {"name": "anti", "policy": "anti-affinity",
                                                   "rules": {"max_server_per_host": 1}}}),
            "2.64",
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["server_group"]["policy"], "anti-affinity");
        assert_eq!(v["server_group"]["rules"]["max_server_per_host"], 1);
        assert!(v["server_group"]["project_id"].is_string());
        let anti = v["server_group"]["id"].as_str().unwrap().to_string();
        let (_, v) = group(
            json!({"server_group": {"name": "aff", "policy": "affinity"}}),
            "2.64",
        )
        .await;
        let aff = v["server_group"]["id"].as_str().unwrap().to_string();

        let boot = |name: &'static str, g: String, n: i64| {
            let (c, t, img) = (&c, t.clone(), img.clone());
            async move {
                call(
                    c,
                    Method::POST,
                    "/servers",
                    &t,
                    "2.71",
                    Some(json!({
                    "server": {"name": name, "flavorRef": "1", "imageRef": img, "networks": "none",
                               "min_count": n, "max_count": n},
                    "os:scheduler_hints": {"group": g}})),
                )
                .await
            }
        };
        // Anti-affinity: two servers on the two hosts; a third member is over the group's quota (2).
        let (s, v) = boot("a", anti.clone(), 2).await;
        assert_eq!(s, 202, "{v}");
        let l = wait_servers(&c, &t, "?name=a-", |l| l.len() == 2 && all_status("ACTIVE")(l)).await;
        let hosts: std::collections::BTreeSet<&str> = l
            .iter()
            .map(|s| s["OS-EXT-SRV-ATTR:host"].as_str().unwrap())
            .collect();
        assert_eq!(hosts.len(), 2, "{l:?}");
        let (s, v) = boot("a3", anti.clone(), 1).await;
        assert_eq!(s, 403, "{v}");
        assert!(
            v["forbidden"]["message"]
                .as_str()
                .unwrap()
                .contains("too many servers in group"),
            "{v}"
        );
        // The group lists its members; 2.71 shows the group on the server.
        let (_, v) = call(
            &c,
            Method::GET,
            &format!("/os-server-groups/{anti}"),
            &t,
            "2.64",
            None,
        )
        .await;
        assert_eq!(v["server_group"]["members"].as_array().unwrap().len(), 2, "{v}");
        let first = l[0]["id"].as_str().unwrap().to_string();
        let (_, v) = call(&c, Method::GET, &format!("/servers/{first}"), &t, "2.71", None).await;
        assert_eq!(v["server"]["server_groups"], json!([anti]), "{v}");
        // Delete one: it leaves the group, and a new member fits where it was.
        let (s, _) = call(&c, Method::DELETE, &format!("/servers/{first}"), &t, "2.1", None).await;
        assert_eq!(s, 204);
        let (_, v) = call(
            &c,
            Method::GET,
            &format!("/os-server-groups/{anti}"),
            &t,
            "2.64",
            None,
        )
        .await;
        assert_eq!(v["server_group"]["members"].as_array().unwrap().len(), 1, "{v}");
        let (s, v) = boot("a4", anti.clone(), 1).await;
        assert_eq!(s, 202, "{v}");
        wait_servers(&c, &t, "?name=a4", all_status("ACTIVE")).await;

        // Affinity: both on one host.
        let (s, v) = boot("f", aff.clone(), 2).await;
        assert_eq!(s, 202, "{v}");
        let l = wait_servers(&c, &t, "?name=f-", |l| l.len() == 2 && all_status("ACTIVE")(l)).await;
        assert_eq!(
            l[0]["OS-EXT-SRV-ATTR:host"], l[1]["OS-EXT-SRV-ATTR:host"],
            "{l:?}"
        );

        // The group created before 2.64 keeps its members apart the same way.
        let (s, _) = boot("o", old.clone(), 2).await;
        assert_eq!(s, 202);
        let l = wait_servers(&c, &t, "?name=o-", |l| l.len() == 2 && all_status("ACTIVE")(l)).await;
        assert_ne!(
            l[0]["OS-EXT-SRV-ATTR:host"], l[1]["OS-EXT-SRV-ATTR:host"],
            "{l:?}"
        );

        // An unknown group, a malformed one.
        let (s, v) = boot("x", "4f1c1c43-0000-4000-8000-000000000000".into(), 1).await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["badRequest"]["message"]
                .as_str()
                .unwrap()
                .contains("could not be found"),
            "{v}"
        );
        let (s, _) = boot("x", "not-a-uuid".into(), 1).await;
        assert_eq!(s, 400);

        // Another project sees none of them, and cannot use or delete them.
        c.project_with_member(&t, "sg-other", "sg-user", "pw-sg-user-1")
            .await;
        let other = c
            .login("sg-user", "pw-sg-user-1", Some("sg-other"))
            .await
            .subject_token();
        let (_, v) = call(&c, Method::GET, "/os-server-groups", &other, "2.64", None).await;
        assert_eq!(v["server_groups"], json!([]), "{v}");
        let (s, _) = call(
            &c,
            Method::DELETE,
            &format!("/os-server-groups/{anti}"),
            &other,
            "2.64",
            None,
        )
        .await;
        assert!(s == 403 || s == 404, "{s}");
        let (_, v) = call(
            &c,
            Method::GET,
            "/os-server-groups?all_projects=1",
            &t,
            "2.64",
            None,
        )
        .await;
        assert_eq!(v["server_groups"].as_array().unwrap().len(), 3, "{v}");

        // Delete a group: gone, its members stay.
        let (s, _) = call(
            &c,
            Method::DELETE,
            &format!("/os-server-groups/{aff}"),
            &t,
            "2.64",
            None,
        )
        .await;
        assert_eq!(s, 204);
        let (s, _) = call(
            &c,
            Method::GET,
            &format!("/os-server-groups/{aff}"),
            &t,
            "2.64",
            None,
        )
        .await;
        assert_eq!(s, 404);
        wait_servers(&c, &t, "?name=f-", |l| l.len() == 2).await;
        c.stop().await;
    });
}

/// The compute host's start-up heal: a live instance whose allocation went missing gets it back, the
/// allocation of a deleted instance is released, and a consumer the cell does not know (a boot the
/// scheduler may have just claimed for) is left alone.
#[tokio::test]
async fn a_starting_host_heals_its_allocations() {
    let (c, t, img) = one_cell("1", &[]).await;
    let (s, v) = call(
        &c,
        Method::POST,
        "/servers",
        &t,
        "2.100",
        Some(json!({"server": {
        "name": "h", "flavorRef": "1", "imageRef": img, "networks": "none", "min_count": 2}})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let l = wait_servers(&c, &t, "", |l| l.len() == 2 && all_status("ACTIVE")(l)).await;
    let (a, b_) = (
        l[0]["id"].as_str().unwrap().to_string(),
        l[1]["id"].as_str().unwrap().to_string(),
    );
    let (s, _) = call(&c, Method::DELETE, &format!("/servers/{b_}"), &t, "2.1", None).await;
    assert_eq!(s, 204);
    wait_servers(&c, &t, "", |l| l.len() == 1).await;
    let placement = |m: Method, path: String, body: Option<Value>| {
        let mut rb = c
            .http
            .request(m, c.placement_url(&path))
            .header("X-Auth-Token", &t)
            .header("OpenStack-API-Version", "placement 1.36");
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send()
    };
    let rps: Value = placement(Method::GET, "/resource_providers".into(), None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node = rps["resource_providers"][0]["uuid"].as_str().unwrap().to_string();
    let alloc = |consumer: String| {
        placement(
            Method::PUT,
            format!("/allocations/{consumer}"),
            Some(json!({"allocations": {node.clone(): {"resources": {"VCPU": 1}}},
                        "project_id": "p", "user_id": "u", "consumer_generation": null})),
        )
    };
    // A's claim goes missing; deleted B and an unknown consumer get allocations.
    let r = placement(Method::DELETE, format!("/allocations/{a}"), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(alloc(b_.clone()).await.unwrap().status(), 204);
    let stranger = "0c5e1f55-0000-4000-8000-000000000001".to_string();
    assert_eq!(alloc(stranger.clone()).await.unwrap().status(), 204);

    let healed = c.aio.computes[0].init_host(Some(&node)).await.unwrap();
    assert_eq!(healed, 2, "one claim restored, one released");
    let consumers: Value = placement(
        Method::GET,
        format!("/resource_providers/{node}/allocations"),
        None,
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let held = consumers["allocations"].as_object().unwrap();
    assert!(held.contains_key(&a), "{consumers}");
    assert_eq!(
        held[&a]["resources"],
        json!({"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1})
    );
    assert!(!held.contains_key(&b_), "{consumers}");
    assert!(held.contains_key(&stranger), "{consumers}");
    c.stop().await;
}

#[tokio::test]
async fn external_events_reach_the_servers_host() {
    let (c, t, img) = one_cell("1", &[]).await;
    let (s, v) = call(
        &c,
        Method::POST,
        "/servers",
        &t,
        "2.100",
        Some(json!({"server": {"name": "ev", "flavorRef": "1", "imageRef": img, "networks": "auto"}})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let id = v["server"]["id"].as_str().unwrap().to_string();
    wait_servers(&c, &t, "?name=ev", all_status("ACTIVE")).await;
    let ev = |name: &str, uuid: &str| json!({"events": [{"name": name, "server_uuid": uuid, "tag": "p"}]});
    let (s, v) = call(
        &c,
        Method::POST,
        "/os-server-external-events",
        &t,
        "2.1",
        Some(ev("network-changed", &id)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["events"][0]["code"], 200);
    assert_eq!(v["events"][0]["status"], "completed");
    let (s, v) = call(
        &c,
        Method::POST,
        "/os-server-external-events",
        &t,
        "2.1",
        Some(ev("network-changed", "00000000-0000-0000-0000-00000000beef")),
    )
    .await;
    assert_eq!((s, v["events"][0]["code"].as_i64()), (404, Some(404)), "{v}");
    let (s, _) = call(
        &c,
        Method::POST,
        "/os-server-external-events",
        &t,
        "2.1",
        Some(ev("no-such-event", &id)),
    )
    .await;
    assert_eq!(s, 400);
    // power-update arrived with 2.76.
    let (s, _) = call(
        &c,
        Method::POST,
        "/os-server-external-events",
        &t,
        "2.75",
        Some(ev("power-update", &id)),
    )
    .await;
    assert_eq!(s, 400);
    // The refresh kept the server's one port.
    let (_, v) = call(&c, Method::GET, &format!("/servers/{id}"), &t, "2.100", None).await;
    assert_eq!(
        v["server"]["addresses"]["auto_allocated_network"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{v}"
    );
    c.stop().await;
}
