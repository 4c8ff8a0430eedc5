#!/bin/sh
# Builds pollinate's image once per content: the tag carries a hash of everything the build
# reads (deploy/Containerfile, the lock, the source, the base image's id), so a second
# `make image` with nothing changed returns at once.
#
#   deploy/image.sh [TARGET]      # runtime (default) or torch
#
# Environment: BASE (default docker.io/library/python:3.11-slim; localhost/pollinate-base:*
# is built from Debian's packages by deploy/base/debian-python.sh when missing), IMAGE
# (default localhost/pollinate), PODMAN (default: podman with runc, see docs/kubernetes.md).
# Prints the tag it built or found: IMAGE:TARGET-HASH, also tagged IMAGE:TARGET.
set -eu
cd "$(dirname "$0")/.."
TARGET=${1:-runtime}
BASE=${BASE:-docker.io/library/python:3.11-slim}
IMAGE=${IMAGE:-localhost/pollinate}
PODMAN=${PODMAN:-podman --runtime runc}
PIP=${PIP:-.venv/bin/python -m pip}

case "$BASE" in
localhost/pollinate-base:*)
    $PODMAN image exists "$BASE" || deploy/base/debian-python.sh "$BASE" >&2 ;;
esac
base_id=$($PODMAN image inspect --format '{{.Id}}' "$BASE" 2>/dev/null || echo "$BASE")
hash=$( (echo "$TARGET $base_id"; find deploy/Containerfile deploy/lock_subset.py .containerignore \
    requirements pyproject.toml README.md LICENSE src -type f ! -name '*.pyc' \
    ! -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-16)
tag="$IMAGE:$TARGET-$hash"
if $PODMAN image exists "$tag"; then
    echo "$tag"
    exit 0
fi

# The locked wheels, fetched on the host (its pip reaches the registry) and checked against
# the lock's hashes, so the build installs them offline.
$PIP download --quiet --no-deps --require-hashes --only-binary=:all: -d deploy/wheels \
    -r requirements/demo.txt >&2
if [ "$TARGET" = torch ]; then
    python3 deploy/lock_subset.py requirements/test.txt torch > deploy/wheels/torch.txt
    $PIP download --quiet --no-deps --require-hashes --only-binary=:all: -d deploy/wheels \
        -r deploy/wheels/torch.txt >&2
fi
$PODMAN build --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    --file deploy/Containerfile --target "$TARGET" --build-arg BASE="$BASE" \
    --build-arg PIP_OFFLINE=1 --label org.opencontainers.image.revision="$hash" \
    --tag "$tag" --tag "$IMAGE:$TARGET" . >&2
# earlier builds of this target are superseded: untag them, so they do not pile up
$PODMAN images --format '{{.Repository}}:{{.Tag}}' | grep -F "$IMAGE:$TARGET-" \
    | grep -vxF "$tag" | while read -r old; do $PODMAN rmi "$old" >/dev/null 2>&1 || true; done
echo "$tag"
