#!/usr/bin/env bash
# Blob-store emulators for the tests and the demo, on loopback:
#   Azurite (Azure Blob; npm package `azurite`)      http://127.0.0.1:10000
#   moto in server mode (S3; PyPI `moto[server]`)     http://127.0.0.1:9050
#
#   scripts/emulators.sh start   install (once, into .emulators/), start both,
#                                create the container and bucket `bw-test`, and
#                                write .emulators/env (the object_store variables
#                                and BW_TEST_AZ_ROOT / BW_TEST_S3_ROOT)
#   scripts/emulators.sh stop    stop both
#
# Then: `. .emulators/env && cargo test --workspace` runs the emulator tests
# too (without the variables they are skipped, saying so). The credentials
# are the emulators' public, well-known development ones.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.emulators
mkdir -p "$dir"

wait_port() { # host port name
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "emulators: $3 did not open $1:$2; see $dir/$3.log" >&2
  return 1
}

stop() {
  for name in azurite moto; do
    if [ -f "$dir/$name.pid" ]; then
      kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
}

start() {
  stop
  if [ ! -x "$dir/node_modules/.bin/azurite-blob" ]; then
    echo "emulators: installing azurite (npm)" >&2
    npm install --prefix "$dir" --no-audit --no-fund --silent azurite@3 >/dev/null
  fi
  if [ ! -x "$dir/venv/bin/moto_server" ]; then
    echo "emulators: installing moto, azure-storage-blob (PyPI)" >&2
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet 'moto[server]==5.*' 'azure-storage-blob==12.*'
  fi
  "$dir/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort 10000 \
    --inMemoryPersistence --skipApiVersionCheck --loose --silent \
    >"$dir/azurite.log" 2>&1 &
  echo $! >"$dir/azurite.pid"
  "$dir/venv/bin/moto_server" -H 127.0.0.1 -p 9050 >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/moto.pid"
  wait_port 127.0.0.1 10000 azurite
  wait_port 127.0.0.1 9050 moto

  # Azurite's well-known development account.
  local account=devstoreaccount1
  local key='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
  "$dir/venv/bin/python" - "$account" "$key" <<'PY'
import sys, urllib.request
from azure.storage.blob import BlobServiceClient
account, key = sys.argv[1], sys.argv[2]
conn = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:10000/{account};")
service = BlobServiceClient.from_connection_string(conn)
if not service.get_container_client("bw-test").exists():
    service.create_container("bw-test")
# moto accepts unsigned bucket creation.
request = urllib.request.Request("http://127.0.0.1:9050/bw-test", method="PUT")
urllib.request.urlopen(request).read()
PY
  cat >"$dir/env" <<EOF
export AZURE_STORAGE_USE_EMULATOR=true
export AZURE_STORAGE_ACCOUNT_NAME=$account
export AZURE_STORAGE_ACCOUNT_KEY='$key'
export AWS_ENDPOINT=http://127.0.0.1:9050
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export BW_TEST_AZ_ROOT=az://bw-test/specs
export BW_TEST_S3_ROOT=s3://bw-test/specs
EOF
  echo "emulators: azurite on 127.0.0.1:10000, moto on 127.0.0.1:9050; variables in $dir/env" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
