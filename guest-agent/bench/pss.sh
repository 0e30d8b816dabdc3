#!/usr/bin/env bash
# Memory of a source + 2 replicas under sysbench oltp_read_only, with and without
# page sharing. Prints one table per mode: per-process PSS / private memory
# (from /proc/PID/smaps_rollup) and the pool size. Not a test: a measurement.
#
#   cargo build --release -p dbfork-agent   (CARGO_TARGET_DIR=/work/main/target-agent)
#   guest-agent/bench/pss.sh
#
# Env: AGENT (the .so), BP (buffer pool per server, default 256M), TABLES, SIZE,
# SECS (sysbench seconds per phase).
set -euo pipefail
AGENT=${AGENT:-/work/main/target-agent/release/libdbfork_agent.so}
BP=${BP:-256M}
TABLES=${TABLES:-4}
SIZE=${SIZE:-100000}
SECS=${SECS:-30}
W=$(mktemp -d /tmp/dbfork-pss.XXXXXX)
SHM=$(mktemp -d /dev/shm/dbfork-pss.XXXXXX)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W" "$SHM"
}
trap cleanup EXIT

sql() { mariadb --no-defaults -uroot --socket="$W/$1.sock" -N -B -e "$2"; }

# start NAME DATADIR [VAR=VALUE...]: mariadbd with the given environment.
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
  for _ in $(seq 300); do sql "$name" "SELECT 1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$name did not start"; tail "$W/$name.err"; exit 1
}

stop() { sql "$1" "SHUTDOWN" || true; local p; p=$(eval echo "\$PID_$1"); while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; }

bench() {
  sysbench oltp_read_only --mysql-socket="$W/$1.sock" --mysql-user=root --mysql-db=sbtest \
    --tables="$TABLES" --table-size="$SIZE" --threads=2 --time="$SECS" --report-interval=0 run \
    | awk '/transactions:/ {print $3}' | tr -d '('
}

rollup() { # PID -> "pss_mib private_mib shared_mib"
  awk '/^Pss:/ {pss=$2} /^Private_Clean:/ {pc=$2} /^Private_Dirty:/ {pd=$2}
       /^Shared_Clean:/ {sc=$2} /^Shared_Dirty:/ {sd=$2}
       END {printf "%.1f %.1f %.1f\n", pss/1024, (pc+pd)/1024, (sc+sd)/1024}' "/proc/$1/smaps_rollup"
}

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

echo "# setup: $TABLES x $SIZE rows, buffer pool $BP each" >&2
mariadb-install-db --no-defaults --datadir="$W/seed" --user=root --auth-root-authentication-method=normal --skip-test-db >/dev/null 2>&1
start seed "$W/seed"
sql seed "CREATE DATABASE sbtest"
sysbench oltp_read_only --mysql-socket="$W/seed.sock" --mysql-user=root --mysql-db=sbtest \
  --tables="$TABLES" --table-size="$SIZE" prepare >/dev/null
stop seed
S=$(max_lsn "$W/seed")

run_mode() { # on|off
  local mode=$1
  rm -rf "$W/src" "$W/r1" "$W/r2" "$SHM"/*
  cp -a "$W/seed" "$W/src"; cp -a "$W/seed" "$W/r1"; cp -a "$W/seed" "$W/r2"
  echo "$S" > "$W/clone_lsn"
  local common=(DBFORK_POOL_PATH="$SHM/pool" DBFORK_CLONE_LSN_FILE="$W/clone_lsn")
  if [[ $mode == on ]]; then
    start src "$W/src" LD_PRELOAD="$AGENT" DBFORK_AGENT_ROLE=source "${common[@]}" DBFORK_AGENT_STATS="$W/src.json"
  else
    start src "$W/src"
  fi
  # Warm the source with every page of the data set (PK and secondary index scans).
  for t in $(seq "$TABLES"); do
    sql src "SELECT SUM(LENGTH(c)) FROM sbtest.sbtest$t; SELECT SUM(k) FROM sbtest.sbtest$t FORCE INDEX(k_$t)" >/dev/null
  done
  local tps_src; tps_src=$(bench src)
  for r in r1 r2; do
    if [[ $mode == on ]]; then
      start "$r" "$W/$r" LD_PRELOAD="$AGENT" DBFORK_AGENT_ROLE=replica "${common[@]}" \
        DBFORK_SNAPSHOT_LSN="$S" DBFORK_REPLICA_WRITES="$W/$r.writes" DBFORK_AGENT_STATS="$W/$r.json"
    else
      start "$r" "$W/$r"
    fi
  done
  declare -A START
  for n in r1 r2; do START[$n]=$(rollup "$(eval echo "\$PID_$n")" | cut -d' ' -f2); done
  local tps_r1 tps_r2; tps_r1=$(bench r1); tps_r2=$(bench r2)
  echo "## sharing $mode (tps: source $tps_src, r1 $tps_r1, r2 $tps_r2)"
  printf "%-8s %10s %12s %11s %16s %s\n" process pss_mib private_mib shared_mib private_growth shared_pages
  local total=0
  for n in src r1 r2; do
    local p; p=$(eval echo "\$PID_$n")
    read -r pss priv shr < <(rollup "$p")
    local shared_pages="-"
    [[ -f $W/$n.json ]] && shared_pages=$(python3 -c "import json;d=json.load(open('$W/$n.json'));print(d['shared'] if d['role']=='replica' else 'pooled=%d' % d['pages_pooled'])")
    local growth="-"
    [[ -n ${START[$n]:-} ]] && growth=$(echo "$priv - ${START[$n]}" | bc)
    printf "%-8s %10s %12s %11s %16s %s\n" "$n" "$pss" "$priv" "$shr" "$growth" "$shared_pages"
    total=$(echo "$total + $pss" | bc)
  done
  local pool_mib=0
  [[ -f $SHM/pool ]] && pool_mib=$(du -m "$SHM/pool" | cut -f1)
  echo "total_pss_mib $total  pool_file_mib $pool_mib  buffer_pool $BP"
  for n in r1 r2 src; do stop "$n"; done
}

run_mode off
run_mode on
