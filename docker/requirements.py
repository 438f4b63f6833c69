"""Print vidret's requirements with the given extras (`python requirements.py cpu onnx`) from pyproject.toml, one per
line; an extra that names another of vidret's extras (`vidret[train]`) is expanded.

The images install these before the source is copied, from a file that holds the requirements alone: the layer of
several GB that installs them is then rebuilt only when a requirement changes, not on every edit of pyproject.toml.
Usage: requirements.py EXTRA [EXTRA ...] [PATH/pyproject.toml]"""

import re
import sys
from pathlib import Path

import tomllib

args = [a for a in sys.argv[1:] if not a.endswith(".toml")]
path = next((a for a in sys.argv[1:] if a.endswith(".toml")), "pyproject.toml")
project = tomllib.loads(Path(path).read_text())["project"]
extras = project.get("optional-dependencies", {})
if not args or any(a not in extras for a in args):
    sys.exit(f"usage: requirements.py EXTRA [EXTRA ...] [pyproject.toml]; EXTRA is one of {', '.join(extras)}")
SELF = re.compile(rf"^{re.escape(project['name'])}\[([^\]]+)\]$")
out, seen = list(project["dependencies"]), set()


def add(extra: str) -> None:
    if extra in seen:
        return
    seen.add(extra)
    for req in extras[extra]:
        m = SELF.match(req.replace(" ", ""))
        if m:
            for inner in m.group(1).split(","):
                add(inner)
        elif req not in out:
            out.append(req)


for a in args:
    add(a)
print("\n".join(out))
