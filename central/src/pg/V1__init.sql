-- Outpost central on PostgreSQL, schema version 1.
--
-- Every row carries tenant_id, and every table has row-level security:
-- the API role `outpost_api` sees only the rows of the tenant the
-- transaction names (`SET LOCAL app.tenant`), a second line behind the
-- tenant filter of each query. The role that runs this file owns the
-- tables (and so is not subject to the policies); central's store switches
-- to `outpost_api` in every transaction that serves a tenant.
--
-- Row bodies are the same encoding as the RocksDB backend (outpost-proto's
-- codec) in `body`; the columns beside it are the keys and what queries
-- filter, sort or count on, each with its index.

DO $$
BEGIN
    -- Roles are per server, not per database: another database of the
    -- same server may create it at the same moment.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outpost_api') THEN
        BEGIN
            CREATE ROLE outpost_api NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;
GRANT outpost_api TO CURRENT_USER;

CREATE TABLE sites (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    customer text COLLATE "C" NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id)
);

-- The (tenant, site, seq) of every applied batch: inserted in the apply
-- transaction, so two instances applying the same batch apply it once.
CREATE TABLE applied_batches (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    applied_ms bigint NOT NULL,
    PRIMARY KEY (tenant_id, site_id, seq)
);

CREATE TABLE devices (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    customer text COLLATE "C" NOT NULL,
    hostname text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,
    last_seen_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, device)
);
CREATE INDEX devices_status ON devices (tenant_id, status);
CREATE INDEX devices_hostname ON devices (tenant_id, hostname);

-- One row per (device, 5-minute bucket), every series in `body`;
-- partitioned by bucket time (week-wide ranges created ahead by the
-- store); retention drops whole partitions.
CREATE TABLE rollups (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    bucket_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, device, bucket_ms)
) PARTITION BY RANGE (bucket_ms);

CREATE TABLE alerts (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    alert_id bigint NOT NULL,
    customer text COLLATE "C" NOT NULL,
    state text COLLATE "C" NOT NULL,
    severity text COLLATE "C" NOT NULL,
    at_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, alert_id)
);
CREATE INDEX alerts_newest ON alerts (tenant_id, at_ms DESC);
CREATE INDEX alerts_open ON alerts (tenant_id, site_id)
    WHERE state IN ('pending', 'firing');

-- An alert's transitions (entry 't' + number) and acknowledgements
-- ('k' + time + who).
CREATE TABLE alert_history (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    alert_id bigint NOT NULL,
    entry text COLLATE "C" NOT NULL,
    at_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, alert_id, entry)
);

CREATE TABLE status_history (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    since_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, device, since_ms)
);

CREATE TABLE patch_compliance (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, device)
);

-- Credentials are found by the SHA-256 of their secret before the tenant
-- is known: those three lookups run as the owner (see pg/mod.rs).
CREATE TABLE join_tokens (
    token_hash bytea PRIMARY KEY,
    tenant_id text COLLATE "C" NOT NULL,
    body bytea NOT NULL
);

CREATE TABLE api_tokens (
    token_hash bytea PRIMARY KEY,
    tenant_id text COLLATE "C" NOT NULL,
    body bytea NOT NULL
);

CREATE TABLE users (
    tenant_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY,
    tenant_id text COLLATE "C" NOT NULL,
    user_name text COLLATE "C" NOT NULL,
    expires_ms bigint NOT NULL,
    body bytea NOT NULL
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_name);
CREATE INDEX sessions_expiry ON sessions (tenant_id, expires_ms);

CREATE TABLE commands (
    tenant_id text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    customer text COLLATE "C" NOT NULL,
    state text COLLATE "C" NOT NULL,
    created_ms bigint NOT NULL,
    closed boolean NOT NULL,
    body bytea NOT NULL,
    output bytea NOT NULL DEFAULT '\x',
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX commands_newest ON commands (tenant_id, created_ms DESC);
CREATE INDEX commands_open ON commands (tenant_id, site_id) WHERE NOT closed;

CREATE TABLE audit (
    tenant_id text COLLATE "C" NOT NULL,
    at_ms bigint NOT NULL,
    id bigserial NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, at_ms, id)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sites', 'applied_batches', 'devices', 'rollups',
        'alerts', 'alert_history', 'status_history', 'patch_compliance',
        'join_tokens', 'api_tokens', 'users', 'sessions', 'commands', 'audit']
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
GRANT USAGE ON SEQUENCE audit_id_seq TO outpost_api;
