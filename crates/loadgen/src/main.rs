//! Load client for `bench/placement.sh`: the write workloads (provider creation, allocation writes) run here
//! rather than in Python, so that the client costs little of the two cores both servers are measured on.
//! The same client drives openstack-placement and Tessera.
//!
//!   tessera-loadgen providers URL TOKEN N CONCURRENCY fresh|keepalive   → one JSON line: {"seconds", "uuids"}
//!   tessera-loadgen allocations URL TOKEN CONCURRENCY fresh|keepalive < uuids.json  → {"seconds", "count"}
//!   tessera-loadgen ports NETWORK_URL TOKEN NETWORK_ID N CONCURRENCY  → {"per_second", "p50_ms", "p95_ms", …}
//!
//! `fresh` opens a new connection for every request (for servers that close each one, like uWSGI's
//! `--http-socket`); `keepalive` reuses connections.
//!
//! Each provider gets what the Python bench used to send: POST /resource_providers, PUT inventories (VCPU 32
//! ×4.0, MEMORY_MB 131072 with 512 reserved, DISK_GB 2000), PUT traits (a half, a third and a fiftieth of the
//! providers carry one of three traits), PUT aggregates (one of five), each with the generation the previous
//! answer returned. Any unexpected status aborts the run with the body, so a figure never counts failures.

use serde_json::{json, Value};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

const TRAITS: [&str; 3] = ["HW_CPU_X86_AVX2", "STORAGE_DISK_SSD", "COMPUTE_STATUS_DISABLED"];

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The service named in `OpenStack-API-Version` (`placement`, `compute`).
    service: &'static str,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        mv: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), Error> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .header("X-Auth-Token", &self.token)
            .header("OpenStack-API-Version", format!("{} {mv}", self.service))
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok((status, v))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        mv: &str,
        body: Value,
        want: u16,
    ) -> Result<Value, Error> {
        let (s, v) = self.call(method.clone(), path, mv, Some(body)).await?;
        if s != want {
            return Err(format!("{method} {path}: status {s}, wanted {want}: {v}").into());
        }
        Ok(v)
    }
}

fn aggregate(i: usize) -> String {
    uuid::Uuid::from_u128((i % 5) as u128 + 1).to_string()
}

fn generation(v: &Value, key: &str) -> Result<i64, Error> {
    v.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("no {key} in {v}").into())
}

async fn provider(c: &Client, i: usize) -> Result<String, Error> {
    use reqwest::Method;
    let rp = c
        .expect(
            Method::POST,
            "/resource_providers",
            "1.39",
            json!({"name": format!("cn{i:06}")}),
            200,
        )
        .await?;
    let uuid = rp
        .get("uuid")
        .and_then(Value::as_str)
        .ok_or("no uuid in answer")?
        .to_string();
    let inv = json!({
        "resource_provider_generation": generation(&rp, "generation")?,
        "inventories": {
            "VCPU": {"total": 32, "allocation_ratio": 4.0},
            "MEMORY_MB": {"total": 131072, "reserved": 512},
            "DISK_GB": {"total": 2000}
        }
    });
    let b = c
        .expect(
            Method::PUT,
            &format!("/resource_providers/{uuid}/inventories"),
            "1.39",
            inv,
            200,
        )
        .await?;
    let mut traits = Vec::new();
    if i.is_multiple_of(2) {
        traits.push(TRAITS[0]);
    }
    if i.is_multiple_of(3) {
        traits.push(TRAITS[1]);
    }
    if i.is_multiple_of(50) {
        traits.push(TRAITS[2]);
    }
    let body = json!({"resource_provider_generation": generation(&b, "resource_provider_generation")?, "traits": traits});
    let b = c
        .expect(
            Method::PUT,
            &format!("/resource_providers/{uuid}/traits"),
            "1.39",
            body,
            200,
        )
        .await?;
    let body = json!({
        "resource_provider_generation": generation(&b, "resource_provider_generation")?,
        "aggregates": [aggregate(i)]
    });
    c.expect(
        Method::PUT,
        &format!("/resource_providers/{uuid}/aggregates"),
        "1.39",
        body,
        200,
    )
    .await?;
    Ok(uuid)
}

/// Run `work(i)` for i in 0..n from `concurrency` tasks; the results in index order and the seconds taken.
async fn fan_out<F, Fut, T>(n: usize, concurrency: usize, work: F) -> Result<(Vec<T>, f64), Error>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, Error>> + Send,
    T: Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, work) = (next.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, Error>(done);
                }
                done.push((i, work(i).await?));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by_key(|(i, _)| *i);
    Ok((all.into_iter().map(|(_, t)| t).collect(), secs))
}

