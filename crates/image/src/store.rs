//! Image datastore. Every change to an image and its properties/tags is one transaction.

use crate::error::Result;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use tessera_db::{get_opt_text, get_text, AnyRow, Db};

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub id: String,
    pub name: Option<String>,
    pub status: String,
    pub visibility: String,
    pub owner: Option<String>,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub size: Option<i64>,
    pub virtual_size: Option<i64>,
    pub checksum: Option<String>,
    pub os_hash_algo: Option<String>,
    pub os_hash_value: Option<String>,
    pub min_disk: i64,
    pub min_ram: i64,
    pub protected: bool,
    pub os_hidden: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub properties: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
}

pub const COLS: &str =
    "id, name, status, visibility, owner, disk_format, container_format, size, virtual_size, checksum, \
    os_hash_algo, os_hash_value, min_disk, min_ram, protected, os_hidden, created_at, updated_at";

fn from_row(r: &AnyRow) -> Result<ImageRow> {
    Ok(ImageRow {
        id: get_text(r, "id")?,
        name: get_opt_text(r, "name")?,
        status: get_text(r, "status")?,
        visibility: get_text(r, "visibility")?,
        owner: get_opt_text(r, "owner")?,
        disk_format: get_opt_text(r, "disk_format")?,
        container_format: get_opt_text(r, "container_format")?,
        size: r.try_get("size")?,
        virtual_size: r.try_get("virtual_size")?,
        checksum: get_opt_text(r, "checksum")?,
        os_hash_algo: get_opt_text(r, "os_hash_algo")?,
        os_hash_value: get_opt_text(r, "os_hash_value")?,
        min_disk: r.try_get("min_disk")?,
        min_ram: r.try_get("min_ram")?,
        protected: r.try_get::<i64, _>("protected")? != 0,
        os_hidden: r.try_get::<i64, _>("os_hidden")? != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        properties: BTreeMap::new(),
        tags: BTreeSet::new(),
    })
}

/// Load properties and tags for the given images (two queries for the whole page).
async fn attach(db: &Db, images: &mut [ImageRow]) -> Result<()> {
    if images.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = images.iter().map(|i| i.id.clone()).collect();
    let list = tessera_db::in_list(ids.len());
    let q = format!("SELECT image_id, name, value FROM image_properties WHERE image_id IN {list}");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for id in &ids {
        query = query.bind(id);
    }
    let mut props: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in query.fetch_all(db.pool()).await? {
        props
            .entry(get_text(&r, "image_id")?)
            .or_default()
            .insert(get_text(&r, "name")?, get_text(&r, "value")?);
    }
    let q = format!("SELECT image_id, value FROM image_tags WHERE image_id IN {list}");
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql);
    for id in &ids {
        query = query.bind(id);
    }
    let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in query.fetch_all(db.pool()).await? {
        tags.entry(get_text(&r, "image_id")?)
            .or_default()
            .insert(get_text(&r, "value")?);
    }
    for i in images.iter_mut() {
        i.properties = props.remove(&i.id).unwrap_or_default();
        i.tags = tags.remove(&i.id).unwrap_or_default();
    }
    Ok(())
}

pub async fn image_get(db: &Db, id: &str) -> Result<Option<ImageRow>> {
    let q = format!("SELECT {COLS} FROM images WHERE id = ? AND deleted = 0");
    let Some(r) = sqlx::query(&db.sql(&q))
        .bind(id)
        .fetch_optional(db.pool())
        .await?
    else {
        return Ok(None);
    };
    let mut v = vec![from_row(&r)?];
    attach(db, &mut v).await?;
    Ok(v.pop())
}

/// Run a listing query built by the API layer (WHERE/ORDER/LIMIT already in `q`, binds in order).
pub async fn image_query(db: &Db, q: &str, binds: &[Bind]) -> Result<Vec<ImageRow>> {
    let sql = db.sql(q);
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s.clone()),
            Bind::Int(i) => query.bind(*i),
        };
    }
    let rows = query.fetch_all(db.pool()).await?;
    let mut out = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    attach(db, &mut out).await?;
    Ok(out)
}

#[derive(Debug, Clone)]
pub enum Bind {
    Text(String),
    Int(i64),
}

