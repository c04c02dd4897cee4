# Validation of the node config (config.json and the key file), for firmware/config.py:
# every problem names its key ([broker.port]) and says how to fix it; unknown keys get a
# "did you mean".  The format is documented at the top of config.py.
#
# Also Config.describe(), the config for people, which a node prints once at start-up.
#
# In:  hal.Flash, or a parsed document and a file reader.  Out: a config.Config.
# On failure: config.ConfigError with one line per problem.  Secrets (the node key, the
# Wi-Fi password) never appear in a message, nor in describe().
#
# RAM: start-up only.  config.load(), config.parse() and Config.describe() import this
# module for one call and drop it again (firmware.drop_module): its code and messages
# (~7 KB as an .mpy file, bench/firmware_memory.py) need not stay in a node's heap while
# it runs.  A node in safe mode loads it again at each re-check.

import binascii
import json

from firmware import metrics
from firmware.config import CONFIG_FILE, KEY_FILE, KEY_LEN, VERSION, Config, ConfigError

_TOP = (
    "version", "node_id", "kind", "zone", "site", "key_id", "key_file", "broker", "wifi",
    "time", "intervals", "sampler", "board",
)
_BROKER = ("host", "port", "client_id", "keepalive_s", "tls", "ring_bytes")
_TLS = ("ca", "cert", "key")
_WIFI = ("ssid", "password")
_TIME = ("ntp_host", "sync_s")
_INTERVALS = ("status_every", "counter_reserve", "retry_min_s", "retry_max_s")
_ZONE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"
_HEX = "0123456789abcdef"


def load(flash, name=CONFIG_FILE):
    """Read and validate config.json and the key file from `flash`."""
    data = flash.read(name)
    if data is None:
        raise ConfigError(
            "[%s] not found on flash: this node is not enrolled yet; run enrolment "
            "(provisioning) to write %s and %s" % (name, name, KEY_FILE)
        )
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ConfigError(
            "[%s] is not valid JSON (%s): write it again with the provisioning tool"
            % (name, exc)
        ) from None
    return parse(doc, flash.read, flash.exists)



def parse(doc, read_file, exists=None):
    """Validate `doc` (a dict) and read the key with `read_file(name) -> bytes | None`.
    Defaults are filled in.  Raises ConfigError listing every problem found."""
    problems = []
    if not isinstance(doc, dict):
        raise ConfigError("[config] must be a JSON object, got %s" % _type(doc))
    doc = dict(doc)
    _unknown(doc, _TOP, "config", problems)

    if "version" not in doc:
        problems.append("[version] is required: add \"version\": %d" % VERSION)
    elif doc["version"] != VERSION:
        problems.append("[version] %r is not supported by this firmware: it reads version %d; "
                        "update the firmware or re-enrol" % (doc["version"], VERSION))

    node = _required_str(doc, "node_id", "node_id", problems)
    if node is not None and (len(node) != 8 or any(c not in _HEX for c in node)):
        problems.append("[node_id] %r is not a node id: use 8 lower-case hex digits, "
                        "e.g. \"0d0a0001\"" % node)

    kind = _required_str(doc, "kind", "kind", problems)
    if kind is not None and kind not in metrics.KIND_IDS:
        problems.append(_invalid_choice(kind, "kind", sorted(metrics.KIND_IDS)))

    zone = _required_str(doc, "zone", "zone", problems)
    if zone is not None and (not zone or len(zone) > 32
                             or any(c not in _ZONE_CHARS for c in zone)):
        problems.append("[zone] %r is not a zone name: use 1 to 32 of a-z, 0-9, '-', '_' "
                        "(it is one MQTT topic level), e.g. \"spoorzone\"" % zone)

    site = _required_str(doc, "site", "site", problems)
    if site is not None and not 1 <= len(site) <= 64:
        problems.append("[site] must be 1 to 64 characters, e.g. \"lamppost-17\"")

    doc["key_id"] = _int(doc, "key_id", "key_id", 0, 0, 255, problems)
    key_file = doc.setdefault("key_file", KEY_FILE)
    key = None
    if not isinstance(key_file, str) or not key_file:
        problems.append("[key_file] must be a file name on flash, e.g. \"%s\"" % KEY_FILE)
    else:
        key = _read_key(key_file, read_file, problems)

    broker = _section(doc, "broker", _BROKER, problems, required=True)
    if broker is not None:
        _check_broker(broker, node, exists, problems)

    wifi = _section(doc, "wifi", _WIFI, problems)
    if wifi is not None:
        ssid = wifi.get("ssid")
        if not isinstance(ssid, str) or not 1 <= len(ssid) <= 32:
            problems.append("[wifi.ssid] must be the network name, 1 to 32 characters")
        password = wifi.setdefault("password", "")
        if not isinstance(password, str) or not (password == "" or 8 <= len(password) <= 63):
            # never echo the value: it is a secret
            problems.append("[wifi.password] must be 8 to 63 characters (WPA2), or \"\" "
                            "for an open network")

    tm = _section(doc, "time", _TIME, problems) or {}
    doc["time"] = tm
    ntp = tm.setdefault("ntp_host", None)
    if ntp is not None and (not isinstance(ntp, str) or not ntp):
        problems.append("[time.ntp_host] must be a host name, or null to take time from the "
                        "gateway only")
    tm["sync_s"] = _int(tm, "sync_s", "time.sync_s", 3600, 60, 86400, problems)

    iv = _section(doc, "intervals", _INTERVALS, problems) or {}
    doc["intervals"] = iv
    iv["status_every"] = _int(iv, "status_every", "intervals.status_every", 10, 1, 10000,
                              problems)
    iv["counter_reserve"] = _int(iv, "counter_reserve", "intervals.counter_reserve", 1000, 1,
                                 1000000, problems)
    lo = iv["retry_min_s"] = _int(iv, "retry_min_s", "intervals.retry_min_s", 2, 1, 3600,
                                  problems)
    hi = iv["retry_max_s"] = _int(iv, "retry_max_s", "intervals.retry_max_s", 300, 1, 86400,
                                  problems)
    if lo is not None and hi is not None and hi < lo:
        problems.append("[intervals.retry_max_s] %d is below retry_min_s %d: raise it" % (hi,
                                                                                       lo))

    for name in ("sampler", "board"):
        value = doc.setdefault(name, {})
        if not isinstance(value, dict):
            problems.append("[%s] must be an object ({...}), got %s" % (name, _type(value)))

    if problems:
        raise ConfigError(problems)
    return Config(doc, key)


