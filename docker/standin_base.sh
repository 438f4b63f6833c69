#!/usr/bin/env bash
# A local stand-in for the CPU image's base (python:3.11-slim-bookworm), for machines that reach no container
# registry. deploy_check.sh calls it only when `podman pull` of the real image fails.
#   Debian bookworm (debootstrap --variant=minbase) with Debian's python3.11, and a venv on PATH so that `python`
#   and `pip` behave as in the official image. It carries the host's CA bundle and pip settings (read from
#   `pip config list` now, see host_pip.py), because package registries may only be reachable the way they are from
#   the host. Imported with `podman import` under the base image's name, labelled vidret.standin=1.
# Usage: docker/standin_base.sh [image name]   (root; needs debootstrap and podman)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
image=${1:-docker.io/library/python:3.11-slim-bookworm}

# The Debian mirror apt uses on this host (the first deb URI in its sources).
mirror=$(
    { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
      grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'; } \
        | grep -v -- '-security' | head -n 1 || true
)
[[ -n $mirror ]] || { echo "standin_base: no Debian mirror in /etc/apt/sources.list*" >&2; exit 1; }

work=$(mktemp -d /var/tmp/vidret-standin.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
echo "standin_base: debootstrap bookworm (minbase) with python3.11"
debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# apt inside the image uses the host's sources, as apt here does.
cp -a /etc/apt/sources.list.d/. "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
[[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
# The host's CA bundle (it trusts whatever proxy sits between this host and the registries) and pip settings.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
python3 "$here/host_pip.py" conf >"$rootfs/etc/pip.conf"
while read -r f; do
    [[ -n $f ]] || continue
    mkdir -p "$rootfs$(dirname "$f")"
    cp "$f" "$rootfs$f"
done < <(python3 "$here/host_pip.py" files)

chroot "$rootfs" /usr/bin/python3.11 -m venv /opt/python
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log

tar -C "$rootfs" --numeric-owner -cf - . | podman import --quiet \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'LABEL vidret.standin=1' \
    --change 'CMD ["python3"]' \
    - "$image" >/dev/null
echo "standin_base: imported $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
