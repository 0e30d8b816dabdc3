#!/bin/sh
# /init of the lab's PV domU (busybox initramfs). Runs inside the guest: it reads no
# host environment, only its own kernel command line.
# It prints the marker line on its console (hvc0, which xenconsoled logs in dom0),
# then stays alive so that dom0 can see it in `xl list` and destroy it.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
marker=XENLAB-DOMU-MARKER
read -r cmdline </proc/cmdline
for arg in $cmdline; do
    case "$arg" in xenlab.marker=*) marker=${arg#xenlab.marker=} ;; esac
done
echo "$marker hypervisor=$(cat /sys/hypervisor/type 2>/dev/null) uptime=$(cut -d' ' -f1 /proc/uptime)" >/dev/hvc0
# A database disk (the replica's): its first line, read through blkfront, on the console.
insmod /xen-blkfront.ko 2>/dev/null
i=0
while [ ! -b /dev/xvdb ] && [ "$i" -lt 20 ]; do sleep 1; i=$((i + 1)); done
if [ -b /dev/xvdb ]; then
    echo "XENLAB-DISK $(head -c 64 /dev/xvdb | head -n 1)" >/dev/hvc0
fi
i=0
while true; do
    i=$((i + 1))
    echo "XENLAB-DOMU-ALIVE $i" >/dev/hvc0
    sleep 10
done
