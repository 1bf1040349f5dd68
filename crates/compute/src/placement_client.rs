//! How a compute host talks to placement: over HTTP with a token from the Identity API (password auth with
//! the `[placement]` credentials, renewed before it expires or when refused), at the endpoint the token's
//! catalog names, as Nova's report client does.

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub auth_url: String,
    pub username: String,
    pub password: String,
    pub project_name: String,
    pub user_domain_name: String,
    pub project_domain_name: String,
    pub region_name: String,
    pub valid_interfaces: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementClientError {
    #[error("placement request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("identity: {0}")]
    Auth(String),
    #[error("placement answered {status} to {what}: {body}")]
    Status { status: u16, what: String, body: String },
}

type Result<T> = std::result::Result<T, PlacementClientError>;

struct Session {
    token: String,
    expires: Instant,
    endpoint: String,
    /// The token's catalog (other services' endpoints are found there too).
    catalog: Value,
}

pub struct PlacementClient {
    http: reqwest::Client,
    creds: Credentials,
    session: Mutex<Option<Session>>,
}

/// Inventories of one compute node, as Nova reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInventory {
    pub vcpus: i64,
    pub reserved_cpus: i64,
    pub cpu_ratio: f64,
    pub memory_mb: i64,
    pub reserved_memory_mb: i64,
    pub ram_ratio: f64,
    pub disk_gb: i64,
    pub reserved_disk_gb: i64,
    pub disk_ratio: f64,
}

impl NodeInventory {
    fn body(&self, generation: i64) -> Value {
        let one = |total: i64, reserved: i64, ratio: f64| {
            json!({"total": total, "reserved": reserved.min(total), "min_unit": 1, "max_unit": total.max(1),
                   "step_size": 1, "allocation_ratio": ratio})
        };
        json!({
            "resource_provider_generation": generation,
            "inventories": {
                "VCPU": one(self.vcpus, self.reserved_cpus, self.cpu_ratio),
                "MEMORY_MB": one(self.memory_mb, self.reserved_memory_mb, self.ram_ratio),
                "DISK_GB": one(self.disk_gb, self.reserved_disk_gb, self.disk_ratio),
            }
        })
    }
}

const MICROVERSION: &str = "placement 1.39";

impl PlacementClient {
    pub fn new(creds: Credentials) -> Self {
        PlacementClient {
            http: reqwest::Client::new(),
            creds,
            session: Mutex::new(None),
        }
    }

