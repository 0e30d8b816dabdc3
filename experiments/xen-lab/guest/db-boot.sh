#!/bin/sh
# /init of the lab's MariaDB domUs' boot initramfs (static busybox, the modules to
# mount the root disk, and this run's guest side). Runs inside the domU.
# Mounts the read-only OS disk (xvda, a Debian image with mariadb-server that dom0
# serves to every domU), puts this run's dbfork-guestd and guest scripts on a tmpfs
# /run inside it, and switches to db-init.sh there.
export PATH=/bin
mount -t proc proc /proc
read -r cmdline </proc/cmdline
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "$*" >/dev/hvc0; }
for m in crc16 crc32c_generic mbcache jbd2 ext4 xen-blkfront; do
    insmod "/modules/$m.ko" 2>/dev/null
done
i=0
while [ ! -b /dev/xvda ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /newroot
if ! mount -t ext4 -o ro /dev/xvda /newroot 2>/tmp/err; then
    say "DBFORK-GUEST-FAIL mounting the OS disk: $(cat /tmp/err)"
    sleep 600
    poweroff -f
fi
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/dbfork-lab
cp /guest/* /newroot/run/dbfork-lab/
chmod 0755 /newroot/run/dbfork-lab/*
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
# The lab's grant domU starts into grant-init.sh instead (dbfork_lab_init= in its
# config's extra).
next=db-init.sh
for a in $cmdline; do
    case "$a" in dbfork_lab_init=*) next=${a#dbfork_lab_init=} ;; esac
done
exec switch_root /newroot "/run/dbfork-lab/$next"
