//! Restart recovery of the import flow: a process killed while staging or importing leaves rows and files
//! that the next start finishes or rolls back. The "crash" is simulated by writing exactly the state a killed
//! process leaves behind, then starting a new service over it.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use tessera_db::Db;
use tessera_image::store::{self, ImageRow, TaskRow};
use tessera_image::{ImageService, Settings};

fn settings() -> Settings {
    Settings {
        image_size_cap: 1 << 40,
        user_storage_quota: 0,
        image_count_quota: 0,
        limit_default: 25,
        limit_max: 1000,
    }
}

fn image(id: &str, status: &str) -> ImageRow {
    ImageRow {
        id: id.into(),
        name: Some(id.into()),
        status: status.into(),
        visibility: "private".into(),
        owner: Some("p1".into()),
        disk_format: Some("raw".into()),
        container_format: Some("bare".into()),
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        min_disk: 0,
        min_ram: 0,
        protected: false,
        os_hidden: false,
        created_at: 1,
        updated_at: 1,
        properties: BTreeMap::new(),
        tags: BTreeSet::new(),
    }
}

fn task(id: &str, image_id: &str) -> TaskRow {
    TaskRow {
        id: id.into(),
        image_id: image_id.into(),
        kind: "api_image_import".into(),
        status: "pending".into(),
        owner: Some("p1".into()),
        input: "{}".into(),
        result: None,
        message: String::new(),
        request_id: None,
        user_id: None,
        created_at: 2,
        updated_at: 2,
        expires_at: None,
    }
}

#[tokio::test]
async fn restart_finishes_interrupted_imports_and_rolls_back_interrupted_stages() {
    let dir = tempfile::tempdir().unwrap();
    // SQLAlchemy form: four slashes for an absolute path.
    let url = format!("sqlite:///{}/image.sqlite", dir.path().display());
    let db = Db::connect(&url, 2).await.unwrap();
    db.migrate(&tessera_db::image::MIGRATIONS).await.unwrap();
    let store_dir = dir.path().join("images");
    let staging = store_dir.join("staging");
    std::fs::create_dir_all(&staging).unwrap();

    // 1. Killed after `POST /import` answered, before the job ran: staged data, task pending.
    store::image_put(&db, &image("imp-pending", "uploading"), true, None)
        .await
        .unwrap();
    std::fs::write(staging.join("imp-pending"), b"pending data").unwrap();
    assert!(
        store::begin_import(&db, "imp-pending", "uploading", &task("t1", "imp-pending"))
            .await
            .unwrap()
    );
    // 2. Killed after the job moved the data into the store, before the row turned active.
    store::image_put(&db, &image("imp-moved", "uploading"), true, None)
        .await
        .unwrap();
    assert!(
        store::begin_import(&db, "imp-moved", "uploading", &task("t2", "imp-moved"))
            .await
            .unwrap()
    );
    std::fs::write(store_dir.join("imp-moved"), b"moved data").unwrap();
    // 3. Killed while the stage request streamed: only a partial file.
    store::image_put(&db, &image("stage-cut", "uploading"), true, None)
        .await
        .unwrap();
    std::fs::write(staging.join(".stage-cut.abc.partial"), b"half").unwrap();
    // 4. A completed stage waiting for its import: stays as it is.
    store::image_put(&db, &image("staged", "uploading"), true, None)
        .await
        .unwrap();
    std::fs::write(staging.join("staged"), b"staged data").unwrap();
    // 5. Killed mid-upload (plain PUT /file).
    store::image_put(&db, &image("saving", "saving"), true, None)
        .await
        .unwrap();
    std::fs::write(store_dir.join(".saving.abc.partial"), b"half").unwrap();

    let svc = ImageService::new(db.clone(), store_dir.clone(), settings())
        .await
        .unwrap();
    let mut done = false;
    for _ in 0..200 {
        let a = store::image_get(&db, "imp-pending").await.unwrap().unwrap();
        let b = store::image_get(&db, "imp-moved").await.unwrap().unwrap();
        if a.status == "active" && b.status == "active" {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(done, "interrupted imports were not finished");
    let a = store::image_get(&db, "imp-pending").await.unwrap().unwrap();
    assert_eq!(a.size, Some(12));
    assert_eq!(a.virtual_size, Some(12));
    assert_eq!(
        std::fs::read(svc.data_path("imp-pending")).unwrap(),
        b"pending data"
    );
    assert!(!staging.join("imp-pending").exists());
    assert_eq!(
        store::image_get(&db, "imp-moved").await.unwrap().unwrap().size,
        Some(10)
    );
    for id in ["imp-pending", "imp-moved"] {
        let tasks = store::tasks_for_image(&db, id).await.unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].status, "success");
    }
    assert_eq!(
        store::image_get(&db, "stage-cut").await.unwrap().unwrap().status,
        "queued"
    );
    assert_eq!(
        store::image_get(&db, "staged").await.unwrap().unwrap().status,
        "uploading"
    );
    assert!(staging.join("staged").exists());
    assert_eq!(
        store::image_get(&db, "saving").await.unwrap().unwrap().status,
        "queued"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .chain(std::fs::read_dir(&store_dir).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
