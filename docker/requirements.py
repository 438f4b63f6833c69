"""Print vidret's requirements with one extra (`python requirements.py cpu`) from pyproject.toml, one per line.

The images install these before the source is copied, from a file that holds the requirements alone: the layer of
several GB that installs them is then rebuilt only when a requirement changes, not on every edit of pyproject.toml."""

import sys
from pathlib import Path

import tomllib

project = tomllib.loads(Path(sys.argv[2] if len(sys.argv) > 2 else "pyproject.toml").read_text())["project"]
extras = project.get("optional-dependencies", {})
if len(sys.argv) < 2 or sys.argv[1] not in extras:
    sys.exit(f"usage: requirements.py EXTRA [pyproject.toml]; EXTRA is one of {', '.join(extras)}")
print("\n".join([*project["dependencies"], *extras[sys.argv[1]]]))
