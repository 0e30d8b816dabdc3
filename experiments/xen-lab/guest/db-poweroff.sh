#!/bin/sh
# The kernel's poweroff helper in a lab MariaDB domU (xl shutdown): the server stops
# cleanly, the database disk is unmounted, then the domain powers off.
export PATH=/run/dbfork-lab:/usr/sbin:/usr/bin:/sbin:/bin
echo "DBFORK-GUEST-SHUTDOWN" >/dev/hvc0
dbfork-guestd --instance /run/dbfork/instance.json --stop-server >/dev/hvc0 2>&1
sync
umount /var/lib/dbfork 2>/dev/null
busybox poweroff -f
