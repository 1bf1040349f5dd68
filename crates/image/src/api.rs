//! Glance v2 routes (one table), request validation and views.

use crate::error::{ImageError, Result};
use crate::import::{IMPORT_METHODS, STORE_ID};
use crate::store::{self, Bind, ImageRow, MemberRow};
use crate::ImageService;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use tessera_http::auth::{require_token, AuthLayer, Caller, TokenValidator};
use tessera_http::observe::{metrics_handler, observe, Metrics};
use tessera_http::Family;
use tessera_types::RequestContext;

type S = State<Arc<ImageService>>;

/// `IMPORT_METHODS` joined, for the header on image creation.
pub(crate) const IMPORT_METHODS_HEADER: &str = "glance-direct";

pub const DISK_FORMATS: &[&str] = &[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
];
pub const CONTAINER_FORMATS: &[&str] = &["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"];
const VISIBILITIES: &[&str] = &["public", "private", "shared", "community"];
const READ_ONLY: &[&str] = &[
    "status",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "created_at",
    "updated_at",
    "self",
    "file",
    "schema",
    "direct_url",
    "locations",
    "stores",
];
const SORT_KEYS: &[&str] = &[
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "id",
    "created_at",
    "updated_at",
];

/// Build the Image API behind the auth layer.
pub fn router(
    svc: Arc<ImageService>,
    validator: Arc<dyn TokenValidator>,
    identity_uri: &str,
    base: &str,
) -> Router {
    let layer = AuthLayer {
        validator,
        family: Family::Glance,
        identity_uri: identity_uri.to_string(),
    };
    let metrics = Metrics::new("image");
    let base = base.trim_end_matches('/').to_string();
    let versions_base = base.clone();
    let protected = Router::new()
        .route("/v2/images", post(create).get(list))
        .route("/v2/images/{id}", get(show).patch(update).delete(delete))
        .route("/v2/images/{id}/file", put(upload).get(download))
        .route("/v2/images/{id}/actions/deactivate", post(deactivate))
        .route("/v2/images/{id}/actions/reactivate", post(reactivate))
        .route("/v2/images/{id}/tags/{tag}", put(add_tag).delete(delete_tag))
        .route("/v2/images/{id}/members", get(list_members).post(add_member))
        .route("/v2/images/{id}/members/{member}", get(show_member).put(update_member).delete(delete_member))
        .route("/v2/schemas/image", get(|| async { axum::Json(image_schema()) }))
        .route("/v2/schemas/images", get(|| async { axum::Json(images_schema()) }))
        .route("/v2/schemas/member", get(|| async { axum::Json(member_schema()) }))
        .route("/v2/schemas/members", get(|| async { axum::Json(json!({"name": "members", "properties": {"members": {"type": "array", "items": member_schema()}, "schema": {"type": "string"}}})) }))
        .route("/v2/images/{id}/stage", put(stage))
        .route("/v2/images/{id}/import", post(import))
        .route("/v2/images/{id}/tasks", get(image_tasks))
        .route("/v2/info/import", get(|| async { axum::Json(json!({"import-methods": {"description": "Import methods available.", "type": "array", "value": IMPORT_METHODS}})) }))
        .route("/v2/info/stores", get(|| async { axum::Json(json!({"stores": [{"id": STORE_ID, "description": "Local filesystem store", "default": true}]})) }))
        .route_layer(from_fn_with_state(layer, require_token))
        .with_state(svc);
    Router::new()
        .route(
            "/",
            get(move || versions(versions_base.clone(), StatusCode::MULTIPLE_CHOICES)),
        )
        .route("/versions", get(move || versions(base.clone(), StatusCode::OK)))
        .merge(protected)
        .route_service("/metrics", get(metrics_handler).with_state(metrics.clone()))
        .layer(from_fn_with_state(metrics, observe))
}

async fn versions(base: String, status: StatusCode) -> Response {
    let mut vs = vec![
        json!({"id": "v2.17", "status": "CURRENT", "links": [{"rel": "self", "href": format!("{base}/v2/")}]}),
    ];
    for v in [
        "v2.16", "v2.15", "v2.14", "v2.13", "v2.12", "v2.11", "v2.10", "v2.9", "v2.8", "v2.7", "v2.6",
        "v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0",
    ] {
        vs.push(json!({"id": v, "status": "SUPPORTED", "links": [{"rel": "self", "href": format!("{base}/v2/")}]}));
    }
    (status, axum::Json(json!({"versions": vs}))).into_response()
}

