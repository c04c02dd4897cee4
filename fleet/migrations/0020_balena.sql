-- Gateways on balena (fleet/balena.py; docs/fleet.md, "Gateways on balena").
-- No API key is ever stored here: it comes from a file or $BALENA_API_KEY at each command.

-- A registry gateway is linked to at most one balena device, and a device to one gateway.
-- The last state read from balena is kept so `status` can say what was seen, and when.
CREATE TABLE balena_devices (
    gateway TEXT PRIMARY KEY REFERENCES gateways(name) ON DELETE CASCADE,
    uuid TEXT NOT NULL UNIQUE CHECK (length(uuid) IN (32, 62)),
    fleet TEXT NOT NULL,             -- the balena fleet (application) slug the device is in
    device_name TEXT NOT NULL DEFAULT '',
    linked_at TEXT NOT NULL,
    is_online INTEGER,               -- as balena last said (NULL: not read yet)
    last_connectivity_event TEXT,
    running_release TEXT,            -- commit the device runs
    pinned_release TEXT,             -- commit it is pinned to; NULL: it follows its fleet
    read_at TEXT
);

-- A staged rollout of the gateway software: canaries, then one zone, then all.
CREATE TABLE balena_rollouts (
    id INTEGER PRIMARY KEY,
    release TEXT NOT NULL,           -- the commit being rolled out
    stage TEXT NOT NULL CHECK (stage IN ('canary', 'zone', 'all', 'halted')),
    zone TEXT REFERENCES zones(zone),
    started_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Who a rollout pinned, at which stage, and what it ran before (for a halt to pin back).
CREATE TABLE balena_rollout_gateways (
    rollout INTEGER NOT NULL REFERENCES balena_rollouts(id) ON DELETE CASCADE,
    gateway TEXT NOT NULL REFERENCES gateways(name) ON DELETE CASCADE,
    stage TEXT NOT NULL CHECK (stage IN ('canary', 'zone', 'all')),
    previous_release TEXT,           -- pinned commit before; NULL: it followed its fleet
    pinned_at TEXT NOT NULL,
    PRIMARY KEY (rollout, gateway)
);
