-- Outpost central on PostgreSQL, schema version 8: `GET /api/v1/files`
-- lists one tenant's transfers newest first; this index lets it page down
-- that tenant's rows in order (never another tenant's, never a sort of
-- them all).
CREATE INDEX central_files_newest ON central_files (tenant_id, created_ms DESC, id DESC);
