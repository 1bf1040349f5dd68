//! Placement API over HTTP on every configured database backend: microversions, error codes, generations,
//! and concurrent claims that must never oversubscribe a provider.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use tessera_test_harness::{each_backend, Backend, Cloud};

struct P<'a> {
    c: &'a Cloud,
    token: String,
}

impl P<'_> {
    async fn call(
        &self,
        mv: &str,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, http::HeaderMap) {
        let mut rb = self
            .c
            .http
            .request(method, self.c.placement_url(path))
            .header("X-Auth-Token", &self.token)
            .header("OpenStack-API-Version", format!("placement {mv}"));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        let h = r.headers().clone();
        (s, r.json::<Value>().await.unwrap_or(Value::Null), h)
    }
    /// Create a provider (microversion 1.39) and return its uuid.
    async fn provider(&self, body: Value) -> String {
        self.ok("1.39", http::Method::POST, "/resource_providers", Some(body))
            .await["uuid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn ok(&self, mv: &str, method: http::Method, path: &str, body: Option<Value>) -> Value {
        let (s, v, _) = self.call(mv, method.clone(), path, body).await;
        assert!((200..300).contains(&s), "{method} {path} -> {s}: {v}");
        v
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn code(v: &Value) -> &str {
    v["errors"][0]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn microversions_errors_and_generations() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let p = P {
            c: &c,
            token: c.admin_token().await,
        };
        // The root needs no token.
        let r = c.http.get(c.placement_url("/")).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["versions"][0]["max_version"], "1.39");
        let (s, v, _) = p
            .call("1.99", http::Method::GET, "/resource_providers", None)
            .await;
        assert_eq!(s, 406);
        assert_eq!(v["errors"][0]["max_version"], "1.39");
        let (s, _, _) = p
            .call("one", http::Method::GET, "/resource_providers", None)
            .await;
        assert_eq!(s, 400);
        let (s, _, h) = p
            .call("1.30", http::Method::GET, "/resource_providers", None)
            .await;
        assert_eq!(s, 200);
        assert_eq!(h["openstack-api-version"], "placement 1.30");
        assert_eq!(h["vary"], "openstack-api-version");
        // Microversion-gated routes are 404 below their version.
        let (s, _, _) = p.call("1.5", http::Method::GET, "/traits", None).await;
        assert_eq!(s, 404);

        // Provider create: 201 without a body before 1.20, 200 with one from 1.20.
        let rp = uuid();
        let (s, v, h) = p
            .call(
                "1.19",
                http::Method::POST,
                "/resource_providers",
                Some(json!({"name": "cn1", "uuid": rp})),
            )
            .await;
        assert_eq!((s, v), (201, Value::Null));
        assert_eq!(h["location"], format!("/resource_providers/{rp}"));
        let (s, v, _) = p
            .call(
                "1.20",
                http::Method::POST,
                "/resource_providers",
                Some(json!({"name": "cn1"})),
            )
            .await;
        assert_eq!(s, 409);
        assert_eq!(code(&v), "placement.duplicate_name");
        let child = p
            .ok(
                "1.39",
                http::Method::POST,
                "/resource_providers",
                Some(json!({"name": "numa0", "parent_provider_uuid": rp})),
            )
            .await;
        assert_eq!(child["root_provider_uuid"], rp.as_str());
        let child = child["uuid"].as_str().unwrap().to_string();

        // Inventories: bad input, generations.
        let inv = |gen: i64, vcpu: i64| {
            json!({"resource_provider_generation": gen, "inventories": {
                "VCPU": {"total": vcpu, "allocation_ratio": 1.0}, "MEMORY_MB": {"total": 2048, "max_unit": 1024, "step_size": 256}}})
        };
        let path = format!("/resource_providers/{rp}/inventories");
        let (s, _, _) = p
            .call(
                "1.39",
                http::Method::PUT,
                &path,
                Some(json!({"resource_provider_generation": 0, "inventories": {"NOPE": {"total": 1}}})),
            )
            .await;
        assert_eq!(s, 400, "unknown resource class");
        let (s, _, _) = p
            .call(
                "1.39",
                http::Method::PUT,
                &path,
                Some(json!({"resource_provider_generation": 0, "inventories": {"VCPU": {"total": -1}}})),
            )
            .await;
        assert_eq!(s, 400, "negative total");
        let (s, v, _) = p.call("1.39", http::Method::PUT, &path, Some(inv(7, 4))).await;
        assert_eq!(s, 409);
        assert_eq!(code(&v), "placement.concurrent_update");
        let v = p.ok("1.39", http::Method::PUT, &path, Some(inv(0, 4))).await;
        assert_eq!(v["resource_provider_generation"], 1);
        // Setting the same traits again is a no-op (the generation stays); aggregates before 1.19 take a bare
        // list and leave the generation alone.
        let tpath = format!("/resource_providers/{rp}/traits");
        let v = p
            .ok(
                "1.39",
                http::Method::PUT,
                &tpath,
                Some(json!({"resource_provider_generation": 1, "traits": ["HW_CPU_X86_AVX2"]})),
            )
            .await;
        assert_eq!(v["resource_provider_generation"], 2);
        let v = p
            .ok(
                "1.39",
                http::Method::PUT,
                &tpath,
                Some(json!({"resource_provider_generation": 2, "traits": ["HW_CPU_X86_AVX2"]})),
            )
            .await;
        assert_eq!(v["resource_provider_generation"], 2);
        let (s, v, _) = p
            .call(
                "1.39",
                http::Method::PUT,
                &tpath,
                Some(json!({"resource_provider_generation": 1, "traits": ["HW_CPU_X86_AVX2"]})),
            )
            .await;
        assert_eq!((s, code(&v)), (409, "placement.concurrent_update"));
        // A new set replaces the old one whole (one removed, two added), then an empty set clears it.
        let v = p
            .ok(
                "1.39",
                http::Method::PUT,
                &tpath,
                Some(json!({"resource_provider_generation": 2, "traits": ["HW_CPU_X86_SSE", "HW_CPU_X86_SSE2"]})),
            )
            .await;
        assert_eq!(v["resource_provider_generation"], 3);
        let v = p.ok("1.39", http::Method::GET, &tpath, None).await;
        assert_eq!(v["traits"], json!(["HW_CPU_X86_SSE", "HW_CPU_X86_SSE2"]));
        let v = p
            .ok(
                "1.39",
                http::Method::PUT,
                &tpath,
                Some(json!({"resource_provider_generation": 3, "traits": []})),
            )
            .await;
        assert_eq!(
            (v["resource_provider_generation"].clone(), v["traits"].clone()),
            (json!(4), json!([]))
        );
        let v = p
            .ok(
                "1.39",
                http::Method::PUT,
                &tpath,
                Some(json!({"resource_provider_generation": 4, "traits": []})),
            )
            .await;
        assert_eq!(v["resource_provider_generation"], 4);
        let (s, _, _) = p
            .call(
                "1.39",
                http::Method::PUT,
                &format!("/resource_providers/{}/traits", uuid()),
                Some(json!({"resource_provider_generation": 0, "traits": []})),
            )
            .await;
        assert_eq!(s, 404);
        // Aggregates with a generation (1.19+): always a bump, a stale generation a 409.
        let apath = format!("/resource_providers/{rp}/aggregates");
        let (a1, a2) = (uuid(), uuid());
        let v = p
            .ok(
                "1.19",
                http::Method::PUT,
                &apath,
                Some(json!({"resource_provider_generation": 4, "aggregates": [a1, a2]})),
            )
            .await;
        assert_eq!(v["resource_provider_generation"], 5);
        let v = p
            .ok(
                "1.19",
                http::Method::PUT,
                &apath,
                Some(json!({"resource_provider_generation": 5, "aggregates": [a2]})),
            )
            .await;
        assert_eq!(
            (v["resource_provider_generation"].clone(), v["aggregates"].clone()),
            (json!(6), json!([a2]))
        );
        let (s, v, _) = p
            .call(
                "1.19",
                http::Method::PUT,
                &apath,
                Some(json!({"resource_provider_generation": 5, "aggregates": []})),
            )
            .await;
        assert_eq!((s, code(&v)), (409, "placement.concurrent_update"));
        let v = p
            .ok(
                "1.18",
                http::Method::PUT,
                &format!("/resource_providers/{rp}/aggregates"),
                Some(json!([uuid()])),
            )
            .await;
        assert!(v.get("resource_provider_generation").is_none());
        let v = p
            .ok(
                "1.19",
                http::Method::GET,
                &format!("/resource_providers/{rp}/aggregates"),
                None,
            )
            .await;
        assert_eq!(v["resource_provider_generation"], 6);
        assert_eq!(v["aggregates"].as_array().unwrap().len(), 1);
        let (s, _, _) = p
            .call(
                "1.39",
                http::Method::GET,
                "/resource_providers?resources=VCPU:x",
                None,
            )
            .await;
        assert_eq!(s, 400, "malformed query");
        let (s, _, _) = p
            .call("1.39", http::Method::GET, "/resource_providers?bogus=1", None)
            .await;
        assert_eq!(s, 400);
        let (s, v, _) = p
            .call(
                "1.39",
                http::Method::GET,
                "/resource_providers?name=a&name=b",
                None,
            )
            .await;
        assert_eq!((s, code(&v)), (400, "placement.query.duplicate_key"));
        let v = p
            .ok(
                "1.39",
                http::Method::GET,
                "/resource_providers?resources=VCPU:4,MEMORY_MB:512",
                None,
            )
            .await;
        assert_eq!(v["resource_providers"].as_array().unwrap().len(), 1);
        let v = p
            .ok(
                "1.39",
                http::Method::GET,
                "/resource_providers?resources=VCPU:5",
                None,
            )
            .await;
        assert_eq!(v["resource_providers"].as_array().unwrap().len(), 0);

        // Allocations with consumer generations.
        let (pr, us) = (uuid(), uuid());
        let consumer = uuid();
        let alloc = |gen: Value, vcpu: i64| {
            json!({"allocations": {rp.clone(): {"resources": {"VCPU": vcpu, "MEMORY_MB": 512}}},
                "project_id": pr, "user_id": us, "consumer_generation": gen, "consumer_type": "INSTANCE"})
        };
        let apath = format!("/allocations/{consumer}");
        let (s, v, _) = p
            .call("1.38", http::Method::PUT, &apath, Some(alloc(Value::Null, 5)))
            .await;
        assert_eq!(
            (s, code(&v)),
            (409, "placement.undefined_code"),
            "beyond capacity: {v}"
        );
        let (s, _, _) = p
            .call(
                "1.38",
                http::Method::PUT,
                &apath,
                Some(
                    json!({"allocations": {rp.clone(): {"resources": {"MEMORY_MB": 300}}},
                "project_id": pr, "user_id": us, "consumer_generation": null, "consumer_type": "INSTANCE"}),
                ),
            )
            .await;
        assert_eq!(s, 409, "not a multiple of step_size");
        p.ok("1.38", http::Method::PUT, &apath, Some(alloc(Value::Null, 2)))
            .await;
        let (s, v, _) = p
            .call("1.38", http::Method::PUT, &apath, Some(alloc(Value::Null, 2)))
            .await;
        assert_eq!((s, code(&v)), (409, "placement.concurrent_update"));
        let v = p.ok("1.38", http::Method::GET, &apath, None).await;
        assert_eq!(v["consumer_generation"], 1);
        assert_eq!(v["consumer_type"], "INSTANCE");
        assert_eq!(v["allocations"][&rp]["resources"]["VCPU"], 2);
        p.ok("1.38", http::Method::PUT, &apath, Some(alloc(json!(1), 3)))
            .await;
        // Pre-1.12 GET has no project; unknown consumers are 200 with nothing.
        let v = p.ok("1.11", http::Method::GET, &apath, None).await;
        assert!(v.get("project_id").is_none());
        let v = p
            .ok(
                "1.38",
                http::Method::GET,
                &format!("/allocations/{}", uuid()),
                None,
            )
            .await;
        assert_eq!(v, json!({"allocations": {}}));
        // In-use rules.
        let (s, v, _) = p
            .call(
                "1.39",
                http::Method::DELETE,
                &format!("/resource_providers/{rp}"),
                None,
            )
            .await;
        assert_eq!(
            (s, code(&v)),
            (409, "placement.resource_provider.cannot_delete_parent")
        );
        p.ok(
            "1.39",
            http::Method::DELETE,
            &format!("/resource_providers/{child}"),
            None,
        )
        .await;
        let (s, v, _) = p
            .call(
                "1.39",
                http::Method::DELETE,
                &format!("/resource_providers/{rp}"),
                None,
            )
            .await;
        assert_eq!((s, code(&v)), (409, "placement.resource_provider.inuse"));
        let gen = p.ok("1.39", http::Method::GET, &path, None).await["resource_provider_generation"]
            .as_i64()
            .unwrap();
        let (s, v, _) = p
            .call("1.39", http::Method::PUT, &path, Some(json!({"resource_provider_generation": gen, "inventories": {"MEMORY_MB": {"total": 2048}}})))
            .await;
        assert_eq!((s, code(&v)), (409, "placement.inventory.inuse"));
        // Deleting the class in use, alone or with all the others, is refused too, and changes nothing.
        for del in [format!("{path}/VCPU"), path.clone()] {
            let (s, v, _) = p.call("1.39", http::Method::DELETE, &del, None).await;
            assert_eq!((s, code(&v)), (409, "placement.inventory.inuse"), "{del}");
        }
        let v = p.ok("1.39", http::Method::GET, &path, None).await;
        assert_eq!(v["resource_provider_generation"], gen);
        assert!(
            v["inventories"]["VCPU"].is_object() && v["inventories"]["MEMORY_MB"].is_object(),
            "{v}"
        );
        // A total below usage is accepted (the provider is over capacity).
        p.ok("1.39", http::Method::PUT, &path, Some(inv(gen, 1))).await;
        let v = p
            .ok(
                "1.39",
                http::Method::GET,
                &format!("/resource_providers/{rp}/usages"),
                None,
            )
            .await;
        assert_eq!(v["usages"]["VCPU"], 3);
        p.ok("1.39", http::Method::PUT, &path, Some(inv(gen + 1, 4)))
            .await;
        // Usages per project, by consumer type.
        let v = p
            .ok(
                "1.38",
                http::Method::GET,
                &format!("/usages?project_id={pr}"),
                None,
            )
            .await;
        assert_eq!(v["usages"]["INSTANCE"]["consumer_count"], 1);
        assert_eq!(v["usages"]["INSTANCE"]["VCPU"], 3);
        let v = p
            .ok(
                "1.9",
                http::Method::GET,
                &format!("/usages?project_id={pr}"),
                None,
            )
            .await;
        assert_eq!(v["usages"]["MEMORY_MB"], 512);
        // Move the allocations to another consumer atomically (as Nova does for migrations).
        let migration = uuid();
        p.ok("1.38", http::Method::POST, "/allocations", Some(json!({
            consumer.clone(): {"allocations": {}, "project_id": pr, "user_id": us, "consumer_generation": 2, "consumer_type": "INSTANCE"},
            migration.clone(): {"allocations": {rp.clone(): {"resources": {"VCPU": 3, "MEMORY_MB": 512}}},
                "project_id": pr, "user_id": us, "consumer_generation": null, "consumer_type": "MIGRATION"},
        }))).await;
        assert_eq!(
            p.ok("1.38", http::Method::GET, &apath, None).await,
            json!({"allocations": {}})
        );
        p.ok(
            "1.38",
            http::Method::DELETE,
            &format!("/allocations/{migration}"),
            None,
        )
        .await;
        let (s, _, _) = p
            .call(
                "1.38",
                http::Method::DELETE,
                &format!("/allocations/{migration}"),
                None,
            )
            .await;
        assert_eq!(s, 404);
        p.ok(
            "1.39",
            http::Method::DELETE,
            &format!("/resource_providers/{rp}"),
            None,
        )
        .await;

        // Members of a project are refused.
        let admin = c.admin_token().await;
        c.project_with_member(&admin, "p", "m", "m-pass").await;
        let member = P {
            c: &c,
            token: c.login("m", "m-pass", Some("p")).await.subject_token(),
        };
        let (s, _, _) = member
            .call("1.39", http::Method::GET, "/resource_providers", None)
            .await;
        assert_eq!(s, 403);
        c.stop().await;
    });
}

