-- Outpost central on PostgreSQL, schema version 2: the script library,
-- bulk runs (and their members held at central), per-device patch
-- findings and central's CVE index. Same conventions as V1: tenant_id on
-- every row, text keys COLLATE "C" (byte order, as RocksDB's keys), row
-- bodies in outpost-proto's codec, row-level security for `outpost_api`.

-- Every version of every script: (tenant, name, version) → CentralScript.
CREATE TABLE scripts (
    tenant_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, name, version)
);

-- Bulk runs: (tenant, run id) → CentralBulk; listed newest first.
CREATE TABLE bulks (
    tenant_id text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    created_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX bulks_newest ON bulks (tenant_id, created_ms DESC, id DESC);

-- Members of bulk runs held at central until a slot of their site frees
-- (their commands are rows of `commands`).
CREATE TABLE commands_held (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    run_id text COLLATE "C" NOT NULL,
    command_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant_id, site_id, run_id, command_id)
);

-- A device's missing patches and CVEs: (tenant, site, device) →
-- PatchFindingsRow.
CREATE TABLE patch_findings (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, device)
);

-- Central's CVE index, derived from the findings rows in the batch's
-- apply transaction: (tenant, cve, site, device) → Vec<CveHit>.
CREATE TABLE patch_cves (
    tenant_id text COLLATE "C" NOT NULL,
    cve text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, cve, site_id, device)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['scripts', 'bulks', 'commands_held',
        'patch_findings', 'patch_cves']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_only ON %I TO outpost_api '
            'USING (tenant_id = current_setting(''app.tenant'', true)) '
            'WITH CHECK (tenant_id = current_setting(''app.tenant'', true))', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO outpost_api', t);
    END LOOP;
END
$$;
