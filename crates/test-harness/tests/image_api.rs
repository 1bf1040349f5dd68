//! Image API over HTTP on every configured database backend: listing filters, sorting and paging, members,
//! and upload/download integrity.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use tessera_test_harness::{each_backend, Backend, Cloud};

async fn call(c: &Cloud, method: http::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = c
        .http
        .request(method, c.image_url(path))
        .header("X-Auth-Token", token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json::<Value>().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn listing_filters_sorting_and_paging() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let t = c.admin_token().await;
        let mut ids = Vec::new();
        for (n, fmt) in [
            ("a", "raw"),
            ("b", "qcow2"),
            ("c", "raw"),
            ("d", "iso"),
            ("e", "raw"),
        ] {
            let (s, v) = call(&c, http::Method::POST, "/v2/images", &t,
                Some(json!({"name": n, "disk_format": fmt, "container_format": "bare", "os_distro": if n == "c" { "debian" } else { "other" }, "tags": [format!("t-{n}")]}))).await;
            assert_eq!(s, 201, "{v}");
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        let names = |v: &Value| {
            v["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let (_, v) = call(
            &c,
            http::Method::GET,
            "/v2/images?sort_key=name&sort_dir=asc",
            &t,
            None,
        )
        .await;
        assert_eq!(names(&v), ["a", "b", "c", "d", "e"]);
        let (_, v) = call(
            &c,
            http::Method::GET,
            "/v2/images?disk_format=raw&sort=name:desc",
            &t,
            None,
        )
        .await;
        assert_eq!(names(&v), ["e", "c", "a"]);
        let (_, v) = call(&c, http::Method::GET, "/v2/images?os_distro=debian", &t, None).await;
        assert_eq!(names(&v), ["c"]);
        let (_, v) = call(&c, http::Method::GET, "/v2/images?tag=t-d", &t, None).await;
        assert_eq!(names(&v), ["d"]);
        let (_, v) = call(
            &c,
            http::Method::GET,
            &format!(
                "/v2/images?id=in:{},{}&sort_key=name&sort_dir=asc",
                ids[0], ids[4]
            ),
            &t,
            None,
        )
        .await;
        assert_eq!(names(&v), ["a", "e"]);
        // Paging follows `next` until the end, without repeats.
        let mut seen = Vec::new();
        let mut path = "/v2/images?limit=2&sort_key=name&sort_dir=asc".to_string();
        for _ in 0..5 {
            let (s, v) = call(&c, http::Method::GET, &path, &t, None).await;
            assert_eq!(s, 200, "{v}");
            seen.extend(names(&v));
            match v.get("next").and_then(Value::as_str) {
                Some(n) => path = n.to_string(),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        let (s, _) = call(&c, http::Method::GET, "/v2/images?sort_key=bogus", &t, None).await;
        assert_eq!(s, 400);
        let (s, _) = call(
            &c,
            http::Method::GET,
            "/v2/images?marker=00000000-0000-0000-0000-000000000000",
            &t,
            None,
        )
        .await;
        assert_eq!(s, 400);

        // Upload and download a few MiB; hashes and range reads.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let r = c
            .http
            .put(c.image_url(&format!("/v2/images/{}/file", ids[0])))
            .header("X-Auth-Token", &t)
            .header("Content-Type", "application/octet-stream")
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        let r = c
            .http
            .get(c.image_url(&format!("/v2/images/{}/file", ids[0])))
            .header("X-Auth-Token", &t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers().get("content-md5").is_some());
        assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
        let r = c
            .http
            .get(c.image_url(&format!("/v2/images/{}/file", ids[0])))
            .header("X-Auth-Token", &t)
            .header("Range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);
        let (_, v) = call(&c, http::Method::GET, &format!("/v2/images/{}", ids[0]), &t, None).await;
        assert_eq!(v["status"], "active");
        assert_eq!(v["size"], 3_000_000);
        assert_eq!(v["os_hash_algo"], "sha512");
        // Deactivated images cannot be downloaded by non-admins, and can be reactivated.
        let (s, _) = call(
            &c,
            http::Method::POST,
            &format!("/v2/images/{}/actions/deactivate", ids[0]),
            &t,
            None,
        )
        .await;
        assert_eq!(s, 204);
        let (_, v) = call(&c, http::Method::GET, &format!("/v2/images/{}", ids[0]), &t, None).await;
        assert_eq!(v["status"], "deactivated");
        let (s, _) = call(
            &c,
            http::Method::POST,
            &format!("/v2/images/{}/actions/reactivate", ids[0]),
            &t,
            None,
        )
        .await;
        assert_eq!(s, 204);
        // No data: 204 on download.
        let r = c
            .http
            .get(c.image_url(&format!("/v2/images/{}/file", ids[1])))
            .header("X-Auth-Token", &t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        // Unauthenticated: 401.
        let r = c.http.get(c.image_url("/v2/images")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        c.stop().await;
    });
}

/// A qcow2 v3 header for a 1 GiB disk, optionally naming a backing file.
fn qcow2_header(backing: bool) -> Vec<u8> {
    let mut h = vec![0u8; 65536];
    h[0..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    if backing {
        h[8..16].copy_from_slice(&512u64.to_be_bytes());
        h[16..20].copy_from_slice(&8u32.to_be_bytes());
        h[512..520].copy_from_slice(b"/etc/pwd");
    }
    h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
    h
}

async fn put_data(c: &Cloud, t: &str, id: &str, what: &str, data: Vec<u8>, extra: &[(&str, &str)]) -> u16 {
    let mut rb = c
        .http
        .put(c.image_url(&format!("/v2/images/{id}/{what}")))
        .header("X-Auth-Token", t)
        .header("Content-Type", "application/octet-stream");
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    rb.body(data).send().await.unwrap().status().as_u16()
}

async fn wait_status(c: &Cloud, t: &str, id: &str, want: &str) -> Value {
    for _ in 0..200 {
        let (_, v) = call(c, http::Method::GET, &format!("/v2/images/{id}"), t, None).await;
        if v["status"] == want {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("image {id} never reached {want}");
}

#[tokio::test]
async fn glance_direct_import_inspection_and_quotas() {
    each_backend!(|b: Backend| async move {
        let dir = tempfile::tempdir().unwrap();
        let db = tessera_test_harness::TestDb::create(&b, dir.path()).await;
        let mut cfg = tessera_test_harness::test_config(dir.path(), &db.url);
        cfg.set("image", "image_count_quota", "4").unwrap();
        cfg.set("image", "user_storage_quota", "1000000").unwrap();
        let c = Cloud::start_with(&b, db, dir, cfg).await;
        let admin = c.admin_token().await;
        c.project_with_member(&admin, "importers", "imp", "imp-pass")
            .await;
        let t = c
            .login("imp", "imp-pass", Some("importers"))
            .await
            .subject_token();
        let new_image = |fmt: &'static str| {
            let c = &c;
            let t = t.clone();
            async move {
                let r = c
                    .http
                    .post(c.image_url("/v2/images"))
                    .header("X-Auth-Token", &t)
                    .json(&json!({"name": "imp", "disk_format": fmt, "container_format": "bare"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
                assert_eq!(r.headers()["openstack-image-import-methods"], "glance-direct");
                r.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        };
        let (_, v) = call(&c, http::Method::GET, "/v2/info/import", &t, None).await;
        assert_eq!(v["import-methods"]["value"], json!(["glance-direct"]));

        // glance-direct: stage (uploading), import (202), a background task makes it active.
        let id = new_image("qcow2").await;
        let import = json!({"method": {"name": "glance-direct"}});
        let path = format!("/v2/images/{id}/import");
        let (s, _) = call(&c, http::Method::POST, &path, &t, Some(import.clone())).await;
        assert_eq!(s, 409, "import before stage");
        let r = c
            .http
            .put(c.image_url(&format!("/v2/images/{id}/stage")))
            .header("X-Auth-Token", &t)
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 415);
        let data = qcow2_header(false);
        assert_eq!(put_data(&c, &t, &id, "stage", data.clone(), &[]).await, 204);
        let (_, v) = call(&c, http::Method::GET, &format!("/v2/images/{id}"), &t, None).await;
        assert_eq!(v["status"], "uploading");
        assert_eq!(v["checksum"], Value::Null);
        for bad in [
            json!({"method": {"name": "web-download", "uri": "http://example.com/x"}}),
            json!({"method": "glance-direct"}),
            json!({"method": {"name": "glance-direct"}, "bogus": 1}),
        ] {
            let (s, _) = call(&c, http::Method::POST, &path, &t, Some(bad)).await;
            assert_eq!(s, 400);
        }
        let (s, _) = call(
            &c,
            http::Method::POST,
            &path,
            &t,
            Some(json!({"method": {"name": "glance-direct"}, "stores": ["elsewhere"]})),
        )
        .await;
        assert_eq!(s, 409);
        let r = c
            .http
            .post(c.image_url(&path))
            .header("X-Auth-Token", &t)
            .json(&import)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let request_id = r.headers()["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let v = wait_status(&c, &t, &id, "active").await;
        assert_eq!(v["size"], data.len());
        assert_eq!(v["virtual_size"], 1u64 << 30);
        assert_eq!(v["os_hash_algo"], "sha512");
        let (_, v) = call(&c, http::Method::GET, &format!("/v2/images/{id}/tasks"), &t, None).await;
        assert_eq!(v["tasks"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["tasks"][0]["status"], "success");
        assert_eq!(v["tasks"][0]["type"], "api_image_import");
        assert_eq!(v["tasks"][0]["request_id"], request_id);
        let r = c
            .http
            .get(c.image_url(&format!("/v2/images/{id}/file")))
            .header("X-Auth-Token", &t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
        assert_eq!(put_data(&c, &t, &id, "stage", vec![1, 2, 3], &[]).await, 409);

        // Data that is not what disk_format says fails the task and returns the image to queued.
        let id2 = new_image("qcow2").await;
        assert_eq!(put_data(&c, &t, &id2, "stage", vec![7u8; 1000], &[]).await, 204);
        let (s, _) = call(
            &c,
            http::Method::POST,
            &format!("/v2/images/{id2}/import"),
            &t,
            Some(import.clone()),
        )
        .await;
        assert_eq!(s, 202);
        let v = wait_status(&c, &t, &id2, "queued").await;
        assert_eq!(v["os_glance_failed_import"], "file");
        assert_eq!(v["size"], Value::Null);
        let (_, v) = call(
            &c,
            http::Method::GET,
            &format!("/v2/images/{id2}/tasks"),
            &t,
            None,
        )
        .await;
        assert_eq!(v["tasks"][0]["status"], "failure");
        assert!(
            v["tasks"][0]["message"].as_str().unwrap().contains("qcow2"),
            "{v}"
        );
        // A qcow2 that names a backing file is refused on plain upload too.
        assert_eq!(put_data(&c, &t, &id2, "file", qcow2_header(true), &[]).await, 400);
        let (_, v) = call(&c, http::Method::GET, &format!("/v2/images/{id2}"), &t, None).await;
        assert_eq!(v["status"], "queued");

        // Storage quota (1,000,000 bytes; 65,536 used): an announced size beyond it is refused before any
        // data is read, and so is a body that grows past it.
        let id3 = new_image("raw").await;
        let big = [("X-OpenStack-Image-Size", "2000000")];
        assert_eq!(put_data(&c, &t, &id3, "file", vec![0u8; 10], &big).await, 413);
        assert_eq!(put_data(&c, &t, &id3, "stage", vec![0u8; 10], &big).await, 413);
        assert_eq!(
            put_data(&c, &t, &id3, "file", vec![0u8; 1_000_000], &[]).await,
            413
        );
        let (_, v) = call(&c, http::Method::GET, &format!("/v2/images/{id3}"), &t, None).await;
        assert_eq!(v["status"], "queued");
        assert_eq!(put_data(&c, &t, &id3, "file", vec![0u8; 900_000], &[]).await, 204);
        // Image count quota: 4 images per project.
        let _ = new_image("raw").await;
        let (s, v) = call(
            &c,
            http::Method::POST,
            "/v2/images",
            &t,
            Some(json!({"name": "one too many", "disk_format": "raw", "container_format": "bare"})),
        )
        .await;
        assert_eq!(s, 413, "{v}");
        // Deleting frees room.
        let (s, _) = call(&c, http::Method::DELETE, &format!("/v2/images/{id2}"), &t, None).await;
        assert_eq!(s, 204);
        let _ = new_image("raw").await;
        c.stop().await;
    });
}

/// The compute-host cache against the real Image API: one verified download, overlays from it.
#[tokio::test]
async fn image_cache_fetches_through_the_image_api() {
    let b = Backend::Sqlite;
    let c = Cloud::start(&b).await;
    let t = c.admin_token().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&src)
        .arg("48M")
        .status()
        .expect("qemu-img is needed (apt-get install qemu-utils)");
    assert!(st.success());
    let (s, v) = call(
        &c,
        http::Method::POST,
        "/v2/images",
        &t,
        Some(json!({"name": "cached", "disk_format": "qcow2", "container_format": "bare"})),
    )
    .await;
    assert_eq!(s, 201);
    let id = v["id"].as_str().unwrap().to_string();
    let source = tessera_imagecache::GlanceSource::new(c.http.clone(), &c.image_url(""), &t);
    let cache = tessera_imagecache::ImageCache::open(work.path().join("_base"))
        .await
        .unwrap();
    // Not active yet: a clear error, nothing cached.
    let e = cache.fetch(&source, &id).await.unwrap_err();
    assert!(
        matches!(e, tessera_imagecache::CacheError::NotActive { .. }),
        "{e}"
    );
    assert_eq!(
        put_data(&c, &t, &id, "file", std::fs::read(&src).unwrap(), &[]).await,
        204
    );
    let base = cache.fetch(&source, &id).await.unwrap();
    assert!(base.downloaded);
    assert_eq!(base.virtual_size, 48 << 20);
    let (_, v) = call(&c, http::Method::GET, &format!("/v2/images/{id}"), &t, None).await;
    assert_eq!(
        base.path.file_name().unwrap().to_string_lossy(),
        v["os_hash_value"].as_str().unwrap()
    );
    for i in 0..3 {
        let again = cache.fetch(&source, &id).await.unwrap();
        assert!(!again.downloaded);
        cache
            .create_overlay(&again, &work.path().join(format!("i{i}/disk")), Some(1 << 30))
            .await
            .unwrap();
    }
    let e = cache
        .fetch(&source, "00000000-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert!(matches!(e, tessera_imagecache::CacheError::NotFound(_)), "{e}");
    c.stop().await;
}
