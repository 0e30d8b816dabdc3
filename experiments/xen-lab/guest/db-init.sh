#!/bin/sh
# PID 1 of a lab MariaDB domU (after db-boot.sh): the guest side as a Debian guest
# would run it from its init system. Reads the server config dom0 wrote into this
# domain's xenstore directory, brings up the network (an address derived from the
# domU's MAC, so a replica with a fresh MAC gets its own), makes the filesystem and a
# fresh datadir on a new source's first boot, starts MariaDB through dbfork-guestd,
# puts the guest side behind a vchan and reports its state at data/dbfork-state.
# When dom0 hands it an agent setup (dbfork/agent: the server shares pages), the
# server runs with dbfork's agent: a source loads the grant module, either role gets
# the guest end of its channel to dom0's page table.
# Runs inside the domU.
export PATH=/run/dbfork-lab:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mount -t tmpfs tmpfs /var/log
ln -sf /proc/self/fd /dev/fd
say() { echo "$*" >/dev/hvc0; }
state() { xenstore-write data/dbfork-state "$1"; }
fail() {
    say "DBFORK-GUEST-FAIL $*"
    state "failed: $*"
    while :; do sleep 3600; done
}
hostname dbfork-guest
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-netfront; do modprobe "$m" 2>/dev/null; done
mount -t xenfs xenfs /proc/xen
domid=$(xenstore-read domid) || fail "xenstore-read domid"
state starting

# The network: 10.99.X.Y/16 from the MAC's last two bytes (dom0 is 10.99.0.1).
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0/address ] && [ "$i" -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
mac=$(cat /sys/class/net/eth0/address 2>/dev/null) || fail "no eth0"
b5=$(echo "$mac" | cut -d: -f5)
b6=$(echo "$mac" | cut -d: -f6)
ip="10.99.$((0x$b5)).$((0x$b6))"
ip addr add "$ip/16" dev eth0 || fail "network setup for $ip"
ip link set eth0 up || fail "network setup for $ip"
say "DBFORK-GUEST domid=$domid ip=$ip: network up"

mkdir -p /run/dbfork
xenstore-read dbfork/instance >/run/dbfork/instance.json 2>/tmp/err ||
    fail "no server config from dom0 at dbfork/instance: $(cat /tmp/err)"
fmt=$(xenstore-read dbfork/format 2>/dev/null)
if [ -n "$fmt" ] && ! blkid /dev/xvdb >/dev/null 2>&1; then
    "mkfs.$fmt" -q /dev/xvdb >/tmp/mkfs.out 2>&1 || fail "mkfs.$fmt /dev/xvdb: $(tr '\n' ' ' </tmp/mkfs.out)"
fi
mount /dev/xvdb /var/lib/dbfork 2>/tmp/err || fail "mounting the database disk: $(cat /tmp/err)"
say "DBFORK-GUEST database disk mounted${fmt:+ (made $fmt)}; starting the server"

# xl shutdown runs the kernel's poweroff helper: the server stops cleanly first.
echo /run/dbfork-lab/db-poweroff.sh >/proc/sys/kernel/poweroff_cmd
init_flag=""
[ -n "$fmt" ] && init_flag=--init-datadir
agent_flags=""
if xenstore-read dbfork/agent >/run/dbfork/agent.json 2>/dev/null; then
    if grep -q '"role":"source"' /run/dbfork/agent.json; then
        # Without it the agent turns sharing off and says which device it lacks.
        insmod /run/dbfork-lab/dbfork_gnt.ko 2>/tmp/err || say "DBFORK-GUEST insmod dbfork_gnt.ko: $(cat /tmp/err)"
    fi
    # dbfork's relay, not Xen's vchan-socket-proxy: it exits once dom0 closes a ring
    # it still writes to, and then the agent can never reach the page table again.
    /run/dbfork-lab/dbfork-vchan-relay connect 0 "/local/domain/$domid/dbfork/pagetable" \
        /run/dbfork/pt.sock >/run/dbfork/pt-relay.log 2>&1 &
    agent_flags="--agent /run/dbfork/agent.json --agent-lib /run/dbfork-lab/libdbfork_agent.so --xen-domid $domid --page-table /run/dbfork/pt.sock"
    say "DBFORK-GUEST sharing pages: $(cat /run/dbfork/agent.json)"
fi
# shellcheck disable=SC2086 # the flags are words
dbfork-guestd --instance /run/dbfork/instance.json --listen /run/dbfork/guestd.sock \
    --start-server $init_flag $agent_flags --bind-address "$ip" >/run/dbfork/guestd.log 2>&1 &
gpid=$!
n=0
while [ ! -S /run/dbfork/guestd.sock ]; do
    if ! kill -0 "$gpid" 2>/dev/null; then
        # The whole story on the console, the gist for dom0.
        grep -av '^ *at \|^ *[0-9]*: ' /run/dbfork/guestd.log | tr -cd '[:print:]\n' | tail -n 150 >/dev/hvc0
        fail "dbfork-guestd: $(grep -v '^ *at \|^ *[0-9]*: \|^Stack backtrace' /run/dbfork/guestd.log | tail -n 12 | tr '\n' ' ' | cut -c1-600)"
    fi
    sleep 0.5
    n=$((n + 1))
    # Every minute, what the server is doing (a first boot or a crash recovery is long).
    [ $((n % 120)) = 0 ] && say "DBFORK-GUEST still starting: $(tail -n 1 /var/lib/dbfork/error.log 2>/dev/null | tr -cd '[:print:]' | cut -c1-200)"
done
if [ -n "$fmt" ]; then
    # The lab's own account for its checks and load from dom0 (a replica inherits it).
    mariadb -S /var/lib/dbfork/mysqld.sock -e "CREATE USER lab@'%' IDENTIFIED BY 'lab';
        GRANT ALL ON *.* TO lab@'%'; CREATE DATABASE sbtest;" 2>/tmp/err ||
        fail "creating the lab account: $(cat /tmp/err)"
fi
# dbfork's relay: Xen's vchan-socket-proxy in server mode leaves a first request that
# arrives with the connect unread (docs/xen.md).
/run/dbfork-lab/dbfork-vchan-relay serve 0 "/local/domain/$domid/data/dbfork" \
    /run/dbfork/guestd.sock >/run/dbfork/relay.log 2>&1 &
state ready
say "DBFORK-GUEST-READY domid=$domid ip=$ip"
while :; do sleep 3600; done
