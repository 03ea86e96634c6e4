-- Outpost central on PostgreSQL, schema version 4: each device's IP
-- addresses and tags as its site last sent them with a winning snapshot
-- (batch format 6, issue 12's search by IP and tag). Empty arrays for
-- devices stored before, and for sites that send no facts.
ALTER TABLE devices
    ADD COLUMN ips text[] NOT NULL DEFAULT '{}',
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}';

-- The devices list's tag filter (`tag = ANY(tags)`).
CREATE INDEX devices_tags ON devices USING gin (tags);
