//! Cells v2 records on every database backend: the `cell_v2` commands' logic over an API database and two
//! cell databases, and host discovery racing itself.

#![allow(clippy::unwrap_used)]

use tessera_compute::cells;
use tessera_compute::cellv2::{self, Defaults};
use tessera_db::Db;
use tessera_test_harness::{each_backend, Backend, TestDb};

/// A database of its own on the backend (SQLite: a file in a directory of its own).
async fn fresh(b: &Backend) -> (TestDb, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (TestDb::create(b, dir.path()).await, dir)
}

/// A compute node row, as the resource tracker will write it.
async fn add_node(db: &Db, host: &str) {
    sqlx::query(&db.sql(
        "INSERT INTO compute_nodes (uuid, service_id, host, hypervisor_hostname, hypervisor_type, hypervisor_version, \
         vcpus, memory_mb, local_gb, vcpus_used, memory_mb_used, local_gb_used, running_vms, cpu_allocation_ratio, \
         ram_allocation_ratio, disk_allocation_ratio, mapped, created_at, updated_at, deleted) \
         VALUES (?, NULL, ?, ?, 'fake', 1, 8, 8192, 100, 0, 0, 0, 0, 4.0, 1.0, 1.0, 0, 0, 0, 0)",
    ))
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(host)
    .bind(host)
    .execute(db.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn cell_commands_and_concurrent_discovery() {
    each_backend!(|b: Backend| async move {
        let (api_t, _d1) = fresh(&b).await;
        let (c0_t, _d2) = fresh(&b).await;
        let (c1_t, _d3) = fresh(&b).await;
        let api = Db::connect(&api_t.url, 4).await.unwrap();
        api.migrate(&tessera_db::compute::API_MIGRATIONS).await.unwrap();
        let d = Defaults {
            transport_url: "inproc://default".into(),
            database_connection: c1_t.url.clone(),
        };
        let mut out = String::new();
        assert_eq!(
            cellv2::map_cell0(&api, &d, Some(&c0_t.url), &mut out)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            cellv2::create_cell(
                &api,
                &d,
                Some("cell1"),
                None,
                Some("inproc://cell1"),
                true,
                false,
                &mut out
            )
            .await
            .unwrap(),
            0,
            "{out}"
        );
        assert!(out.contains("using the value [database]/connection"), "{out}");
        let cell1 = cells::cell_list(&api)
            .await
            .unwrap()
            .into_iter()
            .find(|c| !c.is_cell0())
            .unwrap();
        assert_eq!(cell1.database_connection, c1_t.url);
        // The pair again: 2.
        assert_eq!(
            cellv2::create_cell(
                &api,
                &d,
                Some("again"),
                None,
                Some("inproc://cell1"),
                false,
                false,
                &mut out
            )
            .await
            .unwrap(),
            2
        );

        // create_cell made the schema: compute nodes can be written there.
        let cdb = Db::connect(&c1_t.url, 2).await.unwrap();
        for i in 0..20 {
            add_node(&cdb, &format!("host-{i:02}")).await;
        }
        // Two discoveries at once: every host mapped exactly once, nothing fails but a duplicate.
        let (mut quiet1, mut quiet2) = (|_: String| {}, |_: String| {});
        let (a, b2) = tokio::join!(
            cellv2::discover(&api, None, false, &mut quiet1),
            cellv2::discover(&api, None, false, &mut quiet2)
        );
        let mut mapped = 0;
        for r in [a, b2] {
            match r {
                Ok(hosts) => mapped += hosts.len(),
                Err(tessera_compute::ComputeError::Duplicate(_)) => {}
                Err(e) => panic!("{}: {e}", b.name()),
            }
        }
        // Whatever the interleaving, a rerun finishes the job and the mappings are exactly the 20 hosts.
        mapped += cellv2::discover(&api, None, false, &mut |_| {})
            .await
            .unwrap()
            .len();
        let hosts = cells::host_mappings(&api, Some(cell1.id)).await.unwrap();
        assert_eq!(hosts.len(), 20, "{}", b.name());
        assert!(mapped <= 20);
        let unmapped: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM compute_nodes WHERE mapped = 0")
            .fetch_one(cdb.pool())
            .await
            .unwrap();
        assert!(unmapped <= 20 - mapped as i64);

        let mut out = String::new();
        assert_eq!(cellv2::list_hosts(&api, None, &mut out).await.unwrap(), 0);
        assert!(out.contains("host-19") && out.contains(&cell1.uuid), "{out}");
        assert_eq!(
            cellv2::delete_host(&api, &cell1.uuid, "host-00", &mut out)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            cells::host_mappings(&api, Some(cell1.id)).await.unwrap().len(),
            19
        );
        assert_eq!(
            cellv2::delete_cell(&api, &cell1.uuid, false, &mut out)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            cellv2::delete_cell(&api, &cell1.uuid, true, &mut out)
                .await
                .unwrap(),
            0
        );
        assert_eq!(cells::cell_list(&api).await.unwrap().len(), 1);
        let unmapped: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM compute_nodes WHERE mapped = 0")
            .fetch_one(cdb.pool())
            .await
            .unwrap();
        assert_eq!(unmapped, 20, "deleting the cell unmaps its nodes");
        cdb.close().await;
        api.close().await;
    });
}

/// An all-in-one with two cells of two fake hosts: every host registers through its cell's conductor
/// (service record, compute node), gets a placement provider with Nova's inventories, and is mapped to its
/// cell by discovery — each in its own cell's database only.
#[tokio::test]
async fn all_in_one_cells_register_their_hosts() {
    each_backend!(|b: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(&b, dir.path()).await;
        let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
        cfg.set("all_in_one", "cells", "2").unwrap();
        cfg.set("all_in_one", "hosts_per_cell", "2").unwrap();
        cfg.set("fake", "vcpus", "8").unwrap();
        cfg.set("DEFAULT", "cpu_allocation_ratio", "2.5").unwrap();
        let c = tessera_test_harness::Cloud::start_with(&b, db, dir, cfg).await;
        assert_eq!(c.aio.computes.len(), 4);
        let api = Db::connect(&c.aio.config.get_str("api_database", "connection"), 2)
            .await
            .unwrap();
        let cellmaps = cells::cell_list(&api).await.unwrap();
        assert_eq!(cellmaps.len(), 3);
        for cell in cellmaps.iter().filter(|c| !c.is_cell0()) {
            let name = cell.name.clone().unwrap();
            let hosts: Vec<String> = cells::host_mappings(&api, Some(cell.id))
                .await
                .unwrap()
                .into_iter()
                .map(|h| h.host)
                .collect();
            assert_eq!(
                hosts,
                vec![format!("{name}-compute1"), format!("{name}-compute2")]
            );
            let cdb = Db::connect(&cell.database_connection, 1).await.unwrap();
            let svcs = tessera_compute::celldb::services(&cdb).await.unwrap();
            let mut seen: Vec<(String, String)> =
                svcs.iter().map(|s| (s.binary.clone(), s.host.clone())).collect();
            seen.sort();
            assert_eq!(
                seen,
                vec![
                    ("nova-compute".into(), format!("{name}-compute1")),
                    ("nova-compute".into(), format!("{name}-compute2")),
                    ("nova-conductor".into(), format!("{name}-conductor")),
                ]
            );
            let nodes = tessera_compute::celldb::compute_nodes(&cdb, false).await.unwrap();
            assert_eq!(nodes.len(), 2);
            assert!(
                tessera_compute::celldb::compute_nodes(&cdb, true)
                    .await
                    .unwrap()
                    .is_empty(),
                "all mapped"
            );
            // Each node is a placement provider with the configured inventories.
            let token = c.admin_token().await;
            for n in nodes {
                let r = c
                    .http
                    .get(c.placement_url(&format!("/resource_providers/{}/inventories", n.uuid)))
                    .header("X-Auth-Token", &token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["inventories"]["VCPU"]["total"], 8);
                assert_eq!(v["inventories"]["VCPU"]["allocation_ratio"], 2.5);
                assert_eq!(v["inventories"]["MEMORY_MB"]["reserved"], 512);
                assert_eq!(v["inventories"]["DISK_GB"]["total"], 1024);
            }
            cdb.close().await;
        }
        api.close().await;
        c.stop().await;
    });
}

/// `[scheduler] discover_hosts_in_cells_interval`: a compute node that appears in a cell gets mapped
/// without anyone running discover_hosts.
#[tokio::test]
async fn periodic_discovery_maps_new_hosts() {
    let b = Backend::Sqlite;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(&b, dir.path()).await;
    let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
    cfg.set("scheduler", "discover_hosts_in_cells_interval", "1")
        .unwrap();
    let c = tessera_test_harness::Cloud::start_with(&b, db, dir, cfg).await;
    let api = Db::connect(&c.aio.config.get_str("api_database", "connection"), 1)
        .await
        .unwrap();
    let cell1 = cells::cell_list(&api)
        .await
        .unwrap()
        .into_iter()
        .find(|c| !c.is_cell0())
        .unwrap();
    let cdb = Db::connect(&cell1.database_connection, 1).await.unwrap();
    add_node(&cdb, "late-host").await;
    let mut mapped = false;
    for _ in 0..50 {
        if cells::host_mapping_get(&api, "late-host")
            .await
            .unwrap()
            .is_some()
        {
            mapped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(mapped, "the periodic discovery did not map the new host");
    cdb.close().await;
    api.close().await;
    c.stop().await;
}

/// A compute host builds what its cell sends it and reports through the cell conductor: ACTIVE with a
/// power state, or ERROR with a fault when the driver fails; terminate removes it.
#[tokio::test]
async fn compute_builds_and_terminates_through_the_cell_conductor() {
    use tessera_bus::{Envelope, Target};
    use tessera_compute::celldb::{self, InstanceRow};
    tessera_test_harness::init_logging();
    let b = Backend::Sqlite;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(&b, dir.path()).await;
    let cfg = {
        let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
        cfg.set("all_in_one", "hosts_per_cell", "1").unwrap();
        cfg
    };
    let c = tessera_test_harness::Cloud::start_with(&b, db, dir, cfg).await;
    let api = Db::connect(&c.aio.config.get_str("api_database", "connection"), 1)
        .await
        .unwrap();
    let cell1 = cells::cell_list(&api)
        .await
        .unwrap()
        .into_iter()
        .find(|c| !c.is_cell0())
        .unwrap();
    let cdb = Db::connect(&cell1.database_connection, 1).await.unwrap();
    let bus = c.aio.buses.get(&cell1.transport_url).unwrap();
    let new = |uuid: &str| InstanceRow {
        id: 0,
        uuid: uuid.into(),
        project_id: "p".into(),
        user_id: "u".into(),
        display_name: Some("vm".into()),
        host: Some("cell1-compute1".into()),
        node: Some("cell1-compute1".into()),
        availability_zone: None,
        vm_state: "building".into(),
        task_state: Some("spawning".into()),
        power_state: 0,
        image_ref: None,
        flavor: "{}".into(),
        memory_mb: 512,
        vcpus: 1,
        root_gb: 1,
        ephemeral_gb: 0,
        launched_at: None,
        created_at: 0,
        updated_at: 0,
        deleted: 0,
        ..Default::default()
    };
    let build = |uuid: &str| {
        Envelope::new(
            "build_and_run_instance",
            serde_json::json!({"instance": {"uuid": uuid, "name": "instance-00000001", "vcpus": 1, "memory_mb": 512,
                "root_gb": 1, "ephemeral_gb": 0, "image_id": null}, "project_id": "p", "user_id": "u"}),
            "req-test",
        )
    };
    let target = Target::server("compute", "cell1-compute1");
    let wait_state = |uuid: String, want: &'static str| {
        let cdb = cdb.clone();
        async move {
            for _ in 0..100 {
                let i = celldb::instance_get(&cdb, &uuid).await.unwrap().unwrap();
                if i.vm_state == want {
                    return i;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("instance {uuid} never reached {want}");
        }
    };

    let ok = uuid::Uuid::new_v4().to_string();
    celldb::instance_create(&cdb, &new(&ok)).await.unwrap();
    bus.cast(&target, build(&ok)).await.unwrap();
    let i = wait_state(ok.clone(), "active").await;
    assert_eq!((i.power_state, i.task_state.clone()), (1, None));
    assert!(i.launched_at.is_some());
    let driver = &c.aio.computes[0].driver;
    assert!(driver.list_instances().await.contains(&ok));

    let bad = uuid::Uuid::new_v4().to_string();
    celldb::instance_create(&cdb, &new(&bad)).await.unwrap();
    driver.as_fake().unwrap().fail_next_spawn_of(&bad);
    bus.cast(&target, build(&bad)).await.unwrap();
    wait_state(bad.clone(), "error").await;
    let (code, message, _, _) = celldb::fault_latest(&cdb, &bad).await.unwrap().unwrap();
    assert_eq!(code, 500);
    assert!(message.contains("injected failure"), "{message}");

    bus.cast(
        &target,
        Envelope::new("terminate_instance", serde_json::json!({"uuid": ok}), "req-test"),
    )
    .await
    .unwrap();
    wait_state(ok.clone(), "deleted").await;
    assert!(!driver.list_instances().await.contains(&ok));
    cdb.close().await;
    api.close().await;
    c.stop().await;
}

/// The scenario of the issue: a running cloud; `create_cell` gives a new cell its own database and bus; a
/// compute host started in it; `discover_hosts` — and the host is in `GET /os-hypervisors` and
/// `GET /os-services` without restarting anything, and new servers land on it.
#[tokio::test]
async fn a_cell_created_at_run_time_serves_its_hosts() {
    each_backend!(|b: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(&b, dir.path()).await;
        let cfg = tessera_test_harness::test_config(dir.path(), &db.url);
        let c = tessera_test_harness::Cloud::start_with(&b, db, dir, cfg).await;
        let api = Db::connect(&c.aio.config.get_str("api_database", "connection"), 2)
            .await
            .unwrap();
        let d = Defaults {
            transport_url: c.aio.config.get_str("DEFAULT", "transport_url"),
            database_connection: c.aio.config.get_str("database", "connection"),
        };
        // On this backend: its own database (SQLite: a file of its own).
        let cell_db_dir = tempfile::tempdir().unwrap();
        let cell_db = TestDb::create(&b, cell_db_dir.path()).await;
        let mut out = String::new();
        let code = cellv2::create_cell(
            &api,
            &d,
            Some("cellx"),
            Some(&cell_db.url),
            Some("inproc://cellx"),
            true,
            false,
            &mut out,
        )
        .await
        .unwrap();
        assert_eq!(code, 0, "{out}");
        let cellx = cells::cell_list(&api)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name.as_deref() == Some("cellx"))
            .unwrap();
        let agents = tessera::aio::start_cell(
            &c.aio.config,
            &cellx,
            &c.aio.buses,
            c.aio.placement_client.clone(),
            1,
            &c.shutdown,
        )
        .await
        .unwrap();
        assert_eq!(agents.len(), 1);
        let mut out = String::new();
        assert_eq!(
            cellv2::discover_hosts(&api, None, true, true, false, &mut out)
                .await
                .unwrap(),
            0,
            "{out}"
        );
        assert!(
            out.contains("Creating host mapping for compute host 'cellx-compute1'"),
            "{out}"
        );

        let token = c.admin_token().await;
        let get = |path: &'static str| {
            let c = &c;
            let token = token.clone();
            async move {
                let r = c
                    .http
                    .get(c.compute_url(path))
                    .header("X-Auth-Token", &token)
                    .header("OpenStack-API-Version", "compute 2.53")
                    .send()
                    .await
                    .unwrap();
                r.json::<serde_json::Value>().await.unwrap()
            }
        };
        let hv = get("/os-hypervisors").await;
        assert!(
            hv["hypervisors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["hypervisor_hostname"] == "cellx-compute1"),
            "{hv}"
        );
        let svcs = get("/os-services").await;
        let hosts: Vec<&str> = svcs["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["host"].as_str().unwrap())
            .collect();
        assert!(
            hosts.contains(&"cellx-compute1") && hosts.contains(&"cellx-conductor"),
            "{hosts:?}"
        );
        let mut out = String::new();
        cellv2::list_hosts(&api, Some(&cellx.uuid), &mut out)
            .await
            .unwrap();
        assert!(out.contains("cellx-compute1"), "{out}");

        // New servers land on it (the cloud started with no compute host of its own).
        let send = |m: http::Method, path: String, body: Option<serde_json::Value>| {
            let mut rb = c
                .http
                .request(m, c.compute_url(&path))
                .header("X-Auth-Token", &token)
                .header("OpenStack-API-Version", "compute 2.53");
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            rb.send()
        };
        let img = c
            .http
            .post(c.image_url("/v2/images"))
            .header("X-Auth-Token", &token)
            .json(&serde_json::json!({"name": "i", "disk_format": "raw", "container_format": "bare"}))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = c
            .http
            .put(c.image_url(&format!("/v2/images/{img}/file")))
            .header("X-Auth-Token", &token)
            .header("Content-Type", "application/octet-stream")
            .body(vec![1u8; 512])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = send(
            http::Method::POST,
            "/servers".into(),
            Some(
                serde_json::json!({"server": {"name": "new-cell", "flavorRef": "1", "imageRef": img,
                                               "networks": "none"}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 202);
        let id = r.json::<serde_json::Value>().await.unwrap()["server"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut last = serde_json::Value::Null;
        for _ in 0..200 {
            last = send(http::Method::GET, format!("/servers/{id}"), None)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap();
            if last["server"]["status"] != "BUILD" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(last["server"]["status"], "ACTIVE", "{last}");
        assert_eq!(last["server"]["OS-EXT-SRV-ATTR:host"], "cellx-compute1", "{last}");
        api.close().await;
        c.stop().await;
        drop(cell_db);
    });
}