/// Insert or update an image with its properties and tags, in one transaction. With `expect_status`, the
/// update only happens if the stored status is still that one (returns false otherwise).
pub async fn image_put(db: &Db, i: &ImageRow, create: bool, expect_status: Option<&str>) -> Result<bool> {
    let mut tx = db.begin().await?;
    if !write_image(db, &mut tx, i, create, expect_status).await? {
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// An import's end: the image turns active (if it is still `importing`) and its task succeeds, in one
/// transaction, so whoever sees the image active finds the task finished. False: the image was gone.
pub async fn finish_import(db: &Db, i: &ImageRow, t: &TaskRow) -> Result<bool> {
    let mut tx = db.begin().await?;
    if !write_image(db, &mut tx, i, false, Some("importing")).await? {
        return Ok(false);
    }
    write_task(db, &mut tx, t).await?;
    tx.commit().await?;
    Ok(true)
}

async fn write_image(
    db: &Db,
    tx: &mut sqlx::AnyConnection,
    i: &ImageRow,
    create: bool,
    expect_status: Option<&str>,
) -> Result<bool> {
    let q = if create {
        "INSERT INTO images (name, status, visibility, owner, disk_format, container_format, size, virtual_size, checksum, \
         os_hash_algo, os_hash_value, min_disk, min_ram, protected, os_hidden, created_at, updated_at, deleted, id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)"
            .to_string()
    } else {
        format!(
            "UPDATE images SET name = ?, status = ?, visibility = ?, owner = ?, disk_format = ?, container_format = ?, size = ?, \
             virtual_size = ?, checksum = ?, os_hash_algo = ?, os_hash_value = ?, min_disk = ?, min_ram = ?, protected = ?, \
             os_hidden = ?, created_at = ?, updated_at = ? WHERE deleted = 0 AND id = ?{}",
            if expect_status.is_some() { " AND status = ?" } else { "" }
        )
    };
    let sql = db.sql(&q);
    let mut query = sqlx::query(&sql)
        .bind(i.name.clone())
        .bind(i.status.clone())
        .bind(i.visibility.clone())
        .bind(i.owner.clone())
        .bind(i.disk_format.clone())
        .bind(i.container_format.clone())
        .bind(i.size)
        .bind(i.virtual_size)
        .bind(i.checksum.clone())
        .bind(i.os_hash_algo.clone())
        .bind(i.os_hash_value.clone())
        .bind(i.min_disk)
        .bind(i.min_ram)
        .bind(i.protected as i64)
        .bind(i.os_hidden as i64)
        .bind(i.created_at)
        .bind(i.updated_at)
        .bind(i.id.clone());
    if let (false, Some(s)) = (create, expect_status) {
        query = query.bind(s.to_string());
    }
    let done = query.execute(&mut *tx).await?.rows_affected() == 1;
    if !done {
        return Ok(false);
    }
    sqlx::query(&db.sql("DELETE FROM image_properties WHERE image_id = ?"))
        .bind(&i.id)
        .execute(&mut *tx)
        .await?;
    for (k, v) in &i.properties {
        sqlx::query(&db.sql("INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?)"))
            .bind(&i.id)
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&db.sql("DELETE FROM image_tags WHERE image_id = ?"))
        .bind(&i.id)
        .execute(&mut *tx)
        .await?;
    for t in &i.tags {
        sqlx::query(&db.sql("INSERT INTO image_tags (image_id, value) VALUES (?, ?)"))
            .bind(&i.id)
            .bind(t)
            .execute(&mut *tx)
            .await?;
    }
    Ok(true)
}

/// Mark deleted and drop its dependants.
pub async fn image_delete(db: &Db, id: &str) -> Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(&db.sql("UPDATE images SET deleted = 1, status = 'deleted', updated_at = ? WHERE id = ?"))
        .bind(tessera_types::now_epoch_micros())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    for t in ["image_properties", "image_tags", "image_members"] {
        sqlx::query(&db.sql(&format!("DELETE FROM {t} WHERE image_id = ?")))
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Whether an id was ever used (ids of deleted images are not reused, as Glance).
pub async fn image_id_taken(db: &Db, id: &str) -> Result<bool> {
    let r = sqlx::query(&db.sql("SELECT COUNT(*) AS n FROM images WHERE id = ?"))
        .bind(id)
        .fetch_one(db.pool())
        .await?;
    Ok(r.try_get::<i64, _>("n")? > 0)
}

/// (count, bytes) of a project's live images.
pub async fn project_usage(db: &Db, owner: &str) -> Result<(i64, i64)> {
    let q = format!(
        "SELECT COUNT(*) AS n, {} AS b FROM images WHERE owner = ? AND deleted = 0",
        db.bigint("COALESCE(SUM(size), 0)")
    );
    let r = sqlx::query(&db.sql(&q)).bind(owner).fetch_one(db.pool()).await?;
    Ok((r.try_get("n")?, r.try_get("b")?))
}

#[derive(Debug, Clone)]
pub struct MemberRow {
    pub image_id: String,
    pub member: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

fn member_from(r: &AnyRow) -> Result<MemberRow> {
    Ok(MemberRow {
        image_id: get_text(r, "image_id")?,
        member: get_text(r, "member")?,
        status: get_text(r, "status")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

pub async fn members(db: &Db, image_id: &str) -> Result<Vec<MemberRow>> {
    sqlx::query(&db.sql("SELECT image_id, member, status, created_at, updated_at FROM image_members WHERE image_id = ? ORDER BY member"))
        .bind(image_id)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(member_from)
        .collect()
}

pub async fn member_get(db: &Db, image_id: &str, member: &str) -> Result<Option<MemberRow>> {
    let r = sqlx::query(&db.sql("SELECT image_id, member, status, created_at, updated_at FROM image_members WHERE image_id = ? AND member = ?"))
        .bind(image_id)
        .bind(member)
        .fetch_optional(db.pool())
        .await?;
    r.as_ref().map(member_from).transpose()
}

pub async fn member_put(db: &Db, m: &MemberRow, create: bool) -> Result<()> {
    let q = if create {
        "INSERT INTO image_members (status, created_at, updated_at, image_id, member) VALUES (?, ?, ?, ?, ?)"
    } else {
        "UPDATE image_members SET status = ?, created_at = ?, updated_at = ? WHERE image_id = ? AND member = ?"
    };
    sqlx::query(&db.sql(q))
        .bind(m.status.clone())
        .bind(m.created_at)
        .bind(m.updated_at)
        .bind(m.image_id.clone())
        .bind(m.member.clone())
        .execute(db.pool())
        .await?;
    Ok(())
}

pub async fn member_delete(db: &Db, image_id: &str, member: &str) -> Result<()> {
    sqlx::query(&db.sql("DELETE FROM image_members WHERE image_id = ? AND member = ?"))
        .bind(image_id)
        .bind(member)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// An asynchronous import task (`GET /v2/images/{id}/tasks`).
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    pub image_id: String,
    pub kind: String,
    pub status: String,
    pub owner: Option<String>,
    pub input: String,
    pub result: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
    pub user_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
}

const TASK_COLS: &str = "id, image_id, type, status, owner, input, result, message, request_id, user_id, \
    created_at, updated_at, expires_at";

fn task_from(r: &AnyRow) -> Result<TaskRow> {
    Ok(TaskRow {
        id: get_text(r, "id")?,
        image_id: get_text(r, "image_id")?,
        kind: get_text(r, "type")?,
        status: get_text(r, "status")?,
        owner: get_opt_text(r, "owner")?,
        input: get_text(r, "input")?,
        result: get_opt_text(r, "result")?,
        message: get_text(r, "message")?,
        request_id: get_opt_text(r, "request_id")?,
        user_id: get_opt_text(r, "user_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// Move an image from `from` to `importing` and record its import task, atomically; false if the image was
/// no longer in `from` (another import won the race).
pub async fn begin_import(db: &Db, image_id: &str, from: &str, t: &TaskRow) -> Result<bool> {
    let mut tx = db.begin().await?;
    let n = sqlx::query(&db.sql(
        "UPDATE images SET status = 'importing', updated_at = ? WHERE id = ? AND status = ? AND deleted = 0",
    ))
    .bind(t.created_at)
    .bind(image_id)
    .bind(from)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n != 1 {
        return Ok(false);
    }
    let q = format!("INSERT INTO image_tasks ({TASK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    sqlx::query(&db.sql(&q))
        .bind(&t.id)
        .bind(&t.image_id)
        .bind(&t.kind)
        .bind(&t.status)
        .bind(t.owner.clone())
        .bind(&t.input)
        .bind(t.result.clone())
        .bind(&t.message)
        .bind(t.request_id.clone())
        .bind(t.user_id.clone())
        .bind(t.created_at)
        .bind(t.updated_at)
        .bind(t.expires_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn task_update(db: &Db, t: &TaskRow) -> Result<()> {
    let mut conn = db.pool().acquire().await?;
    write_task(db, &mut conn, t).await
}

async fn write_task(db: &Db, conn: &mut sqlx::AnyConnection, t: &TaskRow) -> Result<()> {
    sqlx::query(&db.sql(
        "UPDATE image_tasks SET status = ?, result = ?, message = ?, updated_at = ?, expires_at = ? WHERE id = ?",
    ))
    .bind(&t.status)
    .bind(t.result.clone())
    .bind(&t.message)
    .bind(t.updated_at)
    .bind(t.expires_at)
    .bind(&t.id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn tasks_for_image(db: &Db, image_id: &str) -> Result<Vec<TaskRow>> {
    let q = format!("SELECT {TASK_COLS} FROM image_tasks WHERE image_id = ? ORDER BY created_at DESC, id");
    sqlx::query(&db.sql(&q))
        .bind(image_id)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(task_from)
        .collect()
}

/// Tasks not finished (pending or processing), oldest first: work a restart must finish.
pub async fn tasks_unfinished(db: &Db) -> Result<Vec<TaskRow>> {
    let q = format!(
        "SELECT {TASK_COLS} FROM image_tasks WHERE status IN ('pending', 'processing') ORDER BY created_at, id"
    );
    sqlx::query(&q)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(task_from)
        .collect()
}

/// Images in the given status.
pub async fn images_in_status(db: &Db, status: &str) -> Result<Vec<String>> {
    sqlx::query(&db.sql("SELECT id FROM images WHERE status = ? AND deleted = 0"))
        .bind(status)
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|r| Ok(get_text(r, "id")?))
        .collect()
}