async fn run(args: Vec<String>) -> Result<Value, Error> {
    let usage = "usage: tessera-loadgen providers URL TOKEN N CONCURRENCY fresh|keepalive | \
                 allocations URL TOKEN CONCURRENCY fresh|keepalive < uuids | \
                 servers COMPUTE_URL TOKEN IMAGE N CONCURRENCY | \
                 ports NETWORK_URL TOKEN NETWORK_ID N CONCURRENCY";
    let (cmd, url, token) = match (args.get(1), args.get(2), args.get(3)) {
        (Some(c), Some(u), Some(t)) => (c.as_str(), u.trim_end_matches('/').to_string(), t.clone()),
        _ => return Err(usage.into()),
    };
    let num = |i: usize| -> Result<usize, Error> { Ok(args.get(i).ok_or(usage)?.parse::<usize>()?) };
    let mode = |i: usize| -> Result<usize, Error> {
        match args.get(i).map(String::as_str) {
            Some("fresh") => Ok(0),
            Some("keepalive") => Ok(64),
            _ => Err(usage.into()),
        }
    };
    if cmd == "servers" {
        let client = Client {
            http: reqwest::Client::builder().pool_max_idle_per_host(64).build()?,
            base: url,
            token,
            service: "compute",
        };
        let image = args.get(4).ok_or(usage)?.clone();
        return servers(client, image, num(5)?, num(6)?).await;
    }
    if cmd == "ports" {
        let client = Client {
            http: reqwest::Client::builder().pool_max_idle_per_host(64).build()?,
            base: url,
            token,
            service: "network",
        };
        let network = args.get(4).ok_or(usage)?.clone();
        return ports(client, network, num(5)?, num(6)?).await;
    }
    let idle = mode(if cmd == "providers" { 6 } else { 5 })?;
    let client = Client {
        http: reqwest::Client::builder().pool_max_idle_per_host(idle).build()?,
        base: url,
        token,
        service: "placement",
    };
    match cmd {
        "providers" => {
            let (n, conc) = (num(4)?, num(5)?);
            let c = client.clone();
            let (uuids, secs) = fan_out(n, conc, move |i| {
                let c = c.clone();
                async move { provider(&c, i).await }
            })
            .await?;
            Ok(json!({"seconds": secs, "uuids": uuids}))
        }
        "allocations" => {
            let conc = num(4)?;
            let rps: Vec<String> = serde_json::from_reader(std::io::stdin().lock())?;
            if rps.is_empty() {
                return Err("no providers given on stdin".into());
            }
            let rps = Arc::new(rps);
            let (project, user) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
            let n = 1000;
            let c = client.clone();
            let (_, secs) = fan_out(n, conc, move |i| {
                let (c, rps, project, user) = (c.clone(), rps.clone(), project.clone(), user.clone());
                async move {
                    let body = json!({
                        "allocations": {rps[i % rps.len()].as_str(): {"resources": {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 10}}},
                        "project_id": project, "user_id": user, "consumer_generation": null, "consumer_type": "INSTANCE"
                    });
                    let path = format!("/allocations/{}", uuid::Uuid::new_v4());
                    c.expect(reqwest::Method::PUT, &path, "1.38", body, 204).await.map(|_| ())
                }
            })
            .await?;
            Ok(json!({"seconds": secs, "count": n}))
        }
        _ => Err(usage.into()),
    }
}

/// Create `n` ports on `network` from `conc` clients: ports per second and the latency percentiles.
async fn ports(c: Client, network: String, n: usize, conc: usize) -> Result<Value, Error> {
    let cc = c.clone();
    let (times, secs) = fan_out(n, conc, move |_| {
        let (c, network) = (cc.clone(), network.clone());
        async move {
            let t0 = Instant::now();
            c.expect(
                reqwest::Method::POST,
                "/v2.0/ports",
                "2.0",
                json!({"port": {"network_id": network}}),
                201,
            )
            .await?;
            Ok(t0.elapsed().as_secs_f64() * 1000.0)
        }
    })
    .await?;
    let mut sorted = times;
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(
        json!({"ports": n, "concurrency": conc, "seconds": secs, "per_second": n as f64 / secs,
              "p50_ms": percentile(&sorted, 0.50), "p95_ms": percentile(&sorted, 0.95)}),
    )
}

