//! `tessera manage cell_v2 …`: nova-manage's cell_v2 commands with its names, options, messages and exit
//! codes. Each command returns its exit code; an unexpected error (a database that does not answer, say) is
//! an `Err`, which the command line reports as nova-manage does ("An error has occurred", status 255).
//!
//! One deliberate addition: `create_cell`, `map_cell0` and `simple_cell_setup` also create the new cell's
//! database schema (nova needs a separate `db sync`), so a cell is usable as soon as it is mapped.

use crate::cells::{self, CellMapping, CELL0_NAME, CELL0_TRANSPORT_URL, CELL0_UUID};
use crate::{celldb, ComputeError, Result};
use std::fmt::Write as _;
use tessera_db::Db;

/// What the commands need from the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// `[DEFAULT] transport_url` (empty when unset).
    pub transport_url: String,
    /// `[database] connection` (empty when unset).
    pub database_connection: String,
}

/// Output sink (stdout for the command line; a buffer in tests).
pub trait Say {
    fn say(&mut self, line: &str);
}

impl Say for String {
    fn say(&mut self, line: &str) {
        self.push_str(line);
        self.push('\n');
    }
}

pub struct Stdout;

impl Say for Stdout {
    fn say(&mut self, line: &str) {
        println!("{line}");
    }
}

/// Schemes a transport URL may have: the in-process bus, RabbitMQ, and cell0's `none`.
fn check_transport_url(url: &str) -> std::result::Result<(), String> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(format!("No scheme specified in \"{url}\""));
    };
    match scheme {
        "inproc" | "rabbit" | "none" => Ok(()),
        other => Err(format!(
            "Unknown transport scheme '{other}' in \"{url}\" (use inproc://, rabbit://)"
        )),
    }
}

fn validate_transport_url(
    d: &Defaults,
    given: Option<&str>,
    warn_about_none: bool,
    out: &mut dyn Say,
) -> Option<String> {
    let url = match given.filter(|u| !u.is_empty()) {
        Some(u) => u.to_string(),
        None => {
            if d.transport_url.is_empty() {
                if warn_about_none {
                    out.say("Must specify --transport-url if [DEFAULT]/transport_url is not set in the configuration file.");
                }
                return None;
            }
            out.say("--transport-url not provided in the command line, using the value [DEFAULT]/transport_url from the configuration file");
            d.transport_url.clone()
        }
    };
    match check_transport_url(&url) {
        Ok(()) => Some(url),
        Err(e) => {
            out.say(&format!("Invalid transport URL: {e}"));
            None
        }
    }
}

fn validate_database_connection(
    d: &Defaults,
    given: Option<&str>,
    warn_about_none: bool,
    out: &mut dyn Say,
) -> Option<String> {
    match given.filter(|u| !u.is_empty()) {
        Some(u) => Some(u.to_string()),
        None => {
            if d.database_connection.is_empty() {
                if warn_about_none {
                    out.say("Must specify --database_connection if [database]/connection is not set in the configuration file.");
                }
                return None;
            }
            out.say("--database_connection not provided in the command line, using the value [database]/connection from the configuration file");
            Some(d.database_connection.clone())
        }
    }
}

/// Whether another cell than `except` already uses this transport URL or database.
async fn pair_taken(
    api: &Db,
    except: Option<&str>,
    transport_url: Option<&str>,
    database_connection: Option<&str>,
    out: &mut dyn Say,
) -> Result<bool> {
    for c in cells::cell_list(api).await? {
        if Some(c.uuid.as_str()) == except {
            continue;
        }
        if Some(c.database_connection.as_str()) == database_connection
            || Some(c.transport_url.as_str()) == transport_url
        {
            out.say(&format!(
                "The specified transport_url and/or database_connection combination already exists for another cell with uuid {}.",
                c.uuid
            ));
            return Ok(true);
        }
    }
    Ok(false)
}

