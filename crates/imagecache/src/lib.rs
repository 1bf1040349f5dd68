//! The compute host's image cache (Nova's `_base` directory).
//!
//! An image is downloaded once into `<dir>/<hash>`, named by the data hash Glance recorded for it
//! (`os_hash_value`, sha512; the md5 `checksum` for images that have no sha512), and verified against that
//! hash while it streams in: data that does not match is thrown away. Instances never write to a cached
//! file (it is read-only); each gets a qcow2 overlay made with `qemu-img create -b <cached> -F <format>`, so
//! a hundred servers from one image cost one download and one copy on disk.
//!
//! Concurrency and crashes: fetches of one image on one host are serialised by a per-hash lock, so concurrent
//! boots share one download. Data is written to a hidden `.partial` file, fsynced and renamed into place only
//! once verified, so a crash never leaves a file under a hash name that does not match it; leftover partial
//! files are removed when the cache is opened.
//!
//! Cleanup: a cached file's modification time is its last use (set when it is fetched or an overlay is made
//! from it). [`ImageCache::cleanup`] removes the files that no given instance disk is backed by and that
//! were last used longer ago than the configured age.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use md5::Digest as _;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tessera_types::qcow2;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("image {0} not found")]
    NotFound(String),
    #[error("image {id} is {status}, not active")]
    NotActive { id: String, status: String },
    #[error("image {id} has no recorded hash to verify its data against")]
    NoHash { id: String },
    #[error("image {id} has disk_format {format}; only raw and qcow2 images can back instance disks")]
    UnsupportedFormat { id: String, format: String },
    #[error("image {id}: downloaded data does not match its {algo} hash (expected {expected}, got {got})")]
    HashMismatch {
        id: String,
        algo: &'static str,
        expected: String,
        got: String,
    },
    #[error("image {id}: its qcow2 data names a backing file or external data file; refused")]
    UnsafeImage { id: String },
    #[error("disk of {size} bytes is smaller than the image's virtual size of {virtual_size} bytes")]
    DiskTooSmall { size: u64, virtual_size: u64 },
    #[error("qemu-img failed: {0}")]
    QemuImg(String),
    #[error("image service: {0}")]
    Source(String),
    #[error("image cache I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// What the cache needs to know about an image (from `GET /v2/images/{id}`).
#[derive(Debug, Clone)]
pub struct ImageMeta {
    pub id: String,
    pub status: String,
    pub disk_format: Option<String>,
    pub size: Option<u64>,
    pub virtual_size: Option<u64>,
    /// `os_hash_algo`/`os_hash_value` (sha512) when recorded.
    pub sha512: Option<String>,
    /// `checksum` (md5).
    pub md5: Option<String>,
}

impl ImageMeta {
    /// Read the fields the cache uses from a Glance v2 image document.
    pub fn from_glance(v: &serde_json::Value) -> Result<Self> {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let id = s("id").ok_or_else(|| CacheError::Source("image document without an id".into()))?;
        Ok(Self {
            sha512: s("os_hash_value").filter(|_| s("os_hash_algo").as_deref() == Some("sha512")),
            md5: s("checksum"),
            status: s("status").unwrap_or_default(),
            disk_format: s("disk_format"),
            size: v.get("size").and_then(|x| x.as_u64()),
            virtual_size: v.get("virtual_size").and_then(|x| x.as_u64()),
            id,
        })
    }

