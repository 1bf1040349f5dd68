//! Image data: streaming upload into a temporary file (hashing as it goes, never holding the image in
//! memory), renamed into place only when complete and recorded; streaming download with ranges.
//!
//! Crash safety: the image is `saving` while data flows; the final file appears (by rename, after fsync)
//! before the row says `active`. A process killed mid-upload leaves `saving` and a `.partial` file; on start,
//! [`crate::ImageService::recover`] puts such images back to `queued` and removes partial files, so no image is
//! ever `active` without its complete, verified data.

use crate::error::{ImageError, Result};
use crate::store::{self, ImageRow};
use crate::ImageService;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode};
use md5::Digest as _;
use std::path::PathBuf;
use tessera_types::qcow2::{inspect, Inspection};
use tessera_types::RequestContext;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 4 KiB of a file (enough for a qcow2 header).
async fn head(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let f = tokio::fs::File::open(path).await?;
    let mut head = Vec::with_capacity(4096);
    f.take(4096).read_to_end(&mut head).await?;
    Ok(head)
}

/// Virtual size: from the qcow2 header for qcow2 images; raw images are their own size.
fn virtual_size(head: &[u8], disk_format: Option<&str>, size: i64) -> Option<i64> {
    match (disk_format, inspect(head)) {
        (Some("raw") | Some("iso"), _) => Some(size),
        (Some("qcow2"), Inspection::Qcow2 { virtual_size, .. }) => i64::try_from(virtual_size).ok(),
        _ => None,
    }
}

/// Remove the `.partial` files a killed process left in `dir`.
pub(crate) async fn remove_partials(dir: &std::path::Path) -> std::io::Result<()> {
    let mut rd = tokio::fs::read_dir(dir).await?;
    while let Some(e) = rd.next_entry().await? {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".partial") {
            tokio::fs::remove_file(e.path()).await?;
        }
    }
    Ok(())
}

/// Image data must be sent as `application/octet-stream` (415 otherwise).
pub(crate) fn require_octet_stream(headers: &HeaderMap) -> Result<()> {
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/octet-stream") {
        Ok(())
    } else {
        Err(ImageError::UnsupportedMediaType(format!(
            "Content-Type {ct:?} is not supported for image data; use application/octet-stream"
        )))
    }
}

/// Where received data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transfer {
    /// `PUT /file`: into the store; the image turns `active`.
    Upload,
    /// `PUT /stage`: into staging, for a later import.
    Stage,
}

impl Transfer {
    fn status(self) -> &'static str {
        match self {
            Transfer::Upload => "saving",
            Transfer::Stage => "uploading",
        }
    }
}

