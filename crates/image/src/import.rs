//! Interoperable image import with the `glance-direct` method.
//!
//! `PUT /v2/images/{id}/stage` streams data into the staging directory (status `uploading`);
//! `POST /v2/images/{id}/import` records an `api_image_import` task and moves the image to `importing`, then
//! a background job hashes and inspects the staged data, moves it into the store and makes the image
//! `active` (or puts it back to `queued` and fails the task).
//!
//! Crash safety: staged data is written to a `.partial` file and renamed only when complete; an image left
//! `uploading` without staged data goes back to `queued` on restart; an import task left `pending` or
//! `processing` is run again on restart (the job is idempotent: it takes its data from the staging file, or
//! from the store if a previous run already moved it there).

use crate::error::{ImageError, Result};
use crate::store::{self, TaskRow};
use crate::ImageService;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use md5::Digest as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_types::qcow2::{inspect, Inspection, HEAD_LEN};
use tessera_types::RequestContext;
use tokio::io::AsyncReadExt as _;

/// Import methods this service implements (advertised in `/v2/info/import` and the
/// `OpenStack-image-import-methods` header).
pub const IMPORT_METHODS: &[&str] = &["glance-direct"];
/// The only store (Glance's `file` store id).
pub const STORE_ID: &str = "file";
/// How long finished tasks are kept (Glance's `task_time_to_live`, 48 h).
const TASK_TTL_MICROS: i64 = 48 * 3600 * 1_000_000;

fn task_json(t: &TaskRow) -> Value {
    let iso = |m: i64| format!("{}Z", &tessera_types::iso_micros(m)[..19]);
    json!({
        "id": t.id,
        "type": t.kind,
        "status": t.status,
        "owner": t.owner,
        "input": serde_json::from_str::<Value>(&t.input).unwrap_or(Value::Null),
        "result": t.result.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()),
        "message": t.message,
        "image_id": t.image_id,
        "request_id": t.request_id,
        "user_id": t.user_id,
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at),
        "expires_at": t.expires_at.map(iso),
        "self": format!("/v2/tasks/{}", t.id),
        "schema": "/v2/schemas/task",
    })
}

impl ImageService {
    pub fn staging_path(&self, id: &str) -> PathBuf {
        self.store_dir.join("staging").join(id)
    }

    /// `PUT /v2/images/{id}/stage`.
    pub async fn stage(
        &self,
        ctx: &RequestContext,
        id: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        self.transfer(ctx, id, headers, body, crate::data::Transfer::Stage)
            .await
    }

