"""The one shape every audit check returns: a `Finding` is a sentence for people (what was
found, where, and why it matters) with the evidence that locates it; a `CheckResult`
holds a check's findings and the figures that support a pass.

Findings never quote an identifier they found in full: `mask()` keeps only its first and
last characters, so a report about a leaked address does not leak it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class AuditInputError(ValueError):
    """Input the audit cannot use (a missing file, a file of the wrong kind): exit 2."""


@dataclass(frozen=True, slots=True)
class Finding:
    check: str  # "traffic", "store", ...
    message: str  # a sentence: what, where, why
    where: str = ""  # the evidence's place: "frame 12", "gateway.log line 3", ...
    node: str = ""

    def to_json(self) -> dict:
        return {"check": self.check, "message": self.message, "where": self.where,
                "node": self.node}


@dataclass
class CheckResult:
    check: str
    findings: list[Finding] = field(default_factory=list)
    figures: dict = field(default_factory=dict)  # counts and numbers behind a pass
    max_findings: int = 200  # the rest are counted, not listed

    @property
    def ok(self) -> bool:
        return not self.findings and not self.figures.get("findings_not_listed")

    def add(self, message: str, where: str = "", node: str = "") -> None:
        if len(self.findings) < self.max_findings:
            self.findings.append(Finding(self.check, message, where, node))
        else:
            self.figures["findings_not_listed"] = self.figures.get("findings_not_listed", 0) + 1

    def to_json(self) -> dict:
        return {"check": self.check, "ok": self.ok,
                "findings": [f.to_json() for f in self.findings], "figures": self.figures}

    def lines(self) -> list[str]:
        """What the CLI prints: one line per finding, then a summary line."""
        out = [f"{f.where}: {f.message}" if f.where else f.message for f in self.findings]
        hidden = self.figures.get("findings_not_listed", 0)
        if hidden:
            out.append(f"... and {hidden} more findings of the same check")
        out.append(f"{self.check}: {'all holds' if self.ok else 'FINDINGS'}"
                   + (f" ({_summary(self.figures)})" if self.figures else ""))
        return out


def _summary(figures: dict) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, (int, float, str)) and key != "findings_not_listed":
            parts.append(f"{key} {value}")
    return ", ".join(parts[:8])


def mask(text: str) -> str:
    """An identifier as a report may show it: first and last two characters."""
    if len(text) <= 6:
        return "*" * len(text)
    return text[:2] + "*" * (len(text) - 4) + text[-2:]