#[tokio::test]
async fn concurrent_claims_never_oversubscribe() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let p = std::sync::Arc::new(P {
            c: &c,
            token: c.admin_token().await,
        });
        let rp = p.provider(json!({"name": "small"})).await;
        p.ok(
            "1.39",
            http::Method::PUT,
            &format!("/resource_providers/{rp}/inventories"),
            Some(json!({"resource_provider_generation": 0, "inventories": {"VCPU": {"total": 10}}})),
        )
        .await;
        let (pr, us) = (uuid(), uuid());
        let claims = (0..40).map(|_| {
            let body = json!({"allocations": {rp.clone(): {"resources": {"VCPU": 1}}}, "project_id": pr,
                "user_id": us, "consumer_generation": null, "consumer_type": "INSTANCE"});
            let p = p.clone();
            async move {
                p.call(
                    "1.38",
                    http::Method::PUT,
                    &format!("/allocations/{}", uuid()),
                    Some(body),
                )
                .await
                .0
            }
        });
        let results = futures_util::future::join_all(claims).await;
        let ok = results.iter().filter(|s| **s == 204).count();
        assert!(results.iter().all(|s| *s == 204 || *s == 409), "{results:?}");
        assert_eq!(ok, 10, "{results:?}");
        let v = p
            .ok(
                "1.39",
                http::Method::GET,
                &format!("/resource_providers/{rp}/usages"),
                None,
            )
            .await;
        assert_eq!(v["usages"]["VCPU"], 10);
        let v = p
            .ok(
                "1.39",
                http::Method::GET,
                &format!("/resource_providers/{rp}/allocations"),
                None,
            )
            .await;
        assert_eq!(v["allocations"].as_object().unwrap().len(), 10);
        // Replacing inventories or traits from one generation, many at once: one wins, every other one is a
        // 409 that wrote nothing, and what is left is the winner's.
        let rp = p.provider(json!({"name": "raced"})).await;
        let ipath = format!("/resource_providers/{rp}/inventories");
        let bodies: Vec<Value> = (1..=12)
            .map(|n| {
                let mut inv = json!({"VCPU": {"total": n}});
                if n % 2 == 0 {
                    inv["MEMORY_MB"] = json!({"total": n * 1024});
                }
                json!({"resource_provider_generation": 0, "inventories": inv})
            })
            .collect();
        let puts = bodies.iter().map(|b| {
            let (p, ipath, b) = (p.clone(), ipath.clone(), b.clone());
            async move { p.call("1.39", http::Method::PUT, &ipath, Some(b)).await }
        });
        let results = futures_util::future::join_all(puts).await;
        let won: Vec<&Value> = results.iter().filter(|r| r.0 == 200).map(|r| &r.1).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(results
            .iter()
            .all(|r| r.0 == 200 || (r.0 == 409 && code(&r.1) == "placement.concurrent_update")));
        let v = p.ok("1.39", http::Method::GET, &ipath, None).await;
        assert_eq!(
            (&v["inventories"], &v["resource_provider_generation"]),
            (&won[0]["inventories"], &json!(1))
        );
        let tpath = format!("/resource_providers/{rp}/traits");
        let sets = [
            vec!["HW_CPU_X86_AVX"],
            vec!["HW_CPU_X86_AVX2", "HW_CPU_X86_SSE"],
            vec!["HW_CPU_X86_SSE2"],
            vec!["HW_CPU_X86_AVX", "HW_CPU_X86_SSE2", "HW_CPU_X86_SSE"],
        ];
        let puts = sets.iter().map(|t| {
            let (p, tpath) = (p.clone(), tpath.clone());
            let body = json!({"resource_provider_generation": 1, "traits": t});
            async move { p.call("1.39", http::Method::PUT, &tpath, Some(body)).await }
        });
        let results = futures_util::future::join_all(puts).await;
        let won: Vec<&Value> = results.iter().filter(|r| r.0 == 200).map(|r| &r.1).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(results.iter().all(|r| r.0 == 200 || r.0 == 409), "{results:?}");
        let v = p.ok("1.39", http::Method::GET, &tpath, None).await;
        assert_eq!(
            (&v["traits"], &v["resource_provider_generation"]),
            (&won[0]["traits"], &json!(2))
        );
        c.stop().await;
    });
}

