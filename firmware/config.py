# The node config written at enrolment: one JSON file on flash (config.json) plus the node
# key in a file of its own (node.key), so the config can be shown, copied and diffed without
# the secret.  Validated in full before anything runs, ESPHome style: every problem names
# its key ([broker.port]) and says how to fix it; unknown keys get a "did you mean".
#
# In:  hal.Flash.  Out: a Config.  On failure: ConfigError with one line per problem
# (node.py prints them and stays in safe mode).  Secrets (the node key, the Wi-Fi password)
# never appear in messages, repr() or describe().
#
# RAM: the parsed document (~1 KB) and the 32-byte key.  The checks themselves, and
# describe()'s text, live in config_check.py, imported for each load(), parse() or
# describe() and dropped after it (firmware.drop_module), so their code and messages do
# not stay in the heap.
#
# config.json (JSON object; keys not listed are errors):
#
#   version        1 (required)
#   node_id        "0d0a0001": 8 lower-case hex digits, as in topics (required)
#   kind           "air" | "noise" | "crowd" (required)
#   zone           topic-safe name, e.g. "spoorzone" (required)
#   site           mounting place, e.g. "lamppost-17" (required)
#   key_id         0..255, which of the node's keys node.key is (default 0)
#   key_file       flash file with the 32-byte key: 64 hex digits, or 32 raw bytes
#                  (default "node.key")
#   broker         {host (required), port (default 8883 with tls, else 1883),
#                   client_id (default "dordt-<node_id>"), keepalive_s (default 60),
#                   tls: null | {ca, cert, key}: flash files (PEM or DER); cert and key
#                   together for a client certificate,
#                   ring_bytes: offline buffer size, 512..65536 (default 8192)}
#   wifi           {ssid, password} (optional: absent on wired and host nodes)
#   time           {ntp_host: host name or null (default null: time from the gateway only),
#                   sync_s: NTP re-sync period, 60..86400 (default 3600)}
#   intervals      {status_every: a status frame every N measurement frames (default 10),
#                   counter_reserve: frames per stored counter mark (default 1000, §6.1),
#                   retry_min_s / retry_max_s: broker reconnect back-off (default 2 / 300)}
#   sampler        the node kind's own settings, checked by its sampler (default {})
#   board          pins and bus settings for board.py (default {}: the board's defaults)

import json

from firmware import drop_module, metrics, use_module

CONFIG_FILE = "config.json"
KEY_FILE = "node.key"
VERSION = 1
KEY_LEN = 32
_CHECK = "firmware.config_check"


class ConfigError(ValueError):
    """The config cannot be used.  `problems` holds one message per problem."""

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        super().__init__("; ".join(problems))
        self.problems = problems


class Config:
    """A validated node config.  The key is kept out of repr() and describe()."""

    def __init__(self, doc, key):
        self.doc = doc
        self._key = key
        self.version = doc["version"]
        self.node = doc["node_id"]
        self.node_id = int(self.node, 16)
        self.kind = doc["kind"]
        self.kind_id = metrics.KIND_IDS[self.kind]
        self.zone = doc["zone"]
        self.site = doc["site"]
        self.key_id = doc["key_id"]
        self.key_file = doc["key_file"]
        self.broker = doc["broker"]
        self.wifi = doc.get("wifi")
        self.time = doc["time"]
        self.intervals = doc["intervals"]
        self.sampler = doc["sampler"]
        self.board = doc["board"]

    @property
    def key(self):
        return self._key

    def __repr__(self):
        return "Config(node=%s kind=%s zone=%s)" % (self.node, self.kind, self.zone)

    def describe(self):
        """The config for people (serial console, provisioning tool), secrets redacted
        (config_check.describe: start-up only, so not kept in a node's heap)."""
        return _checked("describe", self)


def load(flash, name=CONFIG_FILE):
    """Read and validate config.json and the key file from `flash` (config_check.py)."""
    return _checked("load", flash, name)


def peek(flash, name=CONFIG_FILE):
    """The raw document, or None; never raises.  For board.py, before validation."""
    try:
        data = flash.read(name)
        doc = json.loads(data) if data is not None else None
        return doc if isinstance(doc, dict) else None
    except Exception:
        return None



def parse(doc, read_file, exists=None):
    """Validate `doc` (a dict) and read the key with `read_file(name) -> bytes | None`.
    Defaults are filled in.  Raises ConfigError listing every problem found."""
    return _checked("parse", doc, read_file, exists)


def _checked(check, *args):
    checks = use_module(_CHECK)
    try:
        return getattr(checks, check)(*args)
    finally:
        drop_module(_CHECK)
