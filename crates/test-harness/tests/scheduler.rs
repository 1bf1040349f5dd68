//! The scheduler against a running two-cell cloud: placement candidates, filters, weighers, claims.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use tessera_compute::placement_client::{Credentials, PlacementClient};
use tessera_compute::scheduler::{RequestSpec, Scheduler, SchedulerError, DEFAULT_FILTERS};
use tessera_db::Db;
use tessera_test_harness::{each_backend, Backend, Cloud, TestDb};

fn spec(vcpus: i64, ram: i64, disk: i64) -> RequestSpec {
    RequestSpec {
        project_id: "p1".into(),
        user_id: "u1".into(),
        vcpus,
        memory_mb: ram,
        disk_gb: disk,
        ..Default::default()
    }
}

async fn allocations(c: &Cloud, token: &str, consumer: &str) -> serde_json::Value {
    let r = c
        .http
        .get(c.placement_url(&format!("/allocations/{consumer}")))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

/// A placement client with the cloud's admin credentials (as compute hosts and the scheduler use it).
fn admin_placement(c: &Cloud) -> Arc<PlacementClient> {
    Arc::new(PlacementClient::new(Credentials {
        auth_url: c.url("/v3"),
        username: "admin".into(),
        password: tessera_test_harness::ADMIN_PASSWORD.into(),
        project_name: "admin".into(),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
        region_name: String::new(),
        valid_interfaces: vec!["public".into()],
    }))
}

#[tokio::test]
async fn select_destinations_filters_weighs_and_claims() {
    each_backend!(|b: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(&b, dir.path()).await;
        let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
        cfg.set("all_in_one", "cells", "2").unwrap();
        cfg.set("all_in_one", "hosts_per_cell", "2").unwrap();
        cfg.set("fake", "vcpus", "2").unwrap();
        cfg.set("fake", "memory_mb", "4096").unwrap();
        cfg.set("DEFAULT", "cpu_allocation_ratio", "1.0").unwrap();
        cfg.set(
            "filter_scheduler",
            "enabled_filters",
            format!("{},AggregateInstanceExtraSpecsFilter", DEFAULT_FILTERS.join(",")),
        )
        .unwrap();
        let c = Cloud::start_with(&b, db, dir, cfg).await;
        let token = c.admin_token().await;
        let placement = admin_placement(&c);
        let api = Db::connect(&c.aio.config.get_str("api_database", "connection"), 2)
            .await
            .unwrap();
        let s = Scheduler::new(
            api.clone(),
            placement.clone(),
            tessera::aio::scheduler_config(&c.aio.config).unwrap(),
        );

        // Four instances on four equal hosts: the weighers spread them; each is claimed in placement.
        let ids: Vec<String> = (0..4).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let sel = s.select_destinations(&spec(1, 1024, 1), &ids).await.unwrap();
        let mut hosts: Vec<&str> = sel.iter().map(|l| l[0].host.as_str()).collect();
        hosts.sort();
        assert_eq!(
            hosts,
            vec![
                "cell1-compute1",
                "cell1-compute2",
                "cell2-compute1",
                "cell2-compute2"
            ]
        );
        for (id, l) in ids.iter().zip(&sel) {
            let a = allocations(&c, &token, id).await;
            assert_eq!(
                a["allocations"][&l[0].compute_node_uuid]["resources"]["VCPU"], 1,
                "{a}"
            );
            // Alternates come from the chosen host's cell only.
            assert!(l[1..].iter().all(|alt| alt.cell_uuid == l[0].cell_uuid));
            assert_eq!(l.len(), 2);
        }

        // Nothing fits: NoValidHost, and nothing is left claimed.
        let big = uuid::Uuid::new_v4().to_string();
        match s
            .select_destinations(&spec(64, 512, 1), std::slice::from_ref(&big))
            .await
        {
            Err(SchedulerError::NoValidHost(_)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            allocations(&c, &token, &big).await["allocations"],
            serde_json::json!({})
        );
        // Two instances when only four VCPUs remain free (one per host): the first claim is released when
        // the second cannot be placed... here both fit, one VCPU each; a third request of 2 VCPUs does not.
        let pair: Vec<String> = (0..2).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        match s.select_destinations(&spec(2, 512, 1), &pair).await {
            Err(SchedulerError::NoValidHost(_)) => {}
            other => panic!("2 VCPUs fit nowhere: {other:?}"),
        }
        for id in &pair {
            assert_eq!(
                allocations(&c, &token, id).await["allocations"],
                serde_json::json!({})
            );
        }

        // A disabled compute is filtered out (ComputeFilter).
        let cell2 = tessera_compute::cells::cell_list(&api)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name.as_deref() == Some("cell2"))
            .unwrap();
        let cdb = Db::connect(&cell2.database_connection, 1).await.unwrap();
        let svc = tessera_compute::celldb::services(&cdb)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.host == "cell2-compute1")
            .unwrap();
        tessera_compute::celldb::service_update(&cdb, svc.id, true, Some("test"), false)
            .await
            .unwrap();
        let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let sel = s.select_destinations(&spec(1, 512, 1), &ids).await.unwrap();
        assert!(sel.iter().all(|l| l[0].host != "cell2-compute1"), "{sel:?}");
        tessera_compute::celldb::service_update(&cdb, svc.id, false, None, false)
            .await
            .unwrap();

        // Only cell2-compute1 has a VCPU left: a zone that holds it, then an anti-affinity group.
        let agg = tessera_compute::aggregates::create(&api, "z", Some("az9"))
            .await
            .unwrap();
        tessera_compute::aggregates::add_host(&api, agg.id, "cell2-compute1")
            .await
            .unwrap();
        placement
            .aggregate_host(&agg.uuid, "cell2-compute1", true)
            .await
            .unwrap();
        let mut zspec = spec(1, 256, 1);
        zspec.availability_zone = Some("az9".into());
        let zoned = uuid::Uuid::new_v4().to_string();
        let sel = s
            .select_destinations(&zspec, std::slice::from_ref(&zoned))
            .await
            .unwrap();
        assert_eq!(sel[0][0].host, "cell2-compute1");
        placement.release(&zoned).await.unwrap();
        zspec.availability_zone = Some("nowhere".into());
        assert!(matches!(
            s.select_destinations(&zspec, &[uuid::Uuid::new_v4().to_string()])
                .await,
            Err(SchedulerError::NoValidHost(_))
        ));
        let mut g = spec(1, 256, 1);
        g.group_policy = Some("anti-affinity".into());
        g.group_hosts = vec!["cell2-compute1".into()];
        assert!(
            matches!(
                s.select_destinations(&g, &[uuid::Uuid::new_v4().to_string()])
                    .await,
                Err(SchedulerError::NoValidHost(_))
            ),
            "the only host with room holds a group member"
        );
        g.group_hosts = vec!["cell1-compute1".into()];
        let sel = s
            .select_destinations(&g, &[uuid::Uuid::new_v4().to_string()])
            .await
            .unwrap();
        assert_eq!(sel[0][0].host, "cell2-compute1");
        cdb.close().await;
        api.close().await;
        c.stop().await;
    });
}

