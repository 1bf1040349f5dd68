//! `GET /allocation_candidates`: query parsing per microversion and the response formats.

use super::providers::{
    check_known, parse_member_of, parse_required, parse_resources, AggFilter, TraitFilter,
};
use super::{admin, need, S, V};
use crate::candidates::{self, Aggs, Group, Request, Traits};
use crate::error::{bad, PlacementError, Result};
use crate::index::Index;
use crate::microversion::Mv;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tessera_http::auth::Caller;

/// One request group after parsing: suffix, resources, traits, aggregates, in_tree.
type ParsedGroup = (
    String,
    BTreeMap<String, i64>,
    TraitFilter,
    AggFilter,
    Option<String>,
);

#[derive(Default)]
struct GroupParams {
    resources: Option<String>,
    required: Vec<String>,
    member_of: Vec<String>,
    in_tree: Option<String>,
}

fn dup(k: &str) -> PlacementError {
    PlacementError::BadRequest(
        format!("Query parameter {k:?} can be provided only once"),
        Some(crate::error::QUERY_DUPLICATE_KEY),
    )
}

fn suffix_ok(s: &str, mv: Mv) -> bool {
    if mv.at_least(33) {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    } else {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0')
    }
}

/// Interned ids of names; a name nothing in the index carries maps to `u32::MAX`, which no provider has.
fn ids(names: &[String], kind: &crate::index::Names) -> Vec<u32> {
    names.iter().map(|n| kind.id(n).unwrap_or(u32::MAX)).collect()
}

fn traits_of(ix: &Index, f: &TraitFilter) -> Traits {
    Traits {
        all: ids(&f.all, &ix.traits),
        none: ids(&f.none, &ix.traits),
        any_of: f.any_of.iter().map(|g| ids(g, &ix.traits)).collect(),
    }
}

fn aggs_of(ix: &Index, f: &AggFilter) -> Aggs {
    Aggs {
        any_of: f.any_of.iter().map(|g| ids(g, &ix.aggs)).collect(),
        none: ids(&f.none, &ix.aggs),
    }
}

