//! Identity API, end to end over HTTP against an in-process all-in-one, on every configured database backend.

#![allow(clippy::unwrap_used)]

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tessera_test_harness::{each_backend, Backend, Cloud, ADMIN_PASSWORD};

fn keystone_error(r: &tessera_test_harness::Resp, code: u16) {
    assert_eq!(r.status.as_u16(), code, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{:?}", r.body);
    assert!(r.body["error"]["title"].is_string(), "{:?}", r.body);
    assert!(r.body["error"]["message"].is_string(), "{:?}", r.body);
}

#[tokio::test]
async fn discovery_and_token_lifecycle() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let r = c.req(Method::GET, "/", None, None).await;
        assert_eq!(r.status, StatusCode::MULTIPLE_CHOICES);
        assert_eq!(r.body["versions"]["values"][0]["id"], "v3.14");
        let r = c.req(Method::GET, "/v3", None, None).await;
        assert_eq!(r.body["version"]["status"], "stable");

        let r = c.login("admin", ADMIN_PASSWORD, Some("admin")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let tok = r.subject_token();
        let t = &r.body["token"];
        assert_eq!(t["methods"], json!(["password"]));
        assert_eq!(t["project"]["name"], "admin");
        let roles: Vec<&str> = t["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for want in ["admin", "manager", "member", "reader"] {
            assert!(roles.contains(&want), "implied roles missing: {roles:?}");
        }
        assert!(t["catalog"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["type"] == "identity"));
        assert_eq!(t["audit_ids"].as_array().unwrap()[0].as_str().unwrap().len(), 22);

        // Validate, check, catalog, then revoke: the token fails everywhere.
        let v = c
            .req_with(
                Method::GET,
                "/v3/auth/tokens",
                Some(&tok),
                None,
                &[("X-Subject-Token", &tok)],
            )
            .await;
        assert_eq!(v.status, StatusCode::OK);
        assert_eq!(v.body["token"]["user"]["name"], "admin");
        let v = c
            .req_with(
                Method::GET,
                "/v3/auth/tokens?nocatalog",
                Some(&tok),
                None,
                &[("X-Subject-Token", &tok)],
            )
            .await;
        assert!(v.body["token"].get("catalog").is_none());
        let h = c
            .req_with(
                Method::HEAD,
                "/v3/auth/tokens",
                Some(&tok),
                None,
                &[("X-Subject-Token", &tok)],
            )
            .await;
        assert_eq!(h.status, StatusCode::OK);
        let cat = c.req(Method::GET, "/v3/auth/catalog", Some(&tok), None).await;
        assert_eq!(cat.body["catalog"][0]["endpoints"].as_array().unwrap().len(), 3);
        let sys = c.req(Method::GET, "/v3/auth/system", Some(&tok), None).await;
        assert_eq!(sys.body["system"], json!([{"all": true}]));
        let other = c.admin_token().await;
        let d = c
            .req_with(
                Method::DELETE,
                "/v3/auth/tokens",
                Some(&other),
                None,
                &[("X-Subject-Token", &tok)],
            )
            .await;
        assert_eq!(d.status, StatusCode::NO_CONTENT);
        let v = c
            .req_with(
                Method::GET,
                "/v3/auth/tokens",
                Some(&other),
                None,
                &[("X-Subject-Token", &tok)],
            )
            .await;
        keystone_error(&v, 404);
        let u = c.req(Method::GET, "/v3/users", Some(&tok), None).await;
        keystone_error(&u, 401);
        assert!(u
            .headers
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("Keystone uri="));
        // The other token still works.
        assert_eq!(
            c.req(Method::GET, "/v3/users", Some(&other), None).await.status,
            StatusCode::OK
        );

        // Tampered and garbage tokens.
        let mut bad = other.clone().into_bytes();
        let i = bad.len() - 10;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        keystone_error(&c.req(Method::GET, "/v3/users", Some(&bad), None).await, 401);
        keystone_error(
            &c.req(Method::GET, "/v3/users", Some("nonsense"), None).await,
            401,
        );
        keystone_error(&c.req(Method::GET, "/v3/users", None, None).await, 401);

        // Scopes: unscoped, explicit unscoped, domain, system, rescope by token.
        let r = c.login("admin", ADMIN_PASSWORD, None).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert!(r.body["token"].get("roles").is_none() && r.body["token"].get("catalog").is_none());
        let unscoped = r.subject_token();
        let body = |scope: Value| json!({"auth": {"identity": {"methods": ["token"], "token": {"id": unscoped}}, "scope": scope}});
        let r = c
            .req(
                Method::POST,
                "/v3/auth/tokens",
                None,
                Some(body(json!({"system": {"all": true}}))),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert_eq!(r.body["token"]["system"]["all"], true);
        assert_eq!(r.body["token"]["methods"], json!(["password", "token"]));
        assert_eq!(r.body["token"]["audit_ids"].as_array().unwrap().len(), 2);
        let r = c
            .req(
                Method::POST,
                "/v3/auth/tokens",
                None,
                Some(body(
                    json!({"project": {"name": "admin", "domain": {"name": "Default"}}}),
                )),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        // No role on the domain: 401.
        let r = c
            .req(
                Method::POST,
                "/v3/auth/tokens",
                None,
                Some(body(json!({"domain": {"id": "default"}}))),
            )
            .await;
        keystone_error(&r, 401);
        let r = c
            .req(
                Method::POST,
                "/v3/auth/tokens",
                None,
                Some(body(json!("unscoped"))),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        c.stop().await;
    });
}

#[tokio::test]
async fn expired_tokens_are_refused_unless_allowed() {
    let c = Cloud::start(&Backend::Sqlite).await;
    let admin = c.admin_token().await;
    let id = &c.aio.identity.identity;
    let user = c
        .req(Method::GET, "/v3/users?name=admin", Some(&admin), None)
        .await
        .body["users"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut p = tessera_identity::fernet::Payload(
        0,
        user,
        2,
        None,
        0,
        vec![tessera_identity::fernet::new_audit_id()],
        None,
        0,
    );
    let now = tessera_types::now_epoch_micros();
    p.7 = now - 7_200_000_000;
    p.4 = now - 3_600_000_000;
    let old = id.keys.encrypt(&p.encode(), (p.7 / 1_000_000) as u64);
    keystone_error(
        &c.req(Method::GET, "/v3/auth/catalog", Some(&old), None).await,
        401,
    );
    let v = c
        .req_with(
            Method::GET,
            "/v3/auth/tokens",
            Some(&admin),
            None,
            &[("X-Subject-Token", &old)],
        )
        .await;
    keystone_error(&v, 404);
    let v = c
        .req_with(
            Method::GET,
            "/v3/auth/tokens?allow_expired=1",
            Some(&admin),
            None,
            &[("X-Subject-Token", &old)],
        )
        .await;
    assert_eq!(v.status, StatusCode::OK, "{:?}", v.body);
    c.stop().await;
}

#[tokio::test]
async fn crud_assignments_and_member_policy() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let admin = c.admin_token().await;
        let (pid, uid) = c.project_with_member(&admin, "demo", "alice", "pw1").await;
        // Duplicate names conflict.
        let r = c
            .req(
                Method::POST,
                "/v3/projects",
                Some(&admin),
                Some(json!({"project": {"name": "demo"}})),
            )
            .await;
        keystone_error(&r, 409);
        let r = c
            .req(
                Method::POST,
                "/v3/users",
                Some(&admin),
                Some(json!({"user": {"name": "alice"}})),
            )
            .await;
        keystone_error(&r, 409);
        // Filters.
        let r = c
            .req(Method::GET, "/v3/projects?name=demo", Some(&admin), None)
            .await;
        assert_eq!(r.body["projects"].as_array().unwrap().len(), 1);
        assert_eq!(r.body["projects"][0]["parent_id"], "default");
        let r = c
            .req(Method::GET, "/v3/users?enabled=false", Some(&admin), None)
            .await;
        assert_eq!(r.body["users"].as_array().unwrap().len(), 0);
        // Assignments, effective and with names.
        let r = c
            .req(
                Method::GET,
                &format!("/v3/role_assignments?user.id={uid}&include_names=1"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(
            r.body["role_assignments"].as_array().unwrap().len(),
            1,
            "{:?}",
            r.body
        );
        assert_eq!(r.body["role_assignments"][0]["role"]["name"], "member");
        assert_eq!(r.body["role_assignments"][0]["scope"]["project"]["name"], "demo");
        let r = c
            .req(
                Method::GET,
                &format!("/v3/role_assignments?user.id={uid}&effective"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(
            r.body["role_assignments"].as_array().unwrap().len(),
            2,
            "member implies reader: {:?}",
            r.body
        );

        // The member: own project only, 403 on admin routes.
        let r = c.login("alice", "pw1", Some("demo")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let roles: Vec<&str> = r.body["token"]["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(roles.contains(&"member") && roles.contains(&"reader") && !roles.contains(&"admin"));
        let m = r.subject_token();
        keystone_error(&c.req(Method::GET, "/v3/users", Some(&m), None).await, 403);
        keystone_error(&c.req(Method::GET, "/v3/projects", Some(&m), None).await, 403);
        keystone_error(
            &c.req(
                Method::POST,
                "/v3/projects",
                Some(&m),
                Some(json!({"project": {"name": "x"}})),
            )
            .await,
            403,
        );
        keystone_error(&c.req(Method::GET, "/v3/services", Some(&m), None).await, 403);
        keystone_error(&c.req(Method::GET, "/v3/roles", Some(&m), None).await, 403);
        keystone_error(
            &c.req(Method::GET, "/v3/role_assignments", Some(&m), None).await,
            403,
        );
        keystone_error(
            &c.req(
                Method::POST,
                "/v3/regions",
                Some(&m),
                Some(json!({"region": {"id": "X"}})),
            )
            .await,
            403,
        );
        assert_eq!(
            c.req(Method::GET, "/v3/regions", Some(&m), None).await.status,
            StatusCode::OK
        );
        let admin_project = c
            .req(Method::GET, "/v3/projects?name=admin", Some(&admin), None)
            .await
            .body["projects"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        keystone_error(
            &c.req(
                Method::GET,
                &format!("/v3/projects/{admin_project}"),
                Some(&m),
                None,
            )
            .await,
            403,
        );
        assert_eq!(
            c.req(Method::GET, &format!("/v3/projects/{pid}"), Some(&m), None)
                .await
                .status,
            StatusCode::OK
        );
        let r = c
            .req(Method::GET, &format!("/v3/users/{uid}/projects"), Some(&m), None)
            .await;
        let names: Vec<&str> = r.body["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["demo"]);
        let r = c.req(Method::GET, "/v3/auth/projects", Some(&m), None).await;
        assert_eq!(r.body["projects"].as_array().unwrap().len(), 1);
        assert_eq!(
            c.req(Method::GET, &format!("/v3/users/{uid}"), Some(&m), None)
                .await
                .status,
            StatusCode::OK
        );
        // Not allowed to validate someone else's token.
        let v = c
            .req_with(
                Method::GET,
                "/v3/auth/tokens",
                Some(&m),
                None,
                &[("X-Subject-Token", &admin)],
            )
            .await;
        keystone_error(&v, 403);

        // Removing the role kills the member's project token at once.
        let rid = c
            .req(Method::GET, "/v3/roles?name=member", Some(&admin), None)
            .await
            .body["roles"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let d = c
            .req(
                Method::DELETE,
                &format!("/v3/projects/{pid}/users/{uid}/roles/{rid}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(d.status, StatusCode::NO_CONTENT);
        keystone_error(&c.req(Method::GET, "/v3/auth/catalog", Some(&m), None).await, 401);
        keystone_error(&c.login("alice", "pw1", Some("demo")).await, 401);

        // Password change by the admin revokes old tokens; the new password works.
        let g = c
            .req(
                Method::PUT,
                &format!("/v3/projects/{pid}/users/{uid}/roles/{rid}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(g.status, StatusCode::NO_CONTENT);
        let old = c.login("alice", "pw1", Some("demo")).await.subject_token();
        let r = c
            .req(
                Method::PATCH,
                &format!("/v3/users/{uid}"),
                Some(&admin),
                Some(json!({"user": {"password": "pw2"}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body["user"].get("password").is_none());
        keystone_error(
            &c.req(Method::GET, "/v3/auth/catalog", Some(&old), None).await,
            401,
        );
        keystone_error(&c.login("alice", "pw1", Some("demo")).await, 401);
        let new = c.login("alice", "pw2", Some("demo")).await;
        assert_eq!(new.status, StatusCode::CREATED);
        // Self-service change needs the original password.
        let r = c
            .req(
                Method::POST,
                &format!("/v3/users/{uid}/password"),
                None,
                Some(json!({"user": {"password": "pw3", "original_password": "wrong"}})),
            )
            .await;
        keystone_error(&r, 401);
        let r = c
            .req(
                Method::POST,
                &format!("/v3/users/{uid}/password"),
                None,
                Some(json!({"user": {"password": "pw3", "original_password": "pw2"}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(
            c.login("alice", "pw3", Some("demo")).await.status,
            StatusCode::CREATED
        );

        // Disabled project: tokens fail.
        let t = c.login("alice", "pw3", Some("demo")).await.subject_token();
        c.req(
            Method::PATCH,
            &format!("/v3/projects/{pid}"),
            Some(&admin),
            Some(json!({"project": {"enabled": false}})),
        )
        .await;
        keystone_error(&c.req(Method::GET, "/v3/auth/catalog", Some(&t), None).await, 401);
        // Delete project and user.
        assert_eq!(
            c.req(Method::DELETE, &format!("/v3/projects/{pid}"), Some(&admin), None)
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            c.req(Method::DELETE, &format!("/v3/users/{uid}"), Some(&admin), None)
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        keystone_error(
            &c.req(Method::GET, &format!("/v3/users/{uid}"), Some(&admin), None)
                .await,
            404,
        );
        c.stop().await;
    });
}

#[tokio::test]
async fn groups_domains_catalog_and_app_creds() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let admin = c.admin_token().await;
        let (pid, uid) = c.project_with_member(&admin, "p1", "bob", "pw").await;
        // Group grants reach members.
        let g = c
            .req(
                Method::POST,
                "/v3/groups",
                Some(&admin),
                Some(json!({"group": {"name": "ops"}})),
            )
            .await;
        let gid = g.body["group"]["id"].as_str().unwrap().to_string();
        let p2 = c
            .req(
                Method::POST,
                "/v3/projects",
                Some(&admin),
                Some(json!({"project": {"name": "p2", "parent_id": pid}})),
            )
            .await;
        assert_eq!(p2.body["project"]["parent_id"], pid.as_str());
        let p2id = p2.body["project"]["id"].as_str().unwrap().to_string();
        keystone_error(
            &c.req(Method::DELETE, &format!("/v3/projects/{pid}"), Some(&admin), None)
                .await,
            403,
        );
        let reader = c
            .req(Method::GET, "/v3/roles?name=reader", Some(&admin), None)
            .await
            .body["roles"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            c.req(
                Method::PUT,
                &format!("/v3/groups/{gid}/users/{uid}"),
                Some(&admin),
                None
            )
            .await
            .status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            c.req(
                Method::PUT,
                &format!("/v3/projects/{p2id}/groups/{gid}/roles/{reader}"),
                Some(&admin),
                None
            )
            .await
            .status,
            StatusCode::NO_CONTENT
        );
        let r = c.login("bob", "pw", Some("p2")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert_eq!(r.body["token"]["roles"][0]["name"], "reader");
        let r = c
            .req(
                Method::GET,
                &format!("/v3/role_assignments?effective&user.id={uid}"),
                Some(&admin),
                None,
            )
            .await;
        assert!(r.body["role_assignments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["scope"]["project"]["id"] == p2id.as_str()));

        // Domains must be disabled before deletion; everything in them goes.
        let d = c
            .req(
                Method::POST,
                "/v3/domains",
                Some(&admin),
                Some(json!({"domain": {"name": "other"}})),
            )
            .await;
        let did = d.body["domain"]["id"].as_str().unwrap().to_string();
        c.req(
            Method::POST,
            "/v3/users",
            Some(&admin),
            Some(json!({"user": {"name": "carol", "domain_id": did}})),
        )
        .await;
        keystone_error(
            &c.req(Method::DELETE, &format!("/v3/domains/{did}"), Some(&admin), None)
                .await,
            403,
        );
        c.req(
            Method::PATCH,
            &format!("/v3/domains/{did}"),
            Some(&admin),
            Some(json!({"domain": {"enabled": false}})),
        )
        .await;
        assert_eq!(
            c.req(Method::DELETE, &format!("/v3/domains/{did}"), Some(&admin), None)
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            c.req(
                Method::GET,
                &format!("/v3/users?domain_id={did}"),
                Some(&admin),
                None
            )
            .await
            .body["users"],
            json!([])
        );

        // Regions, services, endpoints, and the catalog with project templates.
        let r = c
            .req(
                Method::POST,
                "/v3/regions",
                Some(&admin),
                Some(json!({"region": {"id": "RegionTwo"}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        keystone_error(
            &c.req(
                Method::POST,
                "/v3/regions",
                Some(&admin),
                Some(json!({"region": {"id": "RegionTwo"}})),
            )
            .await,
            409,
        );
        let s = c
            .req(
                Method::POST,
                "/v3/services",
                Some(&admin),
                Some(json!({"service": {"type": "compute-legacy", "name": "nova-legacy"}})),
            )
            .await;
        let sid = s.body["service"]["id"].as_str().unwrap().to_string();
        let e = c.req(Method::POST, "/v3/endpoints", Some(&admin), Some(json!({"endpoint": {
            "service_id": sid, "interface": "public", "region_id": "RegionTwo", "url": "http://127.0.0.1:8774/v2.1/$(project_id)s"}}))).await;
        assert_eq!(e.status, StatusCode::CREATED, "{:?}", e.body);
        let t = c.login("bob", "pw", Some("p1")).await;
        let cat = &t.body["token"]["catalog"];
        let compute = cat
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["type"] == "compute-legacy")
            .unwrap();
        assert_eq!(
            compute["endpoints"][0]["url"],
            format!("http://127.0.0.1:8774/v2.1/{pid}")
        );
        keystone_error(
            &c.req(Method::DELETE, "/v3/regions/RegionTwo", Some(&admin), None)
                .await,
            403,
        );
        let bad = c
            .req(
                Method::POST,
                "/v3/endpoints",
                Some(&admin),
                Some(json!({"endpoint": {"service_id": sid, "interface": "bogus", "url": "http://x"}})),
            )
            .await;
        keystone_error(&bad, 400);

        // Application credentials: created with a project token, authenticate with id or name, roles subset.
        let bob = t.subject_token();
        let ac = c
            .req(
                Method::POST,
                &format!("/v3/users/{uid}/application_credentials"),
                Some(&bob),
                Some(json!({"application_credential": {"name": "ci", "roles": [{"name": "reader"}]}})),
            )
            .await;
        assert_eq!(ac.status, StatusCode::CREATED, "{:?}", ac.body);
        let secret = ac.body["application_credential"]["secret"]
            .as_str()
            .unwrap()
            .to_string();
        let acid = ac.body["application_credential"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let bad = c
            .req(
                Method::POST,
                &format!("/v3/users/{uid}/application_credentials"),
                Some(&bob),
                Some(json!({"application_credential": {"name": "x", "roles": [{"name": "admin"}]}})),
            )
            .await;
        keystone_error(&bad, 403);
        let auth = json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": {"id": acid, "secret": secret}}}});
        let r = c.req(Method::POST, "/v3/auth/tokens", None, Some(auth)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert_eq!(r.body["token"]["project"]["id"], pid.as_str());
        let names: Vec<&str> = r.body["token"]["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["reader"]);
        assert_eq!(r.body["token"]["application_credential"]["id"], acid.as_str());
        let by_name = json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": {
            "name": "ci", "secret": "wrong", "user": {"id": uid}}}}});
        keystone_error(
            &c.req(Method::POST, "/v3/auth/tokens", None, Some(by_name)).await,
            401,
        );
        let l = c
            .req(
                Method::GET,
                &format!("/v3/users/{uid}/application_credentials"),
                Some(&bob),
                None,
            )
            .await;
        assert!(l.body["application_credentials"][0].get("secret").is_none());
        assert_eq!(
            c.req(
                Method::DELETE,
                &format!("/v3/users/{uid}/application_credentials/{acid}"),
                Some(&bob),
                None
            )
            .await
            .status,
            StatusCode::NO_CONTENT
        );
        c.stop().await;
    });
}

#[tokio::test]
async fn bad_input_gets_keystone_errors_and_writes_nothing() {
    each_backend!(|b: Backend| async move {
        let c = Cloud::start(&b).await;
        let admin = c.admin_token().await;
        let tables = [
            "projects",
            "users",
            "roles",
            "regions",
            "services",
            "endpoints",
            "assignments",
            "application_credentials",
            "identity_groups",
        ];
        let mut before = Vec::new();
        for t in tables {
            before.push(c.count(t).await);
        }
        let cases: Vec<(Method, &str, &str, u16)> = vec![
            (Method::POST, "/v3/projects", "{not json", 400),
            (Method::POST, "/v3/projects", "[1, 2]", 400),
            (Method::POST, "/v3/projects", r#"{"project": {"name": 5}}"#, 400),
            (
                Method::POST,
                "/v3/projects",
                r#"{"project": {"description": "no name"}}"#,
                400,
            ),
            (
                Method::POST,
                "/v3/projects",
                r#"{"project": {"name": "x", "domain_id": "nope"}}"#,
                400,
            ),
            (
                Method::POST,
                "/v3/projects",
                r#"{"project": {"name": "x", "enabled": "yes"}}"#,
                400,
            ),
            (
                Method::POST,
                "/v3/users",
                r#"{"user": {"name": "u", "password": 1}}"#,
                400,
            ),
            (
                Method::POST,
                "/v3/users",
                r#"{"user": {"name": "u", "default_project_id": "nope"}}"#,
                400,
            ),
            (Method::POST, "/v3/users", r#"{"usr": {"name": "u"}}"#, 400),
            (Method::POST, "/v3/roles", r#"{"role": {"name": ""}}"#, 400),
            (
                Method::POST,
                "/v3/regions",
                r#"{"region": {"id": "R", "parent_region_id": "nope"}}"#,
                400,
            ),
            (
                Method::POST,
                "/v3/services",
                r#"{"service": {"name": "no type"}}"#,
                400,
            ),
            (
                Method::POST,
                "/v3/endpoints",
                r#"{"endpoint": {"service_id": "nope", "interface": "public", "url": "http://x"}}"#,
                400,
            ),
            (
                Method::PATCH,
                "/v3/projects/nope",
                r#"{"project": {"name": "y"}}"#,
                404,
            ),
            (Method::POST, "/v3/groups", r#"{"group": {"name": ["a"]}}"#, 400),
        ];
        for (m, path, body, code) in cases {
            let r = c
                .raw(m.clone(), path, Some(&admin), "application/json", body)
                .await;
            assert_eq!(r.status.as_u16(), code, "{m} {path} {body}: {:?}", r.body);
            keystone_error(&r, code);
        }
        let r = c
            .raw(
                Method::POST,
                "/v3/projects",
                Some(&admin),
                "text/plain",
                r#"{"project": {"name": "x"}}"#,
            )
            .await;
        keystone_error(&r, 415);
        // Authentication errors.
        let auth_cases: Vec<(&str, u16)> = vec![
            ("{", 400),
            (r#"{"auth": {}}"#, 400),
            (r#"{"auth": {"identity": {"methods": "password"}}}"#, 400),
            (
                r#"{"auth": {"identity": {"methods": ["totp"], "totp": {}}}}"#,
                401,
            ),
            (r#"{"auth": {"identity": {"methods": ["password"]}}}"#, 400),
            (
                r#"{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": "wrong"}}}}}"#,
                401,
            ),
            (
                r#"{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "nobody", "domain": {"id": "default"}, "password": "x"}}}}}"#,
                401,
            ),
            (
                r#"{"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": "x", "password": 5}}}}}"#,
                400,
            ),
            (
                r#"{"auth": {"identity": {"methods": ["token"], "token": {"id": "garbage-token"}}}}"#,
                401,
            ),
        ];
        for (body, code) in auth_cases {
            let r = c
                .raw(Method::POST, "/v3/auth/tokens", None, "application/json", body)
                .await;
            keystone_error(&r, code);
        }
        for (t, n) in tables.iter().zip(before) {
            assert_eq!(c.count(t).await, n, "a failed request wrote to {t}");
        }
        c.stop().await;
    });
}

#[tokio::test]
async fn revocation_reaches_another_process_on_the_same_database() {
    // Two identity services share one database and key repository, as two hosts would.
    let c = Cloud::start(&Backend::Sqlite).await;
    let admin = c.admin_token().await;
    let cfg = c.aio.config.clone();
    let shutdown = tessera::Shutdown::new();
    let db = tessera::roles::open_identity_db(&cfg, false).await.unwrap();
    let other = tessera::roles::start_identity(&cfg, db, &shutdown).await.unwrap();
    let url = format!("{}/v3/auth/catalog", other.base_url);
    let get = || c.http.get(&url).header("X-Auth-Token", &admin).send();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    let d = c
        .req_with(
            Method::DELETE,
            "/v3/auth/tokens",
            Some(&admin),
            None,
            &[("X-Subject-Token", &admin)],
        )
        .await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = get().await.unwrap().status();
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revocation did not reach the other process"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    shutdown.trigger();
    c.stop().await;
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid() {
    let c = Cloud::start(&Backend::Sqlite).await;
    let admin = c.admin_token().await;
    let dir = tessera::roles::key_repository(&c.aio.config);
    tessera_identity::fernet::rotate(&dir, 3).unwrap();
    // A new process sees the rotated repository; the old token still validates there.
    let shutdown = tessera::Shutdown::new();
    let db = tessera::roles::open_identity_db(&c.aio.config, false)
        .await
        .unwrap();
    let other = tessera::roles::start_identity(&c.aio.config, db, &shutdown)
        .await
        .unwrap();
    let r = c
        .http
        .get(format!("{}/v3/auth/catalog", other.base_url))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Tokens issued now use the new primary and validate in the first process too.
    let t = c.admin_token().await;
    assert_ne!(t, admin);
    assert_eq!(
        c.req(Method::GET, "/v3/auth/catalog", Some(&t), None)
            .await
            .status,
        StatusCode::OK
    );
    shutdown.trigger();
    c.stop().await;
}

#[tokio::test]
async fn metrics_and_request_ids() {
    let c = Cloud::start(&Backend::Sqlite).await;
    let r = c.req(Method::GET, "/v3", None, None).await;
    let id = r
        .headers
        .get("x-openstack-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("req-"));
    let m = c
        .http
        .get(c.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            "tessera_http_requests_total{service=\"identity\",method=\"GET\",route=\"/v3\",status=\"200\"}"
        ),
        "{m}"
    );
    c.stop().await;
}
