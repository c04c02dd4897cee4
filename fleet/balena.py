"""Gateways on balena: registry gateways linked to balena devices through `balena-sdk`.

In:  the fleet registry (fleet/registry.py: its gateways and their zones), a balena API key
     (a file, else $BALENA_API_KEY; never printed, logged, stored or put in a message), the
     API's URL (default https://api.balena-cloud.com/, else $DORDT_BALENA_API_URL; an
     openBalena server or the tests' loopback stand-in), and for `sync` an optional zone
     settings file (TOML, `load_zone_settings`).
Out: per gateway: the link (device uuid, fleet), the device's environment variables and tags
     (`desired_config`), its online state, last seen (also into the registry gateway's
     `last_seen`) and the release it runs and is pinned to; a staged rollout of the gateway
     software (canary gateways, then one zone, then all; `halt` pins every gateway the
     rollout moved back to what it had before).
On failure: `BalenaError` (one or two lines, with `exit_code`, dordt/errors.py): 2 for a
     refused API key (401), bad settings or a URL that is not the balena API; 3 when the API
     cannot be reached or does not answer within the timeout; 1 for anything else the API
     refused or could not find (a device uuid, a release) and a rollout stage not ready.
     The messages never hold the key.

balena-sdk is used as shipped: its settings are kept in memory (never its ~/.balena file,
which would write the key to disk) and its API endpoint is set to the configured URL.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import tomllib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from dordt.errors import EXIT_CONFIG, EXIT_ENVIRONMENT, EXIT_FAILED
from fleet.registry import Registry, utc_now

DEFAULT_API_URL = "https://api.balena-cloud.com/"
ENV_API_URL = "DORDT_BALENA_API_URL"
ENV_TOKEN = "BALENA_API_KEY"
DEFAULT_TIMEOUT_S = 60.0  # for one operation (a pin is three requests)


# What `sync` owns on a device: variables starting with VAR_PREFIX and tags starting with
# TAG_PREFIX.  Anything else on the device is the operator's and is left alone.
VAR_PREFIX = "DORDT_"
TAG_PREFIX = "dordt."

# Zone settings file key -> device environment variable (docs/fleet.md, "Gateways on
# balena").  The gateway reads DORDT_INFLUX_TOKEN (the default `token_env` of
# gateway/config.py); the others name its gateway.toml settings for the gateway to take.
SETTING_VARS = {
    "mqtt_url": "DORDT_MQTT_URL",
    "store_url": "DORDT_STORE_URL",
    "store_org": "DORDT_STORE_ORG",
    "store_bucket": "DORDT_STORE_BUCKET",
    "log_level": "DORDT_LOG_LEVEL",
}
# Secrets come from files named in the settings and only ever become device variables (the
# gateway container needs them in its environment).  Tags are shown to everyone who sees the
# fleet, in filters and exports: a secret is never a tag, and never printed.
SECRET_SETTINGS = {"store_token_file": "DORDT_INFLUX_TOKEN"}
# Settings that are also tags, for filtering gateways on the dashboard.
TAGGED_SETTINGS = {"store_bucket": "dordt.store_bucket"}
_IDS_PER_REQUEST = 100  # device ids in one $filter (balena-sdk batches 200 numeric ids)
_COMMIT = re.compile(r"^[0-9a-f]{32,40}$")
_UUID = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{62})$")


class BalenaError(Exception):
    """For the operator: what happened and what to do; `exit_code` as in the module doc."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


# -- the API key and URL ------------------------------------------------------------------


def load_token(token_file: str | None = None, env: dict | None = None) -> str:
    """From `token_file`, else $BALENA_API_KEY.  Never echoed, whatever goes wrong."""
    env = os.environ if env is None else env
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise BalenaError(f"{token_file}: no balena API key file there (make an API key "
                              "on the balena dashboard, Preferences > Access tokens)",
                              EXIT_CONFIG) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise BalenaError(f"{token_file}: cannot read the balena API key ({reason})",
                              EXIT_CONFIG) from None
        where = token_file
    else:
        token = env.get(ENV_TOKEN, "").strip()
        where = f"${ENV_TOKEN}"
        if not token:
            raise BalenaError(f"no balena API key: give --token-file FILE or set ${ENV_TOKEN}",
                              EXIT_CONFIG)
    if not token or any(ch.isspace() for ch in token):
        raise BalenaError(f"{where}: a balena API key is one word on one line", EXIT_CONFIG)
    return token


