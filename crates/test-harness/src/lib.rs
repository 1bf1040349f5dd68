//! Test harness: a whole Tessera cloud per test, in-process, on a chosen database backend, plus a small
//! HTTP client that speaks OpenStack (tokens, JSON bodies) and helpers that look into the database.
//!
//! Backends: SQLite always; PostgreSQL and MariaDB/MySQL when `TESSERA_TEST_POSTGRES_URL` /
//! `TESSERA_TEST_MYSQL_URL` name a server where the user may create databases (CI sets both). Each cloud gets
//! a fresh database, dropped when the cloud is dropped.

#![allow(clippy::unwrap_used)]

use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tessera::aio::AllInOne;
use tessera::Shutdown;
use tessera_config::Config;

/// A database engine to run tests on.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// Admin URL of a server (its database part is replaced per test).
    Postgres(String),
    MySql(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgresql",
            Backend::MySql(_) => "mysql",
        }
    }
}

/// SQLite, plus the servers named in the environment.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if let Ok(u) = std::env::var("TESSERA_TEST_POSTGRES_URL") {
        if !u.is_empty() {
            v.push(Backend::Postgres(u));
        }
    }
    if let Ok(u) = std::env::var("TESSERA_TEST_MYSQL_URL") {
        if !u.is_empty() {
            v.push(Backend::MySql(u));
        }
    }
    v
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map(|(b, q)| (b, Some(q)))
        .unwrap_or((url, None));
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A database made for one test; dropped (on the server) when this is dropped.
pub struct TestDb {
    pub url: String,
    admin: Option<(String, String)>,
}

impl TestDb {
    pub async fn create(backend: &Backend, dir: &std::path::Path) -> TestDb {
        let name = format!("tessera_t_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => TestDb {
                url: format!("sqlite:///{}/identity.sqlite", dir.display()),
                admin: None,
            },
            Backend::Postgres(admin) | Backend::MySql(admin) => {
                let db = tessera_db::Db::connect(admin, 1)
                    .await
                    .expect("connect to the test database server");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(db.pool())
                    .await
                    .expect("create test database");
                db.close().await;
                TestDb {
                    url: with_database(admin, &name),
                    admin: Some((admin.clone(), name)),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.admin.take() {
            // Best effort, on a thread of its own (we may be inside a runtime that is shutting down).
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(db) = tessera_db::Db::connect(&admin, 1).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                            .execute(db.pool())
                            .await;
                        db.close().await;
                    }
                });
            })
            .join();
        }
    }
}

pub const ADMIN_PASSWORD: &str = "admin-secret";

/// A running all-in-one cloud for one test.
pub struct Cloud {
    pub aio: AllInOne,
    pub shutdown: Shutdown,
    pub http: reqwest::Client,
    pub backend: Backend,
    pub db: TestDb,
    pub dir: tempfile::TempDir,
}

/// A response: status, headers, JSON body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// The token of a `POST /v3/auth/tokens` response.
    pub fn subject_token(&self) -> String {
        self.headers
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

/// The config a test cloud runs with.
pub fn test_config(dir: &std::path::Path, db_url: &str) -> Config {
    let mut cfg = Config::defaults();
    cfg.set("DEFAULT", "state_path", dir.display().to_string())
        .unwrap();
    cfg.set("identity", "bind_port", "0").unwrap();
    cfg.set("identity_database", "connection", db_url).unwrap();
    cfg.set("image", "bind_port", "0").unwrap();
    cfg.set("placement", "bind_port", "0").unwrap();
    cfg.set("network", "bind_port", "0").unwrap();
    cfg.set("DEFAULT", "osapi_compute_listen_port", "0").unwrap();
    if !db_url.starts_with("sqlite") {
        // Services keep distinct tables, so one test database serves them all.
        cfg.set("image_database", "connection", db_url).unwrap();
        cfg.set("placement_database", "connection", db_url).unwrap();
        cfg.set("network_database", "connection", db_url).unwrap();
    }
    // Cheap hashes keep tests fast; production defaults are tested in the hash module.
    cfg.set("identity", "password_hash_memory_kib", "1024").unwrap();
    cfg.set("identity", "password_hash_iterations", "1").unwrap();
    cfg.set("bootstrap", "admin_password", ADMIN_PASSWORD).unwrap();
    cfg.set("token", "revocation_poll_interval", "1").unwrap();
    // No compute hosts unless a test asks for them (they are placement providers, and log in).
    cfg.set("all_in_one", "hosts_per_cell", "0").unwrap();
    // The network agent reports but does not wire this machine (tests run side by side on one host).
    cfg.set("network_agent", "data_plane", "false").unwrap();
    cfg
}

/// Logs to the test output when `TESSERA_TEST_LOG` is set (e.g. `TESSERA_TEST_LOG=1 cargo test -- --nocapture`).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TESSERA_TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
    });
}

