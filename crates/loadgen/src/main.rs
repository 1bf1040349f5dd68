//! Load client for `bench/placement.sh`: the write workloads (provider creation, allocation writes) run here
//! rather than in Python, so that the client costs little of the two cores both servers are measured on.
//! The same client drives openstack-placement and Tessera.
//!
//!   tessera-loadgen providers URL TOKEN N CONCURRENCY fresh|keepalive   → one JSON line: {"seconds", "uuids"}
//!   tessera-loadgen allocations URL TOKEN CONCURRENCY fresh|keepalive < uuids.json  → {"seconds", "count"}
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
            .header("OpenStack-API-Version", format!("placement {mv}"))
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
                 allocations URL TOKEN CONCURRENCY fresh|keepalive < uuids";
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
    let idle = mode(if cmd == "providers" { 6 } else { 5 })?;
    let client = Client {
        http: reqwest::Client::builder().pool_max_idle_per_host(idle).build()?,
        base: url,
        token,
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
