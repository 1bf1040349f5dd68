//! Schemas of the Compute service's databases (Cells v2): the one API database and the database of each cell
//! (cell0 included, which has the same schema). Times are epoch microseconds, flags are 0/1 integers, and
//! objects that only travel whole (a build request's server, a request spec, an instance's embedded flavor)
//! are JSON text. Integer ids exist where the Compute API shows integers (aggregates, services and
//! hypervisors before 2.53, keypairs, instance actions) and for the `instance-%08x` names.

use crate::{Migration, MigrationSet};

pub const API_MIGRATIONS: MigrationSet = MigrationSet {
    name: "compute_api",
    migrations: &[Migration {
        version: 1,
        name: "initial API database schema",
        statements: &[
            // One row per cell (cell0 too). URLs may hold passwords: they are masked wherever they are shown.
            "CREATE TABLE cell_mappings (id {autoid}, uuid VARCHAR(36) NOT NULL, name VARCHAR(255), \
             transport_url TEXT NOT NULL, database_connection TEXT NOT NULL, disabled BIGINT NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, CONSTRAINT uq_cell_uuid UNIQUE (uuid)){engine}",
            // Compute host → cell; the unique host is what keeps two discoveries from mapping a host twice.
            "CREATE TABLE host_mappings (id {autoid}, cell_id BIGINT NOT NULL, host VARCHAR(255) NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, CONSTRAINT uq_host_mapping UNIQUE (host)){engine}",
            "CREATE INDEX ix_host_mappings_cell ON host_mappings (cell_id)",
            // Instance → cell; cell_id NULL while the server is still a build request.
            "CREATE TABLE instance_mappings (id {autoid}, instance_uuid VARCHAR(36) NOT NULL, cell_id BIGINT, \
             project_id VARCHAR(255) NOT NULL, user_id VARCHAR(255), queued_for_delete BIGINT NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             CONSTRAINT uq_instance_mapping UNIQUE (instance_uuid)){engine}",
            "CREATE INDEX ix_instance_mappings_project ON instance_mappings (project_id)",
            "CREATE INDEX ix_instance_mappings_cell ON instance_mappings (cell_id)",
            // The server as the API shows it between POST /servers and its row in a cell.
            "CREATE TABLE build_requests (id {autoid}, instance_uuid VARCHAR(36) NOT NULL, \
             project_id VARCHAR(255) NOT NULL, instance TEXT NOT NULL, block_device_mappings TEXT, tags TEXT, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             CONSTRAINT uq_build_request UNIQUE (instance_uuid)){engine}",
            "CREATE INDEX ix_build_requests_project ON build_requests (project_id)",
            // What was asked for at boot, kept for the instance's life (moves reuse it).
            "CREATE TABLE request_specs (id {autoid}, instance_uuid VARCHAR(36) NOT NULL, spec TEXT NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             CONSTRAINT uq_request_spec UNIQUE (instance_uuid)){engine}",
            "CREATE TABLE flavors (id {autoid}, flavorid VARCHAR(255) NOT NULL, name VARCHAR(255) NOT NULL, \
             memory_mb BIGINT NOT NULL, vcpus BIGINT NOT NULL, root_gb BIGINT NOT NULL, ephemeral_gb BIGINT NOT NULL, \
             swap BIGINT NOT NULL, rxtx_factor DOUBLE PRECISION NOT NULL, vcpu_weight BIGINT, disabled BIGINT NOT NULL, \
             is_public BIGINT NOT NULL, description TEXT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             CONSTRAINT uq_flavor_flavorid UNIQUE (flavorid), CONSTRAINT uq_flavor_name UNIQUE (name)){engine}",
            "CREATE TABLE flavor_extra_specs (flavor_id BIGINT NOT NULL, spec_key VARCHAR(255) NOT NULL, \
             spec_value VARCHAR(255) NOT NULL, PRIMARY KEY (flavor_id, spec_key)){engine}",
            "CREATE TABLE flavor_projects (flavor_id BIGINT NOT NULL, project_id VARCHAR(255) NOT NULL, \
             PRIMARY KEY (flavor_id, project_id)){engine}",
            "CREATE TABLE key_pairs (id {autoid}, name VARCHAR(255) NOT NULL, user_id VARCHAR(255) NOT NULL, \
             fingerprint VARCHAR(255) NOT NULL, public_key TEXT NOT NULL, key_type VARCHAR(10) NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             CONSTRAINT uq_key_pair UNIQUE (user_id, name)){engine}",
            "CREATE TABLE quotas (id {autoid}, project_id VARCHAR(255) NOT NULL, resource VARCHAR(255) NOT NULL, \
             hard_limit BIGINT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             CONSTRAINT uq_quota UNIQUE (project_id, resource)){engine}",
            "CREATE TABLE project_user_quotas (id {autoid}, project_id VARCHAR(255) NOT NULL, \
             user_id VARCHAR(255) NOT NULL, resource VARCHAR(255) NOT NULL, hard_limit BIGINT NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             CONSTRAINT uq_project_user_quota UNIQUE (project_id, user_id, resource)){engine}",
            "CREATE TABLE quota_classes (id {autoid}, class_name VARCHAR(255) NOT NULL, resource VARCHAR(255) NOT NULL, \
             hard_limit BIGINT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             CONSTRAINT uq_quota_class UNIQUE (class_name, resource)){engine}",
            "CREATE TABLE aggregates (id {autoid}, uuid VARCHAR(36) NOT NULL, name VARCHAR(255) NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             CONSTRAINT uq_aggregate_uuid UNIQUE (uuid), CONSTRAINT uq_aggregate_name UNIQUE (name)){engine}",
            "CREATE TABLE aggregate_hosts (aggregate_id BIGINT NOT NULL, host VARCHAR(255) NOT NULL, \
             PRIMARY KEY (aggregate_id, host)){engine}",
            "CREATE INDEX ix_aggregate_hosts_host ON aggregate_hosts (host)",
            "CREATE TABLE aggregate_metadata (aggregate_id BIGINT NOT NULL, meta_key VARCHAR(255) NOT NULL, \
             meta_value VARCHAR(255) NOT NULL, PRIMARY KEY (aggregate_id, meta_key)){engine}",
            "CREATE TABLE instance_groups (id {autoid}, uuid VARCHAR(36) NOT NULL, name VARCHAR(255), \
             project_id VARCHAR(255) NOT NULL, user_id VARCHAR(255) NOT NULL, created_at BIGINT NOT NULL, \
             updated_at BIGINT NOT NULL, CONSTRAINT uq_instance_group UNIQUE (uuid)){engine}",
            "CREATE TABLE instance_group_policy (id {autoid}, group_id BIGINT NOT NULL, policy VARCHAR(255) NOT NULL, \
             rules TEXT){engine}",
            "CREATE INDEX ix_instance_group_policy_group ON instance_group_policy (group_id)",
            "CREATE TABLE instance_group_member (group_id BIGINT NOT NULL, instance_uuid VARCHAR(36) NOT NULL, \
             created_at BIGINT NOT NULL, PRIMARY KEY (group_id, instance_uuid)){engine}",
            "CREATE INDEX ix_instance_group_member_instance ON instance_group_member (instance_uuid)",
        ],
    }, Migration {
        version: 2,
        name: "flat network addresses; build request sizes for quota counts",
        statements: &[
            // Addresses of the built-in flat network (`networks: "auto"` before the Networking service):
            // the primary key is what keeps two servers from getting one address.
            "CREATE TABLE flat_addresses (address VARCHAR(39) NOT NULL, network VARCHAR(255) NOT NULL, \
             instance_uuid VARCHAR(36) NOT NULL, mac_address VARCHAR(17) NOT NULL, created_at BIGINT NOT NULL, \
             PRIMARY KEY (address)){engine}",
            "CREATE INDEX ix_flat_addresses_instance ON flat_addresses (instance_uuid)",
            "ALTER TABLE build_requests ADD COLUMN vcpus BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE build_requests ADD COLUMN memory_mb BIGINT NOT NULL DEFAULT 0",
        ],
    }],
};

