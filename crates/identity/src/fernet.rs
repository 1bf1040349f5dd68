//! The Fernet key repository and the token format.
//!
//! Keys live in a directory as Keystone keeps them: files named by integers, `0` the staged key (decrypts
//! only, becomes the next primary), the highest number the primary (encrypts and decrypts), the others
//! secondary (decrypt only). `setup` creates 0 and 1; `rotate` promotes 0 to max+1, writes a new 0 and
//! prunes the oldest so at most `max_active_keys` remain. Every process that validates tokens reads the same
//! repository and notices rotations by itself.
//!
//! A token is a Fernet message (AES-128-CBC + HMAC-SHA256, timestamped) over a msgpack payload, base64url
//! without padding. Nothing about a token is stored server-side; names, roles and the catalog are recomputed
//! on validation so changes apply at once.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key repository {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key repository {0} has no keys; run `tessera manage fernet_setup`")]
    Empty(String),
    #[error("key file {0} does not hold a valid Fernet key")]
    BadKey(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Key file numbers present in the repository, ascending.
fn key_numbers(dir: &Path) -> Result<Vec<u64>, KeyError> {
    let mut nums = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(nums),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
            nums.push(n);
        }
    }
    nums.sort_unstable();
    Ok(nums)
}

fn write_key(dir: &Path, n: u64) -> Result<(), KeyError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = dir.join(format!(".tmp-{n}"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(fernet::Fernet::generate_key().as_bytes())
        .map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    let dst = dir.join(n.to_string());
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))
}

fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// `fernet_setup`: create keys 0 and 1 unless keys exist already. Returns whether it created them.
pub fn setup(dir: &Path) -> Result<bool, KeyError> {
    ensure_dir(dir)?;
    if !key_numbers(dir)?.is_empty() {
        return Ok(false);
    }
    write_key(dir, 0)?;
    write_key(dir, 1)?;
    Ok(true)
}

/// `fernet_rotate`: staged key 0 becomes primary max+1, a new staged key is written, and the oldest
/// secondaries are removed to keep `max_active` keys. Returns the new primary's number.
pub fn rotate(dir: &Path, max_active: usize) -> Result<u64, KeyError> {
    ensure_dir(dir)?;
    let nums = key_numbers(dir)?;
    if nums.is_empty() {
        setup(dir)?;
        return Ok(1);
    }
    let next = nums.last().copied().unwrap_or(0) + 1;
    if nums.contains(&0) {
        let from = dir.join("0");
        let to = dir.join(next.to_string());
        std::fs::rename(&from, &to).map_err(io_err(&to))?;
    } else {
        write_key(dir, next)?;
    }
    write_key(dir, 0)?;
    let mut nums = key_numbers(dir)?;
    // Keep the staged key (0) and the newest ones.
    let max_active = max_active.max(2);
    while nums.len() > max_active {
        let Some(pos) = nums.iter().position(|n| *n != 0) else {
            break;
        };
        let victim = nums.remove(pos);
        let path = dir.join(victim.to_string());
        std::fs::remove_file(&path).map_err(io_err(&path))?;
    }
    Ok(next)
}

/// Loaded keys: primary first, then secondaries newest first, staged last.
struct Loaded {
    multi: fernet::MultiFernet,
    primary: fernet::Fernet,
    count: usize,
    stamp: Option<std::time::SystemTime>,
    checked: Instant,
}

fn load(dir: &Path) -> Result<Loaded, KeyError> {
    let mut nums = key_numbers(dir)?;
    if nums.is_empty() {
        return Err(KeyError::Empty(dir.display().to_string()));
    }
    nums.sort_unstable_by(|a, b| {
        // primary (max) first, then descending, staged (0) last
        match (*a == 0, *b == 0) {
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => b.cmp(a),
        }
    });
    let mut keys = Vec::new();
    for n in &nums {
        let path = dir.join(n.to_string());
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let k =
            fernet::Fernet::new(text.trim()).ok_or_else(|| KeyError::BadKey(path.display().to_string()))?;
        keys.push(k);
    }
    let primary = keys[0].clone();
    Ok(Loaded {
        count: keys.len(),
        multi: fernet::MultiFernet::new(keys),
        primary,
        stamp: dir_stamp(dir),
        checked: Instant::now(),
    })
}

fn dir_stamp(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(dir).and_then(|m| m.modified()).ok()
}

/// The key ring of one process, reloaded when the repository changes.
pub struct KeyRing {
    dir: PathBuf,
    inner: RwLock<Loaded>,
}

const RECHECK: Duration = Duration::from_secs(2);

