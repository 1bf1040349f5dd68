//! The cache with an in-memory image source and the real `qemu-img`.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use md5::Digest as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tessera_imagecache::{CacheError, ImageCache, ImageMeta, ImageSource, Result};

struct Fake {
    images: Vec<(ImageMeta, Vec<u8>)>,
    downloads: AtomicUsize,
}

#[async_trait::async_trait]
impl ImageSource for Fake {
    async fn metadata(&self, id: &str) -> Result<ImageMeta> {
        self.images
            .iter()
            .find(|(m, _)| m.id == id)
            .map(|(m, _)| m.clone())
            .ok_or_else(|| CacheError::NotFound(id.into()))
    }
    async fn download(&self, id: &str) -> Result<BoxStream<'static, Result<Bytes>>> {
        self.downloads.fetch_add(1, Ordering::SeqCst);
        let data = self.images.iter().find(|(m, _)| m.id == id).unwrap().1.clone();
        // Arrive in small pieces, slowly enough that concurrent fetches overlap.
        let chunks: Vec<Result<Bytes>> = data.chunks(4096).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Ok(futures_util::stream::iter(chunks)
            .then(|c| async {
                tokio::task::yield_now().await;
                c
            })
            .boxed())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn meta(id: &str, fmt: &str, data: &[u8], sha: Option<String>) -> ImageMeta {
    ImageMeta {
        id: id.into(),
        status: "active".into(),
        disk_format: Some(fmt.into()),
        size: Some(data.len() as u64),
        virtual_size: None,
        sha512: sha.or_else(|| Some(hex(&sha2::Sha512::digest(data)))),
        md5: Some(hex(&md5::Md5::digest(data))),
    }
}

/// A real qcow2 image made by qemu-img.
fn qcow2_bytes(dir: &std::path::Path, size: &str) -> Vec<u8> {
    let p = dir.join("src.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg(size)
        .status()
        .expect("qemu-img is needed (apt-get install qemu-utils)");
    assert!(st.success());
    std::fs::read(&p).unwrap()
}

fn qemu_info(p: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn one_download_verified_overlays_and_cleanup() {
    let work = tempfile::tempdir().unwrap();
    let q = qcow2_bytes(work.path(), "16M");
    let raw: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let corrupt = b"tampered with".to_vec();
    let src = Arc::new(Fake {
        images: vec![
            (meta("q", "qcow2", &q, None), q.clone()),
            (meta("r", "raw", &raw, None), raw.clone()),
            (meta("bad", "raw", &corrupt, Some("ab".repeat(64))), corrupt),
            (meta("iso", "iso", b"x", None), b"x".to_vec()),
        ],
        downloads: AtomicUsize::new(0),
    });
    let cache = Arc::new(ImageCache::open(work.path().join("_base")).await.unwrap());

    // Ten concurrent boots of one image: one download.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, s) = (cache.clone(), src.clone());
        tasks.push(tokio::spawn(
            async move { c.fetch(s.as_ref(), "q").await.unwrap() },
        ));
    }
    let mut fetched = Vec::new();
    for t in tasks {
        fetched.push(t.await.unwrap());
    }
    assert_eq!(src.downloads.load(Ordering::SeqCst), 1);
    assert_eq!(fetched.iter().filter(|c| c.downloaded).count(), 1);
    let base = fetched.pop().unwrap();
    assert_eq!(base.virtual_size, 16 << 20);
    assert_eq!(base.format, "qcow2");
    assert_eq!(std::fs::read(&base.path).unwrap(), q);
    assert!(std::fs::metadata(&base.path).unwrap().permissions().readonly());

    // A hash mismatch leaves nothing behind; unsupported formats are refused before downloading.
    let e = cache.fetch(src.as_ref(), "bad").await.unwrap_err();
    assert!(matches!(e, CacheError::HashMismatch { .. }), "{e}");
    assert!(matches!(
        cache.fetch(src.as_ref(), "iso").await.unwrap_err(),
        CacheError::UnsupportedFormat { .. }
    ));
    assert!(matches!(
        cache.fetch(src.as_ref(), "nope").await.unwrap_err(),
        CacheError::NotFound(_)
    ));
    let names: Vec<String> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // Overlays: backed by the cached file, with the right backing format, default or larger size.
    let disks: Vec<PathBuf> = (0..3)
        .map(|i| work.path().join(format!("inst{i}/disk")))
        .collect();
    cache.create_overlay(&base, &disks[0], None).await.unwrap();
    cache
        .create_overlay(&base, &disks[1], Some(1 << 30))
        .await
        .unwrap();
    let info = qemu_info(&disks[0]);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["backing-filename"], base.path.display().to_string());
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert_eq!(info["virtual-size"], 16 << 20);
    assert_eq!(qemu_info(&disks[1])["virtual-size"], 1u64 << 30);
    assert!(matches!(
        cache
            .create_overlay(&base, &disks[2], Some(1 << 20))
            .await
            .unwrap_err(),
        CacheError::DiskTooSmall { .. }
    ));
    let raw_base = cache.fetch(src.as_ref(), "r").await.unwrap();
    cache
        .create_overlay(&raw_base, &disks[2], Some(8 << 20))
        .await
        .unwrap();
    assert_eq!(qemu_info(&disks[2])["backing-filename-format"], "raw");

    // Cleanup: nothing goes while disks use both images, or while an unused image is young.
    let r = cache.cleanup(&disks, Duration::from_secs(3600)).await.unwrap();
    assert_eq!((r.in_use, r.removed.len()), (2, 0));
    std::fs::remove_file(&disks[2]).unwrap();
    let r = cache.cleanup(&disks, Duration::from_secs(3600)).await.unwrap();
    assert_eq!((r.in_use, r.kept_young, r.removed.len()), (1, 1, 0));
    // Once old enough, the unused one goes and the used one stays, however old.
    for p in [&base.path, &raw_base.path] {
        std::fs::File::open(p)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
    }
    let r = cache.cleanup(&disks, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(
        r.removed,
        vec![raw_base.path.file_name().unwrap().to_string_lossy().into_owned()]
    );
    assert!(base.path.exists() && !raw_base.path.exists());
    // Fetching again after removal downloads again.
    let again = cache.fetch(src.as_ref(), "r").await.unwrap();
    assert!(again.downloaded);
}

#[tokio::test]
async fn partial_files_from_a_crash_are_removed_and_unsafe_qcow2_refused() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("_base");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".img.123.partial"), b"half").unwrap();
    let cache = ImageCache::open(&dir).await.unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);

    // A qcow2 whose header points at a host file is refused even when its hash matches.
    let base = work.path().join("b.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let ov = work.path().join("evil.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&ov)
        .status()
        .unwrap();
    assert!(st.success());
    let evil = std::fs::read(&ov).unwrap();
    let src = Fake {
        images: vec![(meta("evil", "qcow2", &evil, None), evil)],
        downloads: AtomicUsize::new(0),
    };
    assert!(matches!(
        cache.fetch(&src, "evil").await.unwrap_err(),
        CacheError::UnsafeImage { .. }
    ));
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "refused data is not kept"
    );
}

