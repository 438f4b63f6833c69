"""The host's pip configuration, for the stand-in base image (docker/standin_base.sh) and its build mounts.

Where no container registry can be reached, deploy_check.sh builds a stand-in for the Python base image. Package
registries may then only be reachable the way they are from the host (a proxy with its own CA, a local wheel
directory or index), so the stand-in carries the host's pip settings. Nothing here names a host: everything is read
from `pip config list` when the stand-in is built.

    python3 docker/host_pip.py conf     # the merged settings as one pip.conf ([global] etc.)
    python3 docker/host_pip.py files    # files the settings point at (cert, constraint, ...): copied into the image
    python3 docker/host_pip.py dirs     # local directories they point at (find-links, file:// indexes): mounted
                                        # read-only while the image is built
"""

import ast
import os
import subprocess
import sys
from urllib.parse import urlparse

FILE_KEYS = {"cert", "client-cert", "constraint", "requirement"}
LOCATION_KEYS = {"find-links", "index-url", "extra-index-url"}


def settings() -> dict[str, dict[str, str]]:
    """Section -> key -> value, as `pip config list` shows them; environment settings (:env:) go to [global] and win."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True
    ).stdout
    merged: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, raw = line.partition("=")
        if not sep or "." not in name:
            continue
        section, key = name.rsplit(".", 1)
        value = ast.literal_eval(raw)
        if section == ":env:":
            env[key] = value
        else:
            merged.setdefault(section, {})[key] = value
    merged.setdefault("global", {}).update(env)
    return merged


def local_path(location: str) -> str | None:
    """The local path a find-links or index location points at, or None for a remote one."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        path = parsed.path
    elif parsed.scheme == "":
        path = location
    else:
        return None
    path = path.rstrip("/")
    if path.endswith("/simple"):
        path = os.path.dirname(path)
    return path or None


def referenced(kind: str) -> list[str]:
    found: list[str] = []
    for section in settings().values():
        for key, value in section.items():
            if kind == "files" and key in FILE_KEYS:
                found += [v for v in value.split() if os.path.isfile(v)]
            elif kind == "dirs" and key in LOCATION_KEYS:
                found += [p for v in value.split() if (p := local_path(v)) and os.path.isdir(p)]
    return sorted(set(found))


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in {"conf", "files", "dirs"}:
        print("usage: host_pip.py conf|files|dirs", file=sys.stderr)
        return 2
    if sys.argv[1] == "conf":
        for section, values in settings().items():
            print(f"[{section}]")
            for key, value in values.items():
                print(f"{key} = {value}")
    else:
        print("\n".join(referenced(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