fn iso(micros: i64) -> String {
    let s = tessera_types::iso_micros(micros);
    format!("{}Z", &s[..19])
}

pub fn image_json(i: &ImageRow) -> Value {
    let mut v = json!({
        "id": i.id, "name": i.name, "status": i.status, "visibility": i.visibility, "protected": i.protected,
        "os_hidden": i.os_hidden, "disk_format": i.disk_format, "container_format": i.container_format,
        "min_disk": i.min_disk, "min_ram": i.min_ram, "size": i.size, "virtual_size": i.virtual_size,
        "checksum": i.checksum, "os_hash_algo": i.os_hash_algo, "os_hash_value": i.os_hash_value, "owner": i.owner,
        "tags": i.tags.iter().collect::<Vec<_>>(), "created_at": iso(i.created_at), "updated_at": iso(i.updated_at),
        "self": format!("/v2/images/{}", i.id), "file": format!("/v2/images/{}/file", i.id), "schema": "/v2/schemas/image",
    });
    if let Value::Object(m) = &mut v {
        for (k, val) in &i.properties {
            m.insert(k.clone(), json!(val));
        }
    }
    v
}

fn bad(m: impl Into<String>) -> ImageError {
    ImageError::BadRequest(m.into())
}

/// Apply one attribute to an image, validating it. Used by create and by each PATCH op.
fn set_attr(ctx: &RequestContext, i: &mut ImageRow, key: &str, value: &Value, creating: bool) -> Result<()> {
    if READ_ONLY.contains(&key) {
        return Err(ImageError::Forbidden(format!("Attribute '{key}' is read-only.")));
    }
    if key.starts_with("os_glance") {
        return Err(ImageError::Forbidden(format!("Attribute '{key}' is reserved.")));
    }
    let string_or_null = |max: usize| -> Result<Option<String>> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s.chars().count() <= max => Ok(Some(s.clone())),
            Value::String(_) => Err(bad(format!("Provided object does not match schema 'image': '{key}' is too long"))),
            other => Err(bad(format!("Provided object does not match schema 'image': {other} is not of type 'string', 'null' ({key})"))),
        }
    };
    let enum_or_null = |allowed: &[&str]| -> Result<Option<String>> {
        match string_or_null(255)? {
            Some(s) if !allowed.contains(&s.as_str()) => Err(bad(format!(
                "Invalid value '{s}' for {key}: must be one of {}",
                allowed.join(", ")
            ))),
            other => Ok(other),
        }
    };
    let nonneg = || -> Result<i64> {
        value
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| bad(format!("Provided object does not match schema 'image': {value} is not a non-negative integer ({key})")))
    };
    let boolean = || -> Result<bool> {
        value.as_bool().ok_or_else(|| {
            bad(format!(
                "Provided object does not match schema 'image': {value} is not of type 'boolean' ({key})"
            ))
        })
    };
    match key {
        "id" => {
            if !creating {
                return Err(ImageError::Forbidden("Attribute 'id' is read-only.".into()));
            }
            let s = value.as_str().ok_or_else(|| bad("id must be a string"))?;
            let u = uuid::Uuid::parse_str(s).map_err(|_| bad(format!("id {s} is not a valid UUID")))?;
            i.id = u.hyphenated().to_string();
        }
        "name" => i.name = string_or_null(255)?,
        "visibility" => {
            let v = value
                .as_str()
                .filter(|v| VISIBILITIES.contains(v))
                .ok_or_else(|| {
                    bad(format!(
                        "Invalid visibility value: {value}; must be one of {}",
                        VISIBILITIES.join(", ")
                    ))
                })?;
            if v == "public" && !ctx.is_admin() {
                return Err(ImageError::Forbidden(
                    "You are not authorized to complete publicize_image action.".into(),
                ));
            }
            i.visibility = v.to_string();
        }
        "protected" => i.protected = boolean()?,
        "os_hidden" => i.os_hidden = boolean()?,
        "min_disk" => i.min_disk = nonneg()?,
        "min_ram" => i.min_ram = nonneg()?,
        "disk_format" | "container_format" => {
            if !creating && i.status != "queued" {
                return Err(ImageError::Forbidden(format!(
                    "Attribute {key} can be only replaced for a queued image."
                )));
            }
            if key == "disk_format" {
                i.disk_format = enum_or_null(DISK_FORMATS)?;
            } else {
                i.container_format = enum_or_null(CONTAINER_FORMATS)?;
            }
        }
        "tags" => {
            let list = value
                .as_array()
                .ok_or_else(|| bad("tags must be a list of strings"))?;
            let mut tags = std::collections::BTreeSet::new();
            for t in list {
                let s = t
                    .as_str()
                    .filter(|s| !s.is_empty() && s.chars().count() <= 255)
                    .ok_or_else(|| bad(format!("Invalid tag {t}")))?;
                tags.insert(s.to_string());
            }
            i.tags = tags;
        }
        "owner" => {
            let o = string_or_null(255)?;
            if !ctx.is_admin() && o.as_deref() != ctx.project_id() {
                return Err(ImageError::Forbidden(
                    "Owner can only be set to your own project by non-admin users.".into(),
                ));
            }
            i.owner = o;
        }
        _ => {
            if key.is_empty() || key.chars().count() > 255 {
                return Err(bad(format!("Invalid property name '{key}'")));
            }
            let s = value.as_str().ok_or_else(|| {
                bad(format!(
                    "Provided object does not match schema 'image': {value} is not of type 'string' ({key})"
                ))
            })?;
            i.properties.insert(key.to_string(), s.to_string());
        }
    }
    Ok(())
}

fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Value> {
    tessera_http::body::parse_json::<Value>(Family::Glance, headers, body).map_err(ImageError::Http)
}

async fn create(State(svc): S, Caller(ctx): Caller, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let v = json_body(&headers, &body)?;
    let m = v
        .as_object()
        .ok_or_else(|| bad("Request body must be a JSON object"))?;
    let owner = ctx.project_id().map(str::to_string);
    let now = tessera_types::now_epoch_micros();
    let mut i = ImageRow {
        id: tessera_types::new_uuid(),
        name: None,
        status: "queued".into(),
        visibility: "shared".into(),
        owner,
        disk_format: None,
        container_format: None,
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        min_disk: 0,
        min_ram: 0,
        protected: false,
        os_hidden: false,
        created_at: now,
        updated_at: now,
        properties: Default::default(),
        tags: Default::default(),
    };
    for (k, val) in m {
        set_attr(&ctx, &mut i, k, val, true)?;
    }
    if let (Some(owner), true) = (&i.owner, svc.settings.image_count_quota > 0) {
        let (count, _) = store::project_usage(&svc.db, owner).await?;
        if count >= svc.settings.image_count_quota {
            return Err(ImageError::TooLarge(format!(
                "Maximum number of images exceeded: the quota is {}",
                svc.settings.image_count_quota
            )));
        }
    }
    if store::image_id_taken(&svc.db, &i.id).await? {
        return Err(ImageError::Conflict(format!(
            "An image with identifier {} already exists",
            i.id
        )));
    }
    store::image_put(&svc.db, &i, true, None)
        .await
        .map_err(|e| match e {
            ImageError::Db(d) if d.is_unique_violation() => {
                ImageError::Conflict(format!("An image with identifier {} already exists", i.id))
            }
            other => other,
        })?;
    let mut r = (StatusCode::CREATED, axum::Json(image_json(&i))).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v2/images/{}", i.id)) {
        r.headers_mut().insert(http::header::LOCATION, loc);
    }
    r.headers_mut().insert(
        "openstack-image-import-methods",
        HeaderValue::from_static(IMPORT_METHODS_HEADER),
    );
    Ok(r)
}

async fn show(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let i = svc.get_visible(&ctx, &id).await?;
    Ok(axum::Json(image_json(&i)).into_response())
}

