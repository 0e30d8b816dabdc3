#!/bin/sh
# PID 1 of the lab's grant domU (after db-boot.sh, chosen by dbfork_lab_init= on the
# kernel command line). Loads dbfork's guest module and runs the granting side of the
# grant check (dbfork-grant-probe source: pool frames granted read-only to dom0, then
# dom0's requests served over xenstore, among them sharing through dom0's page table
# over a vchan). After the probe closes the device, reports at
# data/grant-probe/rmmod whether the module could be removed at once ("busy" while
# grants it ended at close are still mapped in dom0) and "ok" once it could, then
# powers off. Runs inside the domU.
export PATH=/run/dbfork-lab:/usr/sbin:/usr/bin:/sbin:/bin
mount -t tmpfs tmpfs /tmp
say() { echo "$*" >/dev/hvc0; }
fail() {
    say "DBFORK-GRANT-FAIL $*"
    xenstore-write data/grant-probe/failed "$*"
    busybox poweroff -f
}
for m in xenfs xen-evtchn xen-gntdev; do modprobe "$m" 2>/dev/null; done
mount -t xenfs xenfs /proc/xen
insmod /run/dbfork-lab/dbfork_gnt.ko 2>/tmp/err || fail "insmod dbfork_gnt.ko: $(cat /tmp/err)"
say "DBFORK-GRANT module loaded: $(grep dbfork_gnt /proc/modules)"
# The guest end of this domain's channel to dom0's page table (dom0 opens its end
# during the check): the probe's Xen frame store registers its grants through it.
domid=$(xenstore-read domid) || fail "xenstore-read domid"
/usr/lib/xen-4.17/bin/vchan-socket-proxy -m client 0 "/local/domain/$domid/dbfork/pagetable" \
    /run/pt.sock >/tmp/pt-proxy.log 2>&1 &
dbfork-grant-probe source --to 0 --frames 8 >/dev/hvc0 2>&1 || fail "the probe failed (see above)"
if rmmod dbfork_gnt 2>/dev/null; then
    xenstore-write data/grant-probe/rmmod "at-once"
else
    xenstore-write data/grant-probe/rmmod busy
    i=0
    until rmmod dbfork_gnt 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -gt 600 ] && fail "dbfork_gnt still in use 60 s after dom0 unmapped"
        sleep 0.1
    done
    xenstore-write data/grant-probe/rmmod ok
fi
say "DBFORK-GRANT done"
busybox poweroff -f
