#!/usr/bin/env bash
# The tests, all of them: starts what they need, as CI does, then runs
#   cargo test --workspace --release --locked [ARGS...]
#
#   - the blob-store emulators (scripts/emulators.sh: Azurite from npm,
#     moto from PyPI), unless BW_TEST_AZ_ROOT is already set;
#   - runc and a registry of test images (scripts/containers.sh: Debian
#     packages), unless BW_TEST_IMAGE is already set;
# and stops what it started at exit. A service that cannot start (no
# network, no root for apt) does not stop the run: its tests skip, and the
# last screen says which and why, loudly. BW_TEST_STRICT=1 (CI) makes a
# service that cannot start an error instead.
set -euo pipefail
cd "$(dirname "$0")/.."

strict=${BW_TEST_STRICT:-}
missing=()
started=()
cleanup() {
  for s in "${started[@]}"; do scripts/"$s".sh stop >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

if [ -z "${BW_TEST_AZ_ROOT:-}" ]; then
  echo "test.sh: starting the blob-store emulators (scripts/emulators.sh)" >&2
  if scripts/emulators.sh start >&2; then
    started+=(emulators)
    # shellcheck disable=SC1091
    . .emulators/env
    export BW_REQUIRE_EMULATORS=1
  elif [ -n "$strict" ]; then
    echo "test.sh: the emulators did not start (BW_TEST_STRICT is set)" >&2; exit 1
  else
    missing+=("the blob-store emulators did not start (see .emulators/*.log)")
  fi
fi
if [ -z "${BW_TEST_IMAGE:-}" ]; then
  echo "test.sh: starting runc and the test registry (scripts/containers.sh)" >&2
  if exports=$(scripts/containers.sh start); then
    started+=(containers)
    eval "$exports"
    export BW_REQUIRE_CONTAINERS=1
  elif [ -n "$strict" ]; then
    echo "test.sh: the container registry did not start (BW_TEST_STRICT is set)" >&2; exit 1
  else
    missing+=("the container registry did not start (see ${BW_CONTAINERS_DIR:-/tmp/bw-containers}/registry.log)")
  fi
fi

status=0
cargo test --workspace --release --locked "$@" || status=$?

if [ ${#missing[@]} -gt 0 ]; then
  {
    echo
    echo "================================================================"
    echo " NOT EVERY TEST RAN:"
    for m in "${missing[@]}"; do echo "   - $m"; done
    echo " Their tests skipped (the SKIPPED line above counts them)."
    echo "================================================================"
  } >&2
fi
exit $status
