-- Outpost central on PostgreSQL, schema version 16: a tenant's API tokens
-- are listed and revoked (`outpost-central token list|revoke`,
-- `GET /api/v1/tokens`, `POST /api/v1/tokens/{id}/revoke`): read by
-- tenant, not by the secret's hash alone. Expiry, creator and revocation
-- live in the body (`ApiTokenRecord::to_stored`: the record, then its
-- `TokenLife` section), as in RocksDB, so `migrate` copies bodies as they
-- are and no column needs filling for older rows.
CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id);
