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
    }, Migration {
        version: 3,
        name: "provider writes in batches (PostgreSQL)",
        statements: &[PLACEMENT_WRITE],
    }],
};

/// PostgreSQL: the provider writes (creation, inventories, traits, aggregates) that the service sends
/// together, one JSON object each (`k` says which), applied in order in the caller's transaction; one JSON
/// answer each. Each write checks the provider's generation and records the change, as the store describes.
/// Answers: `create` `{ok}` (false: a uuid or name taken); `inv` `{generation, inuse, current, used}`;
/// `traits` and `aggregates` `{generation, changed, current}`. `generation` is null when nothing was
/// written, `current` the provider's generation then (null: no such provider).
const PLACEMENT_WRITE: &str = r#"{postgresql}CREATE OR REPLACE FUNCTION placement_write(jobs jsonb) RETURNS SETOF jsonb
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
  v_job jsonb;
  v_uuid text;
  v_gen bigint;
  v_cur bigint;
  v_inuse text;
  v_used text;
  v_changed boolean;
  v_ok boolean;
  v_xid bigint := CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT);
BEGIN
  FOR v_job IN SELECT e.value FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e(value, n) ORDER BY e.n LOOP
    v_uuid := v_job->>'uuid';
    v_gen := NULL;
    IF v_job->>'k' = 'create' THEN
      v_ok := true;
      BEGIN
        INSERT INTO resource_providers (uuid, name, generation, parent_uuid, root_uuid, created_at, updated_at)
        VALUES (v_uuid, v_job->>'name', CAST(v_job->>'generation' AS BIGINT), v_job->>'parent',
                v_job->>'root', CAST(v_job->>'created' AS BIGINT), CAST(v_job->>'updated' AS BIGINT));
        INSERT INTO placement_change_log (xid, rp_uuid) VALUES (v_xid, v_uuid);
      EXCEPTION WHEN unique_violation THEN
        v_ok := false;
      END;
      RETURN NEXT jsonb_build_object('ok', v_ok);
    ELSIF v_job->>'k' = 'inv' THEN
      v_used := NULL;
      -- A class to remove that still has allocations refuses the whole write.
      SELECT a.resource_class INTO v_inuse FROM allocations a
      WHERE a.rp_uuid = v_uuid AND a.used > 0 AND a.resource_class IN (
        SELECT i.resource_class FROM inventories i WHERE i.rp_uuid = v_uuid
        AND (i.resource_class IN (SELECT jsonb_array_elements_text(v_job->'remove'))
             OR (CAST(v_job->>'replace_all' AS BOOLEAN)
                 AND i.resource_class NOT IN (SELECT x->>'rc' FROM jsonb_array_elements(v_job->'set') x))))
      ORDER BY a.resource_class LIMIT 1;
      IF v_inuse IS NULL THEN
        UPDATE resource_providers SET generation = generation + 1, updated_at = CAST(v_job->>'now' AS BIGINT)
        WHERE uuid = v_uuid AND generation = CAST(v_job->>'expected' AS BIGINT) RETURNING generation INTO v_gen;
      END IF;
      IF v_gen IS NOT NULL THEN
        DELETE FROM inventories i WHERE i.rp_uuid = v_uuid
        AND (i.resource_class IN (SELECT jsonb_array_elements_text(v_job->'remove'))
             OR (CAST(v_job->>'replace_all' AS BOOLEAN)
                 AND i.resource_class NOT IN (SELECT x->>'rc' FROM jsonb_array_elements(v_job->'set') x)));
        INSERT INTO inventories (rp_uuid, resource_class, total, reserved, min_unit, max_unit, step_size,
                                 allocation_ratio)
        SELECT v_uuid, x->>'rc', CAST(x->>'total' AS BIGINT), CAST(x->>'reserved' AS BIGINT),
               CAST(x->>'min_unit' AS BIGINT), CAST(x->>'max_unit' AS BIGINT), CAST(x->>'step_size' AS BIGINT),
               CAST(x->>'allocation_ratio' AS DOUBLE PRECISION)
        FROM jsonb_array_elements(v_job->'set') x
        ON CONFLICT (rp_uuid, resource_class) DO UPDATE SET total = EXCLUDED.total, reserved = EXCLUDED.reserved,
          min_unit = EXCLUDED.min_unit, max_unit = EXCLUDED.max_unit, step_size = EXCLUDED.step_size,
          allocation_ratio = EXCLUDED.allocation_ratio
        WHERE (inventories.total, inventories.reserved, inventories.min_unit, inventories.max_unit,
               inventories.step_size, inventories.allocation_ratio)
          IS DISTINCT FROM (EXCLUDED.total, EXCLUDED.reserved, EXCLUDED.min_unit, EXCLUDED.max_unit,
                            EXCLUDED.step_size, EXCLUDED.allocation_ratio);
        INSERT INTO placement_change_log (xid, rp_uuid) VALUES (v_xid, v_uuid);
        SELECT string_agg(s.resource_class || '=' || CAST(s.total AS TEXT), ',') INTO v_used
        FROM (SELECT a.resource_class, SUM(a.used) AS total FROM allocations a WHERE a.rp_uuid = v_uuid
              AND a.resource_class IN (SELECT x->>'rc' FROM jsonb_array_elements(v_job->'set') x)
              GROUP BY a.resource_class) s;
      END IF;
      SELECT p.generation INTO v_cur FROM resource_providers p WHERE p.uuid = v_uuid;
      RETURN NEXT jsonb_build_object('generation', v_gen, 'inuse', v_inuse, 'current', v_cur, 'used', v_used);
    ELSIF v_job->>'k' = 'traits' THEN
      v_changed := NOT CAST(v_job->>'keep_unchanged' AS BOOLEAN)
        OR (SELECT COUNT(*) FROM rp_traits t WHERE t.rp_uuid = v_uuid) <> jsonb_array_length(v_job->'values')
        OR EXISTS (SELECT 1 FROM rp_traits t WHERE t.rp_uuid = v_uuid
                   AND t.trait NOT IN (SELECT jsonb_array_elements_text(v_job->'values')));
      IF v_changed THEN
        UPDATE resource_providers SET generation = generation + 1, updated_at = CAST(v_job->>'now' AS BIGINT)
        WHERE uuid = v_uuid AND generation = CAST(v_job->>'expected' AS BIGINT) RETURNING generation INTO v_gen;
      END IF;
      IF v_gen IS NOT NULL THEN
        DELETE FROM rp_traits t WHERE t.rp_uuid = v_uuid
        AND t.trait NOT IN (SELECT jsonb_array_elements_text(v_job->'values'));
        INSERT INTO rp_traits (rp_uuid, trait) SELECT v_uuid, x FROM jsonb_array_elements_text(v_job->'values') x
        ON CONFLICT DO NOTHING;
        INSERT INTO placement_change_log (xid, rp_uuid) VALUES (v_xid, v_uuid);
      END IF;
      SELECT p.generation INTO v_cur FROM resource_providers p WHERE p.uuid = v_uuid;
      RETURN NEXT jsonb_build_object('generation', v_gen, 'changed', v_changed, 'current', v_cur);
    ELSIF v_job->>'k' = 'aggregates' THEN
      v_changed := NOT CAST(v_job->>'keep_unchanged' AS BOOLEAN)
        OR (SELECT COUNT(*) FROM rp_aggregates t WHERE t.rp_uuid = v_uuid) <> jsonb_array_length(v_job->'values')
        OR EXISTS (SELECT 1 FROM rp_aggregates t WHERE t.rp_uuid = v_uuid
                   AND t.aggregate_uuid NOT IN (SELECT jsonb_array_elements_text(v_job->'values')));
      IF v_changed THEN
        UPDATE resource_providers SET generation = generation + 1, updated_at = CAST(v_job->>'now' AS BIGINT)
        WHERE uuid = v_uuid AND generation = CAST(v_job->>'expected' AS BIGINT) RETURNING generation INTO v_gen;
      END IF;
      IF v_gen IS NOT NULL THEN
        DELETE FROM rp_aggregates t WHERE t.rp_uuid = v_uuid
        AND t.aggregate_uuid NOT IN (SELECT jsonb_array_elements_text(v_job->'values'));
        INSERT INTO rp_aggregates (rp_uuid, aggregate_uuid)
        SELECT v_uuid, x FROM jsonb_array_elements_text(v_job->'values') x ON CONFLICT DO NOTHING;
        INSERT INTO placement_change_log (xid, rp_uuid) VALUES (v_xid, v_uuid);
      END IF;
      SELECT p.generation INTO v_cur FROM resource_providers p WHERE p.uuid = v_uuid;
      RETURN NEXT jsonb_build_object('generation', v_gen, 'changed', v_changed, 'current', v_cur);
    ELSE
      RAISE EXCEPTION 'placement_write: unknown write %', v_job->>'k';
    END IF;
  END LOOP;
END
$fn$"#;
