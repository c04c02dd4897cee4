-- The fleet registry's first schema (fleet/registry.py applies it; docs/fleet.md).
-- Node keys are stored only sealed (AES-256-GCM under the master key, associated data
-- binding node id and key id); no column ever holds a key in the clear.

CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE zones (
    zone TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    name TEXT NOT NULL
);

CREATE TABLE sites (
    site TEXT PRIMARY KEY,
    zone TEXT NOT NULL REFERENCES zones(zone),
    lat REAL NOT NULL,
    lon REAL NOT NULL,
    kinds TEXT NOT NULL              -- comma-separated node kinds the site carries
);

CREATE TABLE gateways (
    name TEXT PRIMARY KEY,
    zone TEXT NOT NULL REFERENCES zones(zone),
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired', 'revoked')),
    hardware TEXT NOT NULL DEFAULT '',
    software TEXT NOT NULL DEFAULT '',
    keyring_pub TEXT,                -- "dordt-gateway-x25519 <64 hex>" (public: no secret)
    keyring_serial INTEGER NOT NULL DEFAULT 0,   -- serial of the last keyring issued to it
    keyring_issued_at TEXT,
    added_at TEXT NOT NULL,
    last_seen TEXT
);

CREATE TABLE nodes (
    node TEXT PRIMARY KEY CHECK (length(node) = 8),
    kind TEXT NOT NULL,
    zone TEXT NOT NULL REFERENCES zones(zone),
    site TEXT NOT NULL REFERENCES sites(site),
    hardware TEXT NOT NULL DEFAULT '',
    firmware TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired', 'revoked')),
    gateway TEXT REFERENCES gateways(name),   -- explicit assignment; NULL: the zone's gateways
    enrolled_at TEXT NOT NULL,
    last_seen TEXT
);

CREATE TABLE node_keys (
    node TEXT NOT NULL REFERENCES nodes(node) ON DELETE CASCADE,
    key_id INTEGER NOT NULL CHECK (key_id BETWEEN 0 AND 255),
    state TEXT NOT NULL CHECK (state IN ('current', 'next')),
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,            -- AES-256-GCM(master key, nonce, key, aad node|key id)
    fingerprint TEXT NOT NULL,       -- fleet/bundle.py fingerprint(): tells keys apart, safely
    created_at TEXT NOT NULL,
    PRIMARY KEY (node, key_id)
);

CREATE INDEX nodes_zone ON nodes(zone);
CREATE INDEX nodes_gateway ON nodes(gateway);
