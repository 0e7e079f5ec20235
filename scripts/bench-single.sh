#!/usr/bin/env bash
# Measure one dataserver (fsync = always) with `chorus bench`, and beside it,
# in the same run and on the same disk, fio's 4 KiB write+fdatasync IOPS and
# 1 MiB sequential write bandwidth, so the figures can be read as ratios.
#
#   scripts/bench-single.sh [DIR] [DURATION_SECS]
#
# Needs: fio (apt-get install fio), a release build (cargo build --release).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/target/bench}"
secs="${2:-10}"
bin="$root/target/release"
rm -rf "$dir" && mkdir -p "$dir"
out="$dir/results.txt"
: >"$out"

echo "== fio baseline on $(df -h "$dir" | awk 'NR==2{print $1" ("$6")"}')" | tee -a "$out"
fio --name=w4k --directory="$dir" --rw=write --bs=4k --size=256m --fdatasync=1 \
  --ioengine=sync --runtime="$secs" --time_based --output-format=json >"$dir/fio-4k.json"
fio --name=seq1m --directory="$dir" --rw=write --bs=1m --size=2g --end_fsync=1 \
  --ioengine=sync --runtime="$secs" --time_based --output-format=json >"$dir/fio-1m.json"
rm -f "$dir"/w4k.* "$dir"/seq1m.*
python3 - "$dir" <<'PY' | tee -a "$out"
import json, sys
d = sys.argv[1]
a = json.load(open(f"{d}/fio-4k.json"))["jobs"][0]["write"]
b = json.load(open(f"{d}/fio-1m.json"))["jobs"][0]["write"]
print(f"fio 4KiB write+fdatasync: {a['iops']:.0f} IOPS")
print(f"fio 1MiB sequential write: {b['bw_bytes']/2**20:.0f} MiB/s")
PY

port=23950
"$bin/chorus-dataserver" --data-dir "$dir/ds" --listen "127.0.0.1:$port" \
  --reserved-space 1GiB --fsync always 2>"$dir/dataserver.log" &
pid=$!
# The uploads write tens of GB: keep only the results.
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir/ds"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

run() {
  echo "== chorus bench $*" | tee -a "$out"
  "$bin/chorus" --server "127.0.0.1:$port" bench "$@" --duration "$secs" --json | tee -a "$out"
}
run --op upload --size 4KiB --concurrency 1
run --op upload --size 4KiB --concurrency 16
run --op download --size 4KiB --concurrency 1
run --op download --size 4KiB --concurrency 16
run --op upload --size 1MiB --concurrency 16
run --op download --size 1MiB --concurrency 16
echo "results in $out"
