//! The in-memory capacity index that allocation candidates are computed from: every provider with its tree
//! position, inventories with current usage, traits and aggregates, by integer ids.
//!
//! Consistency with the database: every write transaction records the providers it touched (see
//! [`crate::store::bump_revision`]). On SQLite and MySQL it bumps `placement_revision` and writes
//! `placement_changes` under that revision; before answering, a reader compares the stored revision with its
//! copy's (one single-row read). On PostgreSQL it writes `placement_change_log` under its transaction id
//! (writers share no lock); a reader keeps the snapshot its copy reflects and asks, in one statement, for the
//! records that snapshot did not see. Either way it reloads only the providers changed since (or everything,
//! when the change records no longer reach back), on a private copy that then replaces the shared one. So
//! every process — several API workers, or several hosts on one database — answers from data at least as
//! new as every write committed before its request.

use crate::error::Result;
use crate::store;
use futures_util::TryStreamExt;
use sqlx::Row;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use tessera_db::{get_text, Db};
use uuid::Uuid;

/// A query with its string binds. With binds (an `IN` list of changed providers, of any length) it is not
/// kept in the connection's statement cache: each length is another statement, and one with thousands of
/// values holds megabytes there.
fn bound<'q>(
    sql: &'q str,
    binds: &'q [String],
) -> sqlx::query::Query<'q, tessera_db::Any, sqlx::any::AnyArguments<'q>> {
    binds
        .iter()
        .fold(sqlx::query(sql), |q, b| q.bind(b.as_str()))
        .persistent(binds.is_empty())
}

/// Changed providers above which a reload reads everything rather than listing them in `IN (…)`.
const PARTIAL_RELOAD_MAX: usize = 500;

/// One inventory of a provider with its usage. The API bounds every inventory field to upstream's `MAX_INT`
/// (2^31 - 1), so they are kept in 32 bits (a 10,000-provider index is ~1 MB smaller); usage, which the
/// allocation ratio can take past that, in 64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inv {
    /// Resource class id.
    pub class: u32,
    pub total: i32,
    pub reserved: i32,
    pub min_unit: i32,
    pub max_unit: i32,
    pub step_size: i32,
    pub ratio: f64,
    pub used: i64,
}

/// An inventory field read from the database, in the index's width (see [`Inv`]).
fn narrow(v: i64) -> i32 {
    v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

impl Inv {
    pub fn capacity(&self) -> i64 {
        ((i64::from(self.total) - i64::from(self.reserved)) as f64 * self.ratio).floor() as i64
    }
    /// Whether one allocation of `n` fits (units and free capacity), given `extra` already taken by the same
    /// request.
    pub fn fits(&self, n: i64, extra: i64) -> bool {
        n >= i64::from(self.min_unit)
            && n <= i64::from(self.max_unit)
            && (self.step_size <= 1 || n % i64::from(self.step_size) == 0)
            && self.used + extra + n <= self.capacity()
    }
}

/// A provider. Its uuid is kept as 128 bits (the database holds them normalised: hyphenated, lower case).
#[derive(Debug, Clone)]
pub struct Node {
    pub uuid: Uuid,
    pub parent: Option<u32>,
    pub root: u32,
    /// Sorted by class id.
    pub inv: Vec<Inv>,
    /// Sorted.
    pub traits: Vec<u32>,
    /// Sorted.
    pub aggs: Vec<u32>,
    pub alive: bool,
}

impl Node {
    pub fn inv(&self, rc: u32) -> Option<&Inv> {
        self.inv
            .binary_search_by_key(&rc, |i| i.class)
            .ok()
            .map(|i| &self.inv[i])
    }
    pub fn has_trait(&self, t: u32) -> bool {
        self.traits.binary_search(&t).is_ok()
    }
    pub fn in_agg(&self, a: u32) -> bool {
        self.aggs.binary_search(&a).is_ok()
    }
}

/// Interned names (resource classes, traits, aggregates).
#[derive(Debug, Clone, Default)]
pub struct Names {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    pub fn intern(&mut self, n: &str) -> u32 {
        if let Some(i) = self.ids.get(n) {
            return *i;
        }
        let i = self.names.len() as u32;
        self.names.push(n.to_string());
        self.ids.insert(n.to_string(), i);
        i
    }
    pub fn id(&self, n: &str) -> Option<u32> {
        self.ids.get(n).copied()
    }
    pub fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map(String::as_str).unwrap_or("")
    }
}