/// Many writes to different providers at once (on PostgreSQL they share statements): each gets its own
/// answer — a taken name, a stale generation or an unknown provider fails only its own request — and each
/// provider ends with exactly what was written to it.
#[tokio::test]
async fn concurrent_writes_to_many_providers_each_get_their_own() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let p = std::sync::Arc::new(P {
            c: &c,
            token: c.admin_token().await,
        });
        // 24 creations, names 0..20: four names asked for twice.
        let creates = (0..24).map(|n| {
            let p = p.clone();
            let body = json!({"name": format!("many-{}", n % 20)});
            async move {
                p.call("1.39", http::Method::POST, "/resource_providers", Some(body))
                    .await
            }
        });
        let results = futures_util::future::join_all(creates).await;
        let mut rps: Vec<String> = Vec::new();
        for (s, v, _) in &results {
            match s {
                200 => rps.push(v["uuid"].as_str().unwrap().to_string()),
                409 => assert_eq!(code(v), "placement.duplicate_name", "{v}"),
                _ => panic!("{s}: {v}"),
            }
        }
        assert_eq!(rps.len(), 20, "{results:?}");
        // Inventories: even providers from their generation, odd ones from a stale one, and an unknown one.
        let inv = |n: usize| json!({"VCPU": {"total": 8 + n}, "MEMORY_MB": {"total": 1024 * (n + 1)}});
        let mut writes: Vec<(String, Value)> = rps
            .iter()
            .enumerate()
            .map(|(n, rp)| {
                let gen = if n % 2 == 0 { 0 } else { 5 };
                (
                    format!("/resource_providers/{rp}/inventories"),
                    json!({"resource_provider_generation": gen, "inventories": inv(n)}),
                )
            })
            .collect();
        writes.push((
            format!("/resource_providers/{}/inventories", uuid()),
            json!({"resource_provider_generation": 0, "inventories": inv(0)}),
        ));
        let puts = writes.into_iter().map(|(path, body)| {
            let p = p.clone();
            async move { p.call("1.39", http::Method::PUT, &path, Some(body)).await }
        });
        let results = futures_util::future::join_all(puts).await;
        for (n, (s, v, _)) in results.iter().enumerate() {
            let want = if n == rps.len() {
                (404, "placement.undefined_code".to_string())
            } else if n % 2 == 0 {
                (200, String::new())
            } else {
                (409, "placement.concurrent_update".to_string())
            };
            let got = (
                *s,
                if *s == 200 {
                    String::new()
                } else {
                    code(v).to_string()
                },
            );
            assert_eq!(got, want, "write {n}: {v}");
        }
        // Traits (a third of them the same empty set they have: generation kept) and aggregates, at once.
        let traits = |n: usize| match n % 3 {
            0 => vec![],
            1 => vec!["HW_CPU_X86_AVX2"],
            _ => vec!["HW_CPU_X86_AVX2", "STORAGE_DISK_SSD"],
        };
        let gen0 = |n: usize| usize::from(n.is_multiple_of(2));
        let puts = rps.iter().enumerate().map(|(n, rp)| {
            let p = p.clone();
            let path = format!("/resource_providers/{rp}/traits");
            let body = json!({"resource_provider_generation": gen0(n), "traits": traits(n)});
            async move { p.call("1.39", http::Method::PUT, &path, Some(body)).await }
        });
        let results = futures_util::future::join_all(puts).await;
        for (n, (s, v, _)) in results.iter().enumerate() {
            assert_eq!(*s, 200, "traits {n}: {v}");
            let bumped = if traits(n).is_empty() { 0 } else { 1 };
            assert_eq!(
                v["resource_provider_generation"],
                gen0(n) + bumped,
                "traits {n}: {v}"
            );
        }
        let gen1 = |n: usize| gen0(n) + if traits(n).is_empty() { 0 } else { 1 };
        let agg = |n: usize| format!("00000000-0000-0000-0000-{:012}", n % 4);
        let puts = rps.iter().enumerate().map(|(n, rp)| {
            let p = p.clone();
            let path = format!("/resource_providers/{rp}/aggregates");
            let body = json!({"resource_provider_generation": gen1(n), "aggregates": [agg(n)]});
            async move { p.call("1.39", http::Method::PUT, &path, Some(body)).await }
        });
        let results = futures_util::future::join_all(puts).await;
        for (n, (s, v, _)) in results.iter().enumerate() {
            assert_eq!(*s, 200, "aggregates {n}: {v}");
            assert_eq!(
                v["resource_provider_generation"],
                gen1(n) + 1,
                "aggregates {n}: {v}"
            );
        }
        // What each provider holds now.
        for (n, rp) in rps.iter().enumerate() {
            let base = format!("/resource_providers/{rp}");
            let v = p
                .ok("1.39", http::Method::GET, &format!("{base}/inventories"), None)
                .await;
            let want = if n % 2 == 0 { inv(n) } else { json!({}) };
            for (rc, i) in want.as_object().unwrap() {
                assert_eq!(v["inventories"][rc]["total"], i["total"], "provider {n}: {v}");
            }
            assert_eq!(
                v["inventories"].as_object().unwrap().len(),
                want.as_object().unwrap().len()
            );
            let v = p
                .ok("1.39", http::Method::GET, &format!("{base}/traits"), None)
                .await;
            let mut got: Vec<&str> = v["traits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            got.sort();
            assert_eq!(got, traits(n), "provider {n}");
            let v = p
                .ok("1.39", http::Method::GET, &format!("{base}/aggregates"), None)
                .await;
            assert_eq!(v["aggregates"], json!([agg(n)]), "provider {n}");
            assert_eq!(v["resource_provider_generation"], gen1(n) + 1, "provider {n}");
        }
        // The capacity index followed: the even providers (those with inventory) are the candidates.
        let v = p
            .ok(
                "1.39",
                http::Method::GET,
                "/allocation_candidates?resources=VCPU:1,MEMORY_MB:512",
                None,
            )
            .await;
        assert_eq!(v["allocation_requests"].as_array().unwrap().len(), 10, "{v}");
        // A second round, each at once again, that takes rows away: other traits (some removed), another
        // aggregate, and inventories replaced (MEMORY_MB removed from the even providers, DISK_GB alone on the
        // odd ones).
        let traits2 = |n: usize| match n % 3 {
            0 => vec!["HW_CPU_X86_AVX2"],
            1 => vec![],
            _ => vec!["STORAGE_DISK_SSD"],
        };
        let inv2 = |n: usize| {
            if n.is_multiple_of(2) {
                json!({"VCPU": {"total": 100 + n}})
            } else {
                json!({"DISK_GB": {"total": 50 + n}})
            }
        };
        let gen2 = |n: usize| gen1(n) + 1;
        let body = |what: &str, n: usize| match what {
            "traits" => json!({"traits": traits2(n)}),
            "aggregates" => json!({"aggregates": [agg(n + 1)]}),
            _ => json!({"inventories": inv2(n)}),
        };
        for (k, what) in ["traits", "aggregates", "inventories"].into_iter().enumerate() {
            let puts = rps.iter().enumerate().map(|(n, rp)| {
                let p = p.clone();
                let path = format!("/resource_providers/{rp}/{what}");
                let mut body = body(what, n);
                body["resource_provider_generation"] = json!(gen2(n) + k);
                async move { p.call("1.39", http::Method::PUT, &path, Some(body)).await }
            });
            for (n, (s, v, _)) in futures_util::future::join_all(puts).await.iter().enumerate() {
                assert_eq!(*s, 200, "{what} {n}: {v}");
                assert_eq!(
                    v["resource_provider_generation"],
                    gen2(n) + k + 1,
                    "{what} {n}: {v}"
                );
            }
        }
        for (n, rp) in rps.iter().enumerate() {
            let base = format!("/resource_providers/{rp}");
            let v = p
                .ok("1.39", http::Method::GET, &format!("{base}/inventories"), None)
                .await;
            let want = inv2(n);
            assert_eq!(
                v["inventories"].as_object().unwrap().len(),
                1,
                "provider {n}: {v}"
            );
            for (rc, i) in want.as_object().unwrap() {
                assert_eq!(v["inventories"][rc]["total"], i["total"], "provider {n}: {v}");
            }
            let v = p
                .ok("1.39", http::Method::GET, &format!("{base}/traits"), None)
                .await;
            assert_eq!(v["traits"], json!(traits2(n)), "provider {n}");
            let v = p
                .ok("1.39", http::Method::GET, &format!("{base}/aggregates"), None)
                .await;
            assert_eq!(v["aggregates"], json!([agg(n + 1)]), "provider {n}");
            assert_eq!(v["resource_provider_generation"], gen2(n) + 3, "provider {n}");
        }
        // A third round at once: the even providers' VCPU replaced by DISK_GB, where every other one has VCPU
        // allocated. Those are refused (409 inventory.inuse) and keep their inventory; the rest go through.
        let held = |n: usize| n.is_multiple_of(4);
        for rp in rps.iter().enumerate().filter(|(n, _)| held(*n)).map(|(_, rp)| rp) {
            let body = json!({"allocations": {rp.clone(): {"resources": {"VCPU": 1}}}, "project_id": uuid(),
                "user_id": uuid(), "consumer_generation": null, "consumer_type": "INSTANCE"});
            p.ok(
                "1.38",
                http::Method::PUT,
                &format!("/allocations/{}", uuid()),
                Some(body),
            )
            .await;
        }
        let mut gens = Vec::new();
        for rp in &rps {
            let v = p
                .ok(
                    "1.39",
                    http::Method::GET,
                    &format!("/resource_providers/{rp}"),
                    None,
                )
                .await;
            gens.push(v["generation"].as_i64().unwrap());
        }
        let evens: Vec<usize> = (0..rps.len()).filter(|n| n.is_multiple_of(2)).collect();
        let puts = evens.iter().map(|&n| {
            let p = p.clone();
            let path = format!("/resource_providers/{}/inventories", rps[n]);
            let body = json!({"resource_provider_generation": gens[n],
                "inventories": {"DISK_GB": {"total": 70 + n}}});
            async move { p.call("1.39", http::Method::PUT, &path, Some(body)).await }
        });
        for (&n, (s, v, _)) in evens.iter().zip(futures_util::future::join_all(puts).await) {
            let v2 = p
                .ok(
                    "1.39",
                    http::Method::GET,
                    &format!("/resource_providers/{}/inventories", rps[n]),
                    None,
                )
                .await;
            if held(n) {
                assert_eq!(
                    (s, code(&v)),
                    (409, "placement.inventory.inuse"),
                    "provider {n}: {v}"
                );
                assert_eq!(
                    v2["inventories"]["VCPU"]["total"],
                    json!(100 + n),
                    "provider {n}: {v2}"
                );
                assert_eq!(v2["resource_provider_generation"], gens[n], "provider {n}: {v2}");
            } else {
                assert_eq!(s, 200, "provider {n}: {v}");
                assert_eq!(
                    v2["inventories"],
                    json!({"DISK_GB": v2["inventories"]["DISK_GB"]}),
                    "{v2}"
                );
                assert_eq!(
                    v2["inventories"]["DISK_GB"]["total"],
                    json!(70 + n),
                    "provider {n}: {v2}"
                );
                assert_eq!(
                    v2["resource_provider_generation"],
                    gens[n] + 1,
                    "provider {n}: {v2}"
                );
            }
        }
        for (q, want) in [("VCPU:1,MEMORY_MB:512", 0), ("VCPU:1", 5), ("DISK_GB:1", 15)] {
            let v = p
                .ok(
                    "1.39",
                    http::Method::GET,
                    &format!("/allocation_candidates?resources={q}"),
                    None,
                )
                .await;
            assert_eq!(
                v["allocation_requests"].as_array().unwrap().len(),
                want,
                "{q}: {v}"
            );
        }
        c.stop().await;
    });
}

