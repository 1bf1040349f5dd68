//! Schema of the Networking service's database. Each resource row keeps the columns queries select on and its
//! API attributes as a JSON document (`body`); the tables that enforce rules carry those rules as keys: an
//! address is allocated once per subnet (`ip_allocations` primary key), a MAC once per network, a project has
//! one `default` security group, a security group holds one copy of each rule, a segment (`vxlan:17`,
//! `flat:physnet1`, `vlan:physnet1:100`) backs one network.

use crate::{Migration, MigrationSet};

pub const MIGRATIONS: MigrationSet = MigrationSet {
    name: "network",
    migrations: &[
    Migration {
        version: 1,
        name: "initial network schema",
        statements: &[
            "CREATE TABLE networks (id VARCHAR(36) NOT NULL PRIMARY KEY, project_id VARCHAR(64) NOT NULL, \
             name VARCHAR(255) NOT NULL, shared BIGINT NOT NULL, external BIGINT NOT NULL, segment VARCHAR(128), \
             body TEXT NOT NULL, created_at BIGINT NOT NULL, CONSTRAINT uq_networks_segment UNIQUE (segment)){engine}",
            "CREATE INDEX ix_networks_project ON networks (project_id)",
            "CREATE TABLE subnets (id VARCHAR(36) NOT NULL PRIMARY KEY, project_id VARCHAR(64) NOT NULL, \
             network_id VARCHAR(36) NOT NULL, ip_version BIGINT NOT NULL, cidr VARCHAR(64) NOT NULL, \
             body TEXT NOT NULL, created_at BIGINT NOT NULL){engine}",
            "CREATE INDEX ix_subnets_network ON subnets (network_id)",
            "CREATE INDEX ix_subnets_project ON subnets (project_id)",
            "CREATE TABLE ports (id VARCHAR(36) NOT NULL PRIMARY KEY, project_id VARCHAR(64) NOT NULL, \
             network_id VARCHAR(36) NOT NULL, mac_address VARCHAR(32) NOT NULL, device_id VARCHAR(255) NOT NULL, \
             device_owner VARCHAR(255) NOT NULL, body TEXT NOT NULL, created_at BIGINT NOT NULL, \
             CONSTRAINT uq_ports_mac UNIQUE (network_id, mac_address)){engine}",
            "CREATE INDEX ix_ports_project ON ports (project_id, created_at)",
            "CREATE INDEX ix_ports_device ON ports (device_id)",
            "CREATE TABLE ip_allocations (subnet_id VARCHAR(36) NOT NULL, ip_address VARCHAR(64) NOT NULL, \
             network_id VARCHAR(36) NOT NULL, port_id VARCHAR(36) NOT NULL, \
             PRIMARY KEY (subnet_id, ip_address)){engine}",
            "CREATE INDEX ix_ip_allocations_port ON ip_allocations (port_id)",
            "CREATE TABLE security_groups (id VARCHAR(36) NOT NULL PRIMARY KEY, project_id VARCHAR(64) NOT NULL, \
             name VARCHAR(255) NOT NULL, body TEXT NOT NULL, created_at BIGINT NOT NULL){engine}",
            "CREATE INDEX ix_security_groups_project ON security_groups (project_id)",
            "CREATE TABLE default_security_groups (project_id VARCHAR(64) NOT NULL PRIMARY KEY, \
             security_group_id VARCHAR(36) NOT NULL){engine}",
            "CREATE TABLE security_group_rules (id VARCHAR(36) NOT NULL PRIMARY KEY, \
             security_group_id VARCHAR(36) NOT NULL, project_id VARCHAR(64) NOT NULL, \
             remote_group_id VARCHAR(36), fingerprint VARCHAR(255) NOT NULL, body TEXT NOT NULL, created_at BIGINT NOT NULL, \
             CONSTRAINT uq_sg_rule UNIQUE (security_group_id, fingerprint)){engine}",
            "CREATE INDEX ix_sg_rules_project ON security_group_rules (project_id)",
            "CREATE INDEX ix_sg_rules_remote ON security_group_rules (remote_group_id)",
            "CREATE TABLE port_security_groups (port_id VARCHAR(36) NOT NULL, security_group_id VARCHAR(36) NOT NULL, \
             PRIMARY KEY (port_id, security_group_id)){engine}",
            "CREATE INDEX ix_port_sg_group ON port_security_groups (security_group_id)",
        ],
    },
    Migration {
        version: 2,
        name: "routers, floating IPs, auto-allocated topologies and quotas",
        statements: &[
            "CREATE TABLE routers (id VARCHAR(36) NOT NULL PRIMARY KEY, project_id VARCHAR(64) NOT NULL, \
             name VARCHAR(255) NOT NULL, gateway_network_id VARCHAR(36), body TEXT NOT NULL, \
             created_at BIGINT NOT NULL){engine}",
            "CREATE INDEX ix_routers_project ON routers (project_id)",
            "CREATE TABLE floatingips (id VARCHAR(36) NOT NULL PRIMARY KEY, project_id VARCHAR(64) NOT NULL, \
             floating_network_id VARCHAR(36) NOT NULL, floating_ip_address VARCHAR(64) NOT NULL, \
             port_id VARCHAR(36), fixed_ip_address VARCHAR(64), router_id VARCHAR(36), body TEXT NOT NULL, \
             created_at BIGINT NOT NULL, CONSTRAINT uq_fip_address UNIQUE (floating_network_id, floating_ip_address), \
             CONSTRAINT uq_fip_fixed UNIQUE (port_id, fixed_ip_address)){engine}",
            "CREATE INDEX ix_floatingips_project ON floatingips (project_id)",
            "CREATE INDEX ix_floatingips_router ON floatingips (router_id)",
            "CREATE TABLE auto_allocated_topologies (project_id VARCHAR(64) NOT NULL PRIMARY KEY, \
             network_id VARCHAR(36) NOT NULL, router_id VARCHAR(36)){engine}",
            "CREATE TABLE quotas (project_id VARCHAR(64) NOT NULL, resource VARCHAR(64) NOT NULL, \
             hard_limit BIGINT NOT NULL, PRIMARY KEY (project_id, resource)){engine}",
        ],
    },
    Migration {
        version: 3,
        name: "agents, their networks and routers, and the host ports are bound to",
        statements: &[
            "CREATE TABLE agents (id VARCHAR(36) NOT NULL PRIMARY KEY, agent_type VARCHAR(255) NOT NULL, \
             host VARCHAR(255) NOT NULL, body TEXT NOT NULL, heartbeat_at BIGINT NOT NULL, created_at BIGINT NOT NULL, \
             CONSTRAINT uq_agents_type_host UNIQUE (agent_type, host)){engine}",
            "CREATE TABLE agent_bindings (resource_type VARCHAR(16) NOT NULL, resource_id VARCHAR(36) NOT NULL, \
             host VARCHAR(255) NOT NULL, PRIMARY KEY (resource_type, resource_id)){engine}",
            "ALTER TABLE ports ADD COLUMN binding_host VARCHAR(255) NOT NULL DEFAULT ''",
            "CREATE INDEX ix_ports_binding_host ON ports (binding_host)",
        ],
    }],
};
