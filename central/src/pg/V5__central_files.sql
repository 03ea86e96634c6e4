-- Outpost central on PostgreSQL, schema version 5: file transfers from
-- central (issue 13). Same conventions as V1–V4: tenant_id on every row,
-- text keys COLLATE "C", row bodies in outpost-proto's codec, row-level
-- security for `outpost_api`. The content itself lives in DATA/files.

-- (tenant, transfer id) → crate::files::CentralFile.
CREATE TABLE central_files (
    tenant_id text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    created_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

ALTER TABLE central_files ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON central_files TO outpost_api
    USING (tenant_id = current_setting('app.tenant', true))
    WITH CHECK (tenant_id = current_setting('app.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON central_files TO outpost_api;
