#!/usr/bin/env bash
# Replica warm-up on a throttled (HDD-like) volume, with and without page sharing.
# The replica's datadir sits on a loop device whose reads are limited to RIOPS per
# second for the replica's process (cgroup v1 blkio throttle); the source's datadir is
# on the normal disk. Prints the replica's per-second sysbench oltp_read_only tps and
# the seconds until it first reaches 90 % of its steady rate (mean of the last 10 s).
#
#   CARGO_TARGET_DIR=/work/main/target-agent cargo build --release -p dbfork-agent
#   guest-agent/bench/warmup.sh
#
# Env: AGENT, BP (default 256M), TABLES, SIZE, SECS (replica run), RIOPS (default 200).
set -euo pipefail
AGENT=${AGENT:-/work/main/target-agent/release/libdbfork_agent.so}
BP=${BP:-256M}
TABLES=${TABLES:-4}
SIZE=${SIZE:-100000}
SECS=${SECS:-60}
RIOPS=${RIOPS:-200}
W=$(mktemp -d /tmp/dbfork-warm.XXXXXX)
SHM=$(mktemp -d /dev/shm/dbfork-warm.XXXXXX)
CG=/sys/fs/cgroup/blkio/dbfork-warm-$$
PIDS=()
LOOP=""

cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  sleep 0.5
  mountpoint -q "$W/mnt" && umount "$W/mnt"
  [[ -n $LOOP ]] && losetup -d "$LOOP"
  [[ -d $CG ]] && rmdir "$CG" 2>/dev/null || true
  rm -rf "$W" "$SHM"
}
trap cleanup EXIT

sql() { mariadb --no-defaults -uroot --socket="$W/$1.sock" -N -B -e "$2"; }

start() {
  local name=$1 data=$2; shift 2
  mkdir -p "$W/$name.tmp"
  env "$@" /usr/sbin/mariadbd --no-defaults --datadir="$data" --socket="$W/$name.sock" \
    --pid-file="$W/$name.pid" --log-error="$W/$name.err" --tmpdir="$W/$name.tmp" \
    --skip-networking --user=root --innodb-use-native-aio=0 --skip-log-bin \
    --innodb-buffer-pool-size="$BP" --innodb-buffer-pool-load-at-startup=0 \
    --innodb-buffer-pool-dump-at-shutdown=0 >/dev/null 2>&1 &
  PIDS+=($!)
  eval "PID_$name=$!"
  for _ in $(seq 600); do sql "$name" "SELECT 1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$name did not start"; tail "$W/$name.err"; exit 1
}

stop() { sql "$1" "SHUTDOWN" || true; local p; p=$(eval echo "\$PID_$1"); while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; }

max_lsn() {
  python3 - "$1" <<'PY'
import os, struct, sys
m = 0
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        if f.endswith('.ibd') or f.startswith('ibdata') or f.startswith('undo'):
            with open(os.path.join(root, f), 'rb') as fh:
                while (p := fh.read(16384)) and len(p) == 16384:
                    m = max(m, struct.unpack('>Q', p[16:24])[0])
print(m)
PY
}

echo "# setup: $TABLES x $SIZE rows, buffer pool $BP, replica volume limited to $RIOPS read IOPS" >&2
truncate -s 2G "$W/vol.img"
LOOP=$(losetup --find --show "$W/vol.img")
mkfs.ext4 -q "$LOOP"
mkdir -p "$W/mnt"; mount "$LOOP" "$W/mnt"
DEV=$(lsblk -dno MAJ:MIN "$LOOP" | tr -d ' ')
mkdir "$CG"
echo "$DEV $RIOPS" > "$CG/blkio.throttle.read_iops_device"

mariadb-install-db --no-defaults --datadir="$W/seed" --user=root --auth-root-authentication-method=normal --skip-test-db >/dev/null 2>&1
start seed "$W/seed"
sql seed "CREATE DATABASE sbtest"
sysbench oltp_read_only --mysql-socket="$W/seed.sock" --mysql-user=root --mysql-db=sbtest \
  --tables="$TABLES" --table-size="$SIZE" prepare >/dev/null
stop seed
S=$(max_lsn "$W/seed")

run_mode() { # on|off
  local mode=$1
  rm -rf "$W/src" "$W/mnt/rep" "$SHM"/*
  cp -a "$W/seed" "$W/src"; cp -a "$W/seed" "$W/mnt/rep"
  sync; echo 3 > /proc/sys/vm/drop_caches
  echo "$S" > "$W/clone_lsn"
  local common=(DBFORK_POOL_PATH="$SHM/pool" DBFORK_CLONE_LSN_FILE="$W/clone_lsn")
  if [[ $mode == on ]]; then
    start src "$W/src" LD_PRELOAD="$AGENT" DBFORK_AGENT_ROLE=source "${common[@]}"
  else
    start src "$W/src"
  fi
  for t in $(seq "$TABLES"); do
    sql src "SELECT SUM(LENGTH(c)) FROM sbtest.sbtest$t; SELECT SUM(k) FROM sbtest.sbtest$t FORCE INDEX(k_$t)" >/dev/null
  done
  if [[ $mode == on ]]; then
    start rep "$W/mnt/rep" LD_PRELOAD="$AGENT" DBFORK_AGENT_ROLE=replica "${common[@]}" \
      DBFORK_SNAPSHOT_LSN="$S" DBFORK_REPLICA_WRITES="$W/rep.writes" DBFORK_AGENT_STATS="$W/rep.json"
  else
    start rep "$W/mnt/rep"
  fi
  # Throttle every thread of the replica from here on.
  echo "$PID_rep" > "$CG/cgroup.procs"
  sysbench oltp_read_only --mysql-socket="$W/rep.sock" --mysql-user=root --mysql-db=sbtest \
    --tables="$TABLES" --table-size="$SIZE" --threads=2 --time="$SECS" --report-interval=1 run \
    > "$W/rep-$mode.txt"
  local series; series=$(awk '/^\[ *[0-9]+s \]/ {for(i=1;i<=NF;i++) if($i=="tps:") print $(i+1)}' "$W/rep-$mode.txt")
  echo "$series" | python3 -c "
import sys
tps=[float(x) for x in sys.stdin.read().split()]
steady=sum(tps[-10:])/len(tps[-10:])
t90=next((i+1 for i,x in enumerate(tps) if x>=0.9*steady), None)
print('## sharing $mode: steady %.0f tps (last 10 s), first second at >= 90%%: %s s' % (steady, t90))
print('tps per second:', ' '.join('%.0f' % x for x in tps))
"
  [[ -f $W/rep.json ]] && python3 -c "import json;d=json.load(open('$W/rep.json'));print('replica: shared %d, lookup misses %d, reads of 16K pages %d' % (d['shared'], d['lookup_misses'], d['reads_page_sized']))"
  stop rep; stop src
}

run_mode off
run_mode on