#[derive(Debug, Clone, Default)]
pub struct Index {
    pub revision: i64,
    /// False until the first load.
    pub loaded: bool,
    pub nodes: Vec<Node>,
    pub by_uuid: HashMap<Uuid, u32>,
    pub classes: Names,
    pub traits: Names,
    pub aggs: Names,
    /// Root → every live provider of its tree (root first, then by creation order of the index), for trees
    /// of more than one provider (see [`Index::tree`]).
    trees: HashMap<u32, Vec<u32>>,
    /// Aggregate → live providers with `MISC_SHARES_VIA_AGGREGATE` in it.
    pub sharing: HashMap<u32, Vec<u32>>,
    /// Live roots in index order.
    pub roots: Vec<u32>,
}

pub const SHARES_TRAIT: &str = "MISC_SHARES_VIA_AGGREGATE";

/// A provider uuid read from the database.
fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::try_parse(s).map_err(|_| {
        crate::error::PlacementError::Db(tessera_db::DbError::Batch(format!(
            "resource provider uuid {s:?} in the database is not a uuid"
        )))
    })
}

impl Index {
    fn node_id(&mut self, uuid: Uuid) -> u32 {
        if let Some(i) = self.by_uuid.get(&uuid) {
            return *i;
        }
        let i = self.nodes.len() as u32;
        self.nodes.push(Node {
            uuid,
            parent: None,
            root: i,
            inv: Vec::new(),
            traits: Vec::new(),
            aggs: Vec::new(),
            alive: false,
        });
        self.by_uuid.insert(uuid, i);
        i
    }

    /// The provider of this uuid (text as the API takes it), live or not.
    pub fn by_uuid_str(&self, uuid: &str) -> Option<u32> {
        let u = Uuid::try_parse(uuid).ok()?;
        self.by_uuid.get(&u).copied()
    }

    /// A uuid read from the database, if its provider is in the index.
    fn known(&self, uuid: &str) -> Result<Option<u32>> {
        Ok(self.by_uuid.get(&parse_uuid(uuid)?).copied())
    }

    /// Every live provider of the tree of `root` (a root): the root first, then by index order.
    pub fn tree(&self, root: u32) -> &[u32] {
        match self.trees.get(&root) {
            Some(members) => members,
            // A tree of one: the root's own `root` field is the one-element list.
            None => std::slice::from_ref(&self.nodes[root as usize].root),
        }
    }

