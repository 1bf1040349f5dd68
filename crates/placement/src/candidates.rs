//! Allocation candidates over the capacity index.
//!
//! For each provider tree (filtered by `root_required` and `in_tree`), every request group gets its options:
//! a granular group (`resourcesN`) any single provider of the tree, or a sharing provider in one of the
//! tree's aggregates, that fits all its resources and satisfies its traits and aggregates; the unsuffixed
//! group one slot per resource class, which different providers of the tree may fill. A depth-first walk
//! over the slots then assigns providers, keeping per-provider running totals so amounts placed on one
//! provider by several groups must fit together, honouring `group_policy=isolate`, the unsuffixed group's
//! traits (satisfied by the providers it draws from, together) and `same_subtree`. Identical requests are
//! emitted once. Work is bounded by the candidates cap and, when given, `limit`.

use crate::index::{Index, Inv};
use std::collections::HashSet;

/// Trait constraints with ids (`u32::MAX` stands for a name no provider has).
#[derive(Debug, Clone, Default)]
pub struct Traits {
    pub all: Vec<u32>,
    pub none: Vec<u32>,
    pub any_of: Vec<Vec<u32>>,
}

impl Traits {
    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.none.is_empty() && self.any_of.is_empty()
    }
    fn satisfied_by(&self, has: impl Fn(u32) -> bool) -> bool {
        self.all.iter().all(|t| has(*t))
            && !self.none.iter().any(|t| has(*t))
            && self.any_of.iter().all(|g| g.iter().any(|t| has(*t)))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Aggs {
    pub any_of: Vec<Vec<u32>>,
    pub none: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Group {
    /// "" for the unsuffixed group.
    pub suffix: String,
    pub resources: Vec<(u32, i64)>,
    pub traits: Traits,
    pub member_of: Aggs,
    /// Root of the tree this group must come from.
    pub in_tree: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub groups: Vec<Group>,
    pub isolate: bool,
    pub root_required: Traits,
    /// Sets of group indexes that must land in one subtree.
    pub same_subtree: Vec<Vec<usize>>,
    /// Nested trees may contribute (1.29+); below, only roots (and sharing providers).
    pub nested: bool,
    /// Stop after this many distinct candidates.
    pub max: Option<usize>,
}

/// One candidate, borrowed from [`Found`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// (provider, class, amount), sorted by provider then class.
    pub allocations: &'a [(u32, u32, i64)],
    /// (group index in the request, provider that satisfied it), by group index; a group's providers in
    /// the order they were chosen.
    pub mappings: &'a [(u32, u32)],
}

/// The candidates found, stored flat: a few arrays for all of them rather than three allocations per
/// candidate (10,000 candidates took ~2 MB that way, and the allocator kept it).
#[derive(Debug, Default)]
pub struct Found {
    allocations: Vec<(u32, u32, i64)>,
    mappings: Vec<(u32, u32)>,
    /// Per candidate: where its allocations and its mappings end in the arrays above.
    ends: Vec<(u32, u32)>,
}

impl Found {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Candidate `i` (< `len()`).
    pub fn get(&self, i: usize) -> Candidate<'_> {
        let start = i.checked_sub(1).map(|j| self.ends[j]).unwrap_or((0, 0));
        let end = self.ends[i];
        Candidate {
            allocations: &self.allocations[start.0 as usize..end.0 as usize],
            mappings: &self.mappings[start.1 as usize..end.1 as usize],
        }
    }

    fn push(&mut self, allocations: &[(u32, u32, i64)], mappings: &[(u32, u32)]) {
        self.allocations.extend_from_slice(allocations);
        self.mappings.extend_from_slice(mappings);
        self.ends
            .push((self.allocations.len() as u32, self.mappings.len() as u32));
    }
}

/// A position to fill: one class of the unsuffixed group, or a whole granular group.
struct Slot {
    group: usize,
    /// What the chosen provider gives: (class, amount).
    amounts: Vec<(u32, i64)>,
    options: Vec<u32>,
}

fn member_ok(ix: &Index, n: u32, m: &crate::candidates::Aggs) -> bool {
    let node = ix.node(n);
    let root = ix.node(node.root);
    let in_agg = |a: u32| node.in_agg(a) || root.in_agg(a);
    m.any_of.iter().all(|g| g.iter().any(|a| in_agg(*a))) && !m.none.iter().any(|a| in_agg(*a))
}

