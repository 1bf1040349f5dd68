//! `/os-keypairs`: a user's keypairs (admins may name another user from 2.10). Create answers 200 before 2.2
//! and 201 from it; without a public key a key is generated (refused from 2.92, where clients bring one);
//! delete answers 202 before 2.2 and 204 from it.

use super::{naive_time, nova, Mv, S};
use crate::keypairs::{self, KeyPair};
use crate::ComputeError;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use tessera_http::auth::Caller;
use tessera_http::{ApiError, Family};
use tessera_types::RequestContext;

/// Keypairs a user may hold (Nova's default `key_pairs` quota).
const QUOTA: i64 = 100;

use super::bad;

fn not_found(name: &str) -> ApiError {
    nova(
        StatusCode::NOT_FOUND,
        format!("Keypair {name} not found for user"),
    )
}

/// The user whose keypairs a request acts on: the caller, or (2.10+, admins) `user_id`.
fn target_user(ctx: &RequestContext, mv: Mv, asked: Option<&str>) -> Result<String, ApiError> {
    match asked {
        Some(u) if mv.at_least(10) && u != ctx.user_id => {
            if ctx.is_admin() {
                Ok(u.to_string())
            } else {
                Err(nova(
                    StatusCode::FORBIDDEN,
                    "Policy doesn't allow os_compute_api:os-keypairs to be performed.",
                ))
            }
        }
        _ => Ok(ctx.user_id.clone()),
    }
}

fn short(k: &KeyPair, mv: Mv) -> Value {
    let mut v = json!({"name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint});
    if mv.at_least(2) {
        v["type"] = json!(k.key_type);
    }
    v
}

pub(crate) async fn list(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user = target_user(&ctx, mv, q.get("user_id").map(String::as_str))?;
    let mut all = keypairs::list(&api.api_db, &user).await?;
    let mut limit = None;
    if mv.at_least(35) {
        if let Some(m) = q.get("marker") {
            let pos = all
                .iter()
                .position(|k| k.name == *m)
                .ok_or_else(|| bad(format!("marker [{m}] not found")))?;
            all.drain(..=pos);
        }
        if let Some(l) = q.get("limit") {
            let l = l
                .parse::<usize>()
                .map_err(|_| bad(format!("Invalid input for query parameters limit. Value: {l}.")))?;
            limit = Some(l);
        }
    }
    let more = limit.is_some_and(|l| all.len() > l);
    if let Some(l) = limit {
        all.truncate(l);
    }
    let items: Vec<Value> = all.iter().map(|k| json!({"keypair": short(k, mv)})).collect();
    let mut body = json!({ "keypairs": items });
    if more {
        if let Some(k) = all.last() {
            body["keypairs_links"] = json!([{"rel": "next",
                "href": format!("/v2.1/os-keypairs?limit={}&marker={}", limit.unwrap_or(0), k.name)}]);
        }
    }
    Ok(axum::Json(body).into_response())
}

fn name_ok(name: &str, mv: Mv) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _-".contains(c) || (mv.at_least(92) && "@.".contains(c)))
}

pub(crate) async fn create(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    headers: HeaderMap,
    b: Bytes,
) -> Result<Response, ApiError> {
    let v = tessera_http::body::parse_json::<Value>(Family::Nova, &headers, &b)?;
    let mut allowed = vec!["name", "public_key"];
    if mv.at_least(2) {
        allowed.push("type");
    }
    if mv.at_least(10) {
        allowed.push("user_id");
    }
    let m = super::wrapped(&v, "keypair", &allowed)?;
    let name = match m.get("name") {
        Some(Value::String(s)) if name_ok(s, mv) => s.clone(),
        Some(other) => return Err(bad(format!("Invalid input for field/attribute name. Value: {other}. Keypair name contains unsafe characters or is too long"))),
        None => return Err(bad("Invalid input for field/attribute keypair. 'name' is a required property")),
    };
    let key_type = match m.get("type") {
        None => "ssh".to_string(),
        Some(Value::String(t)) if t == "ssh" || t == "x509" => t.clone(),
        Some(other) => {
            return Err(bad(format!(
                "Invalid input for field/attribute type. Value: {other}. It is not one of ['ssh', 'x509']"
            )))
        }
    };
    let user = target_user(&ctx, mv, m.get("user_id").and_then(Value::as_str))?;
    let public = match m.get("public_key") {
        Some(Value::String(s)) => Some(s.trim().to_string()),
        None => None,
        Some(other) => {
            return Err(bad(format!(
                "Invalid input for field/attribute public_key. Value: {other}."
            )))
        }
    };
    if public.is_none() && mv.at_least(92) {
        return Err(bad(
            "Invalid input for field/attribute keypair. 'public_key' is a required property",
        ));
    }
    if keypairs::count(&api.api_db, &user).await? >= QUOTA {
        return Err(nova(StatusCode::FORBIDDEN, "Quota exceeded, too many key pairs."));
    }
    let (public, fingerprint, private) = match public {
        Some(p) => {
            let fp = if key_type == "x509" {
                keypairs::x509_fingerprint(&p)
            } else {
                keypairs::ssh_fingerprint(&p)
            };
            let fp = fp.ok_or_else(|| bad("Keypair data is invalid: failed to generate fingerprint"))?;
            (p, fp, None)
        }
        None if key_type == "x509" => {
            return Err(bad(
                "Keypair data is invalid: x509 keypairs cannot be generated; bring a certificate",
            ))
        }
        None => {
            let (private, public, fp) = keypairs::generate(&format!("Generated-by-Nova {name}"))
                .ok_or_else(|| super::internal("key generation failed"))?;
            (public, fp, Some(private))
        }
    };
    let k = match keypairs::create(&api.api_db, &user, &name, &public, &fingerprint, &key_type).await {
        Ok(k) => k,
        Err(ComputeError::Duplicate(_)) => {
            return Err(nova(
                StatusCode::CONFLICT,
                format!("Key pair '{name}' already exists."),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = short(&k, mv);
    out["user_id"] = json!(k.user_id);
    if let Some(p) = private {
        out["private_key"] = json!(p);
    }
    let status = if mv.at_least(2) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(json!({ "keypair": out }))).into_response())
}

pub(crate) async fn show(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user = target_user(&ctx, mv, q.get("user_id").map(String::as_str))?;
    let k = keypairs::get(&api.api_db, &user, &name)
        .await?
        .ok_or_else(|| not_found(&name))?;
    let mut v = short(&k, mv);
    v["user_id"] = json!(k.user_id);
    v["id"] = json!(k.id);
    v["created_at"] = json!(naive_time(k.created_at));
    v["updated_at"] = Value::Null;
    v["deleted"] = json!(false);
    v["deleted_at"] = Value::Null;
    Ok(axum::Json(json!({ "keypair": v })).into_response())
}

pub(crate) async fn delete(
    State(api): S,
    Caller(ctx): Caller,
    Extension(mv): Extension<Mv>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user = target_user(&ctx, mv, q.get("user_id").map(String::as_str))?;
    if !keypairs::delete(&api.api_db, &user, &name).await? {
        return Err(not_found(&name));
    }
    Ok(if mv.at_least(2) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::ACCEPTED
    }
    .into_response())
}
