"""The offers file (docs/ota.md §4): which nodes a gateway offers which release to.

This module *is* the file format shared by `fleet/` (a rollout writes one file per
gateway, fleet/rollout.py) and the gateway (its OTA server reads its `[ota] offers` file
whenever it changes); neither reaches into the other's code.

    {"format": "dordt-ota-offers", "version": 1, "issued": <unix s>,
     "offers": [{"node": "0001001a", "serial": 7}]}

Written atomically (fleet/files.py: a gateway never reads half a file), mode 0644 (no
secret in it).  `read_offers` raises `OffersError` naming the file and the entry for
anything else, so a reader can keep the offers it had.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fleet.files import write_file_atomic

FORMAT = "dordt-ota-offers"
VERSION = 1
FILE_NAME = "offers.json"
_NODE = re.compile(r"[0-9a-f]{8}")


# The `ota` point's `state` field (docs/ota.md §3): a store keeps numbers only, so a node's
# `state` message is stored as this number; 0 is no state (VictoriaMetrics turns text into
# 0).  The gateway writes it (gateway/ota.py), a rollout and `fleet health` read it.
OTA_STATES = {"offered": 1, "downloading": 2, "staged": 3, "switched": 4, "confirmed": 5,
              "refused": 6, "failed": 7, "rolled_back": 8}
OTA_STATE_NAMES = {number: name for name, number in OTA_STATES.items()}
_VERSION = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{1,2})")


def version_code(version: str) -> int:
    """"M.m.p" -> MMmmpp: the `ota` point's `version`, as the `firmware_version` a node
    reports (docs/protocol.md §8).  ValueError for anything else."""
    m = _VERSION.fullmatch(str(version))
    if m is None:
        raise ValueError(f"version {version!r} is not M.m.p with each part 0..99")
    major, minor, patch = (int(x) for x in m.groups())
    return major * 10000 + minor * 100 + patch


class OffersError(ValueError):
    """An offers file that cannot be used; the message names the file and the entry."""


def offers_bytes(offers: list[tuple[str, int]], issued_s: int) -> bytes:
    """The file's bytes for (node, serial) pairs, in their order."""
    doc = {"format": FORMAT, "version": VERSION, "issued": int(issued_s),
           "offers": [{"node": node, "serial": serial} for node, serial in offers]}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def write_offers(path: Path, offers: list[tuple[str, int]], issued_s: int) -> None:
    write_file_atomic(path, offers_bytes(offers, issued_s), 0o644)


def read_offers(path: Path) -> list[tuple[str, int]]:
    """(node, serial) pairs of an offers file.  Raises OffersError (also for a missing or
    unreadable file, with the reason)."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise OffersError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise OffersError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise OffersError(f"{path}: not an offers file ({FORMAT!r} version {VERSION})")
    entries = doc.get("offers")
    if not isinstance(entries, list):
        raise OffersError(f"{path}: 'offers' is not a list")
    out = []
    for n, entry in enumerate(entries):
        node = entry.get("node") if isinstance(entry, dict) else None
        serial = entry.get("serial") if isinstance(entry, dict) else None
        if not isinstance(node, str) or not _NODE.fullmatch(node) or type(serial) is not int \
                or serial < 1:
            raise OffersError(f"{path}: offer {n} is not {{\"node\": 8 hex digits, "
                              f"\"serial\": integer >= 1}}: {str(entry)[:80]}")
        out.append((node, serial))
    return out
