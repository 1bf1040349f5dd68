//! Password and secret hashing with Argon2id, off the async runtime.

use crate::error::{IdentityError, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

#[derive(Debug, Clone, Copy)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
}

fn hasher(p: HashParams) -> Result<Argon2<'static>> {
    let params = Params::new(p.memory_kib, p.iterations, 1, None)
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash a password (PHC string, salt included).
pub async fn hash(p: HashParams, password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        hasher(p)?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| IdentityError::Internal(e.to_string()))
    })
    .await
    .map_err(|e| IdentityError::Internal(e.to_string()))?
}

/// Check a password against a stored hash. The parameters recorded in the hash are the ones used.
pub async fn verify(password: String, stored: String) -> bool {
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
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
    }
}