#[tokio::test]
async fn settings_come_from_the_nova_option_names_and_the_cleaner_runs() {
    let work = tempfile::tempdir().unwrap();
    let mut cfg = tessera_config::Config::defaults();
    cfg.set("DEFAULT", "state_path", work.path().display().to_string())
        .unwrap();
    let s = tessera_imagecache::CacheSettings::from_config(&cfg);
    assert_eq!(s.dir, work.path().join("instances").join("_base"));
    assert_eq!(s.interval, Some(Duration::from_secs(2400)));
    assert_eq!(s.min_age, Duration::from_secs(86400));
    cfg.set("image_cache", "manager_interval", "0").unwrap();
    assert_eq!(
        tessera_imagecache::CacheSettings::from_config(&cfg).interval,
        None
    );

    // A cleaner with a short interval removes an old, unused file.
    let cache = Arc::new(ImageCache::open(&s.dir).await.unwrap());
    let f = s.dir.join("md5-00000000000000000000000000000000");
    std::fs::write(&f, b"old").unwrap();
    std::fs::File::open(&f)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(100_000))
        .unwrap();
    let fast = tessera_imagecache::CacheSettings {
        interval: Some(Duration::from_millis(20)),
        ..s
    };
    let h = tessera_imagecache::spawn_cleaner(cache, &fast, Vec::new).unwrap();
    for _ in 0..200 {
        if !f.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.abort();
    assert!(!f.exists());
}