/// Create the cell's schema; a database that cannot be opened is reported (exit 1 by the callers).
async fn sync_cell_db(url: &str, out: &mut dyn Say) -> bool {
    match celldb::open(url, 1, true).await {
        Ok(db) => {
            db.close().await;
            true
        }
        Err(e) => {
            out.say(&format!(
                "Unable to sync the cell database {}: {}",
                tessera_types::mask_url(url),
                chain(&e)
            ));
            false
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let _ = write!(s, ": {x}");
        src = x.source();
    }
    s
}

/// `create_cell`: 0 created; 1 transport URL or database missing/invalid; 2 the pair is another cell's.
#[allow(clippy::too_many_arguments)]
pub async fn create_cell(
    api: &Db,
    d: &Defaults,
    name: Option<&str>,
    database_connection: Option<&str>,
    transport_url: Option<&str>,
    verbose: bool,
    disabled: bool,
    out: &mut dyn Say,
) -> Result<u8> {
    let Some(transport_url) = validate_transport_url(d, transport_url, true, out) else {
        return Ok(1);
    };
    let Some(dbc) = validate_database_connection(d, database_connection, true, out) else {
        return Ok(1);
    };
    if pair_taken(api, None, Some(&transport_url), Some(&dbc), out).await? {
        return Ok(2);
    }
    if !sync_cell_db(&dbc, out).await {
        return Ok(1);
    }
    let uuid = tessera_types::new_uuid();
    cells::cell_create(api, &uuid, name, &transport_url, &dbc, disabled).await?;
    if verbose {
        out.say(&uuid);
    }
    Ok(0)
}

/// Map cell0 (its database: the given URL, or `[database] connection` + `_cell0`).
async fn map_cell0_inner(
    api: &Db,
    d: &Defaults,
    database_connection: Option<&str>,
    out: &mut dyn Say,
) -> Result<Option<CellMapping>> {
    let dbc = match database_connection.filter(|u| !u.is_empty()) {
        Some(u) => u.to_string(),
        None => cells::default_cell0_url(&d.database_connection),
    };
    if let Some(c0) = cells::cell_get(api, CELL0_UUID).await? {
        out.say("Cell0 is already setup");
        return Ok(Some(c0));
    }
    if !sync_cell_db(&dbc, out).await {
        return Ok(None);
    }
    match cells::cell_create(
        api,
        CELL0_UUID,
        Some(CELL0_NAME),
        CELL0_TRANSPORT_URL,
        &dbc,
        false,
    )
    .await
    {
        Ok(c) => Ok(Some(c)),
        Err(ComputeError::Duplicate(_)) => {
            out.say("Cell0 is already setup");
            Ok(cells::cell_get(api, CELL0_UUID).await?)
        }
        Err(e) => Err(e),
    }
}

/// `map_cell0`: 0 created or already there.
pub async fn map_cell0(
    api: &Db,
    d: &Defaults,
    database_connection: Option<&str>,
    out: &mut dyn Say,
) -> Result<u8> {
    Ok(
        if map_cell0_inner(api, d, database_connection, out).await?.is_some() {
            0
        } else {
            1
        },
    )
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// `list_cells`: the table nova-manage prints, passwords masked unless `verbose`.
pub async fn list_cells(api: &Db, verbose: bool, out: &mut dyn Say) -> Result<u8> {
    let mut all = cells::cell_list(api).await?;
    all.sort_by(|a, b| {
        a.name
            .as_deref()
            .unwrap_or("")
            .cmp(b.name.as_deref().unwrap_or(""))
    });
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|c| {
            let (t, dbc) = if verbose {
                (c.transport_url.clone(), c.database_connection.clone())
            } else {
                (
                    tessera_types::mask_url(&c.transport_url),
                    tessera_types::mask_url(&c.database_connection),
                )
            };
            vec![
                c.name.clone().unwrap_or_default(),
                c.uuid.clone(),
                t,
                dbc,
                py_bool(c.disabled).into(),
            ]
        })
        .collect();
    out.say(&table(
        &["Name", "UUID", "Transport URL", "Database Connection", "Disabled"],
        &rows,
    ));
    Ok(0)
}

/// `delete_cell`: 0 deleted; 1 not found; 2 hosts and no `--force`; 3 live instances; 4 only deleted
/// instances' mappings remain and no `--force`.
pub async fn delete_cell(api: &Db, cell_uuid: &str, force: bool, out: &mut dyn Say) -> Result<u8> {
    let Some(cell) = cells::cell_get(api, cell_uuid).await? else {
        out.say(&format!("Cell with uuid {cell_uuid} was not found."));
        return Ok(1);
    };
    let hosts = cells::host_mappings(api, Some(cell.id)).await?;
    if !hosts.is_empty() && !force {
        out.say(&format!(
            "There are existing hosts mapped to cell with uuid {cell_uuid}."
        ));
        return Ok(2);
    }
    let ims = cells::instance_mappings_in_cell(api, cell.id).await?;
    let need_cell_db = !hosts.is_empty() || !ims.is_empty();
    let cdb = if need_cell_db {
        Some(celldb::open(&cell.database_connection, 1, false).await?)
    } else {
        None
    };
    if let (false, Some(cdb)) = (ims.is_empty(), &cdb) {
        if celldb::live_instances(cdb, None).await? > 0 {
            out.say(&format!(
                "There are existing instances mapped to cell with uuid {cell_uuid}."
            ));
            return Ok(3);
        }
        if !force {
            out.say(&format!(
                "There are instance mappings to cell with uuid {cell_uuid}, but all instances have been deleted in the cell."
            ));
            out.say("So execute 'nova-manage db archive_deleted_rows' to delete the instance mappings.");
            return Ok(4);
        }
    }
    if let (false, Some(cdb)) = (hosts.is_empty(), &cdb) {
        celldb::unmap_nodes(cdb, None).await?;
    }
    if let Some(cdb) = cdb {
        cdb.close().await;
    }
    let ids: Vec<i64> = ims.iter().map(|m| m.id).collect();
    cells::cell_delete(api, cell.id, &ids).await?;
    Ok(0)
}

/// `update_cell`: 0 saved; 1 not found; 2 not saved; 3 pair taken; 4 `--disable` with `--enable`;
/// 5 enabling or disabling cell0.
#[allow(clippy::too_many_arguments)]
pub async fn update_cell(
    api: &Db,
    d: &Defaults,
    cell_uuid: &str,
    name: Option<&str>,
    transport_url: Option<&str>,
    database_connection: Option<&str>,
    disable: bool,
    enable: bool,
    out: &mut dyn Say,
) -> Result<u8> {
    let Some(mut cell) = cells::cell_get(api, cell_uuid).await? else {
        out.say(&format!("Cell with uuid {cell_uuid} was not found."));
        return Ok(1);
    };
    if let Some(n) = name.filter(|n| !n.is_empty()) {
        cell.name = Some(n.to_string());
    }
    // Without the options, nothing changes (the configuration values are not taken here).
    let transport_url = match transport_url.filter(|u| !u.is_empty()) {
        Some(_) => match validate_transport_url(d, transport_url, false, out) {
            Some(u) => Some(u),
            None => return Ok(2),
        },
        None => None,
    };
    let dbc = database_connection.filter(|u| !u.is_empty()).map(str::to_string);
    if pair_taken(
        api,
        Some(&cell.uuid),
        transport_url.as_deref(),
        dbc.as_deref(),
        out,
    )
    .await?
    {
        return Ok(3);
    }
    if let Some(u) = transport_url {
        cell.transport_url = u;
    }
    if let Some(u) = dbc {
        cell.database_connection = u;
    }
    if disable && enable {
        out.say("Cell cannot be disabled and enabled at the same time.");
        return Ok(4);
    }
    if disable || enable {
        if cell.is_cell0() {
            out.say("Cell0 cannot be disabled.");
            return Ok(5);
        } else if disable && !cell.disabled {
            cell.disabled = true;
        } else if enable && cell.disabled {
            cell.disabled = false;
        } else if disable {
            out.say(&format!("Cell {cell_uuid} is already disabled"));
        } else {
            out.say(&format!("Cell {cell_uuid} is already enabled"));
        }
    }
    if let Err(e) = cells::cell_update(api, &cell).await {
        out.say(&format!("Unable to update CellMapping: {}", chain(&e)));
        return Ok(2);
    }
    Ok(0)
}

/// `list_hosts`: table of host mappings, of one cell (1 when it does not exist) or all.
pub async fn list_hosts(api: &Db, cell_uuid: Option<&str>, out: &mut dyn Say) -> Result<u8> {
    let all_cells = cells::cell_list(api).await?;
    let hosts = match cell_uuid {
        Some(u) => {
            let Some(c) = all_cells.iter().find(|c| c.uuid == u) else {
                out.say(&format!("Cell with uuid {u} was not found."));
                return Ok(1);
            };
            cells::host_mappings(api, Some(c.id)).await?
        }
        None => cells::host_mappings(api, None).await?,
    };
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let c = all_cells.iter().find(|c| c.id == h.cell_id);
            vec![
                c.and_then(|c| c.name.clone()).unwrap_or_else(|| "None".into()),
                c.map(|c| c.uuid.clone()).unwrap_or_default(),
                h.host.clone(),
            ]
        })
        .collect();
    out.say(&table(&["Cell Name", "Cell UUID", "Hostname"], &rows));
    Ok(0)
}

