/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * dbfork_gnt: grant a process's own buffer-pool pages read-only to another Xen
 * domain. The ioctl interface of /dev/dbfork_gnt, shared by the module and its
 * user-space callers (dbfork's guest agent).
 *
 * Version 2 (1 granted one page per call; a 16 KiB frame then took four unrelated
 * references, which dom0's page table could not name as one):
 *   DBFORK_GNT_VERSION  -> the interface version (DBFORK_GNT_IFACE_VERSION)
 *   DBFORK_GNT_SET_POOL    the caller's pool: page-aligned [addr, addr + len) of its
 *                          address space; set once per open file; every grant must
 *                          lie inside it
 *   DBFORK_GNT_GRANT       pins the count (1..DBFORK_GNT_MAX_RUN) consecutive pages
 *                          from addr (in the pool) and grants them read-only to
 *                          domid under consecutive grant references; returns the
 *                          first (page i has ref + i). -ENOSPC when no such run of
 *                          references is free.
 *   DBFORK_GNT_REVOKE      ends one grant (a reference) of this file: 0 when ended
 *                          (the page is unpinned), -EBUSY while the other domain
 *                          still maps it (the pin stays; ask again later)
 * Closing the file revokes every grant it made; grants still mapped then are ended
 * (and their pages unpinned) as soon as the mapper lets go, and keep the module
 * loaded until then.
 */
#ifndef DBFORK_GNT_H
#define DBFORK_GNT_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define DBFORK_GNT_IFACE_VERSION 2
/* The most pages one DBFORK_GNT_GRANT covers (a 64 KiB InnoDB page). */
#define DBFORK_GNT_MAX_RUN 16

struct dbfork_gnt_pool {
	__u64 addr;
	__u64 len;
};

struct dbfork_gnt_grant {
	__u64 addr;   /* in: the first page, in the pool */
	__u32 domid;  /* in: the domain the pages are granted to */
	__u32 ref;    /* out: the first page's grant reference */
	__u32 count;  /* in: how many pages */
	__u32 pad;    /* in: 0 */
};

struct dbfork_gnt_revoke {
	__u32 ref;
	__u32 pad;
};

#define DBFORK_GNT_MAGIC 'G'
#define DBFORK_GNT_VERSION  _IOR(DBFORK_GNT_MAGIC, 0, __u32)
#define DBFORK_GNT_SET_POOL _IOW(DBFORK_GNT_MAGIC, 1, struct dbfork_gnt_pool)
#define DBFORK_GNT_GRANT    _IOWR(DBFORK_GNT_MAGIC, 2, struct dbfork_gnt_grant)
#define DBFORK_GNT_REVOKE   _IOW(DBFORK_GNT_MAGIC, 3, struct dbfork_gnt_revoke)

#endif