def api_url(url: str | None = None, env: dict | None = None) -> str:
    env = os.environ if env is None else env
    url = url or env.get(ENV_API_URL) or DEFAULT_API_URL
    if not re.match(r"^https?://[^/\s]+", url):
        raise BalenaError(f"balena API URL {url!r}: give one like {DEFAULT_API_URL}",
                          EXIT_CONFIG)
    return url if url.endswith("/") else url + "/"


# -- the client: balena-sdk, with its errors turned into BalenaError ---------------------


def _timestamp(text: str | None) -> str | None:
    """balena's "2026-12-04T12:00:00.000Z" as the registry's "2026-12-04T12:00:00Z"."""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first(expanded) -> dict | None:
    """An expanded navigation property is a list of at most one entity here."""
    if isinstance(expanded, list):
        return expanded[0] if expanded else None
    return None


_DEVICE_SELECT = ["id", "uuid", "device_name", "is_online", "last_connectivity_event"]
_DEVICE_EXPAND = {"belongs_to__application": {"$select": ["id", "slug"]},
                  "is_running__release": {"$select": ["commit"]},
                  "is_pinned_on__release": {"$select": ["commit"]}}


def _device_view(raw: dict) -> dict:
    app = _first(raw.get("belongs_to__application")) or {}
    running = _first(raw.get("is_running__release")) or {}
    pinned = _first(raw.get("is_pinned_on__release")) or {}
    return {"id": raw["id"], "uuid": raw["uuid"], "device_name": raw.get("device_name") or "",
            "fleet": app.get("slug", ""), "is_online": bool(raw.get("is_online")),
            "last_seen": _timestamp(raw.get("last_connectivity_event")),
            "running_release": running.get("commit"), "pinned_release": pinned.get("commit")}


