"""Lowest-versions job: every core requirement's lower bound in setup.py equals the version installed
(``uv --resolution lowest-direct``), so the floors are releases the tests ran on, not guesses."""

import sys
from importlib.metadata import requires, version

from packaging.requirements import Requirement
from packaging.version import Version


def padded(v: Version, n: int) -> tuple:
    return v.release + (0,) * (n - len(v.release))


bad = []
for line in requires("anytext2-diffusers"):
    req = Requirement(line)
    if req.marker:  # optional extras are tested at their newest versions in the main run
        continue
    floor = next(s.version for s in req.specifier if s.operator == ">=")
    got = version(req.name)
    n = max(len(Version(floor).release), len(Version(got).release))
    same = padded(Version(floor), n) == padded(Version(got), n)
    print(f"{req.name:30s} floor {floor:12s} installed {got}{'' if same else '   <-- differs'}")
    if not same:
        bad.append(f"{req.name}: floor {floor}, installed {got}")
if bad:
    sys.exit("setup.py floors differ from the lowest installable versions: " + "; ".join(bad))