async fn update(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.starts_with("application/openstack-images-v2.1-json-patch")
        || ct.starts_with("application/openstack-images-v2.0-json-patch"))
    {
        return Err(ImageError::UnsupportedMediaType(format!(
            "Unsupported Content-Type {ct:?}; use application/openstack-images-v2.1-json-patch"
        )));
    }
    let ops: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("Malformed JSON in request body: {e}")))?;
    let ops = ops
        .as_array()
        .ok_or_else(|| bad("A JSON patch must be a list of operations"))?;
    let mut i = svc.get_modifiable(&ctx, &id).await?;
    for op in ops {
        let o = op
            .as_object()
            .ok_or_else(|| bad("Each JSON patch operation must be an object"))?;
        let kind = o
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("Operation objects must contain 'op'"))?;
        let path = o
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("Operation objects must contain 'path'"))?;
        let key = path
            .strip_prefix('/')
            .filter(|k| !k.is_empty() && !k.contains('/'))
            .ok_or_else(|| bad(format!("Invalid JSON pointer for this resource: '{path}'")))?
            .replace("~1", "/")
            .replace("~0", "~");
        match kind {
            "add" | "replace" => {
                let value = o
                    .get("value")
                    .ok_or_else(|| bad(format!("Operation \"{kind}\" requires a member named \"value\".")))?;
                if READ_ONLY.contains(&key.as_str()) || key == "id" {
                    return Err(ImageError::Forbidden(format!("Attribute '{key}' is read-only.")));
                }
                if kind == "replace" && !has_attr(&i, &key) {
                    return Err(ImageError::Conflict(format!("Property {key} does not exist.")));
                }
                set_attr(&ctx, &mut i, &key, value, false)?;
            }
            "remove" => {
                if READ_ONLY.contains(&key.as_str())
                    || [
                        "id",
                        "name",
                        "visibility",
                        "protected",
                        "min_disk",
                        "min_ram",
                        "disk_format",
                        "container_format",
                        "owner",
                        "tags",
                        "os_hidden",
                    ]
                    .contains(&key.as_str())
                {
                    return Err(ImageError::Forbidden(format!(
                        "Attribute '{key}' cannot be removed."
                    )));
                }
                if i.properties.remove(&key).is_none() {
                    return Err(ImageError::Conflict(format!("Property {key} does not exist.")));
                }
            }
            other => {
                return Err(bad(format!(
                    "Invalid operation: `{other}`: the op must be add, replace or remove"
                )))
            }
        }
    }
    i.updated_at = tessera_types::now_epoch_micros();
    let status = i.status.clone();
    if !store::image_put(&svc.db, &i, false, Some(&status)).await? {
        return Err(ImageError::Conflict(
            "The image changed during the update; try again.".into(),
        ));
    }
    Ok(axum::Json(image_json(&i)).into_response())
}

fn has_attr(i: &ImageRow, key: &str) -> bool {
    matches!(
        key,
        "name"
            | "visibility"
            | "protected"
            | "os_hidden"
            | "min_disk"
            | "min_ram"
            | "disk_format"
            | "container_format"
            | "tags"
            | "owner"
    ) || i.properties.contains_key(key)
}