    /// The cache file name and the hash that verifies it.
    fn key(&self) -> Result<(String, Expected)> {
        if let Some(h) = self.sha512.as_deref().filter(|h| is_hex(h, 128)) {
            return Ok((h.to_ascii_lowercase(), Expected::Sha512(h.to_ascii_lowercase())));
        }
        if let Some(h) = self.md5.as_deref().filter(|h| is_hex(h, 32)) {
            return Ok((
                format!("md5-{}", h.to_ascii_lowercase()),
                Expected::Md5(h.to_ascii_lowercase()),
            ));
        }
        Err(CacheError::NoHash { id: self.id.clone() })
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

enum Expected {
    Sha512(String),
    Md5(String),
}

/// Where images come from: the Image API, or anything that can describe and stream an image.
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync {
    async fn metadata(&self, image_id: &str) -> Result<ImageMeta>;
    async fn download(&self, image_id: &str) -> Result<BoxStream<'static, Result<Bytes>>>;
}

/// The Image API (Glance v2) as a source, with a token the caller provides.
pub struct GlanceSource {
    http: reqwest::Client,
    endpoint: String,
    token: String,
}

impl GlanceSource {
    /// `endpoint` is the image service's catalog URL (without `/v2`).
    pub fn new(http: reqwest::Client, endpoint: &str, token: &str) -> Self {
        Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    async fn get(&self, id: &str, suffix: &str) -> Result<reqwest::Response> {
        let url = format!("{}/v2/images/{id}{suffix}", self.endpoint);
        let r = self
            .http
            .get(&url)
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .map_err(|e| CacheError::Source(format!("GET {url}: {e}")))?;
        match r.status().as_u16() {
            200 => Ok(r),
            404 => Err(CacheError::NotFound(id.to_string())),
            s => Err(CacheError::Source(format!("GET {url}: HTTP {s}"))),
        }
    }
}

#[async_trait::async_trait]
impl ImageSource for GlanceSource {
    async fn metadata(&self, image_id: &str) -> Result<ImageMeta> {
        let v: serde_json::Value = self
            .get(image_id, "")
            .await?
            .json()
            .await
            .map_err(|e| CacheError::Source(format!("image {image_id}: {e}")))?;
        ImageMeta::from_glance(&v)
    }

    async fn download(&self, image_id: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        let r = self.get(image_id, "/file").await?;
        Ok(r.bytes_stream()
            .map(|c| c.map_err(|e| CacheError::Source(format!("image data: {e}"))))
            .boxed())
    }
}

/// A verified image in the cache.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub image_id: String,
    pub path: PathBuf,
    /// `raw` or `qcow2`: the `-F` of overlays backed by it.
    pub format: String,
    pub size: u64,
    pub virtual_size: u64,
    /// Whether this call downloaded it (false: it was already cached).
    pub downloaded: bool,
}

/// What a cleanup pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    pub in_use: usize,
    /// Unused, but used more recently than the minimum age.
    pub kept_young: usize,
}

pub struct ImageCache {
    dir: PathBuf,
    qemu_img: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageCache {
    /// Open (creating it if needed) the cache directory and drop partial files a crash left behind.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir).await?;
        let mut rd = tokio::fs::read_dir(&dir).await?;
        while let Some(e) = rd.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".partial") {
                tokio::fs::remove_file(e.path()).await?;
            }
        }
        Ok(Self {
            dir,
            qemu_img: PathBuf::from("qemu-img"),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Use this `qemu-img` instead of the one on `PATH`.
    pub fn with_qemu_img(mut self, path: impl Into<PathBuf>) -> Self {
        self.qemu_img = path.into();
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(key.to_string()).or_default().clone()
    }

    /// The image's data in the cache, downloading and verifying it first if it is not there yet.
    pub async fn fetch(&self, src: &dyn ImageSource, image_id: &str) -> Result<CachedImage> {
        let meta = src.metadata(image_id).await?;
        if meta.status != "active" {
            return Err(CacheError::NotActive {
                id: meta.id,
                status: meta.status,
            });
        }
        let format = match meta.disk_format.as_deref() {
            Some(f @ ("raw" | "qcow2")) => f.to_string(),
            other => {
                return Err(CacheError::UnsupportedFormat {
                    id: meta.id.clone(),
                    format: other.unwrap_or("(none)").to_string(),
                })
            }
        };
        let (key, expected) = meta.key()?;
        let path = self.dir.join(&key);
        let lock = self.lock_for(&key);
        let _held = lock.lock().await;
        let downloaded = if tokio::fs::try_exists(&path).await? {
            touch(&path)?;
            false
        } else {
            self.download(src, &meta, &path, &expected, &format).await?;
            true
        };
        let (size, virtual_size) = self.check(&meta, &path, &format).await?;
        Ok(CachedImage {
            image_id: meta.id,
            path,
            format,
            size,
            virtual_size,
            downloaded,
        })
    }

    async fn download(
        &self,
        src: &dyn ImageSource,
        meta: &ImageMeta,
        path: &Path,
        expected: &Expected,
        format: &str,
    ) -> Result<()> {
        let tmp = self
            .dir
            .join(format!(".{}.{}.partial", meta.id, uuid::Uuid::new_v4().simple()));
        let result = async {
            let mut stream = src.download(&meta.id).await?;
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut sha = sha2::Sha512::new();
            let mut md5 = md5::Md5::new();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                match expected {
                    Expected::Sha512(_) => sha.update(&chunk),
                    Expected::Md5(_) => md5.update(&chunk),
                }
                n += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            let (algo, want, got) = match expected {
                Expected::Sha512(h) => ("sha512", h, hex(&sha.finalize())),
                Expected::Md5(h) => ("md5", h, hex(&md5.finalize())),
            };
            if &got != want {
                return Err(CacheError::HashMismatch {
                    id: meta.id.clone(),
                    algo,
                    expected: want.clone(),
                    got,
                });
            }
            file.flush().await?;
            file.sync_all().await?;
            self.check(meta, &tmp, format).await?;
            let mut perms = file.metadata().await?.permissions();
            perms.set_readonly(true);
            tokio::fs::set_permissions(&tmp, perms).await?;
            tokio::fs::rename(&tmp, path).await?;
            tracing::info!(image_id = %meta.id, bytes = n, path = %path.display(), "image cached");
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Size and virtual size of a cached file; a qcow2 that depends on other files is refused (it could read
    /// files of the host through its backing chain).
    async fn check(&self, meta: &ImageMeta, path: &Path, format: &str) -> Result<(u64, u64)> {
        let size = tokio::fs::metadata(path).await?.len();
        let head = read_head(path).await?;
        match (format, qcow2::inspect(&head)) {
            (_, qcow2::Inspection::Qcow2 { backing: true, .. }) => {
                Err(CacheError::UnsafeImage { id: meta.id.clone() })
            }
            ("qcow2", qcow2::Inspection::Qcow2 { virtual_size, .. }) => Ok((size, virtual_size)),
            ("qcow2", qcow2::Inspection::Other) => Err(CacheError::UnsupportedFormat {
                id: meta.id.clone(),
                format: "qcow2 (but the data is not qcow2)".into(),
            }),
            _ => Ok((size, size)),
        }
    }

    /// Create an instance disk at `dest`: a qcow2 overlay backed by the cached image, of `size` bytes
    /// (default: the image's virtual size). Marks the cached image as used now.
    pub async fn create_overlay(&self, base: &CachedImage, dest: &Path, size: Option<u64>) -> Result<()> {
        if let Some(s) = size {
            if s < base.virtual_size {
                return Err(CacheError::DiskTooSmall {
                    size: s,
                    virtual_size: base.virtual_size,
                });
            }
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut cmd = tokio::process::Command::new(&self.qemu_img);
        cmd.arg("create")
            .arg("-q")
            .args(["-f", "qcow2", "-b"])
            .arg(&base.path)
            .args(["-F", &base.format])
            .arg(dest);
        if let Some(s) = size {
            cmd.arg(s.to_string());
        }
        let out = cmd.output().await.map_err(|e| {
            CacheError::QemuImg(format!(
                "cannot run {}: {e} (install qemu-utils)",
                self.qemu_img.display()
            ))
        })?;
        if !out.status.success() {
            return Err(CacheError::QemuImg(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        touch(&base.path)?;
        tracing::info!(image_id = %base.image_id, disk = %dest.display(), "instance disk created");
        Ok(())
    }

    /// Remove cached images that none of `disks` (the instance disks on this host) is backed by and that
    /// were last used at least `min_age` ago.
    pub async fn cleanup(&self, disks: &[PathBuf], min_age: Duration) -> Result<CleanupReport> {
        let mut used = HashSet::new();
        for d in disks {
            let head = match read_head(d).await {
                Ok(h) => h,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(b) = qcow2::backing_file(&head) {
                if let Some(name) = Path::new(&b).file_name() {
                    used.insert(name.to_string_lossy().into_owned());
                }
            }
        }
        let now = SystemTime::now();
        let mut report = CleanupReport::default();
        let mut rd = tokio::fs::read_dir(&self.dir).await?;
        while let Some(e) = rd.next_entry().await? {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if used.contains(&name) {
                report.in_use += 1;
                continue;
            }
            let lock = self.lock_for(&name);
            let _held = lock.lock().await;
            let Ok(meta) = tokio::fs::metadata(e.path()).await else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < min_age {
                report.kept_young += 1;
                continue;
            }
            tokio::fs::remove_file(e.path()).await?;
            tracing::info!(file = %name, age_s = age.as_secs(), "unused cached image removed");
            report.removed.push(name);
        }
        report.removed.sort();
        Ok(report)
    }
}

/// The `[image_cache]` options.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// `instances_path/subdirectory_name`.
    pub dir: PathBuf,
    /// Time between cleaner passes; None when `manager_interval` is 0.
    pub interval: Option<Duration>,
    pub remove_unused: bool,
    pub min_age: Duration,
}

impl CacheSettings {
    pub fn from_config(cfg: &tessera_config::Config) -> Self {
        let secs = |g: &str, n: &str| Duration::from_secs(cfg.get_int(g, n).max(0) as u64);
        let interval = secs("image_cache", "manager_interval");
        Self {
            dir: PathBuf::from(cfg.get_str("DEFAULT", "instances_path"))
                .join(cfg.get_str("image_cache", "subdirectory_name")),
            interval: (!interval.is_zero()).then_some(interval),
            remove_unused: cfg.get_bool("image_cache", "remove_unused_base_images"),
            min_age: secs("image_cache", "remove_unused_original_minimum_age_seconds"),
        }
    }
}

/// Run [`ImageCache::cleanup`] every `interval` with the instance disks `disks()` lists at that moment
/// (the compute agent's view of its instances). Does nothing when the settings disable it.
pub fn spawn_cleaner<F>(
    cache: Arc<ImageCache>,
    settings: &CacheSettings,
    disks: F,
) -> Option<tokio::task::JoinHandle<()>>
where
    F: Fn() -> Vec<PathBuf> + Send + Sync + 'static,
{
    let interval = settings.interval.filter(|_| settings.remove_unused)?;
    let min_age = settings.min_age;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match cache.cleanup(&disks(), min_age).await {
                Ok(r) => tracing::debug!(
                    removed = r.removed.len(),
                    in_use = r.in_use,
                    kept_young = r.kept_young,
                    "image cache cleaned"
                ),
                Err(e) => tracing::warn!(error = %e, "image cache cleanup failed"),
            }
        }
    }))
}

/// Mark a cached file as used now (its modification time is its last use).
fn touch(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.set_modified(SystemTime::now())
}

async fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = tokio::fs::File::open(path).await?;
    let mut head = Vec::with_capacity(qcow2::HEAD_LEN);
    f.take(qcow2::HEAD_LEN as u64).read_to_end(&mut head).await?;
    Ok(head)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