/// `delete_host`: 0 deleted; 1 cell not found; 2 host not found; 3 host in another cell; 4 instances on it.
pub async fn delete_host(api: &Db, cell_uuid: &str, host: &str, out: &mut dyn Say) -> Result<u8> {
    let Some(cell) = cells::cell_get(api, cell_uuid).await? else {
        out.say(&format!("Cell with uuid {cell_uuid} was not found."));
        return Ok(1);
    };
    let Some(hm) = cells::host_mapping_get(api, host).await? else {
        out.say(&format!("The host {host} was not found."));
        return Ok(2);
    };
    if hm.cell_id != cell.id {
        out.say(&format!("The host {host} was not found in the cell {cell_uuid}."));
        return Ok(3);
    }
    let cdb = celldb::open(&cell.database_connection, 1, false).await?;
    if celldb::live_instances(&cdb, Some(host)).await? > 0 {
        out.say(&format!("There are instances on the host {host}."));
        cdb.close().await;
        return Ok(4);
    }
    celldb::unmap_nodes(&cdb, Some(host)).await?;
    cdb.close().await;
    cells::host_mapping_delete(api, host).await?;
    Ok(0)
}

/// Host discovery over every cell but cell0 (or one cell): map the hosts of unmapped compute nodes (or,
/// `by_service`, of `nova-compute` services) to their cell. Returns the hosts mapped. A host mapped
/// concurrently by someone else is [`ComputeError::Duplicate`].
pub async fn discover(
    api: &Db,
    cell_uuid: Option<&str>,
    by_service: bool,
    status: &mut (dyn FnMut(String) + Send),
) -> Result<Vec<String>> {
    let targets = match cell_uuid {
        Some(u) => vec![cells::cell_get(api, u)
            .await?
            .ok_or_else(|| ComputeError::NotFound(format!("Cell {u} could not be found.")))?],
        None => {
            let all = cells::cell_list(api).await?;
            status(format!("Found {} cell mappings.", all.len()));
            all
        }
    };
    let mut added = Vec::new();
    for cm in targets {
        if cm.is_cell0() {
            status("Skipping cell0 since it does not contain hosts.".into());
            continue;
        }
        match &cm.name {
            Some(n) if !n.is_empty() => status(format!("Getting computes from cell '{n}': {}", cm.uuid)),
            _ => status(format!("Getting computes from cell: {}", cm.uuid)),
        }
        let cdb = celldb::open(&cm.database_connection, 1, false).await?;
        let mut here = Vec::new();
        let result = async {
            if by_service {
                for host in celldb::compute_service_hosts(&cdb).await? {
                    if cells::host_mapping_get(api, &host).await?.is_none() {
                        status(format!("Creating host mapping for service {host}"));
                        cells::host_mapping_create(api, cm.id, &host).await?;
                        here.push(host);
                    }
                }
            } else {
                for node in celldb::compute_nodes(&cdb, true).await? {
                    status(format!(
                        "Checking host mapping for compute host '{}': {}",
                        node.host, node.uuid
                    ));
                    if cells::host_mapping_get(api, &node.host).await?.is_none() {
                        status(format!(
                            "Creating host mapping for compute host '{}': {}",
                            node.host, node.uuid
                        ));
                        cells::host_mapping_create(api, cm.id, &node.host).await?;
                        celldb::set_node_mapped(&cdb, node.id).await?;
                        here.push(node.host);
                    }
                }
            }
            Ok::<_, ComputeError>(())
        }
        .await;
        cdb.close().await;
        result?;
        status(format!(
            "Found {} unmapped computes in cell: {}",
            here.len(),
            cm.uuid
        ));
        added.extend(here);
    }
    Ok(added)
}