    async fn login(&self) -> Result<Session> {
        let c = &self.creds;
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": c.username, "domain": {"name": c.user_domain_name}, "password": c.password}}},
            "scope": {"project": {"name": c.project_name, "domain": {"name": c.project_domain_name}}}}});
        let url = format!("{}/auth/tokens", c.auth_url.trim_end_matches('/'));
        let r = self.http.post(&url).json(&body).send().await?;
        if r.status() != StatusCode::CREATED {
            let status = r.status();
            return Err(PlacementClientError::Auth(format!(
                "{url} answered {status}: {}",
                r.text().await.unwrap_or_default()
            )));
        }
        let token = r
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| PlacementClientError::Auth("no X-Subject-Token in the answer".into()))?
            .to_string();
        let v: Value = r.json().await?;
        let endpoint = self.endpoint_from(&v, "placement").ok_or_else(|| {
            PlacementClientError::Auth(
                "the catalog has no placement endpoint for the configured interfaces".into(),
            )
        })?;
        // Renew well before the expiry (tokens last an hour by default); the exact time is not needed.
        Ok(Session {
            token,
            expires: Instant::now() + Duration::from_secs(1800),
            endpoint,
            catalog: v,
        })
    }

    /// The endpoint of another service (`image`, …) from the service token's catalog, with the same
    /// interface and region preferences.
    pub async fn service_endpoint(&self, service_type: &str) -> Result<String> {
        let mut s = self.session.lock().await;
        if s.as_ref().is_none_or(|s| s.expires <= Instant::now()) {
            *s = Some(self.login().await?);
        }
        let s = s
            .as_ref()
            .ok_or_else(|| PlacementClientError::Auth("no session".into()))?;
        self.endpoint_from(&s.catalog, service_type)
            .ok_or_else(|| PlacementClientError::Auth(format!("the catalog has no {service_type} endpoint")))
    }

    fn endpoint_from(&self, token: &Value, service_type: &str) -> Option<String> {
        let catalog = token.pointer("/token/catalog")?.as_array()?;
        let svc = catalog.iter().find(|s| s["type"] == service_type)?;
        let eps = svc["endpoints"].as_array()?;
        let interfaces = if self.creds.valid_interfaces.is_empty() {
            vec!["internal".to_string(), "public".to_string()]
        } else {
            self.creds.valid_interfaces.clone()
        };
        for want in &interfaces {
            if let Some(e) = eps.iter().find(|e| {
                e["interface"] == want.as_str()
                    && (self.creds.region_name.is_empty()
                        || e["region_id"] == self.creds.region_name.as_str()
                        || e["region"] == self.creds.region_name.as_str())
            }) {
                return e["url"].as_str().map(|u| u.trim_end_matches('/').to_string());
            }
        }
        None
    }

    /// One request with the session's token, logging in again once when the token is refused.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        self.send_json(None, method, path, body).await
    }

    /// Like [`Self::request`], the answer's text undecoded (for callers that decode it into their own types).
    async fn request_text(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, String)> {
        self.send(None, method, path, body).await
    }

    /// One request with the session's token — to placement (`service` None, with the placement
    /// microversion) or to another service of the catalog — logging in again once when the token is refused.
    async fn send(
        &self,
        service: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, String)> {
        for attempt in 0..2 {
            let (token, endpoint) = {
                let mut s = self.session.lock().await;
                if s.as_ref().is_none_or(|s| s.expires <= Instant::now()) {
                    *s = Some(self.login().await?);
                }
                let s = s
                    .as_ref()
                    .ok_or_else(|| PlacementClientError::Auth("no session".into()))?;
                let endpoint = match service {
                    None => s.endpoint.clone(),
                    Some(t) => self.endpoint_from(&s.catalog, t).ok_or_else(|| {
                        PlacementClientError::Auth(format!("the catalog has no {t} endpoint"))
                    })?,
                };
                (s.token.clone(), endpoint)
            };
            let mut rb = self
                .http
                .request(method.clone(), format!("{endpoint}{path}"))
                .header("X-Auth-Token", token)
                .header("Accept", "application/json");
            if service.is_none() {
                rb = rb.header("OpenStack-API-Version", MICROVERSION);
            }
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let r = rb.send().await?;
            let status = r.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                *self.session.lock().await = None;
                continue;
            }
            return Ok((status, r.text().await?));
        }
        Err(PlacementClientError::Auth("the token was refused twice".into()))
    }

    /// One request to another service of the catalog (`network`, `compute`, …) with this session's token.
    pub async fn service_call(
        &self,
        service_type: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        self.send_json(Some(service_type), method, path, body).await
    }

    /// [`Self::send`] with the answer decoded (an empty body is null, a non-JSON one a string).
    async fn send_json(
        &self,
        service: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let (status, text) = self.send(service, method, path, body).await?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    fn fail<T>(what: &str, status: StatusCode, body: &Value) -> Result<T> {
        Err(PlacementClientError::Status {
            status: status.as_u16(),
            what: what.to_string(),
            body: body.to_string(),
        })
    }

    /// The provider's generation, creating the provider (uuid, name) when it does not exist.
    pub async fn ensure_provider(&self, uuid: &str, name: &str) -> Result<i64> {
        let (s, v) = self
            .request(reqwest::Method::GET, &format!("/resource_providers/{uuid}"), None)
            .await?;
        if s == StatusCode::OK {
            return Ok(v["generation"].as_i64().unwrap_or(0));
        }
        if s != StatusCode::NOT_FOUND {
            return Self::fail("GET resource provider", s, &v);
        }
        let (s, v) = self
            .request(
                reqwest::Method::POST,
                "/resource_providers",
                Some(&json!({"uuid": uuid, "name": name})),
            )
            .await?;
        match s {
            StatusCode::OK | StatusCode::CREATED => Ok(v["generation"].as_i64().unwrap_or(0)),
            // Created concurrently (a restart racing itself): read it.
            StatusCode::CONFLICT => {
                let (s, v) = self
                    .request(reqwest::Method::GET, &format!("/resource_providers/{uuid}"), None)
                    .await?;
                if s == StatusCode::OK {
                    Ok(v["generation"].as_i64().unwrap_or(0))
                } else {
                    Self::fail("create resource provider", s, &v)
                }
            }
            _ => Self::fail("create resource provider", s, &v),
        }
    }

    /// Set the node's VCPU/MEMORY_MB/DISK_GB inventories, re-reading the generation on a conflict.
    pub async fn set_inventory(&self, uuid: &str, inv: &NodeInventory) -> Result<()> {
        let path = format!("/resource_providers/{uuid}/inventories");
        for _ in 0..5 {
            let (s, v) = self.request(reqwest::Method::GET, &path, None).await?;
            if s != StatusCode::OK {
                return Self::fail("GET inventories", s, &v);
            }
            let gen = v["resource_provider_generation"].as_i64().unwrap_or(0);
            let (s, v) = self
                .request(reqwest::Method::PUT, &path, Some(&inv.body(gen)))
                .await?;
            match s {
                StatusCode::OK => return Ok(()),
                StatusCode::CONFLICT if v.to_string().contains("placement.concurrent_update") => continue,
                _ => return Self::fail("PUT inventories", s, &v),
            }
        }
        Err(PlacementClientError::Status {
            status: 409,
            what: "PUT inventories".into(),
            body: "the provider kept changing".into(),
        })
    }
}