#[tokio::test]
async fn allocation_candidates() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let p = P {
            c: &c,
            token: c.admin_token().await,
        };
        let agg = uuid();
        let mk = |name: &'static str, parent: Option<String>| {
            let p = &p;
            async move {
                let mut body = json!({"name": name});
                if let Some(pp) = parent {
                    body["parent_provider_uuid"] = json!(pp);
                }
                p.ok("1.39", http::Method::POST, "/resource_providers", Some(body))
                    .await["uuid"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        };
        let setup = |rp: String, inv: Value, traits: Vec<&'static str>, aggs: Vec<String>| {
            let p = &p;
            async move {
                p.ok(
                    "1.39",
                    http::Method::PUT,
                    &format!("/resource_providers/{rp}/inventories"),
                    Some(json!({"resource_provider_generation": 0, "inventories": inv})),
                )
                .await;
                p.ok(
                    "1.39",
                    http::Method::PUT,
                    &format!("/resource_providers/{rp}/traits"),
                    Some(json!({"resource_provider_generation": 1, "traits": traits})),
                )
                .await;
                p.ok(
                    "1.39",
                    http::Method::PUT,
                    &format!("/resource_providers/{rp}/aggregates"),
                    Some(json!({"resource_provider_generation": 2, "aggregates": aggs})),
                )
                .await;
            }
        };
        p.ok("1.39", http::Method::PUT, "/traits/CUSTOM_PHYSNET1", None)
            .await;
        p.ok("1.39", http::Method::PUT, "/traits/CUSTOM_PHYSNET2", None)
            .await;
        let cn1 = mk("cn1", None).await;
        let pf0 = mk("cn1_pf0", Some(cn1.clone())).await;
        let pf1 = mk("cn1_pf1", Some(cn1.clone())).await;
        let cn2 = mk("cn2", None).await;
        let ss = mk("shared-disk", None).await;
        setup(
            cn1.clone(),
            json!({"VCPU": {"total": 8}, "MEMORY_MB": {"total": 4096}}),
            vec!["HW_CPU_X86_AVX2"],
            vec![agg.clone()],
        )
        .await;
        setup(
            pf0.clone(),
            json!({"SRIOV_NET_VF": {"total": 4}}),
            vec!["CUSTOM_PHYSNET1"],
            vec![],
        )
        .await;
        setup(
            pf1.clone(),
            json!({"SRIOV_NET_VF": {"total": 4}}),
            vec!["CUSTOM_PHYSNET2"],
            vec![],
        )
        .await;
        setup(
            cn2.clone(),
            json!({"VCPU": {"total": 2}, "MEMORY_MB": {"total": 1024}}),
            vec!["COMPUTE_STATUS_DISABLED"],
            vec![],
        )
        .await;
        setup(
            ss.clone(),
            json!({"DISK_GB": {"total": 1000}}),
            vec!["MISC_SHARES_VIA_AGGREGATE"],
            vec![agg.clone()],
        )
        .await;

        let ac = |mv: &'static str, q: String| {
            let p = &p;
            async move {
                p.call(
                    mv,
                    http::Method::GET,
                    &format!("/allocation_candidates?{q}"),
                    None,
                )
                .await
            }
        };
        let hosts = |v: &Value| {
            let mut h: Vec<Vec<String>> = v["allocation_requests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let mut k: Vec<String> = r["allocations"].as_object().unwrap().keys().cloned().collect();
                    k.sort();
                    k
                })
                .collect();
            h.sort();
            h
        };
        let sorted = |mut v: Vec<&String>| {
            v.sort();
            v.into_iter().cloned().collect::<Vec<_>>()
        };
        // Compute + memory from a root, disk from the sharing provider in its aggregate.
        let (s, v, _) = ac("1.39", "resources=VCPU:1,MEMORY_MB:512,DISK_GB:10".into()).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(hosts(&v), vec![sorted(vec![&cn1, &ss])]);
        assert_eq!(
            v["allocation_requests"][0]["allocations"][&ss]["resources"]["DISK_GB"],
            10
        );
        assert_eq!(v["provider_summaries"][&cn1]["resources"]["VCPU"]["capacity"], 8);
        assert_eq!(
            v["provider_summaries"][&pf0]["parent_provider_uuid"],
            cn1.as_str(),
            "whole trees are summarised"
        );
        // Forbidden traits, limit, root_required, member_of, in_tree.
        let (_, v, _) = ac("1.39", "resources=VCPU:1,MEMORY_MB:512".into()).await;
        assert_eq!(hosts(&v).len(), 2);
        let (_, v, _) = ac("1.39", "resources=VCPU:1,MEMORY_MB:512&limit=1".into()).await;
        assert_eq!(hosts(&v).len(), 1);
        let (_, v, _) = ac(
            "1.39",
            "resources=VCPU:1,MEMORY_MB:512&required=!COMPUTE_STATUS_DISABLED".into(),
        )
        .await;
        assert_eq!(hosts(&v), vec![vec![cn1.clone()]]);
        let (_, v, _) = ac("1.39", "resources=VCPU:1&root_required=HW_CPU_X86_AVX2".into()).await;
        assert_eq!(hosts(&v), vec![vec![cn1.clone()]]);
        let (_, v, _) = ac("1.39", format!("resources=VCPU:1&member_of={agg}")).await;
        assert_eq!(hosts(&v), vec![vec![cn1.clone()]]);
        let (_, v, _) = ac("1.39", format!("resources=VCPU:1&in_tree={cn2}")).await;
        assert_eq!(hosts(&v), vec![vec![cn2.clone()]]);
        let (_, v, _) = ac("1.39", "resources=VCPU:3".into()).await;
        assert_eq!(hosts(&v), vec![vec![cn1.clone()]], "cn2 has only 2 VCPU");
        // Granular groups and group_policy.
        let q = "resources=VCPU:1&resources_A=SRIOV_NET_VF:1&required_A=CUSTOM_PHYSNET1&resources_B=SRIOV_NET_VF:1";
        let (s, _, _) = ac("1.39", q.into()).await;
        assert_eq!(s, 400, "group_policy is required with two groups");
        let (_, v, _) = ac("1.39", format!("{q}&group_policy=isolate")).await;
        assert_eq!(v["allocation_requests"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["allocation_requests"][0]["mappings"]["_A"], json!([pf0]));
        assert_eq!(v["allocation_requests"][0]["mappings"]["_B"], json!([pf1]));
        let (_, v, _) = ac("1.39", format!("{q}&group_policy=none")).await;
        assert_eq!(v["allocation_requests"].as_array().unwrap().len(), 2);
        // same_subtree: the VF's provider lies under the compute provider.
        let (_, v, _) = ac("1.39", "resources_X=SRIOV_NET_VF:1&required_X=CUSTOM_PHYSNET1&resources_Y=VCPU:1&same_subtree=_X,_Y&group_policy=none".into()).await;
        assert_eq!(v["allocation_requests"].as_array().unwrap().len(), 1, "{v}");
        // Nested providers only from 1.29.
        let (_, v, _) = ac("1.28", "resources=SRIOV_NET_VF:1".into()).await;
        assert_eq!(v["allocation_requests"].as_array().unwrap().len(), 0);
        let (_, v, _) = ac("1.29", "resources=SRIOV_NET_VF:1".into()).await;
        assert_eq!(v["allocation_requests"].as_array().unwrap().len(), 2);
        // Old formats: list-form allocations, summaries with requested classes only.
        let (_, v, _) = ac("1.10", "resources=VCPU:1".into()).await;
        assert!(v["allocation_requests"][0]["allocations"].is_array(), "{v}");
        assert!(v["provider_summaries"][&cn1]["resources"]
            .get("MEMORY_MB")
            .is_none());
        assert!(v["provider_summaries"][&cn1].get("traits").is_none());
        // Bad input.
        for q in [
            "resources=NOPE:1",
            "resources=VCPU:0",
            "resources=VCPU:1&required=CUSTOM_NOPE",
            "resources=VCPU:1&limit=0",
            "limit=3",
        ] {
            let (s, v, _) = ac("1.39", q.into()).await;
            assert_eq!(s, 400, "{q}: {v}");
        }
        let (s, _, _) = ac("1.24", "resources1=VCPU:1".into()).await;
        assert_eq!(s, 400, "granular groups need 1.25");
        // Claims are seen at once: fill cn1's VCPUs, then only cn2 offers VCPU.
        p.ok(
            "1.38",
            http::Method::PUT,
            &format!("/allocations/{}", uuid()),
            Some(json!({
            "allocations": {cn1.clone(): {"resources": {"VCPU": 8}}}, "project_id": uuid(), "user_id": uuid(),
            "consumer_generation": null, "consumer_type": "INSTANCE"})),
        )
        .await;
        let (_, v, _) = ac("1.39", "resources=VCPU:1".into()).await;
        assert_eq!(hosts(&v), vec![vec![cn2.clone()]]);
        assert_eq!(v["provider_summaries"][&cn2]["resources"]["VCPU"]["used"], 0);
        c.stop().await;
    });
}