    /// Reload the given providers (all when `only` is None) from the database. Rows are consumed as they
    /// stream in, never collected: a full load of 10,000 providers would otherwise hold some 50,000 decoded
    /// rows at once, and the allocator keeps such a peak long after.
    async fn load(&mut self, db: &Db, only: Option<&BTreeSet<String>>) -> Result<()> {
        let (filter, binds): (String, Vec<String>) = match only {
            Some(set) if set.is_empty() => return Ok(()),
            Some(set) => (
                format!(" WHERE {{col}} IN {}", tessera_db::in_list(set.len())),
                set.iter().cloned().collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        let q = |base: &str, col: &str, tail: &str| {
            db.sql(&format!("{base}{}{tail}", filter.replace("{col}", col)))
                .into_owned()
        };
        // Reset what is reloaded.
        let reset: Vec<u32> = match only {
            Some(set) => set.iter().filter_map(|u| self.by_uuid_str(u)).collect(),
            None => {
                self.nodes.clear();
                self.by_uuid.clear();
                Vec::new()
            }
        };
        for i in reset {
            let n = &mut self.nodes[i as usize];
            n.alive = false;
            n.inv.clear();
            n.traits.clear();
            n.aggs.clear();
        }
        let sql = q(
            "SELECT uuid, parent_uuid, root_uuid FROM resource_providers",
            "uuid",
            "",
        );
        let mut rows = bound(&sql, &binds).fetch(db.pool());
        while let Some(r) = rows.try_next().await? {
            let uuid = parse_uuid(&get_text(&r, "uuid")?)?;
            let parent = match tessera_db::get_opt_text(&r, "parent_uuid")? {
                Some(p) => Some(self.node_id(parse_uuid(&p)?)),
                None => None,
            };
            let root = self.node_id(parse_uuid(&get_text(&r, "root_uuid")?)?);
            let i = self.node_id(uuid);
            let n = &mut self.nodes[i as usize];
            n.parent = parent;
            n.root = root;
            n.alive = true;
        }
        drop(rows);
        // Usage per (provider, class), keyed by ids.
        let mut used: HashMap<(u32, u32), i64> = HashMap::new();
        let sql = q(
            &format!(
                "SELECT rp_uuid, resource_class, {} AS used FROM allocations",
                db.bigint("SUM(used)")
            ),
            "rp_uuid",
            " GROUP BY rp_uuid, resource_class",
        );
        let mut rows = bound(&sql, &binds).fetch(db.pool());
        while let Some(r) = rows.try_next().await? {
            let Some(i) = self.known(&get_text(&r, "rp_uuid")?)? else {
                continue;
            };
            let c = self.classes.intern(&get_text(&r, "resource_class")?);
            used.insert((i, c), r.try_get::<i64, _>("used")?);
        }
        drop(rows);
        let sql = q(
            "SELECT rp_uuid, resource_class, total, reserved, min_unit, max_unit, step_size, allocation_ratio FROM inventories",
            "rp_uuid",
            "",
        );
        let mut rows = bound(&sql, &binds).fetch(db.pool());
        while let Some(r) = rows.try_next().await? {
            let Some(i) = self.known(&get_text(&r, "rp_uuid")?)? else {
                continue;
            };
            let c = self.classes.intern(&get_text(&r, "resource_class")?);
            let inv = Inv {
                class: c,
                total: narrow(r.try_get("total")?),
                reserved: narrow(r.try_get("reserved")?),
                min_unit: narrow(r.try_get("min_unit")?),
                max_unit: narrow(r.try_get("max_unit")?),
                step_size: narrow(r.try_get("step_size")?),
                ratio: r.try_get("allocation_ratio")?,
                used: used.get(&(i, c)).copied().unwrap_or(0),
            };
            self.nodes[i as usize].inv.push(inv);
        }
        drop(rows);
        let sql = q("SELECT rp_uuid, trait FROM rp_traits", "rp_uuid", "");
        let mut rows = bound(&sql, &binds).fetch(db.pool());
        while let Some(r) = rows.try_next().await? {
            let Some(i) = self.known(&get_text(&r, "rp_uuid")?)? else {
                continue;
            };
            let t = self.traits.intern(&get_text(&r, "trait")?);
            self.nodes[i as usize].traits.push(t);
        }
        drop(rows);
        let sql = q("SELECT rp_uuid, aggregate_uuid FROM rp_aggregates", "rp_uuid", "");
        let mut rows = bound(&sql, &binds).fetch(db.pool());
        while let Some(r) = rows.try_next().await? {
            let Some(i) = self.known(&get_text(&r, "rp_uuid")?)? else {
                continue;
            };
            let a = self.aggs.intern(&get_text(&r, "aggregate_uuid")?);
            self.nodes[i as usize].aggs.push(a);
        }
        drop(rows);
        for n in &mut self.nodes {
            n.inv.sort_by_key(|i| i.class);
            n.inv.shrink_to_fit();
            n.traits.sort_unstable();
            n.traits.dedup();
            n.traits.shrink_to_fit();
            n.aggs.sort_unstable();
            n.aggs.dedup();
            n.aggs.shrink_to_fit();
        }
        if only.is_none() {
            // Grown by doubling while loading: up to twice the room needed.
            self.nodes.shrink_to_fit();
            self.by_uuid.shrink_to_fit();
        }
        self.rebuild_maps();
        Ok(())
    }

    fn rebuild_maps(&mut self) {
        self.trees.clear();
        self.sharing.clear();
        self.roots.clear();
        let shares = self.traits.id(SHARES_TRAIT);
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            let i = i as u32;
            if n.root == i {
                self.roots.push(i);
            } else {
                self.trees.entry(n.root).or_insert_with(|| vec![n.root]).push(i);
            }
            if shares.is_some_and(|s| n.has_trait(s)) {
                for a in &n.aggs {
                    self.sharing.entry(*a).or_default().push(i);
                }
            }
        }
        // Roots first within each tree.
        for (root, members) in self.trees.iter_mut() {
            members.sort_by_key(|m| (*m != *root, *m));
        }
    }

    pub fn node(&self, i: u32) -> &Node {
        &self.nodes[i as usize]
    }

    /// Whether `anc` is `n` or one of its ancestors.
    pub fn is_ancestor(&self, anc: u32, mut n: u32) -> bool {
        loop {
            if n == anc {
                return true;
            }
            match self.nodes[n as usize].parent {
                Some(p) => n = p,
                None => return false,
            }
        }
    }
}

/// The shared index and its refresher.
#[derive(Default)]
pub struct IndexHandle {
    current: RwLock<Current>,
    refresh: tokio::sync::Mutex<()>,
}

/// The index, and on PostgreSQL the snapshot it reflects: every change visible in that snapshot is in it.
#[derive(Default, Clone)]
struct Current {
    index: Arc<Index>,
    snapshot: Option<Snapshot>,
}

/// A PostgreSQL snapshot as text (`xmin:xmax:xip,…`), with its `xmin`: transactions below it had ended.
#[derive(Clone, Debug)]
struct Snapshot {
    text: Arc<str>,
    xmin: i64,
}

impl Snapshot {
    fn parse(text: &str) -> Result<Self> {
        let xmin = text
            .split(':')
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| {
                crate::error::PlacementError::Db(tessera_db::DbError::Batch(format!(
                    "unexpected snapshot {text:?}"
                )))
            })?;
        Ok(Self {
            text: text.into(),
            xmin,
        })
    }
}

