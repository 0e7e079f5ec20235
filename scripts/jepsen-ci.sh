#!/usr/bin/env bash
# The consistency suite as CI runs it (after `cargo build --workspace --bins`):
#  1. `chorus-jepsen suite --quick`: short runs of every workload under every
#     nemesis against a sync group, where every verdict must be valid and
#     every group must converge (`chorus verify`); and two runs against an
#     async group: a register run, which must find stale reads (async
#     promises no linearizability) and still converge, and a set run under
#     kill + partition, which must be valid (nothing acknowledged lost).
#  2. The suite must catch a real bug: a dataserver built with the
#     `fault-injection` feature and CHORUS_FAULT=ack-before-replicate
#     acknowledges writes before replicating them; a set run under the kill
#     nemesis must come out invalid (lost acknowledged writes).
# Needs root (network namespaces). Reports go to target/jepsen-ci/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/target/jepsen-ci"
rm -rf "$out" && mkdir -p "$out"
bin="$root/target/debug"

echo "== chorus-jepsen suite --quick"
"$bin/chorus-jepsen" clean >/dev/null 2>&1 || true
"$bin/chorus-jepsen" suite --quick --out "$out/quick"

echo "== the suite catches an injected fault (ack before replicate)"
# Build the faulty dataserver, keep it aside, and put the normal one back.
cargo build -p chorus-dataserver --bin chorus-dataserver --features fault-injection
mkdir -p "$out/faulty"
cp "$bin/chorus-dataserver" "$out/faulty/chorus-dataserver"
cargo build -p chorus-dataserver --bin chorus-dataserver
set +e
CHORUS_FAULT=ack-before-replicate CHORUS_DATASERVER_BIN="$out/faulty/chorus-dataserver" \
  "$bin/chorus-jepsen" run --workload set --nemesis kill --time-limit 20 --seed 1 \
  --out "$out/fault"
code=$?
set -e
if [ "$code" -ne 1 ]; then
  echo "the suite did not find the injected fault (exit $code, want 1 = invalid)" >&2
  exit 1
fi
echo "== injected fault detected (invalid), as it must be"
