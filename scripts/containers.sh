#!/usr/bin/env bash
# Container fixtures for the tests: a local OCI registry on loopback and two
# tiny images built from busybox-static with umoci (no Docker needed).
#
#   scripts/containers.sh [start]  install (if missing) runc, docker-registry, iproute2, iptables,
#                                  umoci, skopeo, busybox-static (apt); start
#                                  the registry (or reuse one already answering
#                                  on the port); build and push
#                                    bw-test/busybox:1   busybox + /tmp, /etc/passwd
#                                    bw-test/whiteout:1  the above plus a layer
#                                                        deleting /bin/grep and
#                                                        adding /etc/bw-layer2
#                                    bw-test/user:1      busybox:1 plus a user
#                                                        app (uid 1000, groups
#                                                        1000 and 2000) that
#                                                        the config's User names
#                                  and print the variables as `export` lines
#                                  (also written to $BW_CONTAINERS_DIR/env)
#   scripts/containers.sh install  only install the packages
#   scripts/containers.sh stop     stop the registry this script started
#
# Then: `eval "$(scripts/containers.sh)" && cargo test --workspace` (or, later,
# `. /tmp/bw-containers/env && ...`) runs the container tests too (without the
# variables they are skipped). Everything but the export lines goes to stderr. Re-running is safe: the images are rebuilt
# (reproducibly: fixed timestamps, so the digests stay the same) and re-pushed.
#
#   BW_REGISTRY_PORT    registry port on 127.0.0.1 (default 5055: not the worker's 5000)
#   BW_CONTAINERS_DIR   registry storage, log, OCI layout (default /tmp/bw-containers)
set -euo pipefail
cd "$(dirname "$0")/.."
port=${BW_REGISTRY_PORT:-5055}
dir=${BW_CONTAINERS_DIR:-/tmp/bw-containers}
registry=127.0.0.1:$port
packages=(runc docker-registry umoci skopeo busybox-static iproute2 iptables)
# Fixed timestamp for image configs, history and file times: same digests on every run.
created=2024-01-01T00:00:00Z

say() { echo "containers: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install() {
  local p missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
  # The package may start its own registry service on :5000 (htpasswd auth,
  # all interfaces); it would take our port.
  if [[ " ${missing[*]} " == *" docker-registry "* ]]; then
    if [ -d /run/systemd/system ]; then
      as_root systemctl disable --now docker-registry >/dev/null 2>&1 || true
    else
      as_root /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
  fi
}

answers() { curl -fsS -o /dev/null --max-time 2 "http://$registry/v2/" 2>/dev/null; }

ours() { # pid of the registry this script started, if it is still running
  local pid
  [ -f "$dir/registry.pid" ] || return 1
  pid=$(cat "$dir/registry.pid")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = docker-registry ] && echo "$pid"
}

stop() {
  local pid
  if pid=$(ours); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    say "registry on $registry stopped"
  fi
  rm -f "$dir/registry.pid"
}

start_registry() {
  mkdir -p "$dir/registry"
  if answers; then
    say "reusing the registry answering on $registry"
    return 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "something on $registry is not an open registry v2 (curl http://$registry/v2/ fails);"
    say "stop it (the Debian docker-registry service?) or set BW_REGISTRY_PORT"
    return 1
  fi
  cat >"$dir/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/registry
  delete:
    enabled: true
http:
  addr: $registry
  secret: bw-test-only
EOF
  setsid nohup docker-registry serve "$dir/registry.yml" \
    >"$dir/registry.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/registry.pid"
  for _ in $(seq 1 200); do
    if answers; then
      say "registry on $registry (pid $pid, log $dir/registry.log)"
      return 0
    fi
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  if [ -d "/proc/$pid" ]; then
    say "the registry did not answer on http://$registry/v2/ within 20 s; see $dir/registry.log:"
    kill "$pid" 2>/dev/null || true
    rm -f "$dir/registry.pid"
  else
    say "the registry exited; see $dir/registry.log:"
  fi
  tail -n 20 "$dir/registry.log" >&2 || true
  return 1
}

stamp() { touch -h -d "$created" "$@"; } # reproducible file times in the layers