#[tokio::test]
async fn super_conductor_builds_across_cells_or_buries_in_cell0() {
    use tessera_compute::boot::{self, BootInstance, SuperConductor};
    let b = Backend::Sqlite;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(&b, dir.path()).await;
    let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
    cfg.set("all_in_one", "cells", "2").unwrap();
    cfg.set("all_in_one", "hosts_per_cell", "2").unwrap();
    let c = Cloud::start_with(&b, db, dir, cfg).await;
    let token = c.admin_token().await;
    let placement = admin_placement(&c);
    let api = Db::connect(&c.aio.config.get_str("api_database", "connection"), 4)
        .await
        .unwrap();
    let sched = Arc::new(Scheduler::new(
        api.clone(),
        placement,
        tessera::aio::scheduler_config(&c.aio.config).unwrap(),
    ));
    let sc = SuperConductor::new(api.clone(), sched, c.aio.buses.clone());
    let boot_of = |n: usize, vcpus: i64| -> (RequestSpec, Vec<BootInstance>) {
        let s = spec(vcpus, 512, 1);
        let list = (0..n)
            .map(|k| BootInstance {
                uuid: uuid::Uuid::new_v4().to_string(),
                project_id: "p1".into(),
                user_id: "u1".into(),
                display_name: format!("vm-{k}"),
                image_ref: None,
                flavor: serde_json::json!({"name": "m1.tiny"}),
                vcpus,
                memory_mb: 512,
                root_gb: 1,
                ephemeral_gb: 0,
                availability_zone: None,
                created_at: tessera_types::now_epoch_micros(),
                ..Default::default()
            })
            .collect();
        (s, list)
    };

    // Four instances: each created in its host's cell, mapped there, built ACTIVE; no build request left.
    let (s, mut list) = boot_of(4, 1);
    boot::record(&api, &s, &mut list, None).await.unwrap();
    assert_eq!(boot::build_requests_count(&api).await.unwrap(), 4);
    let uuids: Vec<String> = list.iter().map(|i| i.uuid.clone()).collect();
    sc.schedule_and_build(&uuids, "req-boot").await.unwrap();
    assert_eq!(boot::build_requests_count(&api).await.unwrap(), 0);
    let mut cells_used = std::collections::BTreeSet::new();
    for u in &uuids {
        let m = tessera_compute::cells::instance_mapping_get(&api, u)
            .await
            .unwrap()
            .unwrap();
        let cell = tessera_compute::cells::cell_get_by_id(&api, m.cell_id.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(!cell.is_cell0());
        cells_used.insert(cell.uuid.clone());
        let cdb = Db::connect(&cell.database_connection, 1).await.unwrap();
        let mut state = String::new();
        for _ in 0..100 {
            state = tessera_compute::celldb::instance_get(&cdb, u)
                .await
                .unwrap()
                .unwrap()
                .vm_state;
            if state == "active" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(state, "active");
        cdb.close().await;
        assert!(!allocations(&c, &token, u).await["allocations"]
            .as_object()
            .unwrap()
            .is_empty());
    }
    assert_eq!(cells_used.len(), 2, "spread over both cells");

    // Nothing fits: buried in cell0, ERROR with the NoValidHost fault, no claim left.
    let (s, mut list) = boot_of(2, 999);
    boot::record(&api, &s, &mut list, None).await.unwrap();
    let uuids: Vec<String> = list.iter().map(|i| i.uuid.clone()).collect();
    sc.schedule_and_build(&uuids, "req-bury").await.unwrap();
    let cell0 = tessera_compute::cells::cell_get(&api, tessera_compute::cells::CELL0_UUID)
        .await
        .unwrap()
        .unwrap();
    let c0 = Db::connect(&cell0.database_connection, 1).await.unwrap();
    for u in &uuids {
        let m = tessera_compute::cells::instance_mapping_get(&api, u)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.cell_id, Some(cell0.id));
        let i = tessera_compute::celldb::instance_get(&c0, u)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(i.vm_state, "error");
        let (_, msg, _, _) = tessera_compute::celldb::fault_latest(&c0, u)
            .await
            .unwrap()
            .unwrap();
        assert!(msg.starts_with("No valid host was found."), "{msg}");
        assert_eq!(
            allocations(&c, &token, u).await["allocations"],
            serde_json::json!({})
        );
        let mut out = String::new();
        assert_eq!(
            tessera_compute::cellv2::verify_instance(&api, u, false, &mut out)
                .await
                .unwrap(),
            0
        );
        assert!(out.contains("is in cell: cell0"), "{out}");
    }
    assert_eq!(boot::build_requests_count(&api).await.unwrap(), 0);
    c0.close().await;
    api.close().await;
    c.stop().await;
}