pub const CELL_MIGRATIONS: MigrationSet = MigrationSet {
    name: "compute_cell",
    migrations: &[Migration {
        version: 1,
        name: "initial cell database schema",
        statements: &[
            // `deleted` is 0 for a live row and the row's id once soft-deleted (so unique keys allow reuse).
            "CREATE TABLE instances (id {autoid}, uuid VARCHAR(36) NOT NULL, project_id VARCHAR(255) NOT NULL, \
             user_id VARCHAR(255) NOT NULL, display_name VARCHAR(255), display_description TEXT, hostname VARCHAR(255), \
             host VARCHAR(255), node VARCHAR(255), launched_on VARCHAR(255), availability_zone VARCHAR(255), \
             vm_state VARCHAR(255) NOT NULL, task_state VARCHAR(255), power_state BIGINT NOT NULL, \
             image_ref VARCHAR(255), flavor TEXT NOT NULL, memory_mb BIGINT NOT NULL, vcpus BIGINT NOT NULL, \
             root_gb BIGINT NOT NULL, ephemeral_gb BIGINT NOT NULL, key_name VARCHAR(255), key_data TEXT, \
             user_data TEXT, config_drive VARCHAR(255), access_ip_v4 VARCHAR(39), access_ip_v6 VARCHAR(39), \
             locked BIGINT NOT NULL, locked_by VARCHAR(255), progress BIGINT NOT NULL, reservation_id VARCHAR(255), \
             launch_index BIGINT NOT NULL, root_device_name VARCHAR(255), network_info TEXT, \
             launched_at BIGINT, terminated_at BIGINT, scheduled_at BIGINT, created_at BIGINT NOT NULL, \
             updated_at BIGINT NOT NULL, deleted_at BIGINT, deleted BIGINT NOT NULL, \
             CONSTRAINT uq_instance_uuid UNIQUE (uuid)){engine}",
            "CREATE INDEX ix_instances_project ON instances (project_id, deleted)",
            "CREATE INDEX ix_instances_host ON instances (host, deleted)",
            "CREATE INDEX ix_instances_created ON instances (created_at, uuid)",
            "CREATE TABLE instance_metadata (instance_uuid VARCHAR(36) NOT NULL, meta_key VARCHAR(255) NOT NULL, \
             meta_value VARCHAR(255) NOT NULL, PRIMARY KEY (instance_uuid, meta_key)){engine}",
            "CREATE TABLE instance_system_metadata (instance_uuid VARCHAR(36) NOT NULL, meta_key VARCHAR(255) NOT NULL, \
             meta_value TEXT, PRIMARY KEY (instance_uuid, meta_key)){engine}",
            "CREATE TABLE instance_faults (id {autoid}, instance_uuid VARCHAR(36) NOT NULL, code BIGINT NOT NULL, \
             message VARCHAR(255) NOT NULL, details TEXT, host VARCHAR(255), created_at BIGINT NOT NULL){engine}",
            "CREATE INDEX ix_instance_faults_instance ON instance_faults (instance_uuid, created_at)",
            "CREATE TABLE instance_actions (id {autoid}, action VARCHAR(255) NOT NULL, instance_uuid VARCHAR(36) NOT NULL, \
             request_id VARCHAR(255) NOT NULL, user_id VARCHAR(255), project_id VARCHAR(255), start_time BIGINT NOT NULL, \
             finish_time BIGINT, message VARCHAR(255), updated_at BIGINT NOT NULL){engine}",
            "CREATE INDEX ix_instance_actions_instance ON instance_actions (instance_uuid, request_id)",
            "CREATE TABLE instance_actions_events (id {autoid}, action_id BIGINT NOT NULL, event VARCHAR(255) NOT NULL, \
             result VARCHAR(255), traceback TEXT, details TEXT, host VARCHAR(255), start_time BIGINT NOT NULL, \
             finish_time BIGINT){engine}",
            "CREATE INDEX ix_instance_actions_events_action ON instance_actions_events (action_id)",
            // Every service of the cell (and the API-level ones registered here) with its heartbeat.
            "CREATE TABLE services (id {autoid}, uuid VARCHAR(36) NOT NULL, host VARCHAR(255) NOT NULL, \
             service_binary VARCHAR(255) NOT NULL, topic VARCHAR(255), report_count BIGINT NOT NULL, \
             disabled BIGINT NOT NULL, disabled_reason VARCHAR(255), forced_down BIGINT NOT NULL, \
             last_seen_up BIGINT, version BIGINT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, \
             deleted BIGINT NOT NULL, CONSTRAINT uq_service_uuid UNIQUE (uuid), \
             CONSTRAINT uq_service_host_binary UNIQUE (host, service_binary, deleted)){engine}",
            "CREATE TABLE compute_nodes (id {autoid}, uuid VARCHAR(36) NOT NULL, service_id BIGINT, \
             host VARCHAR(255) NOT NULL, hypervisor_hostname VARCHAR(255) NOT NULL, hypervisor_type VARCHAR(255) NOT NULL, \
             hypervisor_version BIGINT NOT NULL, host_ip VARCHAR(39), vcpus BIGINT NOT NULL, memory_mb BIGINT NOT NULL, \
             local_gb BIGINT NOT NULL, vcpus_used BIGINT NOT NULL, memory_mb_used BIGINT NOT NULL, \
             local_gb_used BIGINT NOT NULL, running_vms BIGINT NOT NULL, cpu_info TEXT, \
             cpu_allocation_ratio DOUBLE PRECISION NOT NULL, ram_allocation_ratio DOUBLE PRECISION NOT NULL, \
             disk_allocation_ratio DOUBLE PRECISION NOT NULL, mapped BIGINT NOT NULL, created_at BIGINT NOT NULL, \
             updated_at BIGINT NOT NULL, deleted BIGINT NOT NULL, CONSTRAINT uq_compute_node_uuid UNIQUE (uuid), \
             CONSTRAINT uq_compute_node_host UNIQUE (host, hypervisor_hostname, deleted)){engine}",
            "CREATE TABLE migrations (id {autoid}, uuid VARCHAR(36) NOT NULL, instance_uuid VARCHAR(36) NOT NULL, \
             source_compute VARCHAR(255), dest_compute VARCHAR(255), source_node VARCHAR(255), dest_node VARCHAR(255), \
             dest_host VARCHAR(255), old_flavor_id BIGINT, new_flavor_id BIGINT, status VARCHAR(255) NOT NULL, \
             migration_type VARCHAR(255) NOT NULL, hidden BIGINT NOT NULL, user_id VARCHAR(255), \
             project_id VARCHAR(255), created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, deleted BIGINT NOT NULL, \
             CONSTRAINT uq_migration_uuid UNIQUE (uuid)){engine}",
            "CREATE INDEX ix_migrations_instance ON migrations (instance_uuid)",
            "CREATE TABLE block_device_mapping (id {autoid}, uuid VARCHAR(36) NOT NULL, instance_uuid VARCHAR(36) NOT NULL, \
             source_type VARCHAR(255) NOT NULL, destination_type VARCHAR(255) NOT NULL, device_name VARCHAR(255), \
             boot_index BIGINT, delete_on_termination BIGINT NOT NULL, image_id VARCHAR(36), volume_id VARCHAR(36), \
             volume_size BIGINT, guest_format VARCHAR(255), disk_bus VARCHAR(255), device_type VARCHAR(255), \
             connection_info TEXT, tag VARCHAR(255), attachment_id VARCHAR(36), created_at BIGINT NOT NULL, \
             updated_at BIGINT NOT NULL, deleted BIGINT NOT NULL, CONSTRAINT uq_bdm_uuid UNIQUE (uuid)){engine}",
            "CREATE INDEX ix_bdm_instance ON block_device_mapping (instance_uuid, deleted)",
            "CREATE TABLE tags (resource_id VARCHAR(36) NOT NULL, tag VARCHAR(80) NOT NULL, \
             PRIMARY KEY (resource_id, tag)){engine}",
            "CREATE INDEX ix_tags_tag ON tags (tag)",
        ],
    }, Migration {
        version: 2,
        name: "project listings read in creation order from the index",
        statements: &[
            // A project's servers in the default order (newest first, uuid tie-break) straight off the
            // index, with no sort; it also serves every lookup the (project_id, deleted) index did.
            "CREATE INDEX ix_instances_project_created ON instances (project_id, deleted, created_at, uuid)",
            "DROP INDEX ix_instances_project{on:instances}",
        ],
    }],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_schemas_apply_on_sqlite_and_twice_is_a_no_op() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:///{}/c.sqlite", dir.path().display());
        let db = crate::Db::connect(&url, 2).await.expect("connect");
        for (set, versions) in [(&API_MIGRATIONS, vec![1, 2]), (&CELL_MIGRATIONS, vec![1, 2])] {
            let last = versions.last().copied();
            assert_eq!(db.migrate(set).await.expect("migrate"), versions);
            assert!(db.migrate(set).await.expect("again").is_empty());
            assert_eq!(Some(db.schema_version(set).await.expect("version")), last);
        }
        // {autoid} numbers rows.
        for name in ["a", "b"] {
            sqlx::query(
                "INSERT INTO cell_mappings (uuid, name, transport_url, database_connection, disabled, created_at, \
                 updated_at) VALUES (?, ?, 'none:///', 'sqlite://', 0, 0, 0)",
            )
            .bind(format!("uuid-{name}"))
            .bind(name)
            .execute(db.pool())
            .await
            .expect("insert");
        }
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM cell_mappings ORDER BY id")
            .fetch_all(db.pool())
            .await
            .expect("ids");
        assert_eq!(ids, vec![1, 2]);
    }
}