fn fits_all(inv: impl Fn(u32) -> Option<Inv>, amounts: &[(u32, i64)]) -> bool {
    amounts
        .iter()
        .all(|(rc, n)| inv(*rc).is_some_and(|i| i.fits(*n, 0)))
}

/// Compute candidates.
pub fn compute(ix: &Index, req: &Request) -> Found {
    let mut out = Found::default();
    let mut seen: HashSet<Vec<(u32, u32, i64)>> = HashSet::new();
    let max = req.max.unwrap_or(usize::MAX);
    // With one slot per class and no sharing providers, every assignment is a distinct request; duplicates
    // need slots able to take the same provider and class (granular groups next to other groups, sharing
    // providers reachable from several trees) or slots that allocate nothing (resourceless groups).
    let dedupe = req.groups.iter().filter(|g| !g.suffix.is_empty()).count() > 1
        || req.groups.iter().any(|g| !g.suffix.is_empty()) && req.groups.iter().any(|g| g.suffix.is_empty())
        || req.groups.iter().any(|g| g.resources.is_empty())
        || !ix.sharing.is_empty();
    // Classes every tree must offer somewhere (itself or a sharing provider): a cheap pre-filter.
    for root_ref in &ix.roots {
        let root = *root_ref;
        if out.len() >= max {
            break;
        }
        let r = ix.node(root);
        if !req.root_required.satisfied_by(|t| r.has_trait(t)) {
            continue;
        }
        if req.groups.iter().any(|g| g.in_tree.is_some_and(|t| t != root)) {
            continue;
        }
        let members: &[u32] = if req.nested {
            ix.tree(root)
        } else {
            std::slice::from_ref(root_ref)
        };
        // Sharing providers reachable through the tree's aggregates.
        let mut sharing: Vec<u32> = Vec::new();
        if !ix.sharing.is_empty() && req.groups.iter().all(|g| g.in_tree.is_none()) {
            for m in members {
                for a in &ix.node(*m).aggs {
                    for s in ix.sharing.get(a).into_iter().flatten() {
                        if ix.node(*s).root != root && !sharing.contains(s) {
                            sharing.push(*s);
                        }
                    }
                }
            }
        }
        let pool = || members.iter().chain(sharing.iter()).copied();
        let mut slots: Vec<Slot> = Vec::new();
        let mut dead = false;
        for (gi, g) in req.groups.iter().enumerate() {
            if g.suffix.is_empty() {
                for &(rc, n) in &g.resources {
                    let options: Vec<u32> = pool()
                        .filter(|p| {
                            ix.node(*p).inv(rc).is_some_and(|i| i.fits(n, 0))
                                && member_ok(ix, *p, &g.member_of)
                        })
                        .collect();
                    dead |= options.is_empty();
                    slots.push(Slot {
                        group: gi,
                        amounts: vec![(rc, n)],
                        options,
                    });
                }
                if g.resources.is_empty() && !g.traits.is_empty() {
                    // A resourceless unsuffixed group: some provider of the tree has the traits.
                    let options: Vec<u32> = pool()
                        .filter(|p| g.traits.satisfied_by(|t| ix.node(*p).has_trait(t)))
                        .collect();
                    dead |= options.is_empty();
                    slots.push(Slot {
                        group: gi,
                        amounts: Vec::new(),
                        options,
                    });
                }
            } else {
                let options: Vec<u32> = pool()
                    .filter(|p| {
                        let node = ix.node(*p);
                        fits_all(|rc| node.inv(rc).copied(), &g.resources)
                            && g.traits.satisfied_by(|t| node.has_trait(t))
                            && member_ok(ix, *p, &g.member_of)
                    })
                    .collect();
                dead |= options.is_empty();
                slots.push(Slot {
                    group: gi,
                    amounts: g.resources.clone(),
                    options,
                });
            }
            if dead {
                break;
            }
        }
        if dead || slots.is_empty() {
            continue;
        }
        let mut walk = Walk {
            ix,
            req,
            slots: &slots,
            chosen: Vec::with_capacity(slots.len()),
            extra: Vec::new(),
            out: &mut out,
            seen: &mut seen,
            maps: Vec::new(),
            allocations: Vec::new(),
            dedupe,
            max,
        };
        walk.dfs(0);
    }
    out
}