/// Count the servers of a listing by status (`GET /servers/detail`, paged by the API's limit).
async fn statuses(c: &Client) -> Result<std::collections::BTreeMap<String, usize>, Error> {
    let mut out = std::collections::BTreeMap::new();
    let mut marker: Option<String> = None;
    loop {
        let path = match &marker {
            Some(m) => format!("/servers/detail?limit=1000&marker={m}"),
            None => "/servers/detail?limit=1000".to_string(),
        };
        let (s, v) = c.call(reqwest::Method::GET, &path, "2.1", None).await?;
        if s != 200 {
            return Err(format!("GET {path}: {s}: {v}").into());
        }
        let list = v["servers"].as_array().cloned().unwrap_or_default();
        for sv in &list {
            *out.entry(sv["status"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
        match list.last() {
            Some(last) if list.len() == 1000 => marker = last["id"].as_str().map(str::to_string),
            _ => return Ok(out),
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `bench/boot.sh`: boot `n` servers (one POST each, `conc` at a time, fake driver, no network), wait until
/// all are ACTIVE, time 50 `GET /servers/detail?limit=1000`, delete them all (`conc` at a time) and wait until
/// the listing is empty. Boot and delete rates run from the first request to the last server settled.
async fn servers(c: Client, image: String, n: usize, conc: usize) -> Result<Value, Error> {
    use reqwest::Method;
    let start = Instant::now();
    let cc = c.clone();
    let (ids, post_secs) = fan_out(n, conc, move |i| {
        let (c, image) = (cc.clone(), image.clone());
        async move {
            let body = json!({"server": {"name": format!("bench-{i:05}"), "flavorRef": "1", "imageRef": image,
                                         "networks": "none"}});
            let v = c.expect(Method::POST, "/servers", "2.37", body, 202).await?;
            v["server"]["id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("no server id in {v}").into())
        }
    })
    .await?;
    // Settled when no server is building (a cheap one-row query, so the polling costs the server little);
    // then one full count checks that all are ACTIVE.
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let (s, v) = c
            .call(Method::GET, "/servers?status=BUILD&limit=1", "2.1", None)
            .await?;
        if s != 200 {
            return Err(format!("GET /servers?status=BUILD: {s}: {v}").into());
        }
        if v["servers"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        if Instant::now() > deadline {
            return Err("servers did not all leave BUILD".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let boot_secs = start.elapsed().as_secs_f64();
    let st = statuses(&c).await?;
    if st.get("ACTIVE").copied().unwrap_or(0) < n {
        return Err(format!("not all servers are ACTIVE: {st:?}").into());
    }
    let mut lat = Vec::new();
    for _ in 0..50 {
        // Timed to the last byte of the answer; parsing it here is the client's cost, not the server's.
        let t = Instant::now();
        let resp = c
            .http
            .get(format!("{}/servers/detail?limit=1000", c.base))
            .header("X-Auth-Token", &c.token)
            .header("OpenStack-API-Version", "compute 2.1")
            .send()
            .await?;
        let s = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        let v: Value = serde_json::from_slice(&bytes)?;
        let got = v["servers"].as_array().map(Vec::len).unwrap_or(0);
        if s != 200 || got != n.min(1000) {
            return Err(format!("GET /servers/detail: {s}, {got} servers").into());
        }
    }
    let in_order: Vec<f64> = lat.iter().map(|ms| (ms * 10.0).round() / 10.0).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    if std::env::var_os("TESSERA_LOADGEN_KEEP").is_some() {
        return Ok(json!({"servers": n, "boot_per_s": n as f64 / boot_secs,
                         "detail_p50_ms": percentile(&lat, 0.5), "detail_p95_ms": percentile(&lat, 0.95),
                         "detail_ms_in_order": in_order}));
    }
    let start = Instant::now();
    let ids = Arc::new(ids);
    let cc = c.clone();
    let (_, del_post_secs) = fan_out(n, conc, move |i| {
        let (c, ids) = (cc.clone(), ids.clone());
        async move {
            let (s, v) = c
                .call(Method::DELETE, &format!("/servers/{}", ids[i]), "2.1", None)
                .await?;
            if s != 204 {
                return Err(format!("DELETE: {s}: {v}").into());
            }
            Ok(())
        }
    })
    .await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let (s, v) = c.call(Method::GET, "/servers?limit=1", "2.1", None).await?;
        if s != 200 {
            return Err(format!("GET /servers: {s}: {v}").into());
        }
        if v["servers"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        if Instant::now() > deadline {
            return Err("servers were not all deleted".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let del_secs = start.elapsed().as_secs_f64();
    Ok(json!({
        "servers": n, "concurrency": conc,
        "boot_seconds": boot_secs, "boot_per_s": n as f64 / boot_secs, "post_seconds": post_secs,
        "detail_p50_ms": percentile(&lat, 0.5), "detail_p95_ms": percentile(&lat, 0.95),
        "delete_seconds": del_secs, "delete_per_s": n as f64 / del_secs, "delete_requests_seconds": del_post_secs,
    }))
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tessera-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(std::env::args().collect())) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tessera-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