#[tokio::test]
async fn reshaper_moves_inventory_and_allocations_atomically() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let p = P {
            c: &c,
            token: c.admin_token().await,
        };
        let cn = p.provider(json!({"name": "cn"})).await;
        let numa = p
            .provider(json!({"name": "numa0", "parent_provider_uuid": cn}))
            .await;
        p.ok("1.39", http::Method::PUT, &format!("/resource_providers/{cn}/inventories"),
            Some(json!({"resource_provider_generation": 0, "inventories": {"VCPU": {"total": 8}, "MEMORY_MB": {"total": 1024}}}))).await;
        let (consumer, pr, us) = (uuid(), uuid(), uuid());
        p.ok("1.38", http::Method::PUT, &format!("/allocations/{consumer}"), Some(json!({
            "allocations": {cn.clone(): {"resources": {"VCPU": 2, "MEMORY_MB": 256}}}, "project_id": pr, "user_id": us,
            "consumer_generation": null, "consumer_type": "INSTANCE"}))).await;
        let gen = |rp: String| {
            let p = &p;
            async move {
                p.ok(
                    "1.39",
                    http::Method::GET,
                    &format!("/resource_providers/{rp}"),
                    None,
                )
                .await["generation"]
                    .as_i64()
                    .unwrap()
            }
        };
        let body = |g_cn: i64, g_numa: i64, move_alloc: bool| {
            let allocations = if move_alloc {
                json!({consumer.clone(): {"allocations": {cn.clone(): {"resources": {"MEMORY_MB": 256}},
                    numa.clone(): {"resources": {"VCPU": 2}}}, "project_id": pr, "user_id": us,
                    "consumer_generation": 1, "consumer_type": "INSTANCE"}})
            } else {
                json!({})
            };
            json!({
                "inventories": {
                    cn.clone(): {"resource_provider_generation": g_cn, "inventories": {"MEMORY_MB": {"total": 1024}}},
                    numa.clone(): {"resource_provider_generation": g_numa, "inventories": {"VCPU": {"total": 8}}},
                },
                "allocations": allocations,
            })
        };
        let (g_cn, g_numa) = (gen(cn.clone()).await, gen(numa.clone()).await);
        // Moving the inventory away from an allocation that stays is refused, and nothing changes.
        let (s, v, _) = p
            .call(
                "1.38",
                http::Method::POST,
                "/reshaper",
                Some(body(g_cn, g_numa, false)),
            )
            .await;
        assert_eq!((s, code(&v)), (409, "placement.inventory.inuse"), "{v}");
        let (s, v, _) = p
            .call(
                "1.38",
                http::Method::POST,
                "/reshaper",
                Some(body(g_cn + 5, g_numa, true)),
            )
            .await;
        assert_eq!((s, code(&v)), (409, "placement.concurrent_update"));
        let mut bad_rp = body(g_cn, g_numa, true);
        bad_rp["inventories"][uuid()] = json!({"resource_provider_generation": 0, "inventories": {}});
        let (s, v, _) = p
            .call("1.38", http::Method::POST, "/reshaper", Some(bad_rp))
            .await;
        assert_eq!((s, code(&v)), (400, "placement.resource_provider.not_found"));
        let (s, _, _) = p
            .call(
                "1.29",
                http::Method::POST,
                "/reshaper",
                Some(body(g_cn, g_numa, true)),
            )
            .await;
        assert_eq!(s, 404, "reshaper needs 1.30");
        assert_eq!(gen(cn.clone()).await, g_cn);
        p.ok(
            "1.38",
            http::Method::POST,
            "/reshaper",
            Some(body(g_cn, g_numa, true)),
        )
        .await;
        let v = p
            .ok(
                "1.38",
                http::Method::GET,
                &format!("/allocations/{consumer}"),
                None,
            )
            .await;
        assert_eq!(v["allocations"][&numa]["resources"]["VCPU"], 2);
        assert_eq!(v["consumer_generation"], 2);
        let v = p
            .ok(
                "1.39",
                http::Method::GET,
                &format!("/resource_providers/{cn}/inventories"),
                None,
            )
            .await;
        assert!(v["inventories"].get("VCPU").is_none());
        let (_, v, _) = p
            .call(
                "1.39",
                http::Method::GET,
                "/allocation_candidates?resources=VCPU:6,MEMORY_MB:512",
                None,
            )
            .await;
        assert_eq!(v["allocation_requests"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["provider_summaries"][&numa]["resources"]["VCPU"]["used"], 2);
        c.stop().await;
    });
}

