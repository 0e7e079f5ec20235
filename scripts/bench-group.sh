#!/usr/bin/env bash
# Replication costs, measured in one run on one machine (fsync = always,
# concurrency 16): a single standalone dataserver, then one sync group of 3
# behind 3 leaders; 4 KiB and 1 MiB uploads and 4 KiB downloads through
# `chorus bench`. Then, with default leader timeouts, the failover time
# (master SIGKILLed under an upload loop -> first upload served again) and
# the catch-up rate of a slave that was down while data was written, and
# how long a member takes to catch up while the master writes at full speed.
# Last, one async (FastDFS-style) group of 3 behind its own 3 leaders: 4 KiB
# and 1 MiB uploads spread over the members, with --replica-lag (how long
# until the other members have a sampled upload), and a summary table of
# every bench.
#
#   scripts/bench-group.sh [DIR] [DURATION_SECS]
#
# Needs a release build: cargo build --release --bins
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/target/bench-group}"
secs="${2:-10}"
bin="$root/target/release"
rm -rf "$dir" && mkdir -p "$dir"
out="$dir/results.txt"
: >"$out"
pids=()
# The benches write tens of GB: at exit keep only the results and logs.
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"/single "$dir"/l[123] "$dir"/d[123] "$dir"/al[123] "$dir"/ad[123]
}
trap cleanup EXIT

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

bench() { # label, chorus connection flags..., -- bench args...
  local label=$1; shift
  local conn=()
  while [ "$1" != "--" ]; do conn+=("$1"); shift; done; shift
  echo "== $label: chorus bench $*" | tee -a "$out"
  "$bin/chorus" "${conn[@]}" bench "$@" --duration "$secs" --json | tee -a "$out"
}

# 1. A single standalone server.
"$bin/chorus-dataserver" --data-dir "$dir/single" --listen 127.0.0.1:24100 \
  --reserved-space 1GiB --fsync always 2>"$dir/single.log" &
pids+=($!)
wait_port 24100
for args in "--op upload --size 4KiB" "--op upload --size 1MiB" "--op download --size 4KiB"; do
  # shellcheck disable=SC2086
  bench single --server 127.0.0.1:24100 -- $args --concurrency 16
done
kill -9 "${pids[0]}"; pids=()
wait 2>/dev/null || true
rm -rf "$dir/single"   # this disk may be small: keep only what the next part needs

# 2. One sync group of 3 (default timeouts).
peers="1=127.0.0.1:24201,2=127.0.0.1:24202,3=127.0.0.1:24203"
leaders="127.0.0.1:24201,127.0.0.1:24202,127.0.0.1:24203"
for i in 1 2 3; do
  "$bin/chorus-leader" --id $i --listen 127.0.0.1:2420$i --peers "$peers" \
    --data-dir "$dir/l$i" 2>"$dir/l$i.log" &
  pids+=($!)
