"""The gateway's configuration: one TOML file, validated before anything runs.

gateway/gateway.sample.toml documents every key; SCHEMA below is what the loader accepts.
Errors name the file, the key and the fix ("Did you mean ...?"), and map to exit code 2.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A configuration that cannot run; the message says where and what to do."""


# section -> key -> (types, required, default)
_STR, _NUM, _INT = (str,), (int, float), (int,)
SCHEMA: dict[str, dict[str, tuple]] = {
    "gateway": {
        "id": (_STR, True, None),
        "data_dir": (_STR, True, None),
        "keyring": (_STR, True, None),
        "keyring_signer": (_STR, False, ""),
        "keyring_key": (_STR, False, ""),
        "keyring_poll_s": (_NUM, False, 10.0),
        "policy": (_STR, False, ""),
    },
    "mqtt": {
        "url": (_STR, True, None),
        "client_id": (_STR, False, "dordt-gateway"),
        "ca_file": (_STR, False, ""),
        "cert_file": (_STR, False, ""),
        "key_file": (_STR, False, ""),
    },
    "store": {
        "url": (_STR, True, None),
        "org": (_STR, False, "dordt"),
        "bucket": (_STR, False, "dordt"),
        "token_env": (_STR, False, "DORDT_INFLUX_TOKEN"),
        "timeout_s": (_NUM, False, 10.0),
        "batch_max": (_INT, False, 5000),
    },
    "buffer": {"max_mb": (_NUM, False, 512), "max_age_days": (_NUM, False, 30)},
    "health": {"listen": (_STR, False, "127.0.0.1:9108"), "heartbeat_s": (_NUM, False, 60.0)},
    "log": {"format": (_STR, False, "json"), "level": (_STR, False, "info")},
    "serial": {"ports": ((list,), False, []), "baudrate": (_INT, False, 115200)},
    "ble": {"enabled": ((bool,), False, False), "adapter": (_STR, False, ""),
            "scanning_mode": (_STR, False, "active")},
    "ota": {"releases": (_STR, False, ""), "offers": (_STR, False, ""),
            "chunk_bytes": (_INT, False, 1024), "offer_every_s": (_NUM, False, 60.0)},
}
_CHOICES = {
    ("log", "format"): ("json", "text"),
    ("log", "level"): ("debug", "info", "warning", "error"),
}


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    values: dict[str, dict]

    def __getitem__(self, section: str) -> dict:
        return self.values[section]

    def path_of(self, section: str, key: str) -> Path | None:
        """A path option, relative to the config file's folder; None when empty."""
        text = self.values[section][key]
        if not text:
            return None
        p = Path(text)
        return p if p.is_absolute() else self.path.parent / p

    @property
    def health_listen(self) -> tuple[str, int]:
        host, _, port = self.values["health"]["listen"].rpartition(":")
        return host, int(port)

    def store_token(self) -> str:
        return os.environ.get(self.values["store"]["token_env"], "")


def _suggest(word: str, choices) -> str:
    near = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean {near[0]!r}?" if near else ""


def load_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; start from gateway/gateway.sample.toml"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, dict] = {}
    for section in doc:
        if section not in SCHEMA:
            raise ConfigError(
                f"{path}: [{section}] is not a valid section.{_suggest(section, SCHEMA)}"
            )
        if not isinstance(doc[section], dict):
            raise ConfigError(f"{path}: {section} must be a [table]")
    for section, keys in SCHEMA.items():
        given = doc.get(section, {})
        for key in given:
            if key not in keys:
                raise ConfigError(
                    f"{path}: [{section}] {key!r} is not a valid option.{_suggest(key, keys)}"
                )
        out = {}
        for key, (types, required, default) in keys.items():
            if key not in given:
                if required:
                    raise ConfigError(
                        f"{path}: [{section}] {key} is required (see gateway/gateway.sample.toml)"
                    )
                out[key] = default
                continue
            value = given[key]
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                want = " or ".join(t.__name__ for t in types)
                raise ConfigError(f"{path}: [{section}] {key} must be a {want}, got {value!r}")
            choices = _CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(
                    f"{path}: [{section}] {key} = {value!r}: use one of "
                    f"{', '.join(choices)}.{_suggest(value, choices)}"
                )
            out[key] = value
        values[section] = out
    _check_semantics(path, values)
    return GatewayConfig(path, values)


def _check_semantics(path: Path, v: dict[str, dict]) -> None:
    url = v["mqtt"]["url"]
    if not url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError(f"{path}: [mqtt] url {url!r}: use mqtt://HOST:PORT or mqtts://HOST:PORT")
    if url.startswith("mqtts://") and not all(
        v["mqtt"][k] for k in ("ca_file", "cert_file", "key_file")
    ):
        raise ConfigError(f"{path}: [mqtt] url is mqtts://: set ca_file, cert_file and key_file")
    poll = v["gateway"]["keyring_poll_s"]
    if not 0 < poll <= 3600:
        raise ConfigError(f"{path}: [gateway] keyring_poll_s = {poll!r}: give seconds between "
                          "looks at the keyring file, more than 0 (at most 30 applies a "
                          "revocation within a minute)")
    if v["gateway"]["keyring_key"] and not v["gateway"]["keyring_signer"]:
        raise ConfigError(f"{path}: [gateway] keyring_key is set but keyring_signer is not: "
                          "a sealed keyring is taken only with the fleet's signing key; set "
                          "keyring_signer to its keyring-signer.pub")
    store = v["store"]["url"]
    if not store.startswith(("http://", "https://", "sqlite:")):
        raise ConfigError(f"{path}: [store] url {store!r}: use http(s)://HOST:PORT or sqlite:PATH")
    for key, lo in (("max_mb", 1), ("max_age_days", 0.01)):
        if v["buffer"][key] < lo:
            raise ConfigError(f"{path}: [buffer] {key} must be at least {lo}")
    if v["store"]["batch_max"] < 1 or v["store"]["timeout_s"] <= 0:
        raise ConfigError(f"{path}: [store] batch_max must be >= 1 and timeout_s > 0")
    for i, port in enumerate(v["serial"]["ports"]):
        if not isinstance(port, str) or not port:
            raise ConfigError(
                f"{path}: [serial] ports[{i}]: a device path such as /dev/ttyUSB0, or "
                "usb:VID:PID[:SERIAL] such as usb:10c4:ea60"
            )
    ota = v["ota"]
    if bool(ota["releases"]) != bool(ota["offers"]):
        raise ConfigError(f"{path}: [ota] set both releases (a directory) and offers (a file), "
                          "or neither (no updates over the air)")
    if not 64 <= ota["chunk_bytes"] <= 2048:  # gateway/ota.py CHUNK_MIN/MAX_BYTES
        raise ConfigError(f"{path}: [ota] chunk_bytes {ota['chunk_bytes']}: use 64 to 2048 "
                          "(the broker's packet limit)")
    if ota["offer_every_s"] < 1:
        raise ConfigError(f"{path}: [ota] offer_every_s must be at least 1")
    listen = v["health"]["listen"]
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError(
            f"{path}: [health] listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:9108"
        )
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            f"{path}: [health] listen {listen!r}: health endpoints stay on loopback (127.0.0.1)"
        )
