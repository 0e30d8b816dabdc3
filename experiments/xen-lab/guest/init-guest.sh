#!/bin/sh
# /init of the lab's guest-side domU: dom0's Debian rootfs booted as a PV domU, with
# dbfork-guestd behind a vchan (vchan-socket-proxy in server mode), so that dom0
# reaches the guest side only through that domU's channel. No MariaDB yet: the guest
# side answers what it can without one, and says why for the rest.
# Runs inside the domU: it reads no host environment.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
say() { echo "$*" >/dev/hvc0; }
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc; do modprobe "$m" 2>/dev/null; done
mount -t xenfs xenfs /proc/xen 2>/dev/null
domid=$(xenstore-read domid 2>/tmp/err) || { say "XENLAB-GUEST-FAIL xenstore-read domid: $(cat /tmp/err)"; sleep 600; }
dbfork-guestd --instance /etc/dbfork/instance.json --listen /run/guestd.sock >/tmp/guestd.log 2>&1 &
i=0
while [ ! -S /run/guestd.sock ] && [ "$i" -lt 30 ]; do sleep 1; i=$((i + 1)); done
[ -S /run/guestd.sock ] || say "XENLAB-GUEST-FAIL dbfork-guestd: $(tr '\n' ' ' </tmp/guestd.log)"
/usr/lib/xen-4.17/bin/vchan-socket-proxy -m server 0 "/local/domain/$domid/data/dbfork" \
    /run/guestd.sock >/tmp/proxy.log 2>&1 &
say "XENLAB-GUEST-READY domid=$domid"
i=0
while true; do
    i=$((i + 1))
    sleep 10
    [ -s /tmp/proxy.log ] && say "XENLAB-GUEST-PROXY $(tail -n 2 /tmp/proxy.log | tr '\n' ' ')"
done
