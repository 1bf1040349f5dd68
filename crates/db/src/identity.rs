//! Schema of the Identity service's database.

use crate::{Migration, MigrationSet};

pub const MIGRATIONS: MigrationSet = MigrationSet {
    name: "identity",
    migrations: &[Migration {
        version: 1,
        name: "initial identity schema",
        statements: &[
            "CREATE TABLE domains (id VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, description TEXT, \
             enabled BIGINT NOT NULL, tags TEXT, extra TEXT, created_at BIGINT NOT NULL, CONSTRAINT uq_domains_name UNIQUE (name)){engine}",
            "CREATE TABLE projects (id VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, domain_id VARCHAR(64) NOT NULL, \
             parent_id VARCHAR(64), description TEXT, enabled BIGINT NOT NULL, tags TEXT, extra TEXT, created_at BIGINT NOT NULL, \
             CONSTRAINT uq_projects_domain_name UNIQUE (domain_id, name)){engine}",
            "CREATE INDEX ix_projects_parent ON projects (parent_id)",
            "CREATE TABLE users (id VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, domain_id VARCHAR(64) NOT NULL, \
             enabled BIGINT NOT NULL, default_project_id VARCHAR(64), password_hash TEXT, password_created_at BIGINT, \
             extra TEXT, created_at BIGINT NOT NULL, CONSTRAINT uq_users_domain_name UNIQUE (domain_id, name)){engine}",
            "CREATE TABLE identity_groups (id VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, domain_id VARCHAR(64) NOT NULL, \
             description TEXT, extra TEXT, CONSTRAINT uq_identity_groupsdomain_name UNIQUE (domain_id, name)){engine}",
            "CREATE TABLE user_group_membership (user_id VARCHAR(64) NOT NULL, group_id VARCHAR(64) NOT NULL, \
             PRIMARY KEY (user_id, group_id)){engine}",
            "CREATE INDEX ix_membership_group ON user_group_membership (group_id)",
            "CREATE TABLE roles (id VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, domain_id VARCHAR(64) NOT NULL, \
             description TEXT, options TEXT, CONSTRAINT uq_roles_name_domain UNIQUE (name, domain_id)){engine}",
            "CREATE TABLE implied_roles (prior_role_id VARCHAR(64) NOT NULL, implied_role_id VARCHAR(64) NOT NULL, \
             PRIMARY KEY (prior_role_id, implied_role_id)){engine}",
            // type: UserProject, GroupProject, UserDomain, GroupDomain, UserSystem, GroupSystem; target_id 'system' for system.
            "CREATE TABLE assignments (type VARCHAR(16) NOT NULL, actor_id VARCHAR(64) NOT NULL, target_id VARCHAR(64) NOT NULL, \
             role_id VARCHAR(64) NOT NULL, inherited BIGINT NOT NULL, PRIMARY KEY (type, actor_id, target_id, role_id, inherited)){engine}",
            "CREATE INDEX ix_assignments_actor ON assignments (actor_id)",
            "CREATE INDEX ix_assignments_target ON assignments (target_id)",
            "CREATE INDEX ix_assignments_role ON assignments (role_id)",
            "CREATE TABLE regions (id VARCHAR(255) NOT NULL PRIMARY KEY, description TEXT, parent_region_id VARCHAR(255), extra TEXT){engine}",
            "CREATE TABLE services (id VARCHAR(64) NOT NULL PRIMARY KEY, type VARCHAR(255) NOT NULL, name VARCHAR(255), \
             description TEXT, enabled BIGINT NOT NULL, extra TEXT){engine}",
            "CREATE TABLE endpoints (id VARCHAR(64) NOT NULL PRIMARY KEY, service_id VARCHAR(64) NOT NULL, interface VARCHAR(8) NOT NULL, \
             region_id VARCHAR(255), url TEXT NOT NULL, enabled BIGINT NOT NULL, extra TEXT){engine}",
            "CREATE INDEX ix_endpoints_service ON endpoints (service_id)",
            "CREATE TABLE application_credentials (id VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, \
             secret_hash TEXT NOT NULL, description TEXT, user_id VARCHAR(64) NOT NULL, project_id VARCHAR(64) NOT NULL, \
             expires_at BIGINT, unrestricted BIGINT NOT NULL, created_at BIGINT NOT NULL, \
             CONSTRAINT uq_app_cred_user_name UNIQUE (user_id, name)){engine}",
            "CREATE TABLE application_credential_roles (application_credential_id VARCHAR(64) NOT NULL, role_id VARCHAR(64) NOT NULL, \
             PRIMARY KEY (application_credential_id, role_id)){engine}",
            // A token is revoked when every non-null column matches it and it was issued at or before issued_before.
            "CREATE TABLE revocation_events (id VARCHAR(64) NOT NULL PRIMARY KEY, audit_id VARCHAR(64), user_id VARCHAR(64), \
             project_id VARCHAR(64), domain_id VARCHAR(64), issued_before BIGINT NOT NULL, revoked_at BIGINT NOT NULL){engine}",
            "CREATE INDEX ix_revocation_revoked_at ON revocation_events (revoked_at)",
            // Bumped by every identity write, so other processes know to drop their validation caches.
            "CREATE TABLE identity_revision (id BIGINT NOT NULL PRIMARY KEY, revision BIGINT NOT NULL){engine}",
            "INSERT INTO identity_revision (id, revision) VALUES (1, 0)",
        ],
    }],
};
