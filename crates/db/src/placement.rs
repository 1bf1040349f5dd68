//! Schema of the Placement service's database. Keys are the API's own identifiers (provider and consumer
//! uuids, resource class and trait names), so every query is portable and needs no id lookups.

use crate::{Migration, MigrationSet};

pub const MIGRATIONS: MigrationSet = MigrationSet {
    name: "placement",
    migrations: &[Migration {
        version: 1,
        name: "initial placement schema",
        statements: &[
            "CREATE TABLE resource_classes (name VARCHAR(255) NOT NULL PRIMARY KEY, standard BIGINT NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL){engine}",
            "CREATE TABLE traits (name VARCHAR(255) NOT NULL PRIMARY KEY, standard BIGINT NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL){engine}",
            "CREATE TABLE resource_providers (uuid VARCHAR(36) NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL, \
             generation BIGINT NOT NULL, parent_uuid VARCHAR(36), root_uuid VARCHAR(36) NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, CONSTRAINT uq_rp_name UNIQUE (name)){engine}",
            "CREATE INDEX ix_rp_root ON resource_providers (root_uuid)",
            "CREATE INDEX ix_rp_parent ON resource_providers (parent_uuid)",
            "CREATE TABLE inventories (rp_uuid VARCHAR(36) NOT NULL, resource_class VARCHAR(255) NOT NULL, \
             total BIGINT NOT NULL, reserved BIGINT NOT NULL, min_unit BIGINT NOT NULL, max_unit BIGINT NOT NULL, \
             step_size BIGINT NOT NULL, allocation_ratio DOUBLE PRECISION NOT NULL, \
             PRIMARY KEY (rp_uuid, resource_class)){engine}",
            "CREATE INDEX ix_inv_rc ON inventories (resource_class)",
            "CREATE TABLE rp_traits (rp_uuid VARCHAR(36) NOT NULL, trait VARCHAR(255) NOT NULL, \
             PRIMARY KEY (rp_uuid, trait)){engine}",
            "CREATE INDEX ix_rp_traits_trait ON rp_traits (trait)",
            "CREATE TABLE rp_aggregates (rp_uuid VARCHAR(36) NOT NULL, aggregate_uuid VARCHAR(36) NOT NULL, \
             PRIMARY KEY (rp_uuid, aggregate_uuid)){engine}",
            "CREATE INDEX ix_rp_aggregates_agg ON rp_aggregates (aggregate_uuid)",
            "CREATE TABLE consumers (uuid VARCHAR(36) NOT NULL PRIMARY KEY, project_id VARCHAR(255) NOT NULL, \
             user_id VARCHAR(255) NOT NULL, generation BIGINT NOT NULL, consumer_type VARCHAR(255), \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL){engine}",
            "CREATE INDEX ix_consumers_project_user ON consumers (project_id, user_id)",
            "CREATE TABLE allocations (consumer_uuid VARCHAR(36) NOT NULL, rp_uuid VARCHAR(36) NOT NULL, \
             resource_class VARCHAR(255) NOT NULL, used BIGINT NOT NULL, created_at BIGINT NOT NULL, \
             PRIMARY KEY (consumer_uuid, rp_uuid, resource_class)){engine}",
            "CREATE INDEX ix_alloc_rp_rc ON allocations (rp_uuid, resource_class)",
            // One row, bumped by every write in the same transaction: processes holding the in-memory
            // capacity index compare it to know their copy is current.
            "CREATE TABLE placement_revision (id BIGINT NOT NULL PRIMARY KEY, revision BIGINT NOT NULL){engine}",
            "INSERT INTO placement_revision (id, revision) VALUES (1, 0)",
            // Which providers each revision touched, so those processes reload only what changed.
            "CREATE TABLE placement_changes (revision BIGINT NOT NULL, rp_uuid VARCHAR(36) NOT NULL, \
             PRIMARY KEY (revision, rp_uuid)){engine}",
        ],
    }, Migration {
        version: 2,
        name: "change log by transaction id",
        statements: &[
            // PostgreSQL only (the table stays empty elsewhere): which providers each transaction touched,
            // under its transaction id; readers match the ids against their snapshots, so writers need not
            // serialize on the revision row. Pruned from below; `pruned_xid` says where it was cut.
            "CREATE TABLE placement_change_log (xid BIGINT NOT NULL, rp_uuid VARCHAR(36) NOT NULL){engine}",
            "CREATE INDEX ix_change_log_xid ON placement_change_log (xid)",
            "ALTER TABLE placement_revision ADD COLUMN pruned_xid BIGINT NOT NULL DEFAULT 0",
        ],
    }],
};
