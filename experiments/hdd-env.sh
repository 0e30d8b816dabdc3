# Sourced by the GB-scale experiments (medium/run, run --scale medium): a store on a
# chosen filesystem and one blkio group for the whole run, torn down on exit.
#   hdd_env_init            work dir under /var/tmp, cleanup on EXIT
#   hdd_store xfs|ext4      sets HDD_BASE (where the store goes) and HDD_DEVICE
#                           (MAJ:MIN of its disk): xfs = an XFS with reflink in a
#                           120G sparse loop file with direct IO (datadirs are
#                           directory volumes); ext4 = the root filesystem
#   hdd_store_done          unmounts and frees an xfs store
#   hdd_group NAME          sets HDD_GROUP, a blkio cgroup (v1) removed on exit; the
#                           experiment limits it while measuring (--hdd-group)
# Needs root.

hdd_env_init() {
  HDD_WORK=$(mktemp -d /var/tmp/hdd-XXXXXX)
  HDD_LOOP="" HDD_MNT="" HDD_GROUPS=()
  trap hdd_env_cleanup EXIT
}

hdd_env_cleanup() {
  local g p
  for g in "${HDD_GROUPS[@]}"; do
    # Anything left in the group goes back to the root group, then the group goes.
    if [[ -f $g/cgroup.procs ]]; then
      while read -r p; do echo "$p" > /sys/fs/cgroup/blkio/cgroup.procs 2>/dev/null || true; done < "$g/cgroup.procs"
    fi
    rmdir "$g" 2>/dev/null || true
  done
  hdd_store_done
  rm -rf "$HDD_WORK"
}

# MAJ:MIN of the whole disk holding a path (the IO controller limits whole disks).
hdd_disk_of() {
  local dev; dev=$(stat -c %d "$1")
  local maj=$((dev >> 8)) min=$((dev & 255))
  local sys=/sys/dev/block/$maj:$min
  if [[ -e $sys/partition ]]; then cat "$sys/../dev"; else echo "$maj:$min"; fi
}

hdd_store() {
  case "$1" in
    xfs)
      truncate -s 120G "$HDD_WORK/store.xfs"
      mkfs.xfs -q -m reflink=1 "$HDD_WORK/store.xfs"
      HDD_LOOP=$(losetup --find --show --direct-io=on "$HDD_WORK/store.xfs")
      HDD_MNT=$HDD_WORK/xfs; mkdir -p "$HDD_MNT"; mount "$HDD_LOOP" "$HDD_MNT"
      HDD_BASE=$HDD_MNT; HDD_DEVICE=$(lsblk -dno MAJ:MIN "$HDD_LOOP" | tr -d ' ') ;;
    ext4)
      HDD_BASE=$HDD_WORK/ext4; mkdir -p "$HDD_BASE"; HDD_DEVICE=$(hdd_disk_of "$HDD_BASE") ;;
    *) echo "unknown store $1 (xfs or ext4)" >&2; return 2 ;;
  esac
}

hdd_store_done() {
  if [[ -n $HDD_MNT ]] && mountpoint -q "$HDD_MNT"; then umount "$HDD_MNT" || umount -l "$HDD_MNT"; fi
  if [[ -n $HDD_LOOP ]]; then losetup -d "$HDD_LOOP" 2>/dev/null || true; fi
  rm -f "$HDD_WORK/store.xfs"
  HDD_LOOP="" HDD_MNT=""
}

hdd_group() {
  HDD_GROUP=/sys/fs/cgroup/blkio/$1
  mkdir -p "$HDD_GROUP"
  HDD_GROUPS+=("$HDD_GROUP")
}
