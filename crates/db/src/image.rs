//! Schema of the Image service's database.

use crate::{Migration, MigrationSet};

pub const MIGRATIONS: MigrationSet = MigrationSet {
    name: "image",
    migrations: &[Migration {
        version: 1,
        name: "initial image schema",
        statements: &[
            "CREATE TABLE images (id VARCHAR(36) NOT NULL PRIMARY KEY, name VARCHAR(255), status VARCHAR(30) NOT NULL, \
             visibility VARCHAR(20) NOT NULL, owner VARCHAR(64), disk_format VARCHAR(20), container_format VARCHAR(20), \
             size BIGINT, virtual_size BIGINT, checksum VARCHAR(32), os_hash_algo VARCHAR(64), os_hash_value VARCHAR(128), \
             min_disk BIGINT NOT NULL, min_ram BIGINT NOT NULL, protected BIGINT NOT NULL, os_hidden BIGINT NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, deleted BIGINT NOT NULL){engine}",
            "CREATE INDEX ix_images_owner ON images (owner)",
            "CREATE INDEX ix_images_visibility ON images (visibility)",
            "CREATE INDEX ix_images_created ON images (created_at, id)",
            "CREATE TABLE image_properties (image_id VARCHAR(36) NOT NULL, name VARCHAR(255) NOT NULL, value TEXT NOT NULL, \
             PRIMARY KEY (image_id, name)){engine}",
            "CREATE TABLE image_tags (image_id VARCHAR(36) NOT NULL, value VARCHAR(255) NOT NULL, PRIMARY KEY (image_id, value)){engine}",
            "CREATE TABLE image_members (image_id VARCHAR(36) NOT NULL, member VARCHAR(255) NOT NULL, status VARCHAR(20) NOT NULL, \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (image_id, member)){engine}",
            "CREATE INDEX ix_image_members_member ON image_members (member)",
        ],
    },
    Migration {
        version: 2,
        name: "import tasks",
        statements: &[
            "CREATE TABLE image_tasks (id VARCHAR(36) NOT NULL PRIMARY KEY, image_id VARCHAR(36) NOT NULL, \
             type VARCHAR(30) NOT NULL, status VARCHAR(30) NOT NULL, owner VARCHAR(64), input TEXT NOT NULL, \
             result TEXT, message TEXT NOT NULL, request_id VARCHAR(64), user_id VARCHAR(64), \
             created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, expires_at BIGINT){engine}",
            "CREATE INDEX ix_image_tasks_image ON image_tasks (image_id, created_at)",
        ],
    }],
};
