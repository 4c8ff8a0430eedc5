#!/bin/sh
# Builds a local base image from Debian's packages, for machines that reach no container
# registry: Debian bookworm (minbase) with its Python 3.11, the same role python:3.11-slim plays.
#
#   sudo deploy/base/debian-python.sh [TAG]    # default TAG: localhost/pollinate-base:bookworm
#   make image BASE=localhost/pollinate-base:bookworm
#
# Needs root, debootstrap and podman (Debian: apt-get install debootstrap podman).
# MIRROR overrides the Debian mirror (default: the one apt uses, deb.debian.org).
set -eu
TAG=${1:-localhost/pollinate-base:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=$(mktemp -d /var/tmp/pollinate-base.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# python3-venv brings ensurepip, which the builder stage uses to make its venv;
# ca-certificates lets pip inside the build trust the registry (or a proxy, with PIP_CERT).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$WORK/rootfs" "$MIRROR"
chroot "$WORK/rootfs" apt-get clean
rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin \
    "$WORK/rootfs/var/log/"*.log "$WORK/rootfs/tmp/"*

tar -C "$WORK/rootfs" --numeric-owner -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$TAG"
echo "built $TAG"
