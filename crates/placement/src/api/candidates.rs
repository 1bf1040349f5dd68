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
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
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

fn ids(ix: &Index, names: &[String], kind: &crate::index::Names) -> Vec<u32> {
    let _ = ix;
    names.iter().map(|n| kind.id(n).unwrap_or(u32::MAX)).collect()
}

fn traits_of(ix: &Index, f: &TraitFilter) -> Traits {
    Traits {
        all: ids(ix, &f.all, &ix.traits),
        none: ids(ix, &f.none, &ix.traits),
        any_of: f.any_of.iter().map(|g| ids(ix, g, &ix.traits)).collect(),
    }
}

fn aggs_of(ix: &Index, f: &AggFilter) -> Aggs {
    Aggs {
        any_of: f.any_of.iter().map(|g| ids(ix, g, &ix.aggs)).collect(),
        none: ids(ix, &f.none, &ix.aggs),
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
                    .by_uuid
                    .get(u)
                    .filter(|i| ix.node(**i).alive)
                    .ok_or_else(|| bad(format!("No such resource provider {u} for in_tree{s}")))?;
                Some(ix.node(*i).root)
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
    let found = if empty {
        Vec::new()
    } else {
        candidates::compute(&ix, &req)
    };
    Ok(axum::Json(render(&ix, &req, &found, mv)).into_response())
}

fn render(ix: &Index, req: &Request, found: &[candidates::Candidate], mv: Mv) -> Value {
    let uuid = |n: u32| ix.node(n).uuid.clone();
    let class = |c: u32| ix.classes.name(c).to_string();
    let mut requests = Vec::with_capacity(found.len());
    let mut in_summary: BTreeSet<u32> = BTreeSet::new();
    for c in found {
        let mut per_rp: BTreeMap<u32, Map<String, Value>> = BTreeMap::new();
        for ((p, rc), n) in &c.allocations {
            per_rp.entry(*p).or_default().insert(class(*rc), json!(n));
            in_summary.insert(*p);
        }
        if mv.at_least(12) {
            let allocs: Map<String, Value> = per_rp
                .into_iter()
                .map(|(p, r)| (uuid(p), json!({"resources": r})))
                .collect();
            let mut v = json!({"allocations": allocs});
            if mv.at_least(34) {
                let m: Map<String, Value> = c
                    .mappings
                    .iter()
                    .map(|(s, ps)| (s.clone(), json!(ps.iter().map(|p| uuid(*p)).collect::<Vec<_>>())))
                    .collect();
                v["mappings"] = Value::Object(m);
            }
            requests.push(v);
        } else {
            let allocs: Vec<Value> = per_rp
                .into_iter()
                .map(|(p, r)| json!({"resource_provider": {"uuid": uuid(p)}, "resources": r}))
                .collect();
            requests.push(json!({"allocations": allocs}));
        }
    }
    if mv.at_least(29) {
        // Every provider of the trees involved.
        let roots: BTreeSet<u32> = in_summary.iter().map(|p| ix.node(*p).root).collect();
        for r in roots {
            in_summary.extend(ix.trees.get(&r).into_iter().flatten());
        }
    }
    let requested: BTreeSet<u32> = req
        .groups
        .iter()
        .flat_map(|g| g.resources.iter().map(|(c, _)| *c))
        .collect();
    let mut summaries = Map::new();
    for p in in_summary {
        let node = ix.node(p);
        let resources: Map<String, Value> = node
            .inv
            .iter()
            .filter(|(c, _)| mv.at_least(27) || requested.contains(c))
            .map(|(c, i)| (class(*c), json!({"capacity": i.capacity(), "used": i.used})))
            .collect();
        let mut v = json!({"resources": resources});
        if mv.at_least(17) {
            v["traits"] = json!(node.traits.iter().map(|t| ix.traits.name(*t)).collect::<Vec<_>>());
        }
        if mv.at_least(29) {
            v["parent_provider_uuid"] = json!(node.parent.map(uuid));
            v["root_provider_uuid"] = json!(uuid(node.root));
        }
        summaries.insert(node.uuid.clone(), v);
    }
    json!({"allocation_requests": requests, "provider_summaries": summaries})
}