#[tokio::test]
async fn custom_classes_and_traits_delete_only_when_unused() {
    let c = Cloud::start(&Backend::Sqlite).await;
    let p = P {
        c: &c,
        token: c.admin_token().await,
    };
    let (s, _, _) = p
        .call("1.39", http::Method::PUT, "/traits/NOT_CUSTOM", None)
        .await;
    assert_eq!(s, 400);
    p.ok("1.39", http::Method::PUT, "/traits/CUSTOM_X", None).await;
    p.ok("1.39", http::Method::PUT, "/resource_classes/CUSTOM_Y", None)
        .await;
    let (s, _, _) = p
        .call("1.39", http::Method::PUT, "/resource_classes/CUSTOM_Y", None)
        .await;
    assert_eq!(s, 204, "exists");
    let rp = p.provider(json!({"name": "r"})).await;
    p.ok(
        "1.39",
        http::Method::PUT,
        &format!("/resource_providers/{rp}/traits"),
        Some(json!({"resource_provider_generation": 0, "traits": ["CUSTOM_X"]})),
    )
    .await;
    p.ok(
        "1.39",
        http::Method::PUT,
        &format!("/resource_providers/{rp}/inventories"),
        Some(json!({"resource_provider_generation": 1, "inventories": {"CUSTOM_Y": {"total": 1}}})),
    )
    .await;
    for (path, status) in [
        ("/traits/HW_CPU_X86_AVX2", 400),
        ("/traits/CUSTOM_X", 409),
        ("/traits/CUSTOM_NOPE", 404),
        ("/resource_classes/VCPU", 400),
        ("/resource_classes/CUSTOM_Y", 409),
    ] {
        let (s, v, _) = p.call("1.39", http::Method::DELETE, path, None).await;
        assert_eq!(s, status, "{path}: {v}");
    }
    p.ok(
        "1.39",
        http::Method::DELETE,
        &format!("/resource_providers/{rp}"),
        None,
    )
    .await;
    p.ok("1.39", http::Method::DELETE, "/traits/CUSTOM_X", None).await;
    p.ok("1.39", http::Method::DELETE, "/resource_classes/CUSTOM_Y", None)
        .await;
    let (s, _, _) = p
        .call("1.39", http::Method::GET, "/resource_classes/CUSTOM_Y", None)
        .await;
    assert_eq!(s, 404);
    c.stop().await;
}

