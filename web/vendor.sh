#!/bin/sh
# Vendors Leaflet 1.9.4 (BSD-2-Clause) into web/vendor/leaflet/ from the npm
# registry, so the dashboard needs no CDN and works without internet access.
# Run from anywhere: sh web/vendor.sh
set -eu

VERSION=1.9.4
# sha256 of leaflet-1.9.4.tgz as published on the npm registry.
SHA256=84c65a256e50657896f54c33bd857b6849ebe94c817803be818bf32a3dde0b77

WEB_DIR=$(cd "$(dirname "$0")" && pwd)
DEST="$WEB_DIR/vendor/leaflet"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM

cd "$WORK"
npm pack --loglevel=warn "leaflet@$VERSION" >/dev/null
TGZ="leaflet-$VERSION.tgz"
GOT=$(sha256sum "$TGZ" | cut -d' ' -f1)
if [ "$GOT" != "$SHA256" ]; then
    echo "vendor.sh: $TGZ sha256 $GOT does not match the pinned $SHA256" >&2
    exit 1
fi
tar xzf "$TGZ"

rm -rf "$DEST"
mkdir -p "$DEST/images"
cp package/dist/leaflet.js package/dist/leaflet.css "$DEST/"
cp package/dist/images/* "$DEST/images/"
cp package/LICENSE "$DEST/LICENSE"
echo "vendored leaflet $VERSION into $DEST"
