"""Take a rotated node key to a board over USB: the rekey file that `dordt fleet registry
rotate-key` wrote (fleet/rekey.py) is sent as it is, and the board opens it with its
current key and switches to the new key id itself (firmware/rekey.py apply: one atomic
config switch).  The laptop never holds the new key in the clear, and neither does the
serial line.

In:  an open `BoardLink` to a board with our firmware and an enrolment, the rekey file.
Out: `Rekeyed` (node, old and new key id, the new key's fingerprint).
On failure: `UserError`: exit 2 for a file that is not a rekey file, or one the board
     refuses (another node, another key, an old file, changed): nothing changed on the
     board; exit 1 when the board raised otherwise; 3 for the link (provisioning/link.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dordt.errors import UserError
from provisioning.link import BoardCodeError, BoardLink

EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Rekeyed:
    node: str
    from_key_id: int
    key_id: int
    fingerprint: str


def load(path: Path) -> dict:
    from fleet.rekey import FORMAT

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no rekey file there (`dordt fleet registry rotate-key` "
                        "writes one)", EXIT_BAD_INPUT) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not a readable rekey file ({exc})", EXIT_BAD_INPUT) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{path}: not a rekey file (\"format\" must be \"{FORMAT}\")",
                        EXIT_BAD_INPUT)
    return doc


def rekey(link: BoardLink, doc: dict) -> Rekeyed:
    code = ("import json\nfrom firmware import hal, rekey\n"
            f"_d = json.loads({json.dumps(doc)!r})\n"
            "try:\n"
            "    _r = {'key_id': rekey.apply(hal.Flash('/'), _d)}\n"
            "except rekey.RekeyError as _e:\n"
            "    _r = {'refused': str(_e)}\n"
            "print(json.dumps(_r))\n"
            "del _d, _r\n")
    try:
        result = link.exec_json(code, "switching the node's key")
    except BoardCodeError as exc:
        raise UserError(f"{exc}\nnothing was recorded; check the board's config with "
                        "`dordt provision selftest`", 1) from None
    if "refused" in result:
        raise UserError(f"the board refused the rekey file: {result['refused']}; nothing "
                        "changed on the board", EXIT_BAD_INPUT)
    return Rekeyed(doc["node"], doc["from_key_id"], result["key_id"], doc["fingerprint"])
