#!/usr/bin/env bash
# Builds the local container images the tests and the example use. No registry is reachable,
# so images are made with `docker import` from a root filesystem assembled here:
#   tessera/busybox:local   busybox-static with its applets (sh, httpd, nc, sleep, ...)
#   tessera/node:local      the host's node binary and the libraries ldd lists, plus busybox,
#                           for components written in TypeScript (code mounted or copied in)
#   tessera/components:local  tessera/node plus the example components, each bundled into one
#                           file by esbuild (/app/<name>.js) with the protos they load
# An image is rebuilt only when its inputs changed (their hash is kept as a label).
set -euo pipefail
cd "$(dirname "$0")/.."

build() { # name hash dir
  local name=$1 hash=$2 dir=$3
  if [ "$(docker image inspect -f '{{index .Config.Labels "tessera.inputs"}}' "$name" 2>/dev/null)" = "$hash" ]; then
    echo "[images] $name is up to date"
    return
  fi
  echo "[images] building $name"
  tar -C "$dir" -c . | docker import --change "LABEL tessera.inputs=$hash" --change 'CMD ["/bin/sh"]' - "$name" >/dev/null
}

busybox_image() {
  local tmp; tmp=$(mktemp -d)
  mkdir -p "$tmp/bin" "$tmp/tmp" "$tmp/etc" "$tmp/www" "$tmp/data"
  cp /bin/busybox "$tmp/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$tmp/bin/$applet"
  done
  printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$tmp/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$tmp/etc/group"
  chmod 1777 "$tmp/tmp"
  local hash; hash=$( (sha256sum /bin/busybox; echo v1) | sha256sum | cut -c1-16)
  build tessera/busybox:local "$hash" "$tmp"
  rm -rf "$tmp"
}

# The root filesystem of an image that runs node: the host's node binary and the shared
# libraries ldd lists (at the same paths, the loader included), and a few busybox applets.
node_rootfs() { # dir
  local dir=$1
  local node_bin; node_bin=$(readlink -f "$(command -v node)")
  mkdir -p "$dir/usr/local/bin" "$dir/bin" "$dir/tmp" "$dir/etc" "$dir/app"
  cp "$node_bin" "$dir/usr/local/bin/node"
  for lib in $(ldd "$node_bin" | grep -oE '/[^ ]+'); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  cp /bin/busybox "$dir/bin/busybox"
  for applet in sh ls cat echo sleep mkdir rm env wget nc kill; do ln -sf busybox "$dir/bin/$applet"; done
  printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$dir/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$dir/etc/group"
  chmod 1777 "$dir/tmp"
}

node_image() {
  local tmp; tmp=$(mktemp -d)
  local node_bin; node_bin=$(readlink -f "$(command -v node)")
  node_rootfs "$tmp"
  local hash; hash=$( (sha256sum "$node_bin" /bin/busybox; ldd "$node_bin"; echo v1) | sha256sum | cut -c1-16)
  build tessera/node:local "$hash" "$tmp"
  rm -rf "$tmp"
}

# tessera/node plus the example components, each bundled by esbuild into /app/<name>.js, and the
# protos they load.
components_image() {
  local tmp; tmp=$(mktemp -d)
  local node_bin; node_bin=$(readlink -f "$(command -v node)")
  node_rootfs "$tmp"
  mkdir -p "$tmp/app/protos"
  cp -r protos/. "$tmp/app/protos/"
  echo '{"name":"tessera-components","version":"0.1.0"}' > "$tmp/app/package.json"
  for src in examples/*/components/*.ts; do
    local name; name=$(basename "$src" .ts)
    grep -q serveComponent "$src" || continue   # helpers, not components
    node_modules/.bin/esbuild "$src" --bundle --platform=node --target=node20 --log-level=error --outfile="$tmp/app/$name.js"
  done
  local hash; hash=$( (sha256sum "$node_bin"; cat "$tmp"/app/*.js protos/tessera/v1/tessera.proto | sha256sum; echo v1) | sha256sum | cut -c1-16)
  build tessera/components:local "$hash" "$tmp"
  rm -rf "$tmp"
}

busybox_image
node_image
components_image