impl PlacementClient {
    /// The provider named `name` (compute nodes are named after their host): (uuid).
    async fn provider_by_name(&self, name: &str) -> Result<Option<String>> {
        let (s, v) = self
            .request(
                reqwest::Method::GET,
                &format!("/resource_providers?name={name}"),
                None,
            )
            .await?;
        if s != StatusCode::OK {
            return Self::fail("GET resource providers", s, &v);
        }
        Ok(v["resource_providers"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|p| p["uuid"].as_str())
            .map(str::to_string))
    }

    /// Add (or remove) placement aggregate `agg` on the provider of host `host`, as Nova mirrors host
    /// aggregate membership. Ok(false) when the host has no provider.
    pub async fn aggregate_host(&self, agg: &str, host: &str, add: bool) -> Result<bool> {
        let Some(rp) = self.provider_by_name(host).await? else {
            return Ok(false);
        };
        let path = format!("/resource_providers/{rp}/aggregates");
        for _ in 0..5 {
            let (s, v) = self.request(reqwest::Method::GET, &path, None).await?;
            if s != StatusCode::OK {
                return Self::fail("GET provider aggregates", s, &v);
            }
            let gen = v["resource_provider_generation"].as_i64().unwrap_or(0);
            let mut aggs: Vec<String> = v["aggregates"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let present = aggs.iter().any(|a| a == agg);
            if present == add {
                return Ok(true);
            }
            if add {
                aggs.push(agg.to_string());
            } else {
                aggs.retain(|a| a != agg);
            }
            let body = json!({"aggregates": aggs, "resource_provider_generation": gen});
            let (s, v) = self.request(reqwest::Method::PUT, &path, Some(&body)).await?;
            match s {
                StatusCode::OK => return Ok(true),
                StatusCode::CONFLICT => continue,
                _ => return Self::fail("PUT provider aggregates", s, &v),
            }
        }
        Ok(false)
    }
}

impl PlacementClient {
    /// `GET /allocation_candidates?{query}` at 1.36 (Nova's version for scheduling).
    /// `GET /allocation_candidates?{query}` decoded into the caller's type (the scheduler reads a few fields
    /// of a large answer, on every request).
    pub async fn allocation_candidates_as<T: serde::de::DeserializeOwned>(&self, query: &str) -> Result<T> {
        let (s, text) = self
            .request_text(
                reqwest::Method::GET,
                &format!("/allocation_candidates?{query}"),
                None,
            )
            .await?;
        if s != StatusCode::OK {
            return Err(PlacementClientError::Status {
                status: s.as_u16(),
                what: "GET allocation candidates".into(),
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|e| PlacementClientError::Status {
            status: s.as_u16(),
            what: "GET allocation candidates".into(),
            body: format!("undecodable answer: {e}"),
        })
    }

    pub async fn allocation_candidates(&self, query: &str) -> Result<Value> {
        let (s, v) = self
            .request(
                reqwest::Method::GET,
                &format!("/allocation_candidates?{query}"),
                None,
            )
            .await?;
        if s != StatusCode::OK {
            return Self::fail("GET allocation candidates", s, &v);
        }
        Ok(v)
    }

    /// Claim: `PUT /allocations/{consumer}` with an allocation request's `allocations`; Ok(false) on a
    /// conflict (capacity taken meanwhile, or the consumer changed).
    pub async fn claim(
        &self,
        consumer: &str,
        allocations: &Value,
        project: &str,
        user: &str,
    ) -> Result<bool> {
        let body = json!({"allocations": allocations, "project_id": project, "user_id": user,
                          "consumer_generation": null, "consumer_type": "INSTANCE"});
        let (s, v) = self
            .request(
                reqwest::Method::PUT,
                &format!("/allocations/{consumer}"),
                Some(&body),
            )
            .await?;
        match s {
            StatusCode::NO_CONTENT => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            _ => Self::fail("PUT allocations", s, &v),
        }
    }

    /// The consumers holding allocations against a provider.
    pub async fn provider_consumers(&self, rp: &str) -> Result<Vec<String>> {
        let (s, v) = self
            .request(
                reqwest::Method::GET,
                &format!("/resource_providers/{rp}/allocations"),
                None,
            )
            .await?;
        if s != StatusCode::OK {
            return Self::fail("GET provider allocations", s, &v);
        }
        Ok(v["allocations"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// Release everything a consumer holds (idempotent).
    pub async fn release(&self, consumer: &str) -> Result<()> {
        let (s, v) = self
            .request(reqwest::Method::DELETE, &format!("/allocations/{consumer}"), None)
            .await?;
        match s {
            StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
            _ => Self::fail("DELETE allocations", s, &v),
        }
    }
}

impl PlacementClient {
    /// Add or remove a trait on the provider of host `host` (Nova flags disabled computes with
    /// `COMPUTE_STATUS_DISABLED`). Ok(false) when the host has no provider.
    pub async fn host_trait(&self, host: &str, name: &str, on: bool) -> Result<bool> {
        let Some(rp) = self.provider_by_name(host).await? else {
            return Ok(false);
        };
        let path = format!("/resource_providers/{rp}/traits");
        for _ in 0..5 {
            let (s, v) = self.request(reqwest::Method::GET, &path, None).await?;
            if s != StatusCode::OK {
                return Self::fail("GET provider traits", s, &v);
            }
            let gen = v["resource_provider_generation"].as_i64().unwrap_or(0);
            let mut traits: Vec<String> = v["traits"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            if traits.iter().any(|t| t == name) == on {
                return Ok(true);
            }
            if on {
                traits.push(name.to_string());
            } else {
                traits.retain(|t| t != name);
            }
            let body = json!({"traits": traits, "resource_provider_generation": gen});
            let (s, v) = self.request(reqwest::Method::PUT, &path, Some(&body)).await?;
            match s {
                StatusCode::OK => return Ok(true),
                StatusCode::CONFLICT => continue,
                _ => return Self::fail("PUT provider traits", s, &v),
            }
        }
        Ok(false)
    }
}

impl PlacementClient {
    /// Delete a provider (a compute node that is gone); a provider already gone is fine.
    pub async fn delete_provider(&self, uuid: &str) -> Result<()> {
        let (s, v) = self
            .request(
                reqwest::Method::DELETE,
                &format!("/resource_providers/{uuid}"),
                None,
            )
            .await?;
        match s {
            StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
            _ => Self::fail("DELETE resource provider", s, &v),
        }
    }
}
