"""Privacy audits for the privacy officer and the public (docs/privacy.md §7).

One module per check, each a library function that returns findings (sentences with
their evidence) and that the CLI (`audit/cli.py`, `dordt audit ...`) only presents:

    manifest.py     what each node kind can emit, generated from the firmware source
    traffic.py      a recording of frames against the manifest and the policy
    store.py        a gateway's files, logs and store: identifiers, k, epsilon, policy
    linkability.py  the real crowd firmware against a linking attacker
    registers.py    Algoritmeregister and sensor-register entries
    report.py       one self-contained HTML page (and JSON) over all of the above
"""