/// `discover_hosts`: 0 (with `--strict`, only when a host was mapped; 1 otherwise); 2 on a duplicate host
/// mapping (a concurrent discovery); a cell uuid that does not exist is an error.
pub async fn discover_hosts(
    api: &Db,
    cell_uuid: Option<&str>,
    verbose: bool,
    strict: bool,
    by_service: bool,
    out: &mut dyn Say,
) -> Result<u8> {
    let mut lines = Vec::new();
    let r = discover(api, cell_uuid, by_service, &mut |l| {
        if verbose {
            lines.push(l)
        }
    })
    .await;
    for l in &lines {
        out.say(l);
    }
    match r {
        Ok(hosts) => Ok(if strict && hosts.is_empty() { 1 } else { 0 }),
        Err(ComputeError::Duplicate(what)) => {
            out.say(&format!(
                "ERROR: Duplicate host mapping was encountered. This command should be run once after all compute \
                 hosts have been deployed and should not be run in parallel. When run in parallel, the commands will \
                 collide with each other trying to map the same hosts in the database at the same time. Error: Host \
                 '{}' mapping already exists",
                what.trim_start_matches("host mapping for ")
            ));
            Ok(2)
        }
        Err(e) => Err(e),
    }
}

/// `verify_instance`: 0 mapped and alive; 1 no mapping; 2 mapping without a cell; 3 deleted but mapped;
/// 4 archived (no row) but mapped.
pub async fn verify_instance(api: &Db, uuid: &str, quiet: bool, out: &mut dyn Say) -> Result<u8> {
    let mut say = |s: String| {
        if !quiet {
            out.say(&s)
        }
    };
    let Some(m) = cells::instance_mapping_get(api, uuid).await? else {
        say(format!(
            "Instance {uuid} is not mapped to a cell (upgrade is incomplete) or instance does not exist"
        ));
        return Ok(1);
    };
    let Some(cell) = (match m.cell_id {
        Some(id) => cells::cell_get_by_id(api, id).await?,
        None => None,
    }) else {
        say(format!("Instance {uuid} is not mapped to a cell"));
        return Ok(2);
    };
    let cdb = celldb::open(&cell.database_connection, 1, false).await?;
    let state = celldb::instance_deleted(&cdb, uuid).await;
    cdb.close().await;
    match state? {
        Some(true) => {
            say(format!("The instance with uuid {uuid} has been deleted."));
            say("Execute `nova-manage db archive_deleted_rows` command to archive this deleted instance and remove its instance_mapping.".into());
            Ok(3)
        }
        None => {
            say(format!("The instance with uuid {uuid} has been archived."));
            say("However its instance_mapping remains.".into());
            Ok(4)
        }
        Some(false) => {
            say(format!(
                "Instance {uuid} is in cell: {} ({})",
                cell.name.as_deref().unwrap_or("None"),
                cell.uuid
            ));
            Ok(0)
        }
    }
}

