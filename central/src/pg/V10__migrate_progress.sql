-- V10: progress of `outpost-central migrate --from rocksdb:DIR` (one row
-- per copy step: the last source key copied, committed in the same
-- transaction as the rows it covers, so a killed run resumes after it).
-- Owner role only: no tenant_id, no row-level security, never granted to
-- outpost_api.
CREATE TABLE outpost_migrate_progress (
    step text COLLATE "C" PRIMARY KEY,
    source text NOT NULL,
    last_key bytea NOT NULL,
    copied bigint NOT NULL,
    updated_ms bigint NOT NULL
);