class BalenaClient:
    """The few balena operations the fleet needs, through the real balena-sdk."""

    def __init__(self, url: str, token: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        from balena import __version__
        from balena.models import Models
        from balena.pine import PineClient
        from balena.settings import Settings

        self.url = url
        self.timeout_s = timeout_s
        self._token = token
        # In memory only: the SDK's file settings would store the key under ~/.balena.
        settings = Settings({"data_directory": False})
        settings.set("api_endpoint", url)
        settings.set("token", token)
        # The models for single operations; the pine client (the SDK's OData client, what
        # the models use) for the listings sync reads for many devices at once.
        self._pine = PineClient(settings, __version__)
        self._models = Models(self._pine, settings)

    def __repr__(self) -> str:  # never the key
        return f"BalenaClient({self.url!r})"

    def _call(self, what: str, fn, *args):
        import requests
        from balena import exceptions as bx

        try:
            return self._bounded(what, fn, args)
        except bx.RequestError as exc:
            body = str(getattr(exc, "body", "") or "").replace(self._token, "<key>")
            first = body.strip().splitlines()[0][:200] if body.strip() else ""
            if exc.status_code == 401:
                raise BalenaError(f"the balena API at {self.url} refused the API key (401) "
                                  f"while trying to {what}; check the key (--token-file or "
                                  f"${ENV_TOKEN}) and that it may manage this fleet",
                                  EXIT_CONFIG) from None
            raise BalenaError(f"the balena API at {self.url} answered {exc.status_code} to "
                              f"{what}" + (f": {first}" if first else ""),
                              EXIT_FAILED) from None
        except bx.DeviceNotFound:
            raise BalenaError(f"cannot {what}: balena has no such device; check the uuid on "
                              "the balena dashboard (the device's summary page)",
                              EXIT_FAILED) from None
        except bx.ReleaseNotFound:
            raise BalenaError(f"cannot {what}: no successful release with that commit in the "
                              "device's fleet (see the fleet's Releases page on balena)",
                              EXIT_FAILED) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            kind = ("timed out" if isinstance(exc, requests.Timeout) else
                    "TLS failed" if isinstance(exc, requests.exceptions.SSLError) else
                    "connection failed")
            raise BalenaError(f"cannot reach the balena API at {self.url} ({kind}) to {what}; "
                              f"check --api-url / ${ENV_API_URL} and the network",
                              EXIT_ENVIRONMENT) from None
        except (TypeError, KeyError, IndexError, AttributeError):
            # A 200 that is not the pine API's JSON: another web server at that URL.
            raise BalenaError(f"{self.url} did not answer like the balena API when asked to "
                              f"{what}; check --api-url / ${ENV_API_URL}",
                              EXIT_CONFIG) from None
        except bx.BalenaException as exc:
            message = str(getattr(exc, "message", "") or type(exc).__name__)
            raise BalenaError(f"balena-sdk refused to {what}: "
                              f"{message.replace(self._token, '<key>')}", EXIT_FAILED) from None
        except Exception as exc:
            if type(exc) is not Exception:  # a bug here, not the API: keep its traceback
                raise
            # pine-client raises a bare Exception for an answer it cannot read
            raise BalenaError(f"{self.url} did not answer like the balena API when asked to "
                              f"{what}; check --api-url / ${ENV_API_URL}",
                              EXIT_CONFIG) from None

    def _bounded(self, what: str, fn, args):
        """fn(*args) within timeout_s.  balena-sdk gives `requests` no timeout, so a server
        that takes the connection and never answers would hang the command for ever; the
        call runs in a daemon thread that is left behind (and dies with the process)."""
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["value"] = fn(*args)
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc

        worker = threading.Thread(target=run, name="balena-request", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            raise BalenaError(f"the balena API at {self.url} did not answer within "
                              f"{self.timeout_s:g} s when asked to {what}; check the network "
                              "and try again (--timeout-s sets the limit)", EXIT_ENVIRONMENT)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def device(self, uuid: str) -> dict:
        raw = self._call(f"read device {uuid}", self._models.device.get, uuid,
                         {"$select": _DEVICE_SELECT, "$expand": _DEVICE_EXPAND})
        return _device_view(raw)

    def devices(self, uuids: list[str]) -> dict[str, dict]:
        """uuid -> device view, for the uuids balena knows (one request)."""
        if not uuids:
            return {}
        raws = self._call("list devices", self._models.device.get_all,
                          {"$select": _DEVICE_SELECT, "$expand": _DEVICE_EXPAND,
                           "$filter": {"uuid": {"$in": sorted(uuids)}}})
        return {r["uuid"]: _device_view(r) for r in raws}

    def _by_device(self, what: str, resource: str, key: str, device_ids: list[int]
                   ) -> dict[int, dict[str, str]]:
        """device id -> {name: value}, in a few requests (ids in chunks, as the SDK does)."""
        out: dict[int, dict[str, str]] = {i: {} for i in device_ids}
        for start in range(0, len(device_ids), _IDS_PER_REQUEST):
            chunk = device_ids[start:start + _IDS_PER_REQUEST]
            rows = self._call(f"list {what}", self._pine.get, {
                "resource": resource,
                "options": {"$select": ["device", key, "value"],
                            "$filter": {"device": {"$in": chunk}}, "$orderby": f"{key} asc"}})
            for r in rows:
                out[r["device"]["__id"]][r[key]] = r["value"]
        return out

    def env_vars(self, device_ids: list[int]) -> dict[int, dict[str, str]]:
        return self._by_device("device variables", "device_environment_variable", "name",
                               device_ids)

    def set_env_var(self, device_id: int, name: str, value: str) -> None:
        self._call(f"set device variable {name}", self._models.device.env_var.set, device_id,
                   name, value)

    def remove_env_var(self, device_id: int, name: str) -> None:
        self._call(f"remove device variable {name}", self._models.device.env_var.remove,
                   device_id, name)

    def tags(self, device_ids: list[int]) -> dict[int, dict[str, str]]:
        return self._by_device("device tags", "device_tag", "tag_key", device_ids)

    def set_tag(self, device_id: int, key: str, value: str) -> None:
        self._call(f"set device tag {key}", self._models.device.tags.set, device_id, key, value)

    def remove_tag(self, device_id: int, key: str) -> None:
        self._call(f"remove device tag {key}", self._models.device.tags.remove, device_id, key)

    def pin(self, uuids: list[str], commit: str) -> None:
        self._call(f"pin {len(uuids)} device(s) to release {commit}",
                   self._models.device.pin_to_release, uuids if len(uuids) > 1 else uuids[0],
                   commit)

    def track(self, uuids: list[str]) -> None:
        self._call(f"let {len(uuids)} device(s) follow their fleet's release",
                   self._models.device.track_application_release,
                   uuids if len(uuids) > 1 else uuids[0])


# -- zone settings ------------------------------------------------------------------------


@dataclass
class ZoneSettings:
    """Per zone, the settings its gateways get; `defaults` for every zone."""

    path: Path | None = None
    defaults: dict[str, str] = field(default_factory=dict)
    zones: dict[str, dict[str, str]] = field(default_factory=dict)

    def for_zone(self, zone: str) -> dict[str, str]:
        return {**self.defaults, **self.zones.get(zone, {})}


_SETTING_KEYS = (*SETTING_VARS, *SECRET_SETTINGS)


def _suggest(word: str, choices) -> str:
    import difflib

    near = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean {near[0]!r}?" if near else ""


def _check_table(path: Path, where: str, table) -> dict[str, str]:
    if not isinstance(table, dict):
        raise BalenaError(f"{path}: [{where}] must be a table of settings", EXIT_CONFIG)
    for key, value in table.items():
        if key not in _SETTING_KEYS:
            raise BalenaError(f"{path}: [{where}] {key!r} is not a gateway setting (known: "
                              f"{', '.join(_SETTING_KEYS)}).{_suggest(key, _SETTING_KEYS)}",
                              EXIT_CONFIG)
        if not isinstance(value, str) or not value:
            raise BalenaError(f"{path}: [{where}] {key} must be a non-empty string",
                              EXIT_CONFIG)
        if key.endswith("_url") and re.match(r"^\w+://[^/@]*@", value):
            raise BalenaError(f"{path}: [{where}] {key} holds credentials; put the secret in "
                              "a file named by store_token_file instead", EXIT_CONFIG)
    return dict(table)


def load_zone_settings(path: str | Path | None, known_zones: list[str]) -> ZoneSettings:
    """The settings file (None: no settings, only zone and gateway names are sent)."""
    if path is None:
        return ZoneSettings()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BalenaError(f"{path}: no zone settings file there", EXIT_CONFIG) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BalenaError(f"{path}: not a readable TOML file ({exc})", EXIT_CONFIG) from None
    unknown = sorted(set(data) - {"defaults", "zones"})
    if unknown:
        raise BalenaError(f"{path}: unknown table(s) {unknown}; use [defaults] and "
                          "[zones.<zone>]", EXIT_CONFIG)
    settings = ZoneSettings(path, _check_table(path, "defaults", data.get("defaults", {})))
    zones = data.get("zones", {})
    if not isinstance(zones, dict):
        raise BalenaError(f"{path}: zones must be tables [zones.<zone>]", EXIT_CONFIG)
    for zone, table in zones.items():
        if zone not in known_zones:
            raise BalenaError(f"{path}: [zones.{zone}] is not a zone of the registry (known: "
                              f"{', '.join(known_zones) or 'none'}).{_suggest(zone, known_zones)}",
                              EXIT_CONFIG)
        settings.zones[zone] = _check_table(path, f"zones.{zone}", table)
    return settings


def _read_secret(path: Path | None, name: str, where: str) -> str:
    file = Path(name)
    if not file.is_absolute() and path is not None:
        file = path.parent / file
    try:
        value = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BalenaError(f"{where}: cannot read the secret file {file} "
                          f"({exc.strerror})", EXIT_CONFIG) from None
    if not value:
        raise BalenaError(f"{where}: the secret file {file} is empty", EXIT_CONFIG)
    return value


@dataclass(frozen=True)
class DesiredConfig:
    env: dict[str, str]
    tags: dict[str, str]
    secret_vars: frozenset[str]

    def __repr__(self) -> str:  # never a secret value
        return (f"DesiredConfig(env={sorted(self.env)}, tags={self.tags}, "
                f"secret_vars={sorted(self.secret_vars)})")


def desired_config(gateway: dict, settings: ZoneSettings) -> DesiredConfig:
    """The variables and tags one gateway's device should carry."""
    zone, name = gateway["zone"], gateway["name"]
    chosen = settings.for_zone(zone)
    env = {"DORDT_ZONE": zone, "DORDT_GATEWAY": name}
    tags = {"dordt.zone": zone, "dordt.gateway": name}
    for key, var in SETTING_VARS.items():
        if key in chosen:
            env[var] = chosen[key]
    for key, tag in TAGGED_SETTINGS.items():
        if key in chosen:
            tags[tag] = chosen[key]
    secrets = set()
    where = f"{settings.path}: zone {zone}" if settings.path else f"zone {zone}"
    for key, var in SECRET_SETTINGS.items():
        if key in chosen:
            env[var] = _read_secret(settings.path, chosen[key], where)
            secrets.add(var)
    # A secret never reaches a tag, even by coincidence of values.
    for var in secrets:
        for tag, value in tags.items():
            if env[var] in value:
                raise BalenaError(f"{where}: the tag {tag} would carry the secret of {var}; "
                                  "change that setting", EXIT_CONFIG)
    return DesiredConfig(env, tags, frozenset(secrets))


# -- registry side ------------------------------------------------------------------------


def _links(reg: Registry) -> dict[str, dict]:
    return {r["gateway"]: dict(r) for r in reg.db.execute(
        "SELECT * FROM balena_devices ORDER BY gateway")}


def _linked(reg: Registry, names: list[str] | None) -> list[tuple[dict, dict]]:
    """(registry gateway, link) for `names` (None: every linked active gateway)."""
    from fleet.registry import RegistryError

    links = _links(reg)
    if names:
        out = []
        for name in names:
            try:
                gw = reg.gateway(name)
            except RegistryError as exc:
                raise BalenaError(str(exc), EXIT_CONFIG) from None
            if name not in links:
                raise BalenaError(f"gateway {name} is not linked to a balena device; link it "
                                  "with `dordt fleet balena link NAME UUID`", EXIT_CONFIG)
            out.append((gw, links[name]))
        return out
    return [(gw, links[gw["name"]]) for gw in reg.gateways()
            if gw["name"] in links and gw["state"] == "active"]


def _remember(reg: Registry, gateway: str, device: dict) -> None:
    """Keep what balena said, and move the registry gateway's last_seen (and software: the
    release it runs) forward."""
    with reg.db:
        reg.db.execute(
            "UPDATE balena_devices SET device_name = ?, fleet = ?, is_online = ?, "
            "last_connectivity_event = ?, running_release = ?, pinned_release = ?, "
            "read_at = ? WHERE gateway = ?",
            (device["device_name"], device["fleet"], int(device["is_online"]),
             device["last_seen"], device["running_release"], device["pinned_release"],
             utc_now(), gateway))
    if device["last_seen"]:
        # balena's release commit is the gateway's software version
        reg.note_gateway_seen(gateway, device["last_seen"], software=device["running_release"])


# -- operations ---------------------------------------------------------------------------


def link(reg: Registry, client: BalenaClient, gateway: str, uuid: str) -> dict:
    """Link a registry gateway to the balena device `uuid` (it must exist on balena).
    Re-linking a gateway to another device replaces its link."""
    from fleet.registry import RegistryError

    uuid = uuid.strip().lower()
    if not _UUID.match(uuid):
        raise BalenaError(f"device uuid {uuid!r}: give the full uuid (32 or 62 hex digits) "
                          "from the device's balena dashboard page", EXIT_CONFIG)
    try:
        reg.gateway(gateway)
    except RegistryError as exc:
        raise BalenaError(str(exc), EXIT_CONFIG) from None
    other = reg.db.execute("SELECT gateway FROM balena_devices WHERE uuid = ? AND gateway != ?",
                           (uuid, gateway)).fetchone()
    if other is not None:
        raise BalenaError(f"balena device {uuid} is linked to gateway {other[0]} already; a "
                          "device runs one gateway", EXIT_CONFIG)
    device = client.device(uuid)
    with reg.db:
        reg.db.execute("INSERT INTO balena_devices(gateway, uuid, fleet, device_name, linked_at)"
                       " VALUES (?, ?, ?, ?, ?) ON CONFLICT(gateway) DO UPDATE SET "
                       "uuid = excluded.uuid, fleet = excluded.fleet, "
                       "device_name = excluded.device_name, linked_at = excluded.linked_at",
                       (gateway, uuid, device["fleet"], device["device_name"], utc_now()))
    _remember(reg, gateway, device)
    return {"gateway": gateway, **{k: device[k] for k in ("uuid", "device_name", "fleet",
                                                          "is_online", "last_seen")}}


def _reconcile(gateway: str, what: str, want: dict[str, str], have: dict[str, str],
               prefix: str, set_one, remove_one, secrets: frozenset[str]) -> list[dict]:
    """Set what differs, remove what is ours (`prefix`) and no longer wanted; one row each."""
    rows = []
    for name, value in sorted(want.items()):
        action = "unchanged" if have.get(name) == value else (
            "updated" if name in have else "added")
        if action != "unchanged":
            set_one(name, value)
        rows.append({"gateway": gateway, "what": what, "name": name, "action": action,
                     "secret": name in secrets})
    for name in sorted(set(have) - set(want)):
        if name.startswith(prefix):
            remove_one(name)
            rows.append({"gateway": gateway, "what": what, "name": name, "action": "removed",
                         "secret": False})
    return rows


def sync(reg: Registry, client: BalenaClient, settings: ZoneSettings,
         names: list[str] | None = None) -> list[dict]:
    """Make each linked gateway's device variables and tags what its zone says; what changed,
    one row per variable or tag (names only: never a value of a secret)."""
    # Everything is read and checked before the first write: a bad setting or a device gone
    # from balena leaves every device as it was.
    pairs = _linked(reg, names)
    wants = {gw["name"]: desired_config(gw, settings) for gw, _ in pairs}
    devices = client.devices([ln["uuid"] for _, ln in pairs])
    for gw, ln in pairs:
        if ln["uuid"] not in devices:
            raise BalenaError(f"gateway {gw['name']}: balena has no device {ln['uuid']} any "
                              "more; link it again or retire the gateway", EXIT_FAILED)
    ids = [devices[ln["uuid"]]["id"] for _, ln in pairs]
    all_env, all_tags = client.env_vars(ids), client.tags(ids)
    changes = []
    for gw, ln in pairs:
        want = wants[gw["name"]]
        device = devices[ln["uuid"]]
        have_env, have_tags = all_env[device["id"]], all_tags[device["id"]]
        changes += _reconcile(gw["name"], "variable", want.env, have_env, VAR_PREFIX,
                              partial(client.set_env_var, device["id"]),
                              partial(client.remove_env_var, device["id"]), want.secret_vars)
        changes += _reconcile(gw["name"], "tag", want.tags, have_tags, TAG_PREFIX,
                              partial(client.set_tag, device["id"]),
                              partial(client.remove_tag, device["id"]), frozenset())
        _remember(reg, gw["name"], device)
    return changes


def status(reg: Registry, client: BalenaClient) -> list[dict]:
    """Every registry gateway: linked or not, online, last seen, release running and pinned,
    and its place in the current rollout.  Reads balena once for all linked devices."""
    links = _links(reg)
    devices = client.devices([ln["uuid"] for ln in links.values()])
    rollout = current_rollout(reg)
    in_rollout = {r["gateway"]: r for r in rollout["gateways"]} if rollout else {}
    rows = []
    for gw in reg.gateways():
        ln = links.get(gw["name"])
        device = devices.get(ln["uuid"]) if ln else None
        if device is not None:
            _remember(reg, gw["name"], device)
        row = {"gateway": gw["name"], "zone": gw["zone"], "state": gw["state"],
               "uuid": ln["uuid"] if ln else None,
               "fleet": device["fleet"] if device else (ln["fleet"] if ln else None),
               "balena": "linked" if device else ("missing" if ln else "not linked"),
               "is_online": device["is_online"] if device else None,
               "last_seen": reg.gateway(gw["name"])["last_seen"],
               "running_release": device["running_release"] if device else None,
               "pinned_release": device["pinned_release"] if device else None,
               "rollout_stage": in_rollout[gw["name"]]["stage"] if gw["name"] in in_rollout
               else None}
        rows.append(row)
    return rows


def _check_commit(commit: str) -> str:
    commit = commit.strip().lower()
    if not _COMMIT.match(commit):
        raise BalenaError(f"release {commit!r}: give the release's full commit (32 to 40 hex "
                          "digits, on the fleet's Releases page on balena)", EXIT_CONFIG)
    return commit


def pin(reg: Registry, client: BalenaClient, names: list[str], commit: str | None) -> list[dict]:
    """Pin the named gateways to release `commit`, or (None) let them follow their fleet."""
    if not names:
        raise BalenaError("name the gateways to pin", EXIT_CONFIG)
    pairs = _linked(reg, names)
    uuids = [ln["uuid"] for _, ln in pairs]
    if commit is None:
        client.track(uuids)
    else:
        client.pin(uuids, _check_commit(commit))
    devices = client.devices(uuids)
    out = []
    for gw, ln in pairs:
        if ln["uuid"] in devices:
            _remember(reg, gw["name"], devices[ln["uuid"]])
        out.append({"gateway": gw["name"], "uuid": ln["uuid"], "pinned_release": commit})
    return out


# -- staged rollout of the gateway software -----------------------------------------------

STAGES = ("canary", "zone", "all")


def current_rollout(reg: Registry) -> dict | None:
    """The rollout that is not halted, with its gateways; None when there is none."""
    row = reg.db.execute("SELECT * FROM balena_rollouts WHERE stage != 'halted' "
                         "ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        return None
    gws = [dict(r) for r in reg.db.execute(
        "SELECT gateway, stage, previous_release, pinned_at FROM balena_rollout_gateways "
        "WHERE rollout = ? ORDER BY pinned_at, gateway", (row["id"],))]
    return {**dict(row), "gateways": gws}


def _pin_stage(reg: Registry, client: BalenaClient, rollout_id: int, commit: str, stage: str,
               pairs: list[tuple[dict, dict]]) -> list[str]:
    """Pin the gateways not yet in the rollout, remembering what each had before."""
    done = {r[0] for r in reg.db.execute(
        "SELECT gateway FROM balena_rollout_gateways WHERE rollout = ?", (rollout_id,))}
    todo = [(gw, ln) for gw, ln in pairs if gw["name"] not in done]
    if not todo:
        return []
    before = client.devices([ln["uuid"] for _, ln in todo])
    for gw, ln in todo:
        if ln["uuid"] not in before:
            raise BalenaError(f"gateway {gw['name']}: balena has no device {ln['uuid']} any "
                              "more; link it again or retire the gateway", EXIT_FAILED)
    # Recorded before pinning: a halt after a failure half-way still knows what to restore.
    now = utc_now()
    with reg.db:
        for gw, ln in todo:
            reg.db.execute("INSERT INTO balena_rollout_gateways(rollout, gateway, stage, "
                           "previous_release, pinned_at) VALUES (?, ?, ?, ?, ?)",
                           (rollout_id, gw["name"], stage, before[ln["uuid"]]["pinned_release"],
                            now))
        reg.db.execute("UPDATE balena_rollouts SET stage = ?, updated_at = ? WHERE id = ?",
                       (stage, now, rollout_id))
    client.pin([ln["uuid"] for _, ln in todo], commit)
    return [gw["name"] for gw, _ in todo]


def rollout_start(reg: Registry, client: BalenaClient, commit: str,
                  canaries: list[str]) -> dict:
    """Start rolling `commit` out: pin the canary gateways to it."""
    commit = _check_commit(commit)
    running = current_rollout(reg)
    if running is not None:
        raise BalenaError(f"rollout {running['id']} of {running['release']} is at stage "
                          f"{running['stage']}; finish it (`rollout next`) or halt it first",
                          EXIT_FAILED)
    if not canaries:
        raise BalenaError("name at least one canary gateway (--canary NAME)", EXIT_CONFIG)
    pairs = _linked(reg, canaries)
    now = utc_now()
    with reg.db:
        cur = reg.db.execute("INSERT INTO balena_rollouts(release, stage, started_at, "
                             "updated_at) VALUES (?, 'canary', ?, ?)", (commit, now, now))
    rollout_id = int(cur.lastrowid or 0)
    try:
        pinned = _pin_stage(reg, client, rollout_id, commit, "canary", pairs)
    except BalenaError:
        if not reg.db.execute("SELECT 1 FROM balena_rollout_gateways WHERE rollout = ?",
                              (rollout_id,)).fetchone():
            with reg.db:  # nothing was pinned: no rollout to halt
                reg.db.execute("DELETE FROM balena_rollouts WHERE id = ?", (rollout_id,))
        raise
    return {"rollout": rollout_id, "release": commit, "stage": "canary", "pinned": pinned}


def _not_ready(reg: Registry, client: BalenaClient, rollout: dict) -> list[str]:
    """Gateways of the rollout that are not online and running its release."""
    links = _links(reg)
    names = [r["gateway"] for r in rollout["gateways"]]
    devices = client.devices([links[n]["uuid"] for n in names if n in links])
    problems = []
    for name in names:
        device = devices.get(links[name]["uuid"]) if name in links else None
        if device is None:
            problems.append(f"{name} (no balena device)")
            continue
        _remember(reg, name, device)
        if not device["is_online"]:
            problems.append(f"{name} (offline)")
        elif device["running_release"] != rollout["release"]:
            running = device["running_release"]
            problems.append(f"{name} (runs {running[:12] if running else 'nothing yet'})")
    return problems


def rollout_next(reg: Registry, client: BalenaClient, zone: str | None = None,
                 halt_after_s: float | None = None, now: dt.datetime | None = None) -> dict:
    """The next stage: from canaries to one zone (`zone`), from a zone to every gateway.
    Refused while a gateway already pinned is offline or not yet running the release; with
    `halt_after_s`, a stage still not ready that long after its last pin halts the rollout
    (everyone pinned back) instead."""
    rollout = current_rollout(reg)
    if rollout is None:
        raise BalenaError("no rollout is running; start one with `dordt fleet balena rollout "
                          "start --release COMMIT --canary NAME`", EXIT_FAILED)
    if rollout["stage"] == "all":
        raise BalenaError(f"rollout {rollout['id']} has reached every gateway already",
                          EXIT_FAILED)
    problems = _not_ready(reg, client, rollout)
    if problems and halt_after_s is not None:
        last_pin = max(dt.datetime.strptime(r["pinned_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC) for r in rollout["gateways"])
        waited_s = ((now or dt.datetime.now(dt.UTC)) - last_pin).total_seconds()
        if waited_s >= halt_after_s:
            halted = rollout_halt(reg, client)
            raise BalenaError(f"rollout {rollout['id']} halted: {', '.join(problems)} not on "
                              f"{rollout['release'][:12]} {waited_s:.0f} s after the stage "
                              f"{rollout['stage']} began; {len(halted['restored'])} "
                              "gateway(s) pinned back", EXIT_FAILED)
    if problems:
        raise BalenaError(f"rollout {rollout['id']} stays at stage {rollout['stage']}: not "
                          f"yet on {rollout['release'][:12]}: {', '.join(problems)}; wait and "
                          "try again, or `rollout halt`", EXIT_FAILED)
    if rollout["stage"] == "canary":
        if zone is None:
            raise BalenaError("the next stage is one zone: give --zone ZONE", EXIT_CONFIG)
        known = [z["zone"] for z in reg.zones()]
        if zone not in known:
            raise BalenaError(f"zone {zone!r} is not in the registry (known: "
                              f"{', '.join(known)})", EXIT_CONFIG)
        stage = "zone"
        pairs = [(gw, ln) for gw, ln in _linked(reg, None) if gw["zone"] == zone]
        with reg.db:
            reg.db.execute("UPDATE balena_rollouts SET zone = ? WHERE id = ?",
                           (zone, rollout["id"]))
    else:
        if zone is not None and zone != rollout["zone"]:
            raise BalenaError(f"the next stage is every gateway; --zone {zone} does not apply",
                              EXIT_CONFIG)
        stage = "all"
        pairs = _linked(reg, None)
    pinned = _pin_stage(reg, client, rollout["id"], rollout["release"], stage, pairs)
    with reg.db:  # a stage with nobody new (a zone of canaries only) still moves on
        reg.db.execute("UPDATE balena_rollouts SET stage = ?, updated_at = ? WHERE id = ?",
                       (stage, utc_now(), rollout["id"]))
    return {"rollout": rollout["id"], "release": rollout["release"], "stage": stage,
            "pinned": pinned}


def rollout_halt(reg: Registry, client: BalenaClient) -> dict:
    """Pin every gateway the rollout moved back to what it had before (or let it follow its
    fleet again, if it did before), and mark the rollout halted."""
    rollout = current_rollout(reg)
    if rollout is None:
        raise BalenaError("no rollout is running: nothing to halt", EXIT_FAILED)
    links = _links(reg)
    restored = []
    by_release: dict[str | None, list[str]] = {}
    for r in rollout["gateways"]:
        if r["gateway"] in links:
            by_release.setdefault(r["previous_release"], []).append(r["gateway"])
    for previous, names in sorted(by_release.items(), key=lambda kv: kv[0] or ""):
        uuids = [links[n]["uuid"] for n in names]
        if previous is None:
            client.track(uuids)
        else:
            client.pin(uuids, previous)
        restored += [{"gateway": n, "release": previous} for n in names]
    with reg.db:
        reg.db.execute("UPDATE balena_rollouts SET stage = 'halted', updated_at = ? "
                       "WHERE id = ?", (utc_now(), rollout["id"]))
    return {"rollout": rollout["id"], "release": rollout["release"], "stage": "halted",
            "restored": sorted(restored, key=lambda r: r["gateway"])}
