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