pub(crate) async fn list(
    State(svc): S,
    Caller(ctx): Caller,
    Extension(mv): V,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response> {
    need(mv, 10)?;
    admin(&ctx, "allocation_candidates:list")?;
    let mut groups: BTreeMap<String, GroupParams> = BTreeMap::new();
    let mut limit: Option<usize> = None;
    let mut policy: Option<String> = None;
    let mut root_required: Vec<String> = Vec::new();
    let mut same_subtree: Vec<String> = Vec::new();
    for (k, v) in q {
        match k.as_str() {
            "limit" if mv.at_least(16) => {
                if limit.is_some() {
                    return Err(dup(&k));
                }
                limit = Some(v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    bad(format!(
                        "Invalid query string parameters: '{v}' is not a valid limit (a positive integer)"
                    ))
                })?);
            }
            "group_policy" if mv.at_least(25) => {
                if policy.is_some() {
                    return Err(dup(&k));
                }
                if v != "none" && v != "isolate" {
                    return Err(bad(format!(
                        "Invalid query string parameters: '{v}' is not one of ['none', 'isolate']"
                    )));
                }
                policy = Some(v);
            }
            "root_required" if mv.at_least(35) => root_required.push(v),
            "same_subtree" if mv.at_least(36) => same_subtree.push(v),
            _ => {
                let (base, min) = [("resources", 10), ("required", 17), ("member_of", 21), ("in_tree", 31)]
                    .into_iter()
                    .find(|(b, _)| k.starts_with(b))
                    .ok_or_else(|| {
                        bad(format!(
                            "Invalid query string parameters: Additional properties are not allowed ('{k}' was unexpected)"
                        ))
                    })?;
                let suffix = &k[base.len()..];
                if !mv.at_least(min) || (!suffix.is_empty() && (!mv.at_least(25) || !suffix_ok(suffix, mv))) {
                    return Err(bad(format!(
                        "Invalid query string parameters: Additional properties are not allowed ('{k}' was unexpected)"
                    )));
                }
                let g = groups.entry(suffix.to_string()).or_default();
                match base {
                    "resources" => {
                        if g.resources.replace(v).is_some() {
                            return Err(dup(&k));
                        }
                    }
                    "required" => {
                        if !g.required.is_empty() && !mv.at_least(39) {
                            return Err(dup(&k));
                        }
                        g.required.push(v);
                    }
                    "member_of" => {
                        if !g.member_of.is_empty() && !mv.at_least(24) {
                            return Err(dup(&k));
                        }
                        g.member_of.push(v);
                    }
                    _ => {
                        if g.in_tree.replace(v).is_some() {
                            return Err(dup(&k));
                        }
                    }
                }
            }
        }
    }
    let subtree_sets: Vec<Vec<String>> = same_subtree
        .iter()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
        .collect();
    for set in &subtree_sets {
        for s in set {
            if s.is_empty() || !groups.contains_key(s) {
                return Err(bad(format!(
                    "Real suffixes should be specified in same_subtree: {s:?} is not a request group"
                )));
            }
        }
    }
    let in_subtree = |s: &str| subtree_sets.iter().any(|set| set.iter().any(|x| x == s));
    if !groups.values().any(|g| g.resources.is_some()) {
        return Err(PlacementError::BadRequest(
            if mv.at_least(25) {
                "At least one resources or resourcesN query parameter is required".into()
            } else {
                "Invalid query string parameters: 'resources' is a required property".into()
            },
            Some(crate::error::QUERY_MISSING_VALUE),
        ));
    }
    for (s, g) in &groups {
        if !s.is_empty() && g.resources.is_none() && !in_subtree(s) {
            return Err(bad(format!(
                "All request groups must specify resources; resources{s} is missing"
            )));
        }
    }
    let suffixed = groups
        .iter()
        .filter(|(s, g)| !s.is_empty() && g.resources.is_some())
        .count();
    if suffixed > 1 && policy.is_none() {
        return Err(bad(
            "The \"group_policy\" parameter is required when specifying more than one \"resources{N}\" parameter.",
        ));
    }

    // Parse and check names against the database (unknown classes/traits are 400s).
    let mut parsed: Vec<ParsedGroup> = Vec::new();
    let mut all_classes = BTreeSet::new();
    let mut all_traits = BTreeSet::new();
    for (s, g) in &groups {
        let res = match &g.resources {
            Some(r) => parse_resources(r, &format!("resources{s}"))?,
            None => BTreeMap::new(),
        };
        let traits = parse_required(&g.required, mv, &format!("required{s}"))?;
        let aggs = parse_member_of(&g.member_of, mv)?;
        all_classes.extend(res.keys().cloned());
        all_traits.extend(traits.names());
        parsed.push((s.clone(), res, traits, aggs, g.in_tree.clone()));
    }
    let root_req = parse_required(&root_required, mv, "root_required")?;
    all_traits.extend(root_req.names());
    check_known(&svc, "resource_classes", &all_classes).await?;
    check_known(&svc, "traits", &all_traits).await?;

    let ix = svc.index.fresh(&svc.db).await?;
    let mut req = Request {
        isolate: policy.as_deref() == Some("isolate"),
        root_required: traits_of(&ix, &root_req),
        nested: mv.at_least(29),
        max: match (limit, svc.settings.max_allocation_candidates) {
            (Some(l), c) if c >= 0 => Some(l.min(c as usize)),
            (Some(l), _) => Some(l),
            (None, c) if c >= 0 => Some(c as usize),
            (None, _) => None,
        },
        ..Default::default()
    };
    let mut empty = false;
    for (s, res, traits, aggs, in_tree) in &parsed {
        let in_tree = match in_tree {
            Some(u) => {
                let i = ix
                    .by_uuid_str(u)
                    .filter(|i| ix.node(*i).alive)
                    .ok_or_else(|| bad(format!("No such resource provider {u} for in_tree{s}")))?;
                Some(ix.node(i).root)
            }
            None => None,
        };
        let mut resources = Vec::new();
        for (rc, n) in res {
            match ix.classes.id(rc) {
                Some(c) => resources.push((c, *n)),
                None => empty = true,
            }
        }
        req.groups.push(Group {
            suffix: s.clone(),
            resources,
            traits: traits_of(&ix, traits),
            member_of: aggs_of(&ix, aggs),
            in_tree,
        });
    }
    for set in &subtree_sets {
        req.same_subtree.push(
            set.iter()
                .filter_map(|s| req.groups.iter().position(|g| &g.suffix == s))
                .collect(),
        );
    }
    let t0 = std::time::Instant::now();
    let found = if empty {
        candidates::Found::default()
    } else {
        candidates::compute(&ix, &req)
    };
    let t1 = std::time::Instant::now();
    let n_found = found.len();
    let t2 = std::time::Instant::now();
    let mut renderer = Renderer::new(ix, req, found, mv);
    let body = if n_found <= SMALL_ANSWER {
        // Up to about a megabyte: one buffer, sent with its length in one write.
        renderer.chunk = usize::MAX;
        axum::body::Body::from(renderer.next().unwrap_or_default())
    } else {
        axum::body::Body::from_stream(futures_util::stream::iter(
            renderer.map(Ok::<_, std::convert::Infallible>),
        ))
    };
    let resp = (
        [(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    tracing::debug!(
        candidates = n_found,
        compute_us = (t1 - t0).as_micros() as u64,
        setup_us = (t2 - t1).as_micros() as u64,
        "allocation candidates"
    );
    Ok(resp)
}

/// A JSON text written straight into a buffer: candidate lists run to megabytes, and building them as
/// `serde_json::Value` trees first cost ten times the search itself.
struct Out {
    buf: Vec<u8>,
}

/// Size of one body frame of a large candidates answer (see [`Renderer`]).
const CHUNK: usize = 32 * 1024;

/// Answers with at most this many candidates (about 1 MB) are rendered into one buffer; larger ones stream.
const SMALL_ANSWER: usize = 2000;

impl Out {
    fn raw(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }
    fn string(&mut self, s: &str) {
        // Uuids and class, trait and group names need no escaping; anything else goes through serde_json.
        if s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            self.buf.push(b'"');
            self.buf.extend_from_slice(s.as_bytes());
            self.buf.push(b'"');
        } else {
            // Infallible into a Vec.
            let _ = serde_json::to_writer(&mut self.buf, s);
        }
    }
    fn int(&mut self, n: i64) {
        use std::io::Write as _;
        // Infallible into a Vec.
        let _ = write!(self.buf, "{n}");
    }
    /// A provider uuid as a JSON string (hyphenated, lower case).
    fn uuid(&mut self, u: &uuid::Uuid) {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        self.buf.push(b'"');
        self.buf
            .extend_from_slice(u.hyphenated().encode_lower(&mut text).as_bytes());
        self.buf.push(b'"');
    }
    /// A provider uuid as a key: `"uuid":`
    fn uuid_key(&mut self, u: &uuid::Uuid) {
        self.uuid(u);
        self.buf.push(b':');
    }
    /// `"key":`
    fn key(&mut self, k: &str) {
        self.string(k);
        self.buf.push(b':');
    }
    /// A separator before every element but the first.
    fn sep(&mut self, first: &mut bool) {
        if !std::mem::take(first) {
            self.buf.push(b',');
        }
    }
}

/// The answer, rendered lazily: each call of `next` writes the next ~`CHUNK` bytes (whole elements), so
/// a 4 MB answer never exists in memory at once, and the allocator is not left holding megabytes.
struct Renderer {
    ix: Arc<Index>,
    req: Request,
    found: candidates::Found,
    mv: Mv,
    /// Next allocation request to write.
    next: usize,
    in_summary: BTreeSet<u32>,
    /// Once the requests are written: the providers to summarize and the next one.
    summary: Option<(Vec<u32>, usize)>,
    requested: BTreeSet<u32>,
    done: bool,
    /// Bytes per frame.
    chunk: usize,
}

impl Renderer {
    fn new(ix: Arc<Index>, req: Request, found: candidates::Found, mv: Mv) -> Self {
        let requested = req
            .groups
            .iter()
            .flat_map(|g| g.resources.iter().map(|(c, _)| *c))
            .collect();
        Renderer {
            ix,
            req,
            found,
            mv,
            next: 0,
            in_summary: BTreeSet::new(),
            summary: None,
            requested,
            done: false,
            chunk: CHUNK,
        }
    }

    fn write_request(&mut self, o: &mut Out, c: usize) {
        let (ix, mv, c) = (&*self.ix, self.mv, self.found.get(c));
        // Allocations grouped by provider (the map is ordered by provider, then class).
        let mut per_rp: Vec<(u32, Vec<(u32, i64)>)> = Vec::new();
        for (p, rc, n) in c.allocations {
            match per_rp.last_mut() {
                Some((q, v)) if q == p => v.push((*rc, *n)),
                _ => per_rp.push((*p, vec![(*rc, *n)])),
            }
            self.in_summary.insert(*p);
        }
        let resources = |o: &mut Out, v: &[(u32, i64)]| {
            o.raw("{");
            let mut first = true;
            for (rc, n) in v {
                o.sep(&mut first);
                o.key(ix.classes.name(*rc));
                o.int(*n);
            }
            o.raw("}");
        };
        if mv.at_least(12) {
            o.raw("{\"allocations\":{");
            let mut first = true;
            for (p, v) in &per_rp {
                o.sep(&mut first);
                o.uuid_key(&ix.node(*p).uuid);
                o.raw("{\"resources\":");
                resources(o, v);
                o.raw("}");
            }
            o.raw("}");
            if mv.at_least(34) {
                o.raw(",\"mappings\":{");
                let mut first = true;
                for provs in c.mappings.chunk_by(|a, b| a.0 == b.0) {
                    o.sep(&mut first);
                    o.key(&self.req.groups[provs[0].0 as usize].suffix);
                    o.raw("[");
                    let mut f2 = true;
                    for (_, p) in provs {
                        o.sep(&mut f2);
                        o.uuid(&ix.node(*p).uuid);
                    }
                    o.raw("]");
                }
                o.raw("}");
            }
            o.raw("}");
        } else {
            o.raw("{\"allocations\":[");
            let mut first = true;
            for (p, v) in &per_rp {
                o.sep(&mut first);
                o.raw("{\"resource_provider\":{\"uuid\":");
                o.uuid(&ix.node(*p).uuid);
                o.raw("},\"resources\":");
                resources(o, v);
                o.raw("}");
            }
            o.raw("]}");
        }
    }

    fn write_summary(&self, o: &mut Out, p: u32) {
        let (ix, mv) = (&*self.ix, self.mv);
        let node = ix.node(p);
        o.uuid_key(&node.uuid);
        o.raw("{\"resources\":{");
        let mut first = true;
        for i in &node.inv {
            let c = &i.class;
            if mv.at_least(27) || self.requested.contains(c) {
                o.sep(&mut first);
                o.key(ix.classes.name(*c));
                o.raw("{\"capacity\":");
                o.int(i.capacity());
                o.raw(",\"used\":");
                o.int(i.used);
                o.raw("}");
            }
        }
        o.raw("}");
        if mv.at_least(17) {
            o.raw(",\"traits\":[");
            let mut first = true;
            for t in &node.traits {
                o.sep(&mut first);
                o.string(ix.traits.name(*t));
            }
            o.raw("]");
        }
        if mv.at_least(29) {
            o.raw(",\"parent_provider_uuid\":");
            match node.parent {
                Some(pp) => o.uuid(&ix.node(pp).uuid),
                None => o.raw("null"),
            }
            o.raw(",\"root_provider_uuid\":");
            o.uuid(&ix.node(node.root).uuid);
        }
        o.raw("}");
    }
}

impl Iterator for Renderer {
    type Item = bytes::Bytes;

    fn next(&mut self) -> Option<bytes::Bytes> {
        if self.done {
            return None;
        }
        let mut o = Out {
            buf: Vec::with_capacity(if self.chunk == usize::MAX {
                256 + self.found.len() * 450
            } else {
                self.chunk + 4096
            }),
        };
        if self.summary.is_none() {
            if self.next == 0 {
                o.raw("{\"allocation_requests\":[");
            }
            while self.next < self.found.len() && o.buf.len() < self.chunk {
                if self.next > 0 {
                    o.raw(",");
                }
                self.write_request(&mut o, self.next);
                self.next += 1;
            }
            if self.next < self.found.len() {
                return Some(o.buf.into());
            }
            o.raw("],\"provider_summaries\":{");
            self.found = candidates::Found::default();
            let mut in_summary = std::mem::take(&mut self.in_summary);
            if self.mv.at_least(29) {
                // Every provider of the trees involved.
                let roots: BTreeSet<u32> = in_summary.iter().map(|p| self.ix.node(*p).root).collect();
                for r in roots {
                    in_summary.extend(self.ix.tree(r));
                }
            }
            self.summary = Some((in_summary.into_iter().collect(), 0));
        }
        let (list, mut j) = self.summary.take().unwrap_or_default();
        while j < list.len() && o.buf.len() < self.chunk {
            if j > 0 {
                o.raw(",");
            }
            self.write_summary(&mut o, list[j]);
            j += 1;
        }
        if j == list.len() {
            o.raw("}}");
            self.done = true;
        }
        self.summary = Some((list, j));
        Some(o.buf.into())
    }
}
