//! The Image service: the Glance v2 API subset Nova and the clients use, over a filesystem store where data is
//! written to a temporary file, verified and renamed into place before the image turns `active`.

pub mod api;
pub mod data;
pub mod error;
pub mod import;
pub mod store;

use crate::error::{ImageError, Result};
use std::path::PathBuf;
use std::sync::Arc;
use tessera_config::Config;
use tessera_db::Db;
use tessera_types::RequestContext;

#[derive(Debug, Clone)]
pub struct Settings {
    pub image_size_cap: u64,
    /// Bytes per project; 0 = unlimited.
    pub user_storage_quota: i64,
    /// Images per project; 0 = unlimited.
    pub image_count_quota: i64,
    pub limit_default: usize,
    pub limit_max: usize,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            image_size_cap: cfg.get_int("image", "image_size_cap") as u64,
            user_storage_quota: cfg.get_int("image", "user_storage_quota"),
            image_count_quota: cfg.get_int("image", "image_count_quota"),
            limit_default: cfg.get_int("image", "limit_param_default") as usize,
            limit_max: cfg.get_int("image", "api_limit_max") as usize,
        }
    }
}

pub struct ImageService {
    pub db: Db,
    pub store_dir: PathBuf,
    pub settings: Settings,
}

impl ImageService {
    pub async fn new(db: Db, store_dir: PathBuf, settings: Settings) -> Result<Arc<Self>> {
        tokio::fs::create_dir_all(&store_dir).await?;
        let s = Arc::new(Self {
            db,
            store_dir,
            settings,
        });
        s.recover().await?;
        s.recover_imports().await?;
        Ok(s)
    }

    /// After a crash: uploads that were in flight go back to `queued`, their partial files are removed.
    pub async fn recover(&self) -> Result<()> {
        for id in store::images_in_status(&self.db, "saving").await? {
            if let Some(mut i) = store::image_get(&self.db, &id).await? {
                i.status = "queued".into();
                i.updated_at = tessera_types::now_epoch_micros();
                store::image_put(&self.db, &i, false, Some("saving")).await?;
                tracing::warn!(image_id = %id, "upload interrupted by a restart; image back to queued");
            }
        }
        data::remove_partials(&self.store_dir).await?;
        Ok(())
    }

    /// Whether the caller may see an image at all (others' private images are invisible: 404).
    pub async fn visible(&self, ctx: &RequestContext, i: &store::ImageRow) -> Result<bool> {
        if ctx.is_admin() || i.visibility == "public" || i.visibility == "community" {
            return Ok(true);
        }
        let Some(p) = ctx.project_id() else {
            return Ok(false);
        };
        if i.owner.as_deref() == Some(p) {
            return Ok(true);
        }
        Ok(i.visibility == "shared" && store::member_get(&self.db, &i.id, p).await?.is_some())
    }

    pub async fn get_visible(&self, ctx: &RequestContext, id: &str) -> Result<store::ImageRow> {
        match store::image_get(&self.db, id).await? {
            Some(i) if self.visible(ctx, &i).await? => Ok(i),
            _ => Err(ImageError::NotFound(id.to_string())),
        }
    }

    /// The image, if the caller owns it (or is admin); 404 if invisible, 403 if visible but not theirs.
    pub async fn get_modifiable(&self, ctx: &RequestContext, id: &str) -> Result<store::ImageRow> {
        let i = self.get_visible(ctx, id).await?;
        if ctx.is_admin() || (i.owner.is_some() && i.owner.as_deref() == ctx.project_id()) {
            Ok(i)
        } else {
            Err(ImageError::Forbidden(
                "You are not permitted to modify this image.".into(),
            ))
        }
    }
}
