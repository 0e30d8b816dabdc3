# shellcheck shell=sh
# The lab's fork run, sourced by init-dom0.sh (its pass/fail/oneline) in dom0.
# A source domU with MariaDB on a dbfork volume (`dbfork source create --domain-config`),
# a sysbench dataset and write load from dom0 over the domUs' bridge, a replica domU
# by `dbfork clone`, then: the replica answers, a write on the source arrives, the
# replica's export is killed mid-hydration (status says so, a restart brings it back),
# CHECKSUM TABLE equality after catch-up, the replica destroyed with the source
# unharmed, the source destroyed with nothing left. Each step prints its time.
# The domains share buffer-pool pages through grants: the replica maps pages of the
# source (the agents', pagetabled's and Xen's counts), a page the source changed after
# the clone reads as it was, the replica's own write stays its own, and the source's
# grants mapped are back to where they were once the replica is gone. A second replica
# without sharing reads the same tables, for the memory of each (xl list, the guests'
# available memory, the servers' PSS). Then the other order: a sharing replica keeps
# running, on its own copies, while its source stops, and no dying source domain is
# left held by its mappings.

export DBFORK_STORE=/var/lib/dbfork-lab
SRC=labsrc
SRC_IP=10.99.16.2
SB="sysbench oltp_write_only --db-driver=mysql --mysql-host=$SRC_IP --mysql-user=lab --mysql-password=lab --mysql-db=sbtest --tables=2 --table-size=2000"
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
sql() { # sql HOST STATEMENT
    mariadb -h "$1" -ulab -plab --connect-timeout=10 -N -B -e "$2"
}
# The address a domU's guest side reported on its console.
ip_of() { grep -a -o 'DBFORK-GUEST-READY domid=[0-9]* ip=[0-9.]*' "/var/log/xen/console/guest-$1.log" 2>/dev/null | tail -n 1 | sed 's/.*ip=//'; }
checksums() { # checksums HOST: the two sysbench tables' checksums, one line
    sql "$1" "CHECKSUM TABLE sbtest.sbtest1, sbtest.sbtest2" 2>/dev/null | awk '{print $2}' | tr '\n' ' '
}
record_field() { # record_field NAME KEY: a number from an instance's record
    grep -o "\"$2\": *[0-9]*" "$DBFORK_STORE/instances/$1/record.json" 2>/dev/null | grep -o '[0-9]*$' | head -n 1
}
record_text() { # record_text NAME KEY: a string (without escapes) from an instance's record
    grep -o "\"$2\": *\"[^\"]*\"" "$DBFORK_STORE/instances/$1/record.json" 2>/dev/null | head -n 1 | sed 's/.*: *"//; s/"$//'
}

status_json() { # status_json NAME FILE: dbfork status NAME --json into FILE, bounded
    timeout 120 dbfork status "$1" --json >"$2" 2>&1 ||
        echo "  (dbfork status $1 failed or took over 120 s: $(oneline "$2"))" >&2
}
agent() { # agent NAME KEY: a counter of NAME's agent, from dbfork status --json
    status_json "$1" /tmp/agent.json
    grep -o "\"$2\": *[0-9]*" /tmp/agent.json | head -n 1 | grep -o '[0-9]*$'
}
grants_of() { # grants_of DOMID MAPPER: how many of DOMID's grants MAPPER maps now (Xen's count)
    dbfork-grant-probe grants --domid "$1" --mapped-by "$2" 2>/dev/null
}

