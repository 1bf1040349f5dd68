//! Rows of the network database: each resource's API document (`body`, JSON) plus the columns queries need.

use crate::error::Result;
use serde_json::{Map, Value};
use sqlx::{Any, Row};
use tessera_db::Db;

pub type Doc = Map<String, Value>;
pub type Tx = sqlx::Transaction<'static, Any>;

/// Neutron's timestamp format (seconds, `Z`).
pub fn now_iso() -> String {
    let s = tessera_types::iso_micros(tessera_types::now_epoch_micros());
    format!("{}Z", &s[..19])
}

fn doc_of(r: &sqlx::any::AnyRow) -> Result<Doc> {
    let body = tessera_db::get_text(r, "body")?;
    match serde_json::from_str::<Value>(&body)? {
        Value::Object(m) => Ok(m),
        _ => Err(crate::error::NetError::Db(tessera_db::DbError::Batch(
            "stored document is not an object".into(),
        ))),
    }
}

/// One document by id.
pub async fn get<'c, E>(db: &Db, e: E, table: &str, id: &str) -> Result<Option<Doc>>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let q = format!("SELECT body FROM {table} WHERE id = ?");
    let row = sqlx::query(&db.sql(&q)).bind(id).fetch_optional(e).await?;
    row.as_ref().map(doc_of).transpose()
}

/// Documents selected by `where_sql` (with `?` placeholders bound from `binds`), oldest first.
pub async fn select<'c, E>(db: &Db, e: E, table: &str, where_sql: &str, binds: &[String]) -> Result<Vec<Doc>>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let q = format!("SELECT body FROM {table} WHERE {where_sql} ORDER BY created_at, id");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b.as_str());
    }
    query.fetch_all(e).await?.iter().map(doc_of).collect()
}

/// Replace a document's body (columns that mirror attributes are updated by the caller).
pub async fn put_body(db: &Db, tx: &mut Tx, table: &str, id: &str, doc: &Doc) -> Result<()> {
    let q = format!("UPDATE {table} SET body = ? WHERE id = ?");
    sqlx::query(&db.sql(&q))
        .bind(serde_json::to_string(doc)?)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn delete(db: &Db, tx: &mut Tx, table: &str, id: &str) -> Result<u64> {
    let q = format!("DELETE FROM {table} WHERE id = ?");
    Ok(sqlx::query(&db.sql(&q))
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// Count rows matching `where_sql`.
pub async fn count<'c, E>(db: &Db, e: E, table: &str, where_sql: &str, binds: &[&str]) -> Result<i64>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let q = format!(
        "SELECT {} AS n FROM {table} WHERE {where_sql}",
        db.bigint("COUNT(*)")
    );
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(*b);
    }
    Ok(query.fetch_one(e).await?.try_get("n")?)
}

/// Bump `revision_number` and `updated_at` of a document about to be written back.
pub fn touch(doc: &mut Doc) {
    let rev = doc.get("revision_number").and_then(Value::as_i64).unwrap_or(0);
    doc.insert("revision_number".into(), Value::from(rev + 1));
    doc.insert("updated_at".into(), Value::from(now_iso()));
}

/// The common attributes of a new document.
pub fn new_doc(id: &str, project_id: &str) -> Doc {
    let now = now_iso();
    let mut d = Doc::new();
    d.insert("id".into(), Value::from(id));
    d.insert("project_id".into(), Value::from(project_id));
    d.insert("tenant_id".into(), Value::from(project_id));
    d.insert("created_at".into(), Value::from(now.clone()));
    d.insert("updated_at".into(), Value::from(now));
    d.insert("revision_number".into(), Value::from(0));
    d.insert("tags".into(), Value::Array(Vec::new()));
    d
}

pub fn text<'a>(d: &'a Doc, key: &str) -> &'a str {
    d.get(key).and_then(Value::as_str).unwrap_or("")
}