impl Cloud {
    pub async fn start(backend: &Backend) -> Cloud {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(backend, dir.path()).await;
        let cfg = test_config(dir.path(), &db.url);
        Self::start_with(backend, db, dir, cfg).await
    }

    pub async fn start_with(backend: &Backend, db: TestDb, dir: tempfile::TempDir, cfg: Config) -> Cloud {
        let shutdown = Shutdown::new();
        let aio = tessera::aio::start(cfg, &shutdown)
            .await
            .expect("start all-in-one");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Cloud {
            aio,
            shutdown,
            http,
            backend: backend.clone(),
            db,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.aio.identity.base_url, path)
    }

    /// URL of the Image API.
    pub fn image_url(&self, path: &str) -> String {
        format!("{}{}", self.aio.image.base_url, path)
    }

    /// URL of the Compute API (`path` after `/v2.1`).
    pub fn compute_url(&self, path: &str) -> String {
        format!("{}/v2.1{}", self.aio.compute.base_url, path)
    }

    /// URL of the Placement API.
    pub fn placement_url(&self, path: &str) -> String {
        format!("{}{}", self.aio.placement.base_url, path)
    }

    /// URL of the Networking API.
    pub fn network_url(&self, path: &str) -> String {
        format!("{}{}", self.aio.network.base_url, path)
    }

    /// Send a request with an optional token and JSON body.
    pub async fn req(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        self.req_with(method, path, token, body, &[]).await
    }

    pub async fn req_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut rb = self.http.request(method, self.url(path));
        if let Some(t) = token {
            rb = rb.header("X-Auth-Token", t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.expect("request");
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Send a raw body with a content type.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &str,
    ) -> Resp {
        let mut rb = self
            .http
            .request(method, self.url(path))
            .header("Content-Type", content_type)
            .body(body.to_string());
        if let Some(t) = token {
            rb = rb.header("X-Auth-Token", t);
        }
        let r = rb.send().await.expect("request");
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap_or_default();
        Resp {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Password auth by user and project name in the Default domain; `project` None asks for no scope.
    pub async fn login(&self, user: &str, password: &str, project: Option<&str>) -> Resp {
        let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}}});
        if let Some(p) = project {
            auth["scope"] = json!({"project": {"name": p, "domain": {"id": "default"}}});
        }
        self.req(Method::POST, "/v3/auth/tokens", None, Some(json!({"auth": auth})))
            .await
    }

    /// A project-scoped admin token.
    pub async fn admin_token(&self) -> String {
        let r = self.login("admin", ADMIN_PASSWORD, Some("admin")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.subject_token()
    }

    /// Rows in a table of the identity database.
    pub async fn count(&self, table: &str) -> i64 {
        use sqlx::Row;
        let db = &self.aio.identity.identity.db;
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(db.pool())
            .await
            .unwrap();
        row.try_get::<i64, _>("n").unwrap()
    }

    /// Create a project and a member user on it; returns (project id, user id).
    pub async fn project_with_member(
        &self,
        admin: &str,
        project: &str,
        user: &str,
        password: &str,
    ) -> (String, String) {
        let p = self
            .req(
                Method::POST,
                "/v3/projects",
                Some(admin),
                Some(json!({"project": {"name": project}})),
            )
            .await;
        assert_eq!(p.status, StatusCode::CREATED, "{:?}", p.body);
        let pid = p.body["project"]["id"].as_str().unwrap().to_string();
        let u = self
            .req(
                Method::POST,
                "/v3/users",
                Some(admin),
                Some(json!({"user": {"name": user, "password": password}})),
            )
            .await;
        assert_eq!(u.status, StatusCode::CREATED, "{:?}", u.body);
        let uid = u.body["user"]["id"].as_str().unwrap().to_string();
        let roles = self
            .req(Method::GET, "/v3/roles?name=member", Some(admin), None)
            .await;
        let rid = roles.body["roles"][0]["id"].as_str().unwrap().to_string();
        let g = self
            .req(
                Method::PUT,
                &format!("/v3/projects/{pid}/users/{uid}/roles/{rid}"),
                Some(admin),
                None,
            )
            .await;
        assert_eq!(g.status, StatusCode::NO_CONTENT);
        (pid, uid)
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let Cloud { aio, .. } = self;
        let _ = tokio::time::timeout(Duration::from_secs(10), aio.identity.task).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), aio.image.task).await;
    }
}

/// Run `f` once per backend, naming the backend in failures.
#[macro_export]
macro_rules! each_backend {
    ($f:expr) => {
        for backend in $crate::backends() {
            eprintln!("-- backend {}", backend.name());
            $f(backend).await;
        }
    };
}
