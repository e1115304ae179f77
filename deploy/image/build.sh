#!/usr/bin/env bash
# Builds flightdeck's container image (deploy/Containerfile) as localhost/flightdeck:dev:
# a statically linked binary (glibc, crt-static, cargo profile "container"), the CA
# bundle, the default cluster template and admission policy on an empty base. Nothing
# is pulled.
#
#   deploy/image/build.sh
#
# Environment:
#   FLIGHTDECK_IMAGE   the image name (default localhost/flightdeck:dev)
#   CARGO_TARGET_DIR   Cargo's target directory (default ~/.cache/flightdeck/target); the
#                      static build goes to its own subdirectory <triple>/container, so it
#                      does not invalidate the normal builds
#   CA_BUNDLE          the CA certificates to include (default /etc/ssl/certs/ca-certificates.crt,
#                      Debian's ca-certificates)
#
# Needs podman or buildah (deploy/image/setup.sh installs them). Context: .run/image/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

IMAGE="${FLIGHTDECK_IMAGE:-localhost/flightdeck:dev}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flightdeck/target}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
CONTEXT=.run/image
PROFILE=container
# The host's own glibc target, named explicitly: with --target, RUSTFLAGS apply to the
# binary only (not to build scripts and proc macros, which cannot be static), and the
# output goes to target/<triple>/ instead of overwriting the normal builds.
TARGET=$(rustc -vV | sed -n 's/^host: //p')

die() {
    echo "image build: $*" >&2
    exit 1
}

[[ "$TARGET" == *-linux-gnu ]] || die "expected a glibc Linux host, found $TARGET"
[[ -s "$CA_BUNDLE" ]] || die "no CA bundle at $CA_BUNDLE (apt-get install ca-certificates, or set CA_BUNDLE)"
if command -v buildah >/dev/null; then
    builder=(buildah bud)
elif command -v podman >/dev/null; then
    builder=(podman build)
else
    die "neither buildah nor podman is installed (run deploy/image/setup.sh)"
fi

echo "image build: cargo build --profile $PROFILE --target $TARGET (static)"
start=$SECONDS
RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked -p flightdeck --bin flightdeck \
    --target "$TARGET" --profile "$PROFILE"
echo "image build: binary built in $((SECONDS - start)) s"

BIN="$CARGO_TARGET_DIR/$TARGET/$PROFILE/flightdeck"
[[ -x "$BIN" ]] || die "no binary at $BIN"
# file(1) says "statically linked" or "static-pie linked"; ldd must find no libraries.
file "$BIN" | grep -Eq 'static(ally|-pie) linked' || die "$BIN is not statically linked: $(file -b "$BIN")"
ldd_out=$(ldd "$BIN" 2>&1 || true)
[[ "$ldd_out" == *"not a dynamic executable"* || "$ldd_out" == *"statically linked"* ]] ||
    die "$BIN has dynamic dependencies: $(tr '\n' ' ' <<<"$ldd_out")"
version=$("$BIN" --version | awk '{print $2}')
[[ -n "$version" ]] || die "$BIN --version printed nothing"

rm -rf "$CONTEXT"
mkdir -p "$CONTEXT"
install -m 0755 "$BIN" "$CONTEXT/flightdeck"
install -m 0644 "$CA_BUNDLE" "$CONTEXT/ca-certificates.crt"
install -m 0644 templates/cluster.yaml "$CONTEXT/cluster.yaml"
install -m 0644 policies/limits.toml "$CONTEXT/limits.toml"
install -m 0644 deploy/image/nsswitch.conf "$CONTEXT/nsswitch.conf"
install -m 0644 deploy/Containerfile "$CONTEXT/Containerfile"

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# (GIT_OPTIONAL_LOCKS=0: git status must not write the index.)
if [[ -n "$(GIT_OPTIONAL_LOCKS=0 git status --porcelain 2>/dev/null)" ]]; then
    revision="$revision-dirty"
fi

previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
echo "image build: ${builder[*]} -t $IMAGE ($version, $revision)"
"${builder[@]}" --file "$CONTEXT/Containerfile" --tag "$IMAGE" \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "$CONTEXT"

# The image this one replaces, now untagged, unless a container still uses it.
current=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [[ -n "$previous" && "$previous" != "$current" ]]; then
    podman image rm "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE" 2>/dev/null || echo "?")
echo "image build: $IMAGE: binary $(stat -c %s "$CONTEXT/flightdeck") bytes, image $size bytes"
