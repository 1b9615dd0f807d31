-- The collector reads one tenant's packs at a time. Keep in step with
-- ../sqlite/0016_packs_by_tenant.sql.
CREATE INDEX packs_by_tenant ON packs (tenant, pack_id);