/// Another process's capacity index (another API worker, or a host on the same database) follows every write
/// made through this one: created, changed and deleted providers; on PostgreSQL also after its change log was
/// pruned past the reader's snapshot (a full reload).
#[tokio::test]
async fn another_process_index_follows_every_write() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let p = P {
            c: &c,
            token: c.admin_token().await,
        };
        let db = &c.aio.placement.service.db;
        let other = tessera_placement::index::IndexHandle::default();
        let vcpu_total = |ix: &tessera_placement::index::Index, rp: &str| {
            let n = ix.node(ix.by_uuid_str(rp).unwrap());
            n.inv(ix.classes.id("VCPU").unwrap()).map(|i| i.total)
        };
        assert!(other.fresh(db).await.unwrap().loaded);
        let rp = p.provider(json!({"name": "elsewhere"})).await;
        let put = |total: i64, gen: i64| json!({"resource_provider_generation": gen, "inventories": {"VCPU": {"total": total}}});
        let v = p
            .ok(
                "1.39",
                http::Method::PUT,
                &format!("/resource_providers/{rp}/inventories"),
                Some(put(8, 0)),
            )
            .await;
        let ix = other.fresh(db).await.unwrap();
        assert_eq!(vcpu_total(&ix, &rp), Some(8), "{}", b.name());
        let gen = v["resource_provider_generation"].as_i64().unwrap();
        p.ok(
            "1.39",
            http::Method::PUT,
            &format!("/resource_providers/{rp}/inventories"),
            Some(put(16, gen)),
        )
        .await;
        assert_eq!(vcpu_total(&other.fresh(db).await.unwrap(), &rp), Some(16));
        if db.dialect() == tessera_db::Dialect::Postgres {
            // Pruned down to the newest record: what the reader has not seen may be gone, so it reloads whole.
            p.ok(
                "1.39",
                http::Method::PUT,
                &format!("/resource_providers/{rp}/inventories"),
                Some(put(24, gen + 1)),
            )
            .await;
            tessera_placement::store::prune_change_log(db, 0).await.unwrap();
            assert_eq!(vcpu_total(&other.fresh(db).await.unwrap(), &rp), Some(24));
        }
        p.ok(
            "1.39",
            http::Method::DELETE,
            &format!("/resource_providers/{rp}"),
            None,
        )
        .await;
        let ix = other.fresh(db).await.unwrap();
        assert!(!ix.by_uuid_str(&rp).is_some_and(|i| ix.node(i).alive));
        c.stop().await;
    });
}