build() {
  local layout=$dir/oci b1=$dir/bundle-busybox b2=$dir/bundle-whiteout b3=$dir/bundle-user
  local unpack=()
  [ "$(id -u)" -eq 0 ] || unpack=(--rootless)
  rm -rf "$layout" "$b1" "$b2" "$b3"
  umoci init --layout "$layout"

  # bw-test/busybox:1, one layer.
  umoci new --image "$layout:busybox-1"
  umoci unpack "${unpack[@]}" --image "$layout:busybox-1" "$b1"
  local r=$b1/rootfs
  mkdir -p "$r/bin" "$r/etc" "$r/tmp"
  chmod 0755 "$r" "$r/bin" "$r/etc"
  chmod 1777 "$r/tmp"
  cp /bin/busybox "$r/bin/busybox"
  chmod 0755 "$r/bin/busybox"
  local cmd
  for cmd in sh echo cat ls env sleep test dd head tail id true false mkdir rm stat wc grep; do
    ln -s busybox "$r/bin/$cmd"
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$r/etc/passwd"
  echo 'root:x:0:' >"$r/etc/group"
  chmod 0644 "$r/etc/passwd" "$r/etc/group"
  find "$r" -exec touch -h -d "$created" {} +
  umoci repack --history.created "$created" --history.created_by 'scripts/containers.sh: busybox' \
    --image "$layout:busybox-1" "$b1"
  # config writes a new manifest and moves the tag to it (os/arch: umoci new
  # already set the host's, matching /bin/busybox).
  umoci config --image "$layout:busybox-1" --created "$created" --no-history \
    --clear config.env \
    --config.env 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --config.env 'BW_IMAGE_ENV=from-image' \
    --config.workingdir /

  # bw-test/whiteout:1 = busybox:1 + a layer deleting /bin/grep, adding /etc/bw-layer2.
  umoci unpack "${unpack[@]}" --image "$layout:busybox-1" "$b2"
  r=$b2/rootfs
  rm "$r/bin/grep"
  echo two >"$r/etc/bw-layer2"
  chmod 0644 "$r/etc/bw-layer2"
  stamp "$r/bin" "$r/etc" "$r/etc/bw-layer2"
  umoci repack --history.created "$created" --history.created_by 'scripts/containers.sh: whiteout' \
    --image "$layout:whiteout-1" "$b2"
  umoci config --image "$layout:whiteout-1" --created "$created" --no-history

  # bw-test/user:1 = busybox:1 + a layer adding the user app, run as app.
  umoci unpack "${unpack[@]}" --image "$layout:busybox-1" "$b3"
  r=$b3/rootfs
  echo 'app:x:1000:1000:App:/home/app:/bin/sh' >>"$r/etc/passwd"
  printf 'app:x:1000:\nextra:x:2000:root,app\n' >>"$r/etc/group"
  mkdir -p "$r/home/app"
  chown 1000:1000 "$r/home/app"
  stamp "$r/etc" "$r/etc/passwd" "$r/etc/group" "$r/home" "$r/home/app"
  umoci repack --history.created "$created" --history.created_by 'scripts/containers.sh: user' \
    --image "$layout:user-1" "$b3"
  umoci config --image "$layout:user-1" --created "$created" --no-history \
    --config.user app --config.workingdir /home/app

  umoci gc --layout "$layout"
  rm -rf "$b1" "$b2" "$b3"
}

push() {
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$dir/policy.json"
  local pair
  for pair in busybox-1:bw-test/busybox:1 whiteout-1:bw-test/whiteout:1 user-1:bw-test/user:1; do
    skopeo --policy "$dir/policy.json" copy --quiet --dest-tls-verify=false \
      "oci:$dir/oci:${pair%%:*}" "docker://$registry/${pair#*:}" >&2
  done
  say "pushed $registry/bw-test/busybox:1, whiteout:1 and user:1"
}

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  { install; start_registry; build; push; } >&2 # stdout: only the export lines
  cat >"$dir/env" <<EOF
export BW_TEST_REGISTRY=$registry
export BW_TEST_IMAGE=$registry/bw-test/busybox:1
export BW_TEST_WHITEOUT_IMAGE=$registry/bw-test/whiteout:1
export BW_TEST_USER_IMAGE=$registry/bw-test/user:1
EOF
  cat "$dir/env"
}

case "${1:-start}" in
  start) start ;;
  install) install ;;
  stop) stop ;;
  *) echo "usage: $0 [start]|install|stop" >&2; exit 2 ;;
esac
