"""Key-coverage reports of checkpoint conversions: which keys were used, per ControlLDM prefix."""

from __future__ import annotations

from dataclasses import dataclass, field

from .original import PREFIXES, SCHEDULE_KEYS


@dataclass
class KeyReport:
    """Which checkpoint keys a conversion used, per ControlLDM prefix."""

    total: dict[str, int] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{'prefix':40s} {'keys':>6s} {'used':>6s}"]
        for prefix, n in self.total.items():
            lines.append(f"{prefix:40s} {n:6d} {self.used.get(prefix, 0):6d}")
        lines.append(f"unused keys: {len(self.unused)}; missing keys: {len(self.missing)}")
        lines += [f"  unused: {k}" for k in self.unused[:20]] + [f"  missing: {k}" for k in self.missing[:20]]
        return "\n".join(lines)


def _prefix(key: str) -> str:
    if key in SCHEDULE_KEYS:
        return "(noise schedule)"
    return next((p for p in PREFIXES if key.startswith(p)), "(other)")


def key_report(checkpoint: dict, used: set[str], expected: set[str] | None = None) -> KeyReport:
    report = KeyReport()
    for key in checkpoint:
        p = _prefix(key)
        report.total[p] = report.total.get(p, 0) + 1
        if key in used:
            report.used[p] = report.used.get(p, 0) + 1
        else:
            report.unused.append(key)
    if expected is not None:
        report.missing = sorted(expected - set(checkpoint))
    report.total = dict(sorted(report.total.items()))
    return report
