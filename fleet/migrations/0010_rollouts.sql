-- Firmware releases and their staged rollouts (fleet/rollout.py; docs/ota.md §1, §4).
-- Times are Unix seconds (the store's points, which a rollout compares them with, are).

CREATE TABLE releases (
    serial INTEGER PRIMARY KEY CHECK (serial >= 1),  -- used once, ever (docs/ota.md §1)
    version TEXT NOT NULL,                -- "M.m.p"
    rollback INTEGER NOT NULL CHECK (rollback IN (0, 1)),
    kinds TEXT NOT NULL,                  -- JSON list of node kinds
    hardware TEXT NOT NULL,               -- JSON list of board profiles
    min_firmware TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_s INTEGER NOT NULL,           -- release.json's `created`
    manifest_sha256 TEXT NOT NULL,        -- of release.json's bytes
    path TEXT NOT NULL,                   -- its copy in the fleet's release store
    published_s INTEGER NOT NULL
);

CREATE TABLE rollouts (
    serial INTEGER PRIMARY KEY REFERENCES releases(serial),
    state TEXT NOT NULL CHECK (state IN ('running', 'halted', 'done')),
    stage INTEGER NOT NULL,               -- index into stages
    stages TEXT NOT NULL,                 -- JSON list of stage names, "canary" first
    canary_timeout_s INTEGER NOT NULL,
    stage_timeout_s INTEGER NOT NULL,
    max_error_rise INTEGER NOT NULL,
    store TEXT NOT NULL,                  -- where step reads evidence (sqlite:PATH or URL)
    offers TEXT NOT NULL,                 -- the directory of per-gateway offers files
    started_s INTEGER NOT NULL,
    stage_started_s INTEGER NOT NULL,
    updated_s INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT ''       -- why it halted, one line
);

CREATE TABLE rollout_nodes (
    serial INTEGER NOT NULL REFERENCES rollouts(serial),
    node TEXT NOT NULL,
    gateways TEXT NOT NULL,               -- JSON list: the gateways that offer it the release
    zone TEXT NOT NULL,
    stage INTEGER NOT NULL,
    -- left: retired or revoked in the registry during the rollout (not waited for)
    state TEXT NOT NULL CHECK (state IN ('planned', 'offered', 'confirmed', 'withdrawn',
                                         'left')),
    offered_s INTEGER,
    confirmed_s INTEGER,
    baseline_errors INTEGER,              -- its error_count before the offer, if the store had one
    ota_state TEXT,                       -- the newest `ota` state its gateway reported for it
    ota_s INTEGER,                        -- ... and when (docs/ota.md §3)
    PRIMARY KEY (serial, node)
);

CREATE INDEX rollout_nodes_state ON rollout_nodes(state);

CREATE TABLE rollout_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    serial INTEGER NOT NULL REFERENCES rollouts(serial),
    at_s INTEGER NOT NULL,
    message TEXT NOT NULL
);