/// What a PostgreSQL reader learns in one statement (so from one snapshot): that snapshot, below which
/// transaction id change records may have been pruned, and the providers changed since its last snapshot.
async fn pg_changes(db: &Db, since: &Snapshot) -> Result<(Snapshot, i64, BTreeSet<String>)> {
    let mut lease = db.lease().await?;
    let r = sqlx::query(
        "SELECT CAST(pg_current_snapshot() AS TEXT) AS snap, \
         (SELECT pruned_xid FROM placement_revision WHERE id = 1) AS pruned, \
         (SELECT string_agg(DISTINCT rp_uuid, ' ') FROM placement_change_log WHERE xid >= $1 \
          AND NOT pg_visible_in_snapshot(CAST(CAST(xid AS TEXT) AS xid8), CAST($2 AS pg_snapshot))) AS changed",
    )
    .bind(since.xmin)
    .bind(&*since.text)
    .fetch_one(lease.conn())
    .await?;
    lease.done();
    let changed: Option<String> = r.try_get("changed")?;
    Ok((
        Snapshot::parse(&get_text(&r, "snap")?)?,
        r.try_get("pruned")?,
        changed
            .map(|c| c.split(' ').map(str::to_string).collect())
            .unwrap_or_default(),
    ))
}

impl IndexHandle {
    fn get(&self) -> Current {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set(&self, c: Current) {
        match self.current.write() {
            Ok(mut g) => *g = c,
            Err(p) => *p.into_inner() = c,
        }
    }

    /// An index holding every write committed before the call.
    pub async fn fresh(&self, db: &Db) -> Result<Arc<Index>> {
        if db.dialect() == tessera_db::Dialect::Postgres {
            return self.fresh_pg(db).await;
        }
        let rev = store::revision(db).await?;
        let cur = self.get().index;
        if cur.loaded && cur.revision >= rev {
            return Ok(cur);
        }
        let _single = self.refresh.lock().await;
        let cur = self.get().index;
        if cur.loaded && cur.revision >= rev {
            return Ok(cur);
        }
        let changed = if cur.loaded {
            store::changes_since(db, cur.revision).await?
        } else {
            None
        };
        let next = Self::reload(db, &cur, changed.as_ref(), rev).await?;
        self.set(Current {
            index: next.clone(),
            snapshot: None,
        });
        Ok(next)
    }

    /// PostgreSQL: writers do not serialize, so instead of a revision the reader keeps the snapshot its
    /// index reflects and asks (in one statement, from a newer snapshot) which providers' change records
    /// that snapshot did not see.
    async fn fresh_pg(&self, db: &Db) -> Result<Arc<Index>> {
        let cur = self.get();
        if let Some(since) = cur.snapshot.as_ref().filter(|_| cur.index.loaded) {
            let (now, pruned, changed) = pg_changes(db, since).await?;
            if changed.is_empty() && pruned <= since.xmin {
                // Nothing new: the index reflects the newer snapshot too (kept so the next look starts there).
                if let Ok(_single) = self.refresh.try_lock() {
                    let latest = self.get();
                    if Arc::ptr_eq(&latest.index, &cur.index) {
                        self.set(Current {
                            index: cur.index.clone(),
                            snapshot: Some(now),
                        });
                    }
                }
                return Ok(cur.index);
            }
        }
        let _single = self.refresh.lock().await;
        // Again under the lock: another reader may have refreshed meanwhile.
        let cur = self.get();
        let (next, snapshot) = match cur.snapshot.as_ref().filter(|_| cur.index.loaded) {
            Some(since) => {
                let (now, pruned, changed) = pg_changes(db, since).await?;
                if changed.is_empty() && pruned <= since.xmin {
                    (cur.index.clone(), now)
                } else {
                    let changed = (pruned <= since.xmin).then_some(changed);
                    (
                        Self::reload(db, &cur.index, changed.as_ref(), now.xmin).await?,
                        now,
                    )
                }
            }
            None => {
                // The snapshot before the load: the load itself may see more, which later looks reload again.
                let r = sqlx::query("SELECT CAST(pg_current_snapshot() AS TEXT) AS snap")
                    .fetch_one(db.pool())
                    .await?;
                let now = Snapshot::parse(&get_text(&r, "snap")?)?;
                (Self::reload(db, &cur.index, None, now.xmin).await?, now)
            }
        };
        self.set(Current {
            index: next.clone(),
            snapshot: Some(snapshot),
        });
        Ok(next)
    }

    /// A new index from `cur`: the `changed` providers reloaded, or everything when None (or not loaded).
    async fn reload(
        db: &Db,
        cur: &Arc<Index>,
        changed: Option<&BTreeSet<String>>,
        revision: i64,
    ) -> Result<Arc<Index>> {
        let mut next = match changed {
            Some(set) if cur.loaded && set.len() <= PARTIAL_RELOAD_MAX => {
                let mut next = (**cur).clone();
                next.load(db, Some(set)).await?;
                next
            }
            _ => {
                let mut next = Index::default();
                next.load(db, None).await?;
                next
            }
        };
        next.revision = revision;
        next.loaded = true;
        tracing::debug!(
            revision,
            reloaded = changed
                .filter(|c| cur.loaded && c.len() <= PARTIAL_RELOAD_MAX)
                .map(|c| c.len()),
            "capacity index refreshed"
        );
        Ok(Arc::new(next))
    }
}