    /// `POST /v2/images/{id}/import`.
    pub async fn import(self: &Arc<Self>, ctx: &RequestContext, id: &str, req: &Value) -> Result<Response> {
        let bad = |m: &str| ImageError::BadRequest(m.to_string());
        let m = req
            .as_object()
            .ok_or_else(|| bad("Request body must be a JSON object"))?;
        for k in m.keys() {
            if !["method", "stores", "all_stores", "all_stores_must_succeed"].contains(&k.as_str()) {
                return Err(bad(&format!(
                    "Additional properties are not allowed ('{k}' was unexpected)"
                )));
            }
        }
        let method = m
            .get("method")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("'method' is a required property"))?;
        let name = method
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("'name' is a required property of 'method'"))?;
        if !IMPORT_METHODS.contains(&name) {
            return Err(bad(&format!("Import method {name} is not valid.")));
        }
        for k in ["all_stores", "all_stores_must_succeed"] {
            if m.get(k).is_some_and(|v| !v.is_boolean() && !v.is_null()) {
                return Err(bad(&format!("'{k}' must be a boolean")));
            }
        }
        if let Some(stores) = m.get("stores").filter(|v| !v.is_null()) {
            let stores = stores
                .as_array()
                .ok_or_else(|| bad("'stores' must be a list of store identifiers"))?;
            if m.get("all_stores").and_then(Value::as_bool) == Some(true) && !stores.is_empty() {
                return Err(bad(
                    "All_stores parameter can't be used with x-image-meta-store header or stores parameter",
                ));
            }
            for s in stores {
                if s.as_str() != Some(STORE_ID) {
                    return Err(ImageError::Conflict(format!("Unknown store: {s}")));
                }
            }
        }
        let image = self.get_modifiable(ctx, id).await?;
        if image.disk_format.is_none() || image.container_format.is_none() {
            return Err(ImageError::Conflict(
                "'disk_format' and 'container_format' need to be set before import".into(),
            ));
        }
        let staged = tokio::fs::try_exists(self.staging_path(id)).await?;
        if image.status != "uploading" || !staged {
            return Err(ImageError::Conflict(
                "Image needs to be staged before 'glance-direct' method can be used".into(),
            ));
        }
        let now = tessera_types::now_epoch_micros();
        let task = TaskRow {
            id: tessera_types::new_uuid(),
            image_id: id.to_string(),
            kind: "api_image_import".into(),
            status: "pending".into(),
            owner: ctx.project_id().map(str::to_string),
            input: json!({"image_id": id, "import_req": req, "backend": [STORE_ID]}).to_string(),
            result: None,
            message: String::new(),
            request_id: Some(ctx.request_id.clone()),
            user_id: Some(ctx.user_id.clone()),
            created_at: now,
            updated_at: now,
            expires_at: None,
        };
        if !store::begin_import(&self.db, id, "uploading", &task).await? {
            return Err(ImageError::Conflict(
                "Image needs to be staged before 'glance-direct' method can be used".into(),
            ));
        }
        tracing::info!(image_id = %id, task_id = %task.id, "import started");
        self.clone().spawn_import(task);
        Ok(StatusCode::ACCEPTED.into_response())
    }

    fn spawn_import(self: Arc<Self>, mut task: TaskRow) {
        tokio::spawn(async move {
            if let Err(e) = self.run_import(&mut task).await {
                tracing::error!(task_id = %task.id, image_id = %task.image_id, error = %e, "import task failed");
            }
        });
    }

    /// The import job. Errors returned are storage/database failures; an import that fails on its data
    /// (bad format, deleted image) ends with a failed task and the image back to `queued`.
    async fn run_import(&self, task: &mut TaskRow) -> Result<()> {
        task.status = "processing".into();
        task.updated_at = tessera_types::now_epoch_micros();
        store::task_update(&self.db, task).await?;
        let id = task.image_id.clone();
        let outcome = self.import_data(&id, task).await;
        let now = tessera_types::now_epoch_micros();
        match outcome {
            Ok(()) => {
                tracing::info!(image_id = %id, task_id = %task.id, "image imported");
                Ok(())
            }
            Err(e) => {
                task.updated_at = now;
                task.expires_at = Some(now + TASK_TTL_MICROS);
                task.result = None;
                task.status = "failure".into();
                task.message = e.to_string();
                // The task says why before the image shows `queued` again: whoever sees the image back in
                // `queued` finds a finished, failed task.
                store::task_update(&self.db, task).await?;
                let _ = tokio::fs::remove_file(self.staging_path(&id)).await;
                if let Some(mut i) = store::image_get(&self.db, &id).await? {
                    if i.status == "importing" {
                        i.status = "queued".into();
                        i.size = None;
                        i.updated_at = now;
                        i.properties
                            .insert("os_glance_failed_import".into(), STORE_ID.into());
                        store::image_put(&self.db, &i, false, Some("importing")).await?;
                    }
                }
                tracing::warn!(image_id = %id, task_id = %task.id, error = %e, "import failed; image back to queued");
                Ok(())
            }
        }
    }

    /// Moves the data into the store and, in one transaction, turns the image active and the task to
    /// `success`.
    async fn import_data(&self, id: &str, task: &mut TaskRow) -> Result<()> {
        let Some(mut image) = store::image_get(&self.db, id)
            .await?
            .filter(|i| i.status == "importing")
        else {
            return Err(ImageError::Conflict(format!("Image {id} is no longer importing")));
        };
        let staged = self.staging_path(id);
        let dst = self.data_path(id);
        let src = if tokio::fs::try_exists(&staged).await? {
            staged.clone()
        } else if tokio::fs::try_exists(&dst).await? {
            dst.clone()
        } else {
            return Err(ImageError::Conflict("The staged image data is missing".into()));
        };
        let (size, md5, sha512, head) = hash_file(&src).await?;
        let inspection = inspect(&head);
        let virtual_size = match (image.disk_format.as_deref(), &inspection) {
            (_, Inspection::Qcow2 { backing: true, .. }) => {
                return Err(ImageError::BadRequest(
                    "Image data names a backing file or an external data file; refused".into(),
                ))
            }
            (Some("qcow2"), Inspection::Qcow2 { virtual_size, .. }) => i64::try_from(*virtual_size).ok(),
            (Some("qcow2"), Inspection::Other) => {
                return Err(ImageError::BadRequest(
                    "Image data does not match disk_format qcow2".into(),
                ))
            }
            (Some("raw") | Some("iso"), Inspection::Other) => Some(size as i64),
            (Some(f), Inspection::Qcow2 { .. }) if f != "qcow2" => {
                return Err(ImageError::BadRequest(format!(
                    "Image data is qcow2 but disk_format is {f}"
                )))
            }
            _ => None,
        };
        if src != dst {
            tokio::fs::rename(&src, &dst).await?;
        }
        image.size = Some(size as i64);
        image.checksum = Some(md5);
        image.os_hash_algo = Some("sha512".into());
        image.os_hash_value = Some(sha512);
        image.virtual_size = virtual_size;
        image.status = "active".into();
        image.properties.remove("os_glance_failed_import");
        let now = tessera_types::now_epoch_micros();
        image.updated_at = now;
        task.status = "success".into();
        task.result = Some(json!({"image_id": id}).to_string());
        task.updated_at = now;
        task.expires_at = Some(now + TASK_TTL_MICROS);
        if !store::finish_import(&self.db, &image, task).await? {
            let _ = tokio::fs::remove_file(&dst).await;
            return Err(ImageError::Conflict(
                "The image was deleted during the import".into(),
            ));
        }
        Ok(())
    }

    /// On start: finish import tasks a crash interrupted; images left `uploading` without staged data
    /// (the stage request died) go back to `queued`.
    pub(crate) async fn recover_imports(self: &Arc<Self>) -> Result<()> {
        let dir = self.store_dir.join("staging");
        tokio::fs::create_dir_all(&dir).await?;
        crate::data::remove_partials(&dir).await?;
        let mut resumed = std::collections::HashSet::new();
        for task in store::tasks_unfinished(&self.db).await? {
            let importing = store::image_get(&self.db, &task.image_id)
                .await?
                .is_some_and(|i| i.status == "importing");
            if importing && resumed.insert(task.image_id.clone()) {
                tracing::warn!(image_id = %task.image_id, task_id = %task.id, "resuming an interrupted import");
                self.clone().spawn_import(task);
            } else {
                let mut t = task;
                t.status = "failure".into();
                t.message = "The import was interrupted by a restart".into();
                t.updated_at = tessera_types::now_epoch_micros();
                t.expires_at = Some(t.updated_at + TASK_TTL_MICROS);
                store::task_update(&self.db, &t).await?;
            }
        }
        for id in store::images_in_status(&self.db, "uploading").await? {
            if !tokio::fs::try_exists(self.staging_path(&id)).await? {
                if let Some(mut i) = store::image_get(&self.db, &id).await? {
                    i.status = "queued".into();
                    i.size = None;
                    i.updated_at = tessera_types::now_epoch_micros();
                    store::image_put(&self.db, &i, false, Some("uploading")).await?;
                    tracing::warn!(image_id = %id, "staging interrupted by a restart; image back to queued");
                }
            }
        }
        Ok(())
    }

    /// `GET /v2/images/{id}/tasks`: the owner's (or an admin's) view of the image's import tasks.
    pub async fn image_tasks(&self, ctx: &RequestContext, id: &str) -> Result<Response> {
        self.get_modifiable(ctx, id).await?;
        let tasks: Vec<Value> = store::tasks_for_image(&self.db, id)
            .await?
            .iter()
            .map(task_json)
            .collect();
        Ok(axum::Json(json!({"tasks": tasks})).into_response())
    }
}

/// Size, md5, sha512 and the first 64 KiB of a file, read in 1 MiB blocks.
async fn hash_file(path: &Path) -> Result<(u64, String, String, Vec<u8>)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut md5 = md5::Md5::new();
    let mut sha = sha2::Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if head.len() < HEAD_LEN {
            let take = (HEAD_LEN - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        md5.update(&buf[..n]);
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok((
        size,
        crate::data::hex(&md5.finalize()),
        crate::data::hex(&sha.finalize()),
        head,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_methods_header_lists_the_methods() {
        assert_eq!(crate::api::IMPORT_METHODS_HEADER, IMPORT_METHODS.join(","));
    }
}