impl ImageService {
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.store_dir.join(id)
    }

    /// `PUT /v2/images/{id}/file`.
    pub async fn upload(
        &self,
        ctx: &RequestContext,
        id: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response> {
        self.transfer(ctx, id, headers, body, Transfer::Upload).await
    }

    /// Receive image data for an image in `queued`: into the store (`Upload`, the image turns `active`) or
    /// into staging (`Stage`, it stays `uploading` until imported). While data flows the image is in the
    /// transfer's status; on any failure the partial file goes and the image returns to `queued`.
    pub(crate) async fn transfer(
        &self,
        ctx: &RequestContext,
        id: &str,
        headers: &HeaderMap,
        body: Body,
        kind: Transfer,
    ) -> Result<Response> {
        require_octet_stream(headers)?;
        let mut image = self.get_modifiable(ctx, id).await?;
        let status = kind.status();
        if image.status != "queued" {
            return Err(ImageError::Conflict(format!(
                "Image status transition from {} to {status} is not allowed",
                image.status
            )));
        }
        if kind == Transfer::Upload && (image.disk_format.is_none() || image.container_format.is_none()) {
            return Err(ImageError::BadRequest(
                "Properties disk_format, container_format must be set prior to saving data.".into(),
            ));
        }
        let (limit, quota_bound) = self.upload_limit(&image, headers).await?;
        image.status = status.into();
        image.updated_at = tessera_types::now_epoch_micros();
        if !store::image_put(&self.db, &image, false, Some("queued")).await? {
            return Err(ImageError::Conflict(format!(
                "Image status transition from queued to {status} is not allowed"
            )));
        }
        let (dir, dst) = match kind {
            Transfer::Upload => (self.store_dir.clone(), self.data_path(id)),
            Transfer::Stage => (self.store_dir.join("staging"), self.staging_path(id)),
        };
        let tmp = dir.join(format!(".{id}.{}.partial", uuid::Uuid::new_v4().simple()));
        let received = async {
            tokio::fs::create_dir_all(&dir).await?;
            let r = self.receive(&tmp, body, limit, quota_bound).await?;
            let head = head(&tmp).await?;
            if let Inspection::Qcow2 { backing: true, .. } = inspect(&head) {
                return Err(ImageError::BadRequest(
                    "Image data names a backing file or an external data file; refused".into(),
                ));
            }
            Ok((r, head))
        }
        .await;
        let ((size, md5, sha512), head) = match received {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                image.status = "queued".into();
                image.updated_at = tessera_types::now_epoch_micros();
                let _ = store::image_put(&self.db, &image, false, Some(status)).await;
                tracing::warn!(image_id = %id, error = %e, "receiving image data failed; image back to queued");
                return Err(e);
            }
        };
        tokio::fs::rename(&tmp, &dst).await?;
        image.size = Some(size as i64);
        if kind == Transfer::Upload {
            // Staged data is hashed again, and inspected, by the import job.
            image.checksum = Some(md5);
            image.os_hash_algo = Some("sha512".into());
            image.os_hash_value = Some(sha512);
            image.virtual_size = virtual_size(&head, image.disk_format.as_deref(), size as i64);
            image.status = "active".into();
        }
        image.updated_at = tessera_types::now_epoch_micros();
        if !store::image_put(&self.db, &image, false, Some(status)).await? {
            // Deleted while we were receiving.
            let _ = tokio::fs::remove_file(&dst).await;
            return Err(ImageError::Conflict(
                "The image was deleted while its data was being received.".into(),
            ));
        }
        tracing::info!(image_id = %id, size, status = %image.status, "image data received");
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// How many bytes an upload to `image` may bring: the size cap, or less when the owner's storage quota
    /// leaves less room (then `.1` is true). A client-announced size (`X-OpenStack-Image-Size`, sent by
    /// openstacksdk) beyond that is refused before any data is read.
    pub(crate) async fn upload_limit(&self, image: &ImageRow, headers: &HeaderMap) -> Result<(u64, bool)> {
        let owner = image.owner.clone().unwrap_or_default();
        let (_, used) = store::project_usage(&self.db, &owner).await?;
        let quota = self.settings.user_storage_quota;
        let room = if quota > 0 {
            (quota - used).max(0) as u64
        } else {
            u64::MAX
        };
        let quota_bound = quota > 0 && room < self.settings.image_size_cap;
        let limit = room.min(self.settings.image_size_cap);
        let announced = headers
            .get("x-openstack-image-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit) {
            return Err(self.too_large(quota_bound));
        }
        Ok((limit, quota_bound))
    }

    fn too_large(&self, quota_bound: bool) -> ImageError {
        ImageError::TooLarge(if quota_bound {
            "Denying attempt to upload image because it exceeds the quota".into()
        } else {
            format!(
                "Image exceeds the storage quota or the size cap of {} bytes.",
                self.settings.image_size_cap
            )
        })
    }

    /// Stream the body into `tmp`, hashing; fails past `limit` bytes.
    pub(crate) async fn receive(
        &self,
        tmp: &std::path::Path,
        body: Body,
        limit: u64,
        quota_bound: bool,
    ) -> Result<(u64, String, String)> {
        let mut file = tokio::fs::File::create(tmp).await?;
        let mut md5 = md5::Md5::new();
        let mut sha = sha2::Sha512::new();
        let mut size: u64 = 0;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ImageError::BadRequest(format!("Error reading the image data: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(self.too_large(quota_bound));
            }
            md5.update(&chunk);
            sha.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        file.sync_all().await?;
        Ok((size, hex(&md5.finalize()), hex(&sha.finalize())))
    }

    /// `GET /v2/images/{id}/file`.
    pub async fn download(&self, ctx: &RequestContext, id: &str, headers: &HeaderMap) -> Result<Response> {
        let image = self.get_visible(ctx, id).await?;
        if image.status == "deactivated" && !ctx.is_admin() {
            return Err(ImageError::Forbidden(
                "The requested image has been deactivated. Image data download is forbidden.".into(),
            ));
        }
        let Some(size) = image
            .size
            .filter(|_| image.status == "active" || image.status == "deactivated")
        else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let size = size as u64;
        let mut file = tokio::fs::File::open(self.data_path(id)).await?;
        let range = headers
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(|r| parse_range(r, size))
            .transpose()?;
        let (start, len, status) = match range {
            Some((s, e)) => (s, e - s + 1, StatusCode::PARTIAL_CONTENT),
            None => (0, size, StatusCode::OK),
        };
        file.seek(std::io::SeekFrom::Start(start)).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 * 1024);
        let mut resp = (status, Body::from_stream(stream)).into_response();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        if status == StatusCode::PARTIAL_CONTENT {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
                h.insert(http::header::CONTENT_RANGE, v);
            }
        } else if let Some(c) = image
            .checksum
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert("content-md5", c);
        }
        Ok(resp)
    }

    /// Remove an image's data and any staged data (after its row is marked deleted).
    pub async fn remove_data(&self, image: &ImageRow) {
        for p in [self.data_path(&image.id), self.staging_path(&image.id)] {
            if let Err(e) = tokio::fs::remove_file(&p).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(image_id = %image.id, error = %e, "cannot remove image data");
                }
            }
        }
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive (start, end).
fn parse_range(r: &str, size: u64) -> Result<(u64, u64)> {
    let bad =
        || ImageError::RangeNotSatisfiable(format!("Requested range {r} not satisfiable for {size} bytes"));
    let spec = r.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| bad())?;
        if n == 0 || size == 0 {
            return Err(bad());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let s: u64 = a.parse().map_err(|_| bad())?;
        let e: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse().map_err(|_| bad())?
        };
        (s, e.min(size.saturating_sub(1)))
    };
    if size == 0 || start > end || start >= size {
        return Err(bad());
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), (0, 9));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=50-500", 100).unwrap(), (50, 99));
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("items=1-2", 100).is_err());
    }
}