/// A candidates answer too big for one buffer streams in frames: it must still be one valid document with
/// every candidate and summary. The providers are written straight into the database (through the API it
/// would take a minute), then the revision bump makes the capacity index reload them.
#[tokio::test]
async fn large_candidate_answers_stream_whole() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let p = P {
            c: &c,
            token: c.admin_token().await,
        };
        let db = &c.aio.placement.service.db;
        let n = 2_300usize;
        let mut tx = db.begin().await.unwrap();
        let mut uuids = Vec::new();
        for i in 0..n {
            let u = uuid();
            sqlx::query(&db.sql(
                "INSERT INTO resource_providers (uuid, name, generation, parent_uuid, root_uuid, created_at, updated_at) \
                 VALUES (?, ?, 1, NULL, ?, 0, 0)",
            ))
            .bind(&u)
            .bind(format!("bulk-{i:05}"))
            .bind(&u)
            .execute(&mut *tx)
            .await
            .unwrap();
            for (rc, total) in [("VCPU", 8i64), ("MEMORY_MB", 4096)] {
                sqlx::query(&db.sql(
                    "INSERT INTO inventories (rp_uuid, resource_class, total, reserved, min_unit, max_unit, step_size, \
                     allocation_ratio) VALUES (?, ?, ?, 0, 1, ?, 1, 1.0)",
                ))
                .bind(&u)
                .bind(rc)
                .bind(total)
                .bind(total)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            uuids.push(u);
        }
        // A full reload (the change records do not name these providers): on PostgreSQL, records pruned up to
        // this transaction; elsewhere, a revision far ahead of the records.
        let reload = if db.dialect() == tessera_db::Dialect::Postgres {
            "UPDATE placement_revision SET pruned_xid = CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT) WHERE id = 1"
        } else {
            "UPDATE placement_revision SET revision = revision + 100000 WHERE id = 1"
        };
        sqlx::query(reload).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        let v = p
            .ok(
                "1.36",
                http::Method::GET,
                "/allocation_candidates?resources=VCPU:1,MEMORY_MB:512",
                None,
            )
            .await;
        let reqs = v["allocation_requests"].as_array().unwrap();
        assert_eq!(reqs.len(), n, "{}", b.name());
        let sums = v["provider_summaries"].as_object().unwrap();
        assert_eq!(sums.len(), n);
        for u in &uuids {
            assert_eq!(sums[u]["resources"]["VCPU"]["capacity"], 8);
            assert_eq!(sums[u]["resources"]["MEMORY_MB"]["used"], 0);
        }
        // With a limit the same query is small again (one buffer).
        let v = p
            .ok(
                "1.36",
                http::Method::GET,
                "/allocation_candidates?resources=VCPU:1&limit=3",
                None,
            )
            .await;
        assert_eq!(v["allocation_requests"].as_array().unwrap().len(), 3);
        c.stop().await;
    });
}
