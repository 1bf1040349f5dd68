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