struct Walk<'a> {
    ix: &'a Index,
    req: &'a Request,
    slots: &'a [Slot],
    chosen: Vec<u32>,
    /// What this partial candidate already put on (provider, class).
    extra: Vec<(u32, u32, i64)>,
    out: &'a mut Found,
    seen: &'a mut HashSet<Vec<(u32, u32, i64)>>,
    /// Scratch space of `emit`: the candidate's mappings and allocations.
    maps: Vec<(u32, u32)>,
    allocations: Vec<(u32, u32, i64)>,
    /// Whether two assignments in this search can produce the same request.
    dedupe: bool,
    max: usize,
}

impl Walk<'_> {
    fn extra_on(&self, p: u32, rc: u32) -> i64 {
        self.extra
            .iter()
            .filter(|(q, c, _)| *q == p && *c == rc)
            .map(|(_, _, n)| n)
            .sum()
    }

    fn dfs(&mut self, k: usize) {
        if self.out.len() >= self.max {
            return;
        }
        if k == self.slots.len() {
            self.emit();
            return;
        }
        let slot = &self.slots[k];
        for &p in &slot.options {
            let node = self.ix.node(p);
            // Amounts must fit together with what this candidate already put on `p`.
            let fits = slot.amounts.iter().all(|(rc, n)| {
                let extra = self.extra_on(p, *rc);
                extra == 0 || node.inv(*rc).is_some_and(|i| i.fits(*n, extra))
            });
            if !fits {
                continue;
            }
            if self.req.isolate && !self.req.groups[slot.group].suffix.is_empty() && !slot.amounts.is_empty()
            {
                let clash = self.chosen.iter().enumerate().any(|(j, q)| {
                    let other = &self.slots[j];
                    *q == p
                        && other.group != slot.group
                        && !self.req.groups[other.group].suffix.is_empty()
                        && !other.amounts.is_empty()
                });
                if clash {
                    continue;
                }
            }
            let mark = self.extra.len();
            for (rc, n) in &slot.amounts {
                self.extra.push((p, *rc, *n));
            }
            self.chosen.push(p);
            self.dfs(k + 1);
            self.chosen.pop();
            self.extra.truncate(mark);
            if self.out.len() >= self.max {
                return;
            }
        }
    }

    fn emit(&mut self) {
        let mut maps = std::mem::take(&mut self.maps);
        let mut allocations = std::mem::take(&mut self.allocations);
        // Distinct assignments can add up to the same request (two like groups swapped): emit it once.
        if self.check_and_collect(&mut maps, &mut allocations)
            && (!self.dedupe || self.seen.insert(allocations.clone()))
        {
            self.out.push(&allocations, &maps);
        }
        self.maps = maps;
        self.allocations = allocations;
    }

    /// The chosen assignment's mappings (providers per group, by group index) and allocations (summed per
    /// provider and class, sorted), or false when the unsuffixed group's traits or `same_subtree` fail.
    fn check_and_collect(&self, maps: &mut Vec<(u32, u32)>, allocations: &mut Vec<(u32, u32, i64)>) -> bool {
        maps.clear();
        for (j, p) in self.chosen.iter().enumerate() {
            let g = self.slots[j].group as u32;
            if !maps.contains(&(g, *p)) {
                maps.push((g, *p));
            }
        }
        // Stable: a group's providers stay in the order they were chosen.
        maps.sort_by_key(|(g, _)| *g);
        let provs_of = |g: usize| {
            maps.iter()
                .filter(move |(x, _)| *x as usize == g)
                .map(|(_, p)| *p)
        };
        // The unsuffixed group's traits hold over the providers it draws from, together.
        for (gi, g) in self.req.groups.iter().enumerate() {
            if g.suffix.is_empty()
                && !g.traits.is_empty()
                && !g.resources.is_empty()
                && !g
                    .traits
                    .satisfied_by(|t| provs_of(gi).any(|p| self.ix.node(p).has_trait(t)))
            {
                return false;
            }
        }
        // same_subtree: one of the groups' providers is an ancestor of all the others.
        for set in &self.req.same_subtree {
            let provs: Vec<u32> = set.iter().flat_map(|g| provs_of(*g)).collect();
            if !provs
                .iter()
                .any(|a| provs.iter().all(|p| self.ix.is_ancestor(*a, *p)))
            {
                return false;
            }
        }
        allocations.clear();
        for (j, p) in self.chosen.iter().enumerate() {
            for (rc, n) in &self.slots[j].amounts {
                match allocations.iter_mut().find(|(q, c, _)| q == p && c == rc) {
                    Some(e) => e.2 += n,
                    None => allocations.push((*p, *rc, *n)),
                }
            }
        }
        allocations.sort_unstable();
        true
    }
}