def describe(cfg):
    """Config.describe(): the config `cfg` for people (serial console, provisioning tool),
    secrets redacted."""
    b = cfg.broker
    tls = b["tls"]
    lines = [
        "node      %s  kind %s  zone %s  site %s" % (cfg.node, cfg.kind, cfg.zone, cfg.site),
        "key       id %d in %s (secret, not shown)" % (cfg.key_id, cfg.key_file),
        "broker    %s:%d  client %s  keepalive %d s  buffer %d bytes" % (
            b["host"], b["port"], b["client_id"], b["keepalive_s"], b["ring_bytes"]),
    ]
    if tls is None:
        lines.append("tls       off (plain MQTT)")
    else:
        lines.append("tls       ca %s  cert %s  key %s" % (
            tls["ca"], tls.get("cert") or "-", tls.get("key") or "-"))
    if cfg.wifi is None:
        lines.append("wifi      not configured")
    else:
        secret = "(set, not shown)" if cfg.wifi.get("password") else "(open network)"
        lines.append("wifi      ssid %r  password %s" % (cfg.wifi["ssid"], secret))
    lines.append("time      ntp %s  re-sync every %d s" % (
        cfg.time["ntp_host"] or "off (gateway only)", cfg.time["sync_s"]))
    iv = cfg.intervals
    lines.append("intervals status every %d frames  counter reserve %d  retry %d..%d s" % (
        iv["status_every"], iv["counter_reserve"], iv["retry_min_s"], iv["retry_max_s"]))
    lines.append("sampler   %s" % _inline(cfg.sampler))
    if cfg.board:
        lines.append("board     %s" % _inline(cfg.board))
    return "\n".join(lines)


def _inline(d):
    return ", ".join("%s=%s" % (k, d[k]) for k in sorted(d)) or "(defaults)"


