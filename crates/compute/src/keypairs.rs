//! Keypairs in the API database (per user), their fingerprints, and generation of a new SSH key for
//! requests that bring none (allowed before 2.92).

use crate::{dup_or, Result};
use base64::Engine as _;
use sqlx::Row;
use tessera_db::{get_text, AnyRow, Db};

#[derive(Debug, Clone, PartialEq)]
pub struct KeyPair {
    pub id: i64,
    pub name: String,
    pub user_id: String,
    pub fingerprint: String,
    pub public_key: String,
    pub key_type: String,
    pub created_at: i64,
}

const COLS: &str = "id, name, user_id, fingerprint, public_key, key_type, created_at";

fn from_row(r: &AnyRow) -> Result<KeyPair> {
    Ok(KeyPair {
        id: r.try_get("id")?,
        name: get_text(r, "name")?,
        user_id: get_text(r, "user_id")?,
        fingerprint: get_text(r, "fingerprint")?,
        public_key: get_text(r, "public_key")?,
        key_type: get_text(r, "key_type")?,
        created_at: r.try_get("created_at")?,
    })
}

/// A user's keypairs by name.
pub async fn list(db: &Db, user_id: &str) -> Result<Vec<KeyPair>> {
    sqlx::query(&db.sql(&format!(
        "SELECT {COLS} FROM key_pairs WHERE user_id = ? ORDER BY name"
    )))
    .bind(user_id)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(from_row)
    .collect()
}

pub async fn get(db: &Db, user_id: &str, name: &str) -> Result<Option<KeyPair>> {
    sqlx::query(&db.sql(&format!(
        "SELECT {COLS} FROM key_pairs WHERE user_id = ? AND name = ?"
    )))
    .bind(user_id)
    .bind(name)
    .fetch_optional(db.pool())
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

pub async fn count(db: &Db, user_id: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar(&db.sql("SELECT COUNT(*) FROM key_pairs WHERE user_id = ?"))
            .bind(user_id)
            .fetch_one(db.pool())
            .await?,
    )
}

/// Insert a keypair; a name the user has already is [`crate::ComputeError::Duplicate`].
pub async fn create(
    db: &Db,
    user_id: &str,
    name: &str,
    public_key: &str,
    fingerprint: &str,
    key_type: &str,
) -> Result<KeyPair> {
    let now = tessera_types::now_epoch_micros();
    sqlx::query(&db.sql(
        "INSERT INTO key_pairs (name, user_id, fingerprint, public_key, key_type, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(name)
    .bind(user_id)
    .bind(fingerprint)
    .bind(public_key)
    .bind(key_type)
    .bind(now)
    .bind(now)
    .execute(db.pool())
    .await
    .map_err(|e| dup_or(e, || format!("key pair {name}")))?;
    get(db, user_id, name)
        .await?
        .ok_or_else(|| crate::ComputeError::NotFound(format!("key pair {name}")))
}

pub async fn delete(db: &Db, user_id: &str, name: &str) -> Result<bool> {
    let n = sqlx::query(&db.sql("DELETE FROM key_pairs WHERE user_id = ? AND name = ?"))
        .bind(user_id)
        .bind(name)
        .execute(db.pool())
        .await?
        .rows_affected();
    Ok(n > 0)
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

const SSH_TYPES: [&str; 7] = [
    "ssh-rsa",
    "ssh-dss",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
];

/// The MD5 fingerprint (`aa:bb:…`) of an OpenSSH public key line, checking its structure: a known key
/// type, base64 data whose first field names that same type.
pub fn ssh_fingerprint(public_key: &str) -> Option<String> {
    use md5::Digest as _;
    let mut parts = public_key.split_whitespace();
    let kind = parts.next()?;
    let data = parts.next()?;
    if !SSH_TYPES.contains(&kind) {
        return None;
    }
    let blob = base64::engine::general_purpose::STANDARD.decode(data).ok()?;
    let len = u32::from_be_bytes(blob.get(0..4)?.try_into().ok()?) as usize;
    if blob.get(4..4 + len)? != kind.as_bytes() || blob.len() <= 4 + len {
        return None;
    }
    Some(colon_hex(&md5::Md5::digest(&blob)))
}

/// The SHA-1 fingerprint of a PEM certificate (keypair type `x509`).
pub fn x509_fingerprint(pem: &str) -> Option<String> {
    use sha1::Digest as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    // A DER certificate is a SEQUENCE.
    if der.first() != Some(&0x30) {
        return None;
    }
    Some(colon_hex(&sha1::Sha1::digest(&der)))
}

/// A new Ed25519 key: (OpenSSH private key, public key line, fingerprint).
pub fn generate(comment: &str) -> Option<(String, String, String)> {
    let mut key = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).ok()?;
    key.set_comment(comment);
    let private = key.to_openssh(ssh_key::LineEnding::LF).ok()?.to_string();
    let public = key.public_key().to_openssh().ok()?;
    let fp = ssh_fingerprint(&public)?;
    Some((private, public, fp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_and_generation() {
        let (private, public, fp) = generate("t").expect("generate");
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(public.starts_with("ssh-ed25519 "));
        assert_eq!(fp.len(), 47);
        assert_eq!(ssh_fingerprint(&public), Some(fp));
        assert_eq!(ssh_fingerprint("ssh-rsa bm90IGEga2V5"), None);
        assert_eq!(ssh_fingerprint("not-a-type AAAA"), None);
        assert_eq!(ssh_fingerprint(""), None);
        assert_eq!(
            x509_fingerprint("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"),
            None
        );
    }
}