# What a failed step leaves to read: the domU's console, xl's log, the hotplug log.
dump_domain() { # dump_domain NAME
    echo "  --- xl list: $(xl list 2>&1 | awk 'NR > 1 {print $1 "(" $2 ")"}' | tr '\n' ' ')"
    echo "  --- console of $1:"
    tail -n 170 "/var/log/xen/console/guest-$1.log" 2>/dev/null | tr -d '\r' | sed 's/^/  | /'
    echo "  --- xl log of $1:"
    tail -n 15 "/var/log/xen/xl-$1.log" 2>/dev/null | sed 's/^/  | /'
    echo "  --- hotplug log:"
    tail -n 10 /var/log/xen/xen-hotplug.log 2>/dev/null | sed 's/^/  | /'
}
# dom0's channel relays of a domain: its problems and their logs.
relay_logs() { # relay_logs NAME
    echo "  --- $1's problems: $(timeout 60 dbfork status "$1" 2>&1 | grep PROBLEM | tr '\n' ' ' | cut -c1-300)"
    for l in "$DBFORK_STORE/run/$1.channel.log" "$DBFORK_STORE/run/$1.pagetable.log"; do
        echo "  --- $l:"
        tail -n 8 "$l" 2>/dev/null | sed 's/^/  | /'
    done
}
# A step that needs the one before it is skipped (and fails) when that one failed.
SKIP=""