def _check_broker(broker, node, exists, problems):
    host = broker.get("host")
    if not isinstance(host, str) or not host:
        problems.append("[broker.host] is required: the gateway's address, e.g. \"10.42.0.1\"")
    tls = broker.setdefault("tls", None)
    if tls is not None:
        if not isinstance(tls, dict):
            problems.append("[broker.tls] must be null or {\"ca\": ..., \"cert\": ..., "
                            "\"key\": ...}, got %s" % _type(tls))
            tls = broker["tls"] = None
        else:
            _unknown(tls, _TLS, "broker.tls", problems)
            if "ca" not in tls:
                problems.append("[broker.tls.ca] is required with TLS: the CA certificate "
                                "file that signed the gateway's certificate")
            if ("cert" in tls) != ("key" in tls):
                problems.append("[broker.tls] cert and key go together (the client "
                                "certificate and its private key): set both or neither")
            for part in _TLS:
                path = tls.get(part)
                if part not in tls:
                    continue
                if not isinstance(path, str) or not path:
                    problems.append("[broker.tls.%s] must be a file name on flash" % part)
                elif exists is not None and not exists(path):
                    problems.append("[broker.tls.%s] %r not found on flash: copy it there "
                                    "with the provisioning tool" % (part, path))
    default_port = 1883 if tls is None else 8883
    broker["port"] = _int(broker, "port", "broker.port", default_port, 1, 65535, problems)
    if node is None:
        node = "node"
    client_id = broker.setdefault("client_id", "dordt-" + node)
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= 23:
        # MQTT 3.1.1 §3.1.3.1: servers must accept 1..23 characters
        problems.append("[broker.client_id] must be 1 to 23 characters (MQTT 3.1.1 "
                        "§3.1.3.1), e.g. \"dordt-%s\"" % node)
    broker["keepalive_s"] = _int(broker, "keepalive_s", "broker.keepalive_s", 60, 0, 65535,
                                 problems)
    broker["ring_bytes"] = _int(broker, "ring_bytes", "broker.ring_bytes", 8192, 512, 65536,
                                problems)


def _read_key(name, read_file, problems):
    data = read_file(name)
    if data is None:
        problems.append("[key_file] %r not found on flash: copy the node key made at "
                        "enrolment there (64 hex digits), or re-enrol the node" % name)
        return None
    if len(data) == KEY_LEN:
        return bytes(data)
    text = bytes(data).strip()
    if len(text) == 2 * KEY_LEN:
        try:
            return binascii.unhexlify(text)
        except ValueError:
            pass
    # the content is a secret: say what is wrong with it, never what it is
    problems.append("[key_file] %r holds %d bytes that are not a node key: it must hold "
                    "32 raw bytes or 64 hex digits; re-enrol the node" % (name, len(data)))
    return None


def _section(doc, name, keys, problems, required=False):
    value = doc.get(name)
    if value is None:
        if required:
            problems.append("[%s] is required: add a \"%s\" object" % (name, name))
        doc[name] = None
        return None
    if not isinstance(value, dict):
        problems.append("[%s] must be an object ({...}), got %s" % (name, _type(value)))
        doc[name] = None
        return None
    value = dict(value)
    doc[name] = value
    _unknown(value, keys, name, problems)
    return value


def _required_str(doc, key, path, problems):
    value = doc.get(key)
    if value is None:
        problems.append("[%s] is required" % path)
        return None
    if not isinstance(value, str):
        problems.append("[%s] must be a string, got %s" % (path, _type(value)))
        return None
    return value


def _int(doc, key, path, default, lo, hi, problems):
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        problems.append("[%s] must be an integer in %d..%d, got %r" % (path, lo, hi, value))
        return None
    return value


def _unknown(doc, allowed, where, problems):
    for key in doc:
        if key not in allowed:
            near = _closest(key, allowed)
            hint = " Did you mean [%s]?" % near if near else ""
            problems.append("[%s] is an invalid option for [%s].%s" % (key, where, hint))


def _invalid_choice(value, path, choices):
    near = _closest(value, choices)
    hint = " Did you mean [%s]?" % near if near else ""
    return "[%s] %r is not one of %s.%s" % (path, value, ", ".join(choices), hint)


def _closest(word, options):
    """The option nearest to `word` within edit distance 2, else one that starts `word`
    or shares its first four letters, else None."""
    best = None
    best_d = 3
    for option in options:
        d = _distance(word, option)
        if d < best_d:
            best, best_d = option, d
    if best is None:
        for option in options:
            if (len(option) >= 2 and word.startswith(option)) or (
                    len(word) >= 4 and option.startswith(word[:4])):
                return option
    return best


def _distance(a, b):
    """Levenshtein distance (small strings only)."""
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
        prev = cur
    return prev[len(b)]


def _type(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