done
start_ds() {
  "$bin/chorus-dataserver" --data-dir "$dir/d$1" --listen 127.0.0.1:2421$1 --server-id "$1" \
    --leaders "$leaders" --reserved-space 1GiB --fsync always 2>>"$dir/d$1.log" &
  dpid[$1]=$!
  pids+=($!)
}
declare -A dpid
for i in 1 2 3; do start_ds $i; done
active() { "$bin/chorus" --leaders "$leaders" status --json | python3 -c '
import json,sys; r=json.load(sys.stdin)
print(sum(1 for s in r["servers"] if s["status"]=="active"))'; }
master_id() { "$bin/chorus" --leaders "$leaders" status --json | python3 -c '
import json,sys; r=json.load(sys.stdin)
print(([s["id"] for s in r["servers"] if s["role"]=="master"] or [0])[0])'; }
status_of() { "$bin/chorus" --leaders "$leaders" status --json | python3 -c "
import json,sys; r=json.load(sys.stdin)
print([s['status'] for s in r['servers'] if s['id']==$1][0])"; }
for _ in $(seq 300); do [ "$(active 2>/dev/null || echo 0)" = 3 ] && break; sleep 0.1; done
for args in "--op upload --size 4KiB" "--op upload --size 1MiB" "--op download --size 4KiB"; do
  # shellcheck disable=SC2086
  bench "sync group of 3" --leaders "$leaders" -- $args --concurrency 16
done

# 3. Failover with default timeouts: SIGKILL the master under an upload loop.
master=$(master_id)
head -c 4096 /dev/urandom >"$dir/f4k"
python3 - "$bin/chorus" "$leaders" "$dir/f4k" "${dpid[$master]}" <<'PY' | tee -a "$out"
import os, signal, subprocess, sys, threading, time
chorus, leaders, f, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
done = []
def loop():
    while len(done) < 1 or time.time() - done[0][0] < 4:
        t = time.time()
        r = subprocess.run([chorus, "--leaders", leaders, "upload", f], capture_output=True)
        if r.returncode == 0 and killed:
            done.append((time.time(), t))
killed = None
th = threading.Thread(target=loop); th.start()
time.sleep(2)
killed = time.time(); os.kill(pid, signal.SIGKILL)
th.join()
first = min(t for t, _ in done)
print(f"failover (default timeouts): master killed -> first upload served again after {first - killed:.2f} s")
PY

# 4. Catch-up: stop a slave, write for 2 s (GBs), restart it, time until ACTIVE.
slave=$(for i in 1 2 3; do if [ "$i" != "$master" ]; then echo "$i"; fi; done | head -1)
for _ in $(seq 300); do
  m=$(master_id 2>/dev/null || echo 0)
  [ "$m" != 0 ] && [ "$m" != "$master" ] && break
  sleep 0.1
done
kill -9 "${dpid[$slave]}"
sleep 4
"$bin/chorus" --leaders "$leaders" bench --op upload --size 1MiB --concurrency 8 --duration 2 --json >"$dir/fill.json"
start_ds "$slave"
t0=$(date +%s.%N)
for _ in $(seq 1200); do
  [ "$(status_of "$slave" 2>/dev/null)" = active ] && break
  sleep 0.1
done
t1=$(date +%s.%N)
python3 - "$dir/fill.json" "$t0" "$t1" <<'PY' | tee -a "$out"
import json, sys
r = json.load(open(sys.argv[1]))
mib = r["bytes"] / 2**20
secs = float(sys.argv[3]) - float(sys.argv[2])
print(f"catch-up: {mib:.0f} MiB written while a slave was down; back to ACTIVE {secs:.1f} s after restart ({mib/secs:.0f} MiB/s, including its start)")
PY

# 4b. Catch-up under load: the only other live member is killed, the master
# takes 16 uploaders alone, and the member comes back while they go on (the
# master holds writes to the copy's pace if the copy cannot close in).
master=$(master_id)
other=$("$bin/chorus" --leaders "$leaders" status --json | python3 -c "
import json,sys; r=json.load(sys.stdin)
print(([s['id'] for s in r['servers'] if s['status']=='active' and s['id']!=$master] or [0])[0])")
if [ "$other" != 0 ]; then
  kill -9 "${dpid[$other]}"
  "$bin/chorus" --leaders "$leaders" bench --op upload --size 4KiB --concurrency 16 \
    --duration 30 --json >"$dir/load.json" &
  load=$!
  sleep 6
  start_ds "$other"
  t0=$(date +%s.%N)
  for _ in $(seq 2400); do
    [ "$(status_of "$other" 2>/dev/null)" = active ] && break
    sleep 0.1
  done
  t1=$(date +%s.%N)
  wait "$load" || true
  held=$(grep -c "holding writes to its pace" "$dir/d$master.log" || true)
  python3 - "$dir/load.json" "$t0" "$t1" "$held" <<'PY' | tee -a "$out"
import json, sys
r = json.load(open(sys.argv[1]))
secs = float(sys.argv[3]) - float(sys.argv[2])
print(f"catch-up under load: back to ACTIVE {secs:.1f} s after restart while 16 uploaders went on "
      f"({r['ops_per_sec']:.0f} 4 KiB uploads/s over the 30 s run); master held writes to the copy's pace: "
      f"{'yes' if int(sys.argv[4]) > 0 else 'no'}")
PY
fi

# 5. One async group of 3 (its own leaders; the sync cluster stopped first).
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
rm -rf "$dir"/l[123] "$dir"/d[123]
apeers="1=127.0.0.1:24301,2=127.0.0.1:24302,3=127.0.0.1:24303"
aleaders="127.0.0.1:24301,127.0.0.1:24302,127.0.0.1:24303"
for i in 1 2 3; do
  "$bin/chorus-leader" --id $i --listen 127.0.0.1:2430$i --peers "$apeers" \
    --data-dir "$dir/al$i" 2>"$dir/al$i.log" &
  pids+=($!)
done
for i in 1 2 3; do
  "$bin/chorus-dataserver" --data-dir "$dir/ad$i" --listen 127.0.0.1:2431$i --server-id "$i" \
    --leaders "$aleaders" --replication async --reserved-space 1GiB --fsync always \
    2>>"$dir/ad$i.log" &
  pids+=($!)
done
aactive() { "$bin/chorus" --leaders "$aleaders" status --json | python3 -c '
import json,sys; r=json.load(sys.stdin)
print(sum(1 for s in r["servers"] if s["status"]=="active"))'; }
for _ in $(seq 300); do [ "$(aactive 2>/dev/null || echo 0)" = 3 ] && break; sleep 0.1; done
for args in "--op upload --size 4KiB" "--op upload --size 1MiB"; do
  # shellcheck disable=SC2086
  bench "async group of 3" --leaders "$aleaders" -- $args --concurrency 16 --replica-lag
done
"$bin/chorus" --leaders "$aleaders" status | tee -a "$out" || true
{ "$bin/chorus" --leaders "$aleaders" verify group1 --wait 30 2>&1 || true; } | tail -1 | tee -a "$out"

# Summary of every bench above.
python3 - "$out" <<'PY' | tee -a "$dir/summary.txt"
import json, sys
rows, label = [], None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("== "):
        label = line[3:].split(": chorus bench")[0]
    elif line.startswith("{") and label:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        lag = r.get("replica_lag_ms")
        rows.append((label, r["op"], r["size"], r["ops_per_sec"], r["mib_per_sec"],
                     r["latency_us"]["p50"], r["latency_us"]["p99"],
                     "-" if not lag else f'{lag["p50"]:.2f}/{lag["p99"]:.2f}/{lag["max"]:.2f}'))
print(f'{"setup":<18} {"op":<9} {"size":>8} {"ops/s":>9} {"MiB/s":>8} {"p50 us":>8} {"p99 us":>8}  replica lag ms p50/p99/max')
for l, op, size, ops, mib, p50, p99, lag in rows:
    print(f"{l:<18} {op:<9} {size:>8} {ops:>9.0f} {mib:>8.1f} {p50:>8} {p99:>8}  {lag}")
PY
echo "results in $out (summary in $dir/summary.txt)"
