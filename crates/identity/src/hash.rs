//! Password and secret hashing with Argon2id on a small, fixed pool of threads.
//!
//! Argon2id is memory-hard by design (19 MiB per hash by default), so running one hash per request on the
//! runtime's unbounded blocking pool lets a burst of logins take gigabytes and starve everything else. A fixed
//! pool (one thread per core) bounds both: memory to `threads × memory cost`, reused by each thread, and CPU to
//! what the machine has; excess requests queue.

use crate::error::{IdentityError, Result};
use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
}

thread_local! {
    /// Each pool thread keeps its Argon2 working memory, so hashing allocates nothing after warm-up.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Argon2 over this thread's reusable memory.
fn compute(alg: &Argon2<'_>, params: &Params, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<()> {
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        let need = params.block_count();
        if m.len() < need {
            m.resize(need, Block::default());
        }
        alg.hash_password_into_with_memory(password, salt, out, &mut m[..need])
            .map_err(|e| IdentityError::Internal(e.to_string()))
    })
}

fn hash_blocking(p: HashParams, password: &str) -> Result<String> {
    let err = |e: argon2::password_hash::Error| IdentityError::Internal(e.to_string());
    let params = Params::new(p.memory_kib, p.iterations, 1, Some(32))
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
    let alg = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_raw = salt.as_salt().decode_b64(&mut salt_buf).map_err(err)?;
    let mut out = [0u8; 32];
    compute(&alg, &params, password.as_bytes(), salt_raw, &mut out)?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().map_err(err)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(err)?),
    };
    Ok(phc.to_string())
}

fn verify_blocking(password: &str, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(alg) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or_default();
    let mut salt_buf = [0u8; 64];
    let Ok(salt_raw) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let a = Argon2::new(alg, version, params.clone());
    if compute(&a, &params, password.as_bytes(), salt_raw, &mut out).is_err() {
        return false;
    }
    // Output's equality is constant-time.
    Output::new(&out).map(|o| o == expected).unwrap_or(false)
}

type Job = Box<dyn FnOnce() + Send>;

/// Jobs submitted and not finished; when it drops to zero the threads release their memory.
static PENDING: AtomicUsize = AtomicUsize::new(0);

fn pool() -> &'static Mutex<mpsc::Sender<Job>> {
    static POOL: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        for i in 0..n {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => {
                            job();
                            // Nothing else queued: give the working memory back until the next burst.
                            if PENDING.fetch_sub(1, Ordering::AcqRel) == 1 {
                                MEMORY.with(|m| *m.borrow_mut() = Vec::new());
                            }
                        }
                        Err(_) => return,
                    }
                });
        }
        Mutex::new(tx)
    })
}

/// Run `f` on the hashing pool.
async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    PENDING.fetch_add(1, Ordering::AcqRel);
    pool()
        .lock()
        .map_err(|_| IdentityError::Internal("hash pool poisoned".into()))?
        .send(job)
        .map_err(|_| IdentityError::Internal("hash pool stopped".into()))?;
    rx.await
        .map_err(|_| IdentityError::Internal("hash job dropped".into()))
}

/// Hash a password (PHC string, salt included).
pub async fn hash(p: HashParams, password: String) -> Result<String> {
    run(move || hash_blocking(p, &password)).await?
}

/// Check a password against a stored hash. The parameters recorded in the hash are the ones used.
pub async fn verify(password: String, stored: String) -> bool {
    run(move || verify_blocking(&password, &stored))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let p = HashParams {
            memory_kib: 1024,
            iterations: 1,
        };
        let h = hash(p, "s3cret".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("s3cret".into(), h.clone()).await);
        assert!(!verify("wrong".into(), h).await);
        assert!(!verify("x".into(), "not a hash".into()).await);
        // Hashes made by the argon2 crate's own PHC API verify too (format compatibility).
        use argon2::password_hash::PasswordHasher;
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let other = Argon2::default()
            .hash_password(b"abc", &salt)
            .unwrap()
            .to_string();
        assert!(verify("abc".into(), other).await);
    }

    #[tokio::test]
    async fn production_parameters_round_trip() {
        let p = HashParams {
            memory_kib: 19456,
            iterations: 2,
        };
        let h = hash(p, "pw".into()).await.unwrap();
        assert!(h.contains("m=19456,t=2,p=1"), "{h}");
        assert!(verify("pw".into(), h).await);
    }
}