async fn delete(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let i = svc.get_modifiable(&ctx, &id).await?;
    if i.protected {
        return Err(ImageError::Forbidden(format!(
            "Image {id} is protected and cannot be deleted."
        )));
    }
    store::image_delete(&svc.db, &id).await?;
    svc.remove_data(&i).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn upload(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    svc.upload(&ctx, &id, &headers, body).await
}

async fn stage(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    svc.stage(&ctx, &id, &headers, body).await
}

async fn import(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let v = json_body(&headers, &body)?;
    svc.import(&ctx, &id, &v).await
}

async fn image_tasks(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    svc.image_tasks(&ctx, &id).await
}

async fn download(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    svc.download(&ctx, &id, &headers).await
}

async fn set_status(
    svc: &ImageService,
    ctx: &RequestContext,
    id: &str,
    from: &str,
    to: &str,
) -> Result<Response> {
    if !ctx.is_admin() {
        return Err(ImageError::Forbidden(format!(
            "You are not authorized to {} images.",
            if to == "active" {
                "reactivate"
            } else {
                "deactivate"
            }
        )));
    }
    let mut i = svc.get_visible(ctx, id).await?;
    if i.status == to {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if i.status != from {
        return Err(ImageError::BadRequest(format!(
            "Not allowed to change the status of an image in status {}",
            i.status
        )));
    }
    i.status = to.to_string();
    i.updated_at = tessera_types::now_epoch_micros();
    store::image_put(&svc.db, &i, false, Some(from)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn deactivate(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    set_status(&svc, &ctx, &id, "active", "deactivated").await
}

async fn reactivate(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    set_status(&svc, &ctx, &id, "deactivated", "active").await
}

async fn add_tag(
    State(svc): S,
    Caller(ctx): Caller,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response> {
    let mut i = svc.get_modifiable(&ctx, &id).await?;
    if tag.is_empty() || tag.chars().count() > 255 {
        return Err(bad("Invalid tag"));
    }
    if i.tags.insert(tag) {
        i.updated_at = tessera_types::now_epoch_micros();
        let st = i.status.clone();
        store::image_put(&svc.db, &i, false, Some(&st)).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_tag(
    State(svc): S,
    Caller(ctx): Caller,
    Path((id, tag)): Path<(String, String)>,
) -> Result<Response> {
    let mut i = svc.get_modifiable(&ctx, &id).await?;
    if !i.tags.remove(&tag) {
        return Err(ImageError::NotFound(format!("{id} (tag {tag})")));
    }
    i.updated_at = tessera_types::now_epoch_micros();
    let st = i.status.clone();
    store::image_put(&svc.db, &i, false, Some(&st)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- listing

fn split_in(v: &str) -> Vec<String> {
    // `in:a,b,"c,d"`
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in v.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn time_filter(col: &str, v: &str, where_: &mut String, binds: &mut Vec<Bind>) -> Result<()> {
    let (op, t) = v
        .split_once(':')
        .filter(|(o, _)| ["gt", "gte", "eq", "neq", "lt", "lte"].contains(o))
        .unwrap_or(("eq", v));
    let micros =
        tessera_types::parse_iso(t).ok_or_else(|| bad(format!("Invalid time format for {col}: {t}")))?;
    let sql_op = match op {
        "gt" => ">",
        "gte" => ">=",
        "lt" => "<",
        "lte" => "<=",
        "neq" => "<>",
        _ => "=",
    };
    where_.push_str(&format!(" AND {col} {sql_op} ?"));
    binds.push(Bind::Int(micros));
    Ok(())
}

fn sort_expr(key: &str) -> String {
    match key {
        "name" | "container_format" | "disk_format" => format!("COALESCE({key}, '')"),
        "size" => "COALESCE(size, -1)".into(),
        k => k.to_string(),
    }
}

async fn list(
    State(svc): S,
    Caller(ctx): Caller,
    RawQuery(raw): RawQuery,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response> {
    let mut where_ = String::from(" WHERE deleted = 0");
    let mut binds: Vec<Bind> = Vec::new();
    let mut limit = svc.settings.limit_default;
    let mut marker = None;
    let mut sort: Vec<(String, bool)> = Vec::new();
    let mut sort_dirs: Vec<bool> = Vec::new();
    let mut visibility: Option<String> = None;
    let mut member_status = "accepted".to_string();
    let mut os_hidden = Some(false);
    for (k, v) in &params {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .map_err(|_| bad("limit param must be an integer"))?;
                limit = limit.min(svc.settings.limit_max);
            }
            "marker" => marker = Some(v.clone()),
            "sort_key" => {
                if !SORT_KEYS.contains(&v.as_str()) {
                    return Err(bad(format!(
                        "Invalid sort key: {v}. It should be one of the following: {}",
                        SORT_KEYS.join(", ")
                    )));
                }
                sort.push((v.clone(), false));
            }
            "sort_dir" => sort_dirs.push(match v.as_str() {
                "asc" => true,
                "desc" => false,
                _ => return Err(bad(format!("Invalid sort direction: {v}"))),
            }),
            "sort" => {
                for part in v.split(',') {
                    let (key, dir) = part.split_once(':').unwrap_or((part, "desc"));
                    if !SORT_KEYS.contains(&key) {
                        return Err(bad(format!("Invalid sort key: {key}")));
                    }
                    let asc = match dir {
                        "asc" => true,
                        "desc" => false,
                        _ => return Err(bad(format!("Invalid sort direction: {dir}"))),
                    };
                    sort.push((key.to_string(), asc));
                }
            }
            "visibility" => {
                if !(VISIBILITIES.contains(&v.as_str()) || v == "all") {
                    return Err(bad(format!("Invalid visibility value: {v}")));
                }
                visibility = Some(v.clone());
            }
            "member_status" => {
                if !["pending", "accepted", "rejected", "all"].contains(&v.as_str()) {
                    return Err(bad(format!("Invalid status value: {v}")));
                }
                member_status = v.clone();
            }
            "os_hidden" => {
                os_hidden = match v.as_str() {
                    "true" | "True" => Some(true),
                    "false" | "False" => Some(false),
                    _ => return Err(bad(format!("Invalid value for os_hidden: {v}"))),
                }
            }
            "changes-since" => {
                return Err(bad(
                    "The changes-since filter is no longer available on the v2 API.",
                ))
            }
            "tag" => {
                where_.push_str(
                    " AND EXISTS (SELECT 1 FROM image_tags t WHERE t.image_id = images.id AND t.value = ?)",
                );
                binds.push(Bind::Text(v.clone()));
            }
            "size_min" | "size_max" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| bad(format!("Invalid value for {k}: {v}")))?;
                where_.push_str(if k == "size_min" {
                    " AND size >= ?"
                } else {
                    " AND size <= ?"
                });
                binds.push(Bind::Int(n));
            }
            "created_at" | "updated_at" => time_filter(k, v, &mut where_, &mut binds)?,
            "id" | "name" | "status" | "disk_format" | "container_format" | "owner" => {
                if let Some(list) = v.strip_prefix("in:") {
                    let items = split_in(list);
                    where_.push_str(&format!(" AND {k} IN {}", tessera_db::in_list(items.len())));
                    binds.extend(items.into_iter().map(Bind::Text));
                } else {
                    where_.push_str(&format!(" AND {k} = ?"));
                    binds.push(Bind::Text(v.clone()));
                }
            }
            "protected" => {
                let b = match v.as_str() {
                    "true" | "True" => 1,
                    "false" | "False" => 0,
                    _ => return Err(bad(format!("Invalid value for protected: {v}"))),
                };
                where_.push_str(" AND protected = ?");
                binds.push(Bind::Int(b));
            }
            _ => {
                // Extra property equality.
                where_.push_str(" AND EXISTS (SELECT 1 FROM image_properties p WHERE p.image_id = images.id AND p.name = ? AND p.value = ?)");
                binds.push(Bind::Text(k.clone()));
                binds.push(Bind::Text(v.clone()));
            }
        }
    }
    if let Some(h) = os_hidden {
        where_.push_str(" AND os_hidden = ?");
        binds.push(Bind::Int(h as i64));
    }
    // What the caller may see.
    let project = ctx.project_id().unwrap_or("").to_string();
    let member_clause = if member_status == "all" {
        "EXISTS (SELECT 1 FROM image_members m WHERE m.image_id = images.id AND m.member = ?)".to_string()
    } else {
        "EXISTS (SELECT 1 FROM image_members m WHERE m.image_id = images.id AND m.member = ? AND m.status = ?)".to_string()
    };
    let push_member = |binds: &mut Vec<Bind>| {
        binds.push(Bind::Text(project.clone()));
        if member_status != "all" {
            binds.push(Bind::Text(member_status.clone()));
        }
    };
    match visibility.as_deref() {
        Some("public") => where_.push_str(" AND visibility = 'public'"),
        Some("community") => where_.push_str(" AND visibility = 'community'"),
        Some("private") => {
            where_.push_str(" AND visibility = 'private'");
            if !ctx.is_admin() {
                where_.push_str(" AND owner = ?");
                binds.push(Bind::Text(project.clone()));
            }
        }
        Some("shared") => {
            where_.push_str(" AND visibility = 'shared'");
            if !ctx.is_admin() {
                where_.push_str(&format!(" AND (owner = ? OR {member_clause})"));
                binds.push(Bind::Text(project.clone()));
                push_member(&mut binds);
            }
        }
        Some(_all) if ctx.is_admin() => {}
        _ if ctx.is_admin() => where_.push_str(" AND visibility <> 'community'"),
        vis => {
            let community = if vis == Some("all") {
                " OR visibility = 'community'"
            } else {
                ""
            };
            where_.push_str(&format!(" AND (visibility = 'public' OR owner = ?{community} OR (visibility = 'shared' AND {member_clause}))"));
            binds.push(Bind::Text(project.clone()));
            push_member(&mut binds);
        }
    }
    if sort.is_empty() {
        sort.push(("created_at".into(), false));
    }
    for (i, asc) in sort_dirs.iter().enumerate() {
        if let Some(s) = sort.get_mut(i) {
            s.1 = *asc;
        }
    }
    if !sort.iter().any(|(k, _)| k == "id") {
        let last_dir = sort.last().map(|s| s.1).unwrap_or(false);
        sort.push(("id".into(), last_dir));
    }
    if let Some(m) = &marker {
        let mrow = match store::image_get(&svc.db, m).await? {
            Some(r) if svc.visible(&ctx, &r).await? => r,
            _ => return Err(bad(format!("marker {m} could not be found."))),
        };
        // (k1, k2, …) after the marker in the requested order.
        let mut ors = Vec::new();
        let mut or_binds = Vec::new();
        for n in 0..sort.len() {
            let mut parts = Vec::new();
            for (k, _) in &sort[..n] {
                parts.push(format!("{} = ?", sort_expr(k)));
                or_binds.push(sort_value(&mrow, k));
            }
            let (k, asc) = &sort[n];
            parts.push(format!("{} {} ?", sort_expr(k), if *asc { ">" } else { "<" }));
            or_binds.push(sort_value(&mrow, k));
            ors.push(format!("({})", parts.join(" AND ")));
        }
        where_.push_str(&format!(" AND ({})", ors.join(" OR ")));
        binds.extend(or_binds);
    }
    let order: Vec<String> = sort
        .iter()
        .map(|(k, asc)| format!("{} {}", sort_expr(k), if *asc { "ASC" } else { "DESC" }))
        .collect();
    let q = format!(
        "SELECT {} FROM images{where_} ORDER BY {} LIMIT {}",
        store::COLS,
        order.join(", "),
        limit
    );
    let rows = store::image_query(&svc.db, &q, &binds).await?;
    let query_without_marker: Vec<String> = raw
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("marker="))
        .map(str::to_string)
        .collect();
    let first = if query_without_marker.is_empty() {
        "/v2/images".to_string()
    } else {
        format!("/v2/images?{}", query_without_marker.join("&"))
    };
    let mut body = json!({"images": rows.iter().map(image_json).collect::<Vec<_>>(), "first": first, "schema": "/v2/schemas/images"});
    if rows.len() == limit && limit > 0 {
        if let Some(last) = rows.last() {
            let mut q = query_without_marker.clone();
            q.push(format!("marker={}", last.id));
            body["next"] = json!(format!("/v2/images?{}", q.join("&")));
        }
    }
    Ok(axum::Json(body).into_response())
}

fn sort_value(i: &ImageRow, key: &str) -> Bind {
    match key {
        "name" => Bind::Text(i.name.clone().unwrap_or_default()),
        "status" => Bind::Text(i.status.clone()),
        "container_format" => Bind::Text(i.container_format.clone().unwrap_or_default()),
        "disk_format" => Bind::Text(i.disk_format.clone().unwrap_or_default()),
        "size" => Bind::Int(i.size.unwrap_or(-1)),
        "created_at" => Bind::Int(i.created_at),
        "updated_at" => Bind::Int(i.updated_at),
        _ => Bind::Text(i.id.clone()),
    }
}

// ---------------------------------------------------------------- members

fn member_json(m: &MemberRow) -> Value {
    json!({"image_id": m.image_id, "member_id": m.member, "status": m.status, "created_at": iso(m.created_at),
           "updated_at": iso(m.updated_at), "schema": "/v2/schemas/member"})
}

async fn shared_image(svc: &ImageService, ctx: &RequestContext, id: &str) -> Result<ImageRow> {
    let i = svc.get_visible(ctx, id).await?;
    if i.visibility != "shared" {
        return Err(ImageError::Forbidden(format!(
            "Only shared images have members; image {id} is {}.",
            i.visibility
        )));
    }
    Ok(i)
}

async fn list_members(State(svc): S, Caller(ctx): Caller, Path(id): Path<String>) -> Result<Response> {
    let i = shared_image(&svc, &ctx, &id).await?;
    let owner = ctx.is_admin() || i.owner.as_deref() == ctx.project_id();
    let members: Vec<Value> = store::members(&svc.db, &id)
        .await?
        .iter()
        .filter(|m| owner || Some(m.member.as_str()) == ctx.project_id())
        .map(member_json)
        .collect();
    Ok(axum::Json(json!({"members": members, "schema": "/v2/schemas/members"})).into_response())
}

async fn add_member(
    State(svc): S,
    Caller(ctx): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let i = shared_image(&svc, &ctx, &id).await?;
    if !(ctx.is_admin() || i.owner.as_deref() == ctx.project_id()) {
        return Err(ImageError::Forbidden(
            "Only the image owner can add members.".into(),
        ));
    }
    let v = json_body(&headers, &body)?;
    let member = v
        .get("member")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("'member' is a required property"))?;
    if store::member_get(&svc.db, &id, member).await?.is_some() {
        return Err(ImageError::Conflict(format!(
            "Member {member} already exists for image {id}"
        )));
    }
    let now = tessera_types::now_epoch_micros();
    let m = MemberRow {
        image_id: id,
        member: member.to_string(),
        status: "pending".into(),
        created_at: now,
        updated_at: now,
    };
    store::member_put(&svc.db, &m, true).await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

async fn member_of(
    svc: &ImageService,
    ctx: &RequestContext,
    id: &str,
    member: &str,
) -> Result<(ImageRow, MemberRow)> {
    let i = shared_image(svc, ctx, id).await?;
    let owner = ctx.is_admin() || i.owner.as_deref() == ctx.project_id();
    if !owner && ctx.project_id() != Some(member) {
        return Err(ImageError::NotFound(format!("{id} (member {member})")));
    }
    let m = store::member_get(&svc.db, id, member)
        .await?
        .ok_or_else(|| ImageError::NotFound(format!("{id} (member {member})")))?;
    Ok((i, m))
}

async fn show_member(
    State(svc): S,
    Caller(ctx): Caller,
    Path((id, member)): Path<(String, String)>,
) -> Result<Response> {
    let (_, m) = member_of(&svc, &ctx, &id, &member).await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

async fn update_member(
    State(svc): S,
    Caller(ctx): Caller,
    Path((id, member)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let (_, mut m) = member_of(&svc, &ctx, &id, &member).await?;
    if ctx.project_id() != Some(member.as_str()) {
        return Err(ImageError::Forbidden(
            "Only the member itself can change its membership status.".into(),
        ));
    }
    let v = json_body(&headers, &body)?;
    let status = v
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("'status' is a required property"))?;
    if !["pending", "accepted", "rejected"].contains(&status) {
        return Err(bad(format!("Invalid status value: {status}")));
    }
    m.status = status.to_string();
    m.updated_at = tessera_types::now_epoch_micros();
    store::member_put(&svc.db, &m, false).await?;
    Ok(axum::Json(member_json(&m)).into_response())
}

async fn delete_member(
    State(svc): S,
    Caller(ctx): Caller,
    Path((id, member)): Path<(String, String)>,
) -> Result<Response> {
    let (i, _) = member_of(&svc, &ctx, &id, &member).await?;
    if !(ctx.is_admin() || i.owner.as_deref() == ctx.project_id()) {
        return Err(ImageError::Forbidden(
            "Only the image owner can remove members.".into(),
        ));
    }
    store::member_delete(&svc.db, &id, &member).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- schemas

fn image_schema() -> Value {
    let s_or_null = |d: &str| json!({"type": ["null", "string"], "description": d, "maxLength": 255});
    json!({
        "name": "image",
        "additionalProperties": {"type": "string"},
        "properties": {
            "id": {"type": "string", "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$", "description": "An identifier for the image"},
            "name": s_or_null("Descriptive name for the image"),
            "status": {"type": "string", "readOnly": true, "enum": ["queued", "saving", "active", "killed", "deleted", "uploading", "importing", "pending_delete", "deactivated"]},
            "visibility": {"type": "string", "enum": VISIBILITIES},
            "protected": {"type": "boolean"},
            "os_hidden": {"type": "boolean"},
            "checksum": {"type": ["null", "string"], "readOnly": true, "maxLength": 32},
            "os_hash_algo": {"type": ["null", "string"], "readOnly": true, "maxLength": 64},
            "os_hash_value": {"type": ["null", "string"], "readOnly": true, "maxLength": 128},
            "owner": s_or_null("Owner of the image"),
            "size": {"type": ["null", "integer"], "readOnly": true},
            "virtual_size": {"type": ["null", "integer"], "readOnly": true},
            "container_format": {"type": ["null", "string"], "enum": [null, "ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"]},
            "disk_format": {"type": ["null", "string"], "enum": [null, "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"]},
            "created_at": {"type": "string", "readOnly": true},
            "updated_at": {"type": "string", "readOnly": true},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}},
            "min_ram": {"type": "integer"},
            "min_disk": {"type": "integer"},
            "self": {"type": "string", "readOnly": true},
            "file": {"type": "string", "readOnly": true},
            "schema": {"type": "string", "readOnly": true},
            "direct_url": {"type": "string", "readOnly": true},
            "locations": {"type": "array", "readOnly": true},
        },
        "links": [
            {"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"}, {"rel": "describedby", "href": "{schema}"}
        ],
    })
}

fn images_schema() -> Value {
    json!({
        "name": "images",
        "properties": {"images": {"type": "array", "items": image_schema()}, "schema": {"type": "string"},
                       "first": {"type": "string"}, "next": {"type": "string"}},
        "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"}, {"rel": "describedby", "href": "{schema}"}],
    })
}

fn member_schema() -> Value {
    json!({"name": "member", "properties": {
        "image_id": {"type": "string"}, "member_id": {"type": "string"},
        "status": {"type": "string", "enum": ["pending", "accepted", "rejected"]},
        "created_at": {"type": "string"}, "updated_at": {"type": "string"}, "schema": {"type": "string"}}})
}