# --- the dom0 side: a store disk, the domUs' bridge, the disk backends -----------------
fs_err=""
for m in virtio_pci virtio_blk xen-blkback xen-netback bridge; do modprobe "$m" 2>/dev/null; done
modprobe nbd nbds_max=16 2>/dev/null
i=0
while [ ! -b /dev/vdb ] && [ "$i" -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
[ -b /dev/vda ] || fs_err="$fs_err no OS disk /dev/vda;"
if [ -b /dev/vdb ]; then
    mkfs.ext4 -q -F /dev/vdb >/tmp/mkfs.out 2>&1 || fs_err="$fs_err mkfs: $(oneline /tmp/mkfs.out);"
    mkdir -p "$DBFORK_STORE" && mount /dev/vdb "$DBFORK_STORE" || fs_err="$fs_err mount failed;"
else
    fs_err="$fs_err no store disk /dev/vdb;"
fi
ip link add xenbr0 type bridge && ip addr add 10.99.0.1/16 dev xenbr0 && ip link set xenbr0 up ||
    fs_err="$fs_err bridge xenbr0;"
cp /var/lib/xen-lab/source-db.cfg /etc/xen/$SRC.cfg
if [ -z "$fs_err" ]; then pass fork-setup; else fail fork-setup "$fs_err"; fi

# --- the source domU -------------------------------------------------------------------
t=$(now)
if dbfork source create $SRC --domain-config /etc/xen/$SRC.cfg --size 1G --buffer-pool 64M \
    >/tmp/src.out 2>&1; then
    pass source-create
    echo "  dbfork source create took $(since "$t") s: $(oneline /tmp/src.out)"
else
    fail source-create "$(oneline /tmp/src.out)"
    dump_domain $SRC
    SKIP="no source"
fi
if sql $SRC_IP "SELECT @@server_id, @@version, @@innodb_flush_log_at_trx_commit" >/tmp/q.out 2>&1; then
    pass source-answers
    echo "  $SRC at $SRC_IP: server_id, version, trx_commit = $(oneline /tmp/q.out)"
else
    fail source-answers "$(oneline /tmp/q.out)"
fi
t=$(now)
if $SB prepare >/tmp/sb.out 2>&1; then
    pass sysbench-prepare
    echo "  2 tables x 2000 rows in $(since "$t") s"
else
    fail sysbench-prepare "$(oneline /tmp/sb.out)"
fi
# A table the source holds in its buffer pool at the clone, for the sharing checks.
sql $SRC_IP "CREATE DATABASE IF NOT EXISTS lab;
    CREATE TABLE lab.pages (id INT PRIMARY KEY, v VARCHAR(32), pad CHAR(200)) ENGINE=InnoDB;
    INSERT INTO lab.pages SELECT seq, 'old', REPEAT('p', 200) FROM lab.seq_1_to_2000;
    SELECT COUNT(*), SUM(LENGTH(pad)) FROM lab.pages" >/tmp/q.out 2>&1 ||
    echo "  (making lab.pages: $(oneline /tmp/q.out))"
SRC_DOMID=$(xl domid $SRC 2>/dev/null)
if [ -n "$SKIP" ]; then
    for c in clone-under-load replica-answers replica-listed write-arrives pages-shared \
        changed-page-old replica-write-private export-killed replica-restarted checksum-equal \
        memory-with-without channel-first-request replica-died-outside replica-destroy grants-released source-unharmed source-first-replica-runs \
        source-destroy; do
        fail "$c" "skipped: $SKIP"
    done
    return 0
fi
$SB --threads=1 --time=1200 --report-interval=5 run >/tmp/load.out 2>&1 &
LOAD_PID=$!
GTID_BEFORE=$(sql $SRC_IP "SELECT @@gtid_binlog_pos" 2>/dev/null)
sleep 5
kill -0 $LOAD_PID 2>/dev/null || echo "  (the write load ended at once: $(oneline /tmp/load.out))"

# --- the replica, by dbfork clone, under the write load --------------------------------
t=$(now)
if dbfork clone $SRC r1 --rate 1 >/tmp/clone.out 2>&1; then
    pass clone-under-load
    echo "  dbfork clone took $(since "$t") s: $(tail -n 1 /tmp/clone.out | cut -c1-300)"
else
    fail clone-under-load "$(oneline /tmp/clone.out)"
    echo "  --- dbfork clone said:"
    tail -n 20 /tmp/clone.out | fold -w 200 | sed 's/^/  | /'
    dump_domain r1
    for c in replica-answers replica-listed write-arrives pages-shared changed-page-old \
        replica-write-private export-killed replica-restarted checksum-equal memory-with-without \
        replica-died-outside replica-destroy grants-released source-unharmed source-first-replica-runs source-destroy; do
        fail "$c" "skipped: no replica"
    done
    kill $LOAD_PID 2>/dev/null
    dbfork destroy $SRC >/dev/null 2>&1
    return 0
fi
R_IP=$(ip_of r1)
# A read-only replica with its own server_id and the source's data.
if [ -n "$R_IP" ] && sql "$R_IP" "SELECT @@server_id, (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES WHERE VARIABLE_NAME = 'READ_ONLY'), COUNT(*) FROM sbtest.sbtest1" >/tmp/q.out 2>&1 &&
    [ "$(cut -f2 /tmp/q.out)" = ON ] && [ "$(cut -f1 /tmp/q.out)" != 1 ]; then
    pass replica-answers
    echo "  r1 at $R_IP: server_id, read_only, rows = $(oneline /tmp/q.out)"
else
    fail replica-answers "ip '$R_IP': server_id, read_only, rows = $(oneline /tmp/q.out 2>/dev/null) $(sql "$R_IP" "SHOW GLOBAL VARIABLES LIKE 'read_only'" 2>&1 | tr '\n' ' ')"
    dump_domain r1
fi
t=$(now)
timeout 300 dbfork list >/tmp/list.out 2>&1 || echo "  (dbfork list failed or took over 300 s)"
timeout 300 dbfork status r1 --json >/tmp/st.json 2>&1 || echo "  (dbfork status r1 failed or took over 300 s)"
echo "  dbfork list and status r1 took $(since "$t") s"
if grep -q "^$SRC .*running" /tmp/list.out && grep -q "^r1 .*replica .*running" /tmp/list.out &&
    grep -q '"substrate": "xen"' /tmp/st.json; then
    pass replica-listed
    echo "  $(tr -s ' ' </tmp/list.out | tr '\n' '|')"
else
    fail replica-listed "list: $(oneline /tmp/list.out) status: $(oneline /tmp/st.json)"
    relay_logs $SRC
    relay_logs r1
fi

# --- a write on the source arrives -----------------------------------------------------
TOKEN="mark-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
sql $SRC_IP "CREATE DATABASE IF NOT EXISTS lab; CREATE TABLE IF NOT EXISTS lab.marks (v VARCHAR(64)); INSERT INTO lab.marks VALUES ('$TOKEN')" >/tmp/q.out 2>&1
t=$(now)
arrived=0
for i in $(seq 1 120); do
    [ "$(sql "$R_IP" "SELECT COUNT(*) FROM lab.marks WHERE v = '$TOKEN'" 2>/dev/null)" = 1 ] && { arrived=1; break; }
    sleep 1
done
if [ $arrived = 1 ]; then
    pass write-arrives
    echo "  $TOKEN on r1 $(since "$t") s after its insert on $SRC"
else
    fail write-arrives "$TOKEN not on r1 after 120 s: $(oneline /tmp/q.out) $(sql "$R_IP" 'SHOW SLAVE STATUS\G' 2>&1 | grep -E 'Running|Error' | tr -s ' ' | tr '\n' ' ' | cut -c1-300)"
fi

# --- page sharing through grants --------------------------------------------------------
# r1 reads what the source held at the clone: those pages come mapped from the source's
# grants (the share rule allowing), not from r1's disk.
sql "$R_IP" "SELECT COUNT(*), SUM(LENGTH(pad)) FROM lab.pages; SELECT SUM(LENGTH(c)) FROM sbtest.sbtest1;
    SELECT SUM(LENGTH(c)) FROM sbtest.sbtest2" >/tmp/q.out 2>&1 || echo "  (reading on r1: $(oneline /tmp/q.out))"
R_SHARED=$(agent r1 shared)
PT_HITS=$(pagetabled stats --admin-socket "$DBFORK_STORE/run/pagetabled.admin" --json 2>/dev/null |
    grep -o '"hits": *[0-9]*' | head -n 1 | grep -o '[0-9]*$')
R1_DOMID=$(xl domid r1 2>/dev/null)
GRANTS_SHARED=$(grants_of "$SRC_DOMID" "$R1_DOMID")
if [ "${R_SHARED:-0}" -gt 0 ] && [ "${PT_HITS:-0}" -gt 0 ] && [ "${GRANTS_SHARED:-0}" -gt 0 ]; then
    pass pages-shared
    echo "  r1 mapped $R_SHARED pages of $SRC (lookups $(agent r1 lookups), declined as newer $(agent r1 declined_newer)); $SRC pooled $(agent $SRC pages_pooled), registered $(agent $SRC pages_registered); pagetabled hits $PT_HITS; Xen counts $GRANTS_SHARED of $SRC's grants (4 a frame) mapped by r1"
else
    fail pages-shared "r1 shared '$R_SHARED', pagetabled hits '$PT_HITS', $SRC's grants mapped by r1 (d$R1_DOMID) '$GRANTS_SHARED'; r1 status: $(dbfork status r1 --json 2>&1 | grep -E '"(role|sharing_off|sharing_off_reason|lookups|lookup_errors|map_errors|fallback_errors)"' | tr -s ' ' | tr '\n' ' ' | cut -c1-500); $SRC: $(dbfork status $SRC --json 2>&1 | grep -E '"(role|sharing_off|sharing_off_reason|pages_pooled|pages_registered|register_errors)"' | tr -s ' ' | tr '\n' ' ' | cut -c1-400)"
    dump_domain r1
    relay_logs $SRC
    relay_logs r1
fi
# A page the source changes after the clone (unlogged: it never reaches r1 by
# replication) reads on r1 as it was at the clone.
sql $SRC_IP "SET SESSION sql_log_bin = 0; UPDATE lab.pages SET v = 'new-on-source' WHERE id = 1" >/tmp/q.out 2>&1
on_src=$(sql $SRC_IP "SELECT v FROM lab.pages WHERE id = 1" 2>&1)
on_r1=$(sql "$R_IP" "SELECT v FROM lab.pages WHERE id = 1" 2>&1)
if [ "$on_src" = new-on-source ] && [ "$on_r1" = old ]; then
    pass changed-page-old
    echo "  lab.pages id 1: '$on_src' on $SRC, '$on_r1' on r1 (r1 declined as newer: $(agent r1 declined_newer))"
else
    fail changed-page-old "lab.pages id 1: '$on_src' on $SRC, '$on_r1' on r1 $(oneline /tmp/q.out)"
fi
# r1's own write to a page it maps from the source is its own (copied first).
sql "$R_IP" "SET SESSION sql_log_bin = 0; UPDATE lab.pages SET v = 'replica-own' WHERE id BETWEEN 1000 AND 1010" >/tmp/q.out 2>&1
on_r1=$(sql "$R_IP" "SELECT DISTINCT v FROM lab.pages WHERE id BETWEEN 1000 AND 1010" 2>&1)
on_src=$(sql $SRC_IP "SELECT DISTINCT v FROM lab.pages WHERE id BETWEEN 1000 AND 1010" 2>&1)
if [ "$on_r1" = replica-own ] && [ "$on_src" = old ] && sql "$R_IP" "SELECT 1" >/dev/null 2>&1; then
    pass replica-write-private
    echo "  lab.pages 1000-1010: '$on_r1' on r1, '$on_src' on $SRC; r1 made $(agent r1 unshared_on_write) frames private on its first write, $(agent r1 unshared_before_io) before a read into them"
else
    fail replica-write-private "lab.pages 1000-1010: '$on_r1' on r1, '$on_src' on $SRC $(oneline /tmp/q.out)"
    dump_domain r1
fi

# --- the replica's export killed during hydration --------------------------------------
dbfork status r1 --json >/tmp/st.json 2>&1
hyd=$(grep -o '"hydrated_percent": *[0-9.]*' /tmp/st.json | grep -o '[0-9.]*$')
EXPORT_PID=$(record_field r1 export_pid)
ek_err=""
if [ -z "$EXPORT_PID" ] || ! kill -0 "$EXPORT_PID" 2>/dev/null; then
    ek_err="no live export pid for r1 in its record ('$EXPORT_PID')"
elif awk -v h="$hyd" 'BEGIN{exit !(h >= 100)}'; then
    ek_err="r1 was hydrated already (${hyd}%): the kill would not be mid-hydration"
else
    kill -9 "$EXPORT_PID"
    # The domU keeps running; dbfork says what broke and how to bring it back.
    sleep 3
    dbfork status r1 >/tmp/st.out 2>&1
    xl list r1 >/dev/null 2>&1 || ek_err="the r1 domU died with its export"
    grep -q "broken" /tmp/st.out && grep -q "export process of volume r1" /tmp/st.out &&
        grep -q "dbfork restart r1" /tmp/st.out || ek_err="$ek_err status does not say: $(oneline /tmp/st.out)"
fi
if [ -z "$ek_err" ]; then
    pass export-killed
    echo "  killed r1's export (pid $EXPORT_PID) at ${hyd}% hydrated: $(grep -E 'state|export' /tmp/st.out | tr -s ' ' | tr '\n' '|' | cut -c1-300)"
else
    fail export-killed "$ek_err"
fi
t=$(now)
if dbfork restart r1 >/tmp/rs.out 2>&1 && R_IP=$(ip_of r1) && sql "$R_IP" "SELECT 1" >/dev/null 2>&1; then
    pass replica-restarted
    echo "  dbfork restart r1 took $(since "$t") s: $(grep -v WARN /tmp/rs.out | tr '\n' ' ' | cut -c1-300)"
    grep WARN /tmp/rs.out | cut -c1-300 | sed 's/^/  (restart) /'
else
    fail replica-restarted "$(oneline /tmp/rs.out) console: $(tail -n 4 /var/log/xen/console/guest-r1.log 2>/dev/null | tr -d '\r' | tr '\n' '|' | cut -c1-300)"
fi

# --- CHECKSUM TABLE equality after the load stops and the replica catches up ----------
kill $LOAD_PID 2>/dev/null
wait $LOAD_PID 2>/dev/null
echo "  write load (sysbench oltp_write_only, 1 thread, from dom0): source gtid $GTID_BEFORE before the clone, $(sql $SRC_IP "SELECT @@gtid_binlog_pos" 2>/dev/null) when it stopped; last report: $(grep -a '^\[' /tmp/load.out | tail -n 1 | tr -s ' ')"
t=$(now)
SRC_SUMS=$(checksums $SRC_IP)
equal=0
for i in $(seq 1 300); do
    [ -n "$SRC_SUMS" ] && [ "$(checksums "$R_IP")" = "$SRC_SUMS" ] && { equal=1; break; }
    sleep 1
done
if [ $equal = 1 ]; then
    pass checksum-equal
    echo "  CHECKSUM TABLE equal on $SRC and r1 ($SRC_SUMS) $(since "$t") s after the load stopped"
else
    fail checksum-equal "source '$SRC_SUMS', replica '$(checksums "$R_IP")'"
fi

# --- memory with and without sharing -------------------------------------------------
READS="SELECT COUNT(*), SUM(LENGTH(pad)) FROM lab.pages; SELECT SUM(LENGTH(c)) FROM sbtest.sbtest1;
    SELECT SUM(LENGTH(c)) FROM sbtest.sbtest2"
memory_of() { # memory_of NAME: its domain's MiB in xl list, its guest's available KiB, its server's PSS KiB
    status_json "$1" /tmp/mst.json
    printf '%s MiB in xl list, guest available %s KiB, server PSS %s KiB' \
        "$(xl list "$1" 2>/dev/null | awk 'NR == 2 {print $3}')" \
        "$(grep -o '"available_kib": *[0-9]*' /tmp/mst.json | grep -o '[0-9]*$')" \
        "$(grep -o '"pss_kib": *[0-9]*' /tmp/mst.json | grep -o '[0-9]*$')"
}
t=$(now)
if dbfork clone $SRC r2 --no-sharing >/tmp/clone2.out 2>&1 && R2_IP=$(ip_of r2) && [ -n "$R2_IP" ] &&
    sql "$R2_IP" "$READS" >/tmp/q.out 2>&1 && sql "$R_IP" "$READS" >>/tmp/q.out 2>&1; then
    M1=$(memory_of r1)
    M2=$(memory_of r2)
    MS=$(memory_of $SRC)
    if echo "$M1 $M2 $MS" | grep -q 'PSS [0-9]'; then
        pass memory-with-without
        echo "  $SRC: $MS; r1 (sharing, $(agent r1 shared) pages mapped): $M1; r2 (no sharing): $M2 (r2 cloned and read in $(since "$t") s)"
    else
        fail memory-with-without "no figures: $SRC '$MS', r1 '$M1', r2 '$M2'"
    fi
else
    fail memory-with-without "$(oneline /tmp/clone2.out) $(oneline /tmp/q.out)"
    dump_domain r2
fi
# --- dom0's first request on a new channel connection -------------------------------------
# Sent to r2's guest side (it runs no page-sharing agent) while its domU is paused: the
# connect and the request reach it as one event, which Xen's vchan-socket-proxy missed;
# the guest's end is dbfork's relay, and dbfork's endpoint would ask again on a new
# connection.
t=$(now)
CHANNEL=$(record_text r2 channel)
if timeout 120 dbfork-grant-probe channel-first-request --domain r2 --socket "$CHANNEL" \
    --relay-pid "$(record_field r2 relay_pid)" >/tmp/chan.out 2>&1; then
    pass channel-first-request
    echo "  $(oneline /tmp/chan.out) ($(since "$t") s in all)"
else
    fail channel-first-request "$(oneline /tmp/chan.out) (channel '$CHANNEL')"
    xl unpause r2 2>/dev/null
fi

# --- a replica domU that dies outside dbfork -------------------------------------------
# Shown down with the command that brings it back; destroyed with nothing left of it.
R2_EXPORT=$(record_field r2 export_pid)
xl destroy r2 >/tmp/xd.out 2>&1 || echo "  (xl destroy r2: $(oneline /tmp/xd.out))"
do_err=""
timeout 120 dbfork status r2 >/tmp/st2.out 2>&1
grep -q "down" /tmp/st2.out && grep -q "dbfork start r2" /tmp/st2.out ||
    do_err="status does not say down with its fix: $(oneline /tmp/st2.out);"
timeout 120 dbfork list >/tmp/list2.out 2>&1
grep -q "^r2 .*down" /tmp/list2.out || do_err="$do_err list: $(oneline /tmp/list2.out);"
if timeout 300 dbfork destroy r2 >/tmp/d2.out 2>&1; then
    [ ! -d "$DBFORK_STORE/instances/r2" ] || do_err="$do_err its record is left;"
    dbfork volume list 2>/dev/null | grep -q "^r2 " && do_err="$do_err its volume is left;"
    [ -n "$R2_EXPORT" ] && kill -0 "$R2_EXPORT" 2>/dev/null && do_err="$do_err its export (pid $R2_EXPORT) runs;"
else
    do_err="$do_err dbfork destroy r2: $(oneline /tmp/d2.out)"
fi
if [ -z "$do_err" ]; then
    pass replica-died-outside
    echo "  r2 destroyed by xl: status and list said down ($(grep -o 'dbfork start r2' /tmp/st2.out | head -n 1)); dbfork destroy r2 left no record, volume or export"
else
    fail replica-died-outside "$do_err"
fi

# --- teardown: the replica first, the source unharmed -------------------------------
R1_DOMID=$(xl domid r1 2>/dev/null)
GRANTS_R1=$(grants_of "$SRC_DOMID" "$R1_DOMID")
# What r1's agent did since its restart, for a failure's message.
status_json r1 /tmp/r1.json
R1_SHARING=$(grep -E '"(shared|lookups|lookup_errors|declined_newer|map_errors|fallback_errors|sharing_off_reason|unshared_on_write)"' /tmp/r1.json | tr -s ' ' | tr '\n' ' ' | cut -c1-400)
R1_PT_LOG=$(tail -n 6 "$DBFORK_STORE/run/r1.pagetable.log" 2>/dev/null | tr '\n' '|' | cut -c1-400)
R1_PT_RELAY=$(record_field r1 page_table_relay)
R1_PT_ALIVE=$(kill -0 "${R1_PT_RELAY:-0}" 2>/dev/null && echo alive || echo gone)
t=$(now)
nbd_connected() { for d in /sys/block/nbd*; do [ -e "$d/pid" ] && echo "${d##*/}"; done; }
if dbfork destroy r1 >/tmp/d.out 2>&1 && ! xl list r1 >/dev/null 2>&1 &&
    [ ! -d "$DBFORK_STORE/instances/r1" ] && [ "$(nbd_connected | wc -l)" = 1 ]; then
    pass replica-destroy
    echo "  dbfork destroy r1 took $(since "$t") s"
else
    fail replica-destroy "$(oneline /tmp/d.out) domU listed: $(xl list r1 >/dev/null 2>&1 && echo yes || echo no), NBD devices connected: $(nbd_connected | tr '\n' ' ')"
fi
GRANTS_AFTER=$(grants_of "$SRC_DOMID" "$R1_DOMID")
if [ "${GRANTS_R1:-0}" -gt 0 ] && [ "$GRANTS_AFTER" = 0 ]; then
    pass grants-released
    echo "  $SRC's grants mapped by r1 (d$R1_DOMID): $GRANTS_R1 before dbfork destroy r1, $GRANTS_AFTER after"
else
    fail grants-released "$SRC's grants mapped by r1 (d$R1_DOMID): '$GRANTS_R1' before dbfork destroy r1, '$GRANTS_AFTER' after; r1 before its destroy: $R1_SHARING; r1's page table relay (pid '$R1_PT_RELAY', $R1_PT_ALIVE) log: $R1_PT_LOG"
    relay_logs $SRC
fi
if [ "$(checksums $SRC_IP)" = "$SRC_SUMS" ] && sql $SRC_IP "INSERT INTO lab.marks VALUES ('after')" 2>/tmp/q.out &&
    dbfork status $SRC >/tmp/st.out 2>&1 && grep -q "running" /tmp/st.out; then
    pass source-unharmed
else
    fail source-unharmed "checksums '$(checksums $SRC_IP)' (were '$SRC_SUMS'), $(oneline /tmp/q.out) $(oneline /tmp/st.out)"
fi
# --- the other order: the source stops while a sharing replica runs --------------------
t=$(now)
sf_err=""
if dbfork clone $SRC r3 >/tmp/clone3.out 2>&1 && R3_IP=$(ip_of r3) && [ -n "$R3_IP" ] &&
    sql "$R3_IP" "$READS" >/tmp/q.out 2>&1; then
    R3_SUMS=$(sql "$R3_IP" "CHECKSUM TABLE lab.pages, sbtest.sbtest1, sbtest.sbtest2" 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
    R3_SHARED=$(agent r3 shared)
    if dbfork stop $SRC >/tmp/stop.out 2>&1; then
        # The stop returned once the domain died: one still held by r3's mappings of
        # its pages would be listed dying.
        left=$(xl list | awk 'NR > 1 {print $1}' | tr '\n' ' ')
        [ "$left" = "Domain-0 r3 " ] || sf_err="domains left: '$left';"
        after=$(sql "$R3_IP" "CHECKSUM TABLE lab.pages, sbtest.sbtest1, sbtest.sbtest2" 2>&1 | awk '{print $2}' | tr '\n' ' ')
        [ -n "$R3_SUMS" ] && [ "$after" = "$R3_SUMS" ] || sf_err="$sf_err r3's checksums '$R3_SUMS' then '$after';"
        dbfork status r3 --json >/tmp/st3.json 2>&1
        grep -q 'source is going away' /tmp/st3.json || sf_err="$sf_err r3 did not let go: $(grep -E '"(sharing_off_reason|frames_released|shared)"' /tmp/st3.json | tr -s ' ' | tr '\n' ' ')"
    else
        sf_err="dbfork stop $SRC: $(oneline /tmp/stop.out)"
    fi
else
    sf_err="clone r3: $(oneline /tmp/clone3.out) $(oneline /tmp/q.out)"
    dump_domain r3
fi
if [ -z "$sf_err" ]; then
    pass source-first-replica-runs
    echo "  r3 had mapped $R3_SHARED pages of $SRC; $SRC stopped with r3 running: r3 copied $(agent r3 frames_released) frames and answers with the same checksums; domains left: $left ($(since "$t") s)"
else
    fail source-first-replica-runs "$sf_err"
fi
dbfork destroy r3 >/tmp/d3.out 2>&1 || echo "  (destroying r3: $(oneline /tmp/d3.out))"

t=$(now)
if dbfork destroy $SRC >/tmp/d.out 2>&1 && [ "$(xl list | awk 'NR > 1 {print $1}' | tr '\n' ' ')" = "Domain-0 " ] &&
    [ -z "$(nbd_connected)" ] && [ -z "$(ls "$DBFORK_STORE/instances" 2>/dev/null)" ]; then
    pass source-destroy
    echo "  dbfork destroy $SRC took $(since "$t") s; only Domain-0 left, no NBD device connected"
else
    fail source-destroy "$(oneline /tmp/d.out) domains: $(xl list | awk 'NR > 1 {print $1}' | tr '\n' ' ') nbd: $(nbd_connected | tr '\n' ' ')"
fi