/// The project of the mapping that remembers where an unfinished `map_instances` stopped.
const MARKER_PROJECT: &str = "INSTANCE_MIGRATION_MARKER";

/// `map_instances`: map the cell's unmapped instances, oldest first, 50 at a time (all of them) or at most
/// `max_count` (then 1 when more remain; run again). 127 for a bad `--max-count`.
pub async fn map_instances(
    api: &Db,
    cell_uuid: &str,
    max_count: Option<&str>,
    reset: bool,
    out: &mut dyn Say,
) -> Result<u8> {
    let (limit, map_all) = match max_count {
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 1 => (n, false),
            _ => {
                out.say("Must supply a positive value for max-count");
                return Ok(127);
            }
        },
        None => (50, true),
    };
    let cell = cells::cell_get(api, cell_uuid)
        .await?
        .ok_or_else(|| ComputeError::NotFound(format!("Cell {cell_uuid} could not be found.")))?;
    let mut marker = None;
    if let Some(m) = cells::instance_mappings_of_project(api, MARKER_PROJECT)
        .await?
        .into_iter()
        .next()
    {
        if !reset {
            marker = Some(m.instance_uuid.replace(' ', "-"));
        }
        cells::instance_mapping_delete(api, m.id).await?;
    }
    let cdb = celldb::open(&cell.database_connection, 1, false).await?;
    let result = async {
        loop {
            let page = celldb::instances_page(&cdb, marker.as_deref(), limit).await?;
            for i in &page {
                match cells::instance_mapping_create(
                    api,
                    &i.uuid,
                    Some(cell.id),
                    &i.project_id,
                    Some(&i.user_id),
                )
                .await
                {
                    Ok(()) | Err(ComputeError::Duplicate(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            marker = if (page.len() as i64) < limit {
                None
            } else {
                page.last().map(|i| i.uuid.clone())
            };
            if marker.is_none() || !map_all {
                return Ok::<_, ComputeError>(marker.clone());
            }
        }
    }
    .await;
    cdb.close().await;
    match result? {
        Some(next) => {
            // Remember where to go on (the uuid is disguised: the real instance has a mapping already).
            cells::instance_mapping_create(
                api,
                &next.replace('-', " "),
                None,
                MARKER_PROJECT,
                Some(MARKER_PROJECT),
            )
            .await?;
            Ok(1)
        }
        None => Ok(0),
    }
}

/// `map_cell_and_hosts` / the second half of `simple_cell_setup`: a cell for the configured database and
/// transport holding every compute node found there. None when there are no compute nodes.
async fn map_cell_and_hosts_inner(
    api: &Db,
    d: &Defaults,
    transport_url: &str,
    name: Option<&str>,
    verbose: bool,
    out: &mut dyn Say,
) -> Result<Option<String>> {
    let cdb = celldb::open(&d.database_connection, 1, true).await?;
    let nodes = celldb::compute_nodes(&cdb, false).await;
    cdb.close().await;
    let nodes = nodes?;
    if nodes.is_empty() {
        out.say("No hosts found to map to cell, exiting.");
        return Ok(None);
    }
    let mut cell_uuid = None;
    let mut missing = std::collections::BTreeSet::new();
    for n in &nodes {
        match cells::host_mapping_get(api, &n.host).await? {
            None => {
                missing.insert(n.host.clone());
            }
            Some(hm) => {
                let c = cells::cell_get_by_id(api, hm.cell_id).await?;
                if verbose {
                    out.say(&format!(
                        "Host {} is already mapped to cell {}",
                        hm.host,
                        c.as_ref().map(|c| c.uuid.as_str()).unwrap_or("")
                    ));
                }
                cell_uuid = c.map(|c| c.uuid);
            }
        }
    }
    if missing.is_empty() {
        out.say("All hosts are already mapped to cell(s).");
        return Ok(cell_uuid);
    }
    let cell = match &cell_uuid {
        Some(u) => cells::cell_get(api, u).await?,
        None => None,
    };
    let cell = match cell {
        Some(c) => c,
        None => {
            let uuid = tessera_types::new_uuid();
            cells::cell_create(api, &uuid, name, transport_url, &d.database_connection, false).await?
        }
    };
    for host in &missing {
        cells::host_mapping_create(api, cell.id, host).await?;
    }
    if verbose {
        out.say(&cell.uuid);
    }
    Ok(Some(cell.uuid))
}

/// `map_cell_and_hosts`: 0 done; 1 transport URL missing or invalid.
pub async fn map_cell_and_hosts(
    api: &Db,
    d: &Defaults,
    transport_url: Option<&str>,
    name: Option<&str>,
    verbose: bool,
    out: &mut dyn Say,
) -> Result<u8> {
    let Some(t) = validate_transport_url(d, transport_url, true, out) else {
        return Ok(1);
    };
    map_cell_and_hosts_inner(api, d, &t, name, verbose, out).await?;
    Ok(0)
}

/// `simple_cell_setup`: cell0, then a cell for the configured database with its compute hosts, then its
/// instances mapped. 0 done; 1 no compute hosts (or no usable transport URL).
pub async fn simple_cell_setup(
    api: &Db,
    d: &Defaults,
    transport_url: Option<&str>,
    out: &mut dyn Say,
) -> Result<u8> {
    let Some(t) = validate_transport_url(d, transport_url, true, out) else {
        return Ok(1);
    };
    if map_cell0_inner(api, d, None, out).await?.is_none() {
        return Ok(1);
    }
    let Some(cell_uuid) = map_cell_and_hosts_inner(api, d, &t, None, false, out).await? else {
        return Ok(1);
    };
    map_instances(api, &cell_uuid, None, false, out).await?;
    Ok(0)
}

/// A table as Python's prettytable prints it (the default style nova-manage uses): centred cells.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let rule: String = widths.iter().fold(String::from("+"), |mut s, w| {
        s.push_str(&"-".repeat(w + 2));
        s.push('+');
        s
    });
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from("|");
        for (c, w) in cells.zip(&widths) {
            let _ = write!(s, " {} |", centre(c, *w));
        }
        s
    };
    let mut out = vec![rule.clone(), line(&mut header.iter().copied()), rule.clone()];
    for r in rows {
        out.push(line(&mut r.iter().map(String::as_str)));
    }
    out.push(rule);
    out.join("\n")
}

/// prettytable's centring: with an odd excess, the extra space goes right of odd-length text and left of
/// even-length text.
fn centre(text: &str, width: usize) -> String {
    let len = text.chars().count();
    let excess = width.saturating_sub(len);
    let (left, right) = if excess % 2 == 1 {
        if len % 2 == 1 {
            (excess / 2, excess / 2 + 1)
        } else {
            (excess / 2 + 1, excess / 2)
        }
    } else {
        (excess / 2, excess / 2)
    };
    format!("{}{text}{}", " ".repeat(left), " ".repeat(right))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_look_like_prettytable() {
        let t = table(&["Name", "UUID"], &[vec!["cell0".into(), "abc".into()]]);
        assert_eq!(
            t,
            "+-------+------+\n|  Name | UUID |\n+-------+------+\n| cell0 | abc  |\n+-------+------+"
        );
    }
}