impl KeyRing {
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            inner: RwLock::new(load(dir)?),
        })
    }

    pub fn key_count(&self) -> usize {
        self.inner.read().map(|l| l.count).unwrap_or(0)
    }

    /// Reload if the directory changed since the last look (checked at most every few seconds).
    fn refresh(&self, force: bool) {
        let stale = match self.inner.read() {
            Ok(l) => force || l.checked.elapsed() > RECHECK,
            Err(_) => true,
        };
        if !stale {
            return;
        }
        let stamp = dir_stamp(&self.dir);
        if let Ok(mut l) = self.inner.write() {
            l.checked = Instant::now();
            if l.stamp == stamp && !force {
                return;
            }
            match load(&self.dir) {
                Ok(new) => {
                    tracing::info!(keys = new.count, "reloaded fernet key repository");
                    *l = new;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reload fernet key repository; keeping loaded keys")
                }
            }
        }
    }

    /// Encrypt a payload with the primary key; returns the token without base64 padding.
    pub fn encrypt(&self, payload: &[u8], at_epoch: u64) -> String {
        self.refresh(false);
        let token = match self.inner.read() {
            Ok(l) => l.primary.encrypt_at_time(payload, at_epoch),
            Err(p) => p.into_inner().primary.encrypt_at_time(payload, at_epoch),
        };
        token.trim_end_matches('=').to_string()
    }

    /// Decrypt a token with any key. Returns the payload and the Fernet timestamp (epoch seconds).
    pub fn decrypt(&self, token: &str) -> Option<(Vec<u8>, u64)> {
        if token.len() < 80
            || token.len() > 1024
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let padded = match token.len() % 4 {
            2 => format!("{token}=="),
            3 => format!("{token}="),
            _ => token.to_string(),
        };
        self.refresh(false);
        let attempt = |l: &Loaded| l.multi.decrypt(&padded).ok();
        let mut out = self.inner.read().ok().and_then(|l| attempt(&l));
        if out.is_none() {
            // A key may have been rotated in by another process a moment ago.
            self.refresh(true);
            out = self.inner.read().ok().and_then(|l| attempt(&l));
        }
        let payload = out?;
        let raw = base64::engine::general_purpose::URL_SAFE
            .decode(padded.as_bytes())
            .ok()?;
        let ts = u64::from_be_bytes(raw.get(1..9)?.try_into().ok()?);
        Some((payload, ts))
    }
}

/// What a token carries. Version tells the scope kind, as Keystone's payload versions do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload(
    /// 0 unscoped, 1 domain, 2 project, 8 system, 9 application credential (project)
    pub u8,
    /// user id
    pub String,
    /// methods bitmask: password=2, token=4, application_credential=32
    pub u8,
    /// project or domain id
    pub Option<String>,
    /// expires_at, epoch microseconds
    pub i64,
    /// audit ids: own, then the chain's first
    pub Vec<String>,
    /// application credential id
    pub Option<String>,
    /// issued_at, epoch microseconds (finer than the Fernet timestamp, for revocation ordering)
    pub i64,
);

pub const METHOD_PASSWORD: u8 = 2;
pub const METHOD_TOKEN: u8 = 4;
pub const METHOD_APP_CRED: u8 = 32;

pub fn methods_list(mask: u8) -> Vec<&'static str> {
    let mut v = Vec::new();
    if mask & METHOD_PASSWORD != 0 {
        v.push("password");
    }
    if mask & METHOD_TOKEN != 0 {
        v.push("token");
    }
    if mask & METHOD_APP_CRED != 0 {
        v.push("application_credential");
    }
    v
}

impl Payload {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Option<Self> {
        rmp_serde::from_slice(b).ok()
    }
}

/// A new audit id: 16 random bytes, base64url without padding (22 characters), as Keystone makes them.
pub fn new_audit_id() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_rotate_and_prune() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("keys");
        assert!(setup(&dir).unwrap());
        assert!(!setup(&dir).unwrap());
        assert_eq!(key_numbers(&dir).unwrap(), vec![0, 1]);
        let ring = KeyRing::open(&dir).unwrap();
        let t1 = ring.encrypt(b"hello", 1000);
        assert!(!t1.ends_with('='));
        assert_eq!(ring.decrypt(&t1).unwrap(), (b"hello".to_vec(), 1000));
        // Staged key becomes primary; old tokens still decrypt.
        let staged = std::fs::read_to_string(dir.join("0")).unwrap();
        assert_eq!(rotate(&dir, 3).unwrap(), 2);
        assert_eq!(std::fs::read_to_string(dir.join("2")).unwrap(), staged);
        assert_eq!(key_numbers(&dir).unwrap(), vec![0, 1, 2]);
        let ring2 = KeyRing::open(&dir).unwrap();
        assert!(ring2.decrypt(&t1).is_some());
        // Two more rotations prune key 1: tokens made with it fail.
        rotate(&dir, 3).unwrap();
        rotate(&dir, 3).unwrap();
        assert_eq!(key_numbers(&dir).unwrap(), vec![0, 3, 4]);
        let ring3 = KeyRing::open(&dir).unwrap();
        assert!(ring3.decrypt(&t1).is_none());
        // Garbage and tampering fail.
        assert!(ring3.decrypt("not-a-token").is_none());
        let t = ring3.encrypt(b"x", 5);
        let mut bad = t.clone().into_bytes();
        let i = bad.len() / 2;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert!(ring3.decrypt(std::str::from_utf8(&bad).unwrap()).is_none());
    }

    #[test]
    fn payload_round_trip() {
        let p = Payload(
            2,
            "u".into(),
            METHOD_PASSWORD,
            Some("p".into()),
            5,
            vec![new_audit_id()],
            None,
            1,
        );
        assert_eq!(Payload::decode(&p.encode()), Some(p));
        assert_eq!(new_audit_id().len(), 22);
        assert_eq!(
            methods_list(METHOD_PASSWORD | METHOD_TOKEN),
            vec!["password", "token"]
        );
    }
}
