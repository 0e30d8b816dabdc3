// SPDX-License-Identifier: GPL-2.0
/*
 * dbfork_gnt: grants a process's own buffer-pool pages read-only to another Xen
 * domain (gntalloc grants only fresh pages it allocates itself). Interface in
 * dbfork_gnt.h.
 *
 * Every input is checked: a pool must be page-aligned user memory; a grant's page
 * must lie in the pool of the file it is asked through, by the process that opened
 * it, to a domain id below DOMID_FIRST_RESERVED. A page stays pinned while it is
 * granted; a grant is ended only with gnttab_try_end_foreign_access (XSA-396: never
 * while the other domain maps it), and its page is unpinned only then. Grants left
 * when their file closes are retried from a work item, and each keeps the module
 * loaded until it is ended.
 */
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>
#include <xen/grant_table.h>
#include <xen/page.h>
#include <xen/xen.h>

#include "dbfork_gnt.h"

/* At most this many grants per open file: a caller cannot pin all of memory. */
#define MAX_GRANTS_PER_FILE (1U << 20)
/* How often grants still mapped after their file closed are asked again. */
#define DEFERRED_RETRY (HZ)

struct gnt_entry {
	struct list_head link;
	grant_ref_t ref;
	struct page *page;
};

struct gnt_file {
	struct mutex lock;
	struct mm_struct *mm;
	bool pool_set;
	u64 pool_start;
	u64 pool_end;
	unsigned int count;
	struct list_head grants;
};

static LIST_HEAD(deferred);
static DEFINE_MUTEX(deferred_lock);
static void deferred_retry(struct work_struct *work);
static DECLARE_DELAYED_WORK(deferred_work, deferred_retry);

/* Ends a grant if nobody maps it: the page is unpinned and the entry freed. */
static bool try_end(struct gnt_entry *e)
{
	if (!gnttab_try_end_foreign_access(e->ref))
		return false;
	unpin_user_page(e->page);
	kfree(e);
	return true;
}

static void deferred_retry(struct work_struct *work)
{
	struct gnt_entry *e, *next;
	bool left;

	mutex_lock(&deferred_lock);
	list_for_each_entry_safe(e, next, &deferred, link) {
		list_del(&e->link);
		if (try_end(e)) {
			module_put(THIS_MODULE);
		} else {
			list_add_tail(&e->link, &deferred);
			break; /* still mapped: the rest wait for the next round too */
		}
	}
	left = !list_empty(&deferred);
	mutex_unlock(&deferred_lock);
	if (left)
		schedule_delayed_work(&deferred_work, DEFERRED_RETRY);
}

static int gnt_open(struct inode *inode, struct file *filp)
{
	struct gnt_file *f = kzalloc(sizeof(*f), GFP_KERNEL);

	if (!f)
		return -ENOMEM;
	mutex_init(&f->lock);
	INIT_LIST_HEAD(&f->grants);
	f->mm = current->mm;
	mmgrab(f->mm);
	filp->private_data = f;
	return 0;
}

static int gnt_release(struct inode *inode, struct file *filp)
{
	struct gnt_file *f = filp->private_data;
	struct gnt_entry *e, *next;
	bool deferring = false;

	list_for_each_entry_safe(e, next, &f->grants, link) {
		list_del(&e->link);
		if (try_end(e))
			continue;
		/* Still mapped: ended later; the module stays until then. */
		__module_get(THIS_MODULE);
		mutex_lock(&deferred_lock);
		list_add_tail(&e->link, &deferred);
		mutex_unlock(&deferred_lock);
		deferring = true;
	}
	if (deferring)
		schedule_delayed_work(&deferred_work, DEFERRED_RETRY);
	mmdrop(f->mm);
	kfree(f);
	return 0;
}

static long set_pool(struct gnt_file *f, void __user *arg)
{
	struct dbfork_gnt_pool p;

	if (copy_from_user(&p, arg, sizeof(p)))
		return -EFAULT;
	if (!p.len || !PAGE_ALIGNED(p.addr) || !PAGE_ALIGNED(p.len) ||
	    p.addr + p.len < p.addr ||
	    !access_ok((void __user *)(uintptr_t)p.addr, p.len))
		return -EINVAL;
	if (f->pool_set)
		return -EBUSY;
	f->pool_start = p.addr;
	f->pool_end = p.addr + p.len;
	f->pool_set = true;
	return 0;
}

/* Pins the page at addr and grants it under ref, recorded in f. */
static int grant_page(struct gnt_file *f, u64 addr, domid_t domid, grant_ref_t ref)
{
	struct gnt_entry *e;
	struct page *page;
	int ret;

	e = kzalloc(sizeof(*e), GFP_KERNEL);
	if (!e)
		return -ENOMEM;
	/* The page the process uses now (write faults in a private copy first). */
	ret = pin_user_pages_fast(addr, 1, FOLL_WRITE | FOLL_LONGTERM, &page);
	if (ret != 1) {
		kfree(e);
		return ret < 0 ? ret : -EFAULT;
	}
	gnttab_grant_foreign_access_ref(ref, domid, xen_page_to_gfn(page), 1);
	e->ref = ref;
	e->page = page;
	list_add_tail(&e->link, &f->grants);
	f->count++;
	return 0;
}

/* Ends the grants of refs [first, first + n) of f, none of which anybody was told. */
static void undo_grants(struct gnt_file *f, grant_ref_t first, unsigned int n)
{
	struct gnt_entry *e, *next;

	list_for_each_entry_safe(e, next, &f->grants, link) {
		if (e->ref < first || e->ref >= first + n)
			continue;
		list_del(&e->link);
		f->count--;
		/* Unpublished, so unmapped: this cannot fail; if it did, keep it. */
		if (!try_end(e)) {
			list_add_tail(&e->link, &f->grants);
			f->count++;
		}
	}
}

static long grant(struct gnt_file *f, void __user *arg)
{
	struct dbfork_gnt_grant g;
	grant_ref_t first;
	unsigned int i;
	int ret;

	if (copy_from_user(&g, arg, sizeof(g)))
		return -EFAULT;
	if (!f->pool_set)
		return -ENXIO;
	if (g.pad || !g.count || g.count > DBFORK_GNT_MAX_RUN)
		return -EINVAL;
	if (!PAGE_ALIGNED(g.addr) || g.addr < f->pool_start ||
	    g.addr > f->pool_end - (u64)g.count * PAGE_SIZE)
		return -EINVAL;
	if (g.domid >= DOMID_FIRST_RESERVED)
		return -EINVAL;
	if (f->count + g.count > MAX_GRANTS_PER_FILE)
		return -ENOSPC;
	ret = gnttab_alloc_grant_reference_seq(g.count, &first);
	if (ret < 0)
		return ret;
	for (i = 0; i < g.count; i++) {
		ret = grant_page(f, g.addr + (u64)i * PAGE_SIZE, g.domid, first + i);
		if (ret < 0) {
			undo_grants(f, first, i);
			gnttab_free_grant_reference_seq(first + i, g.count - i);
			return ret;
		}
	}
	g.ref = first;
	if (copy_to_user(arg, &g, sizeof(g))) {
		undo_grants(f, first, g.count);
		return -EFAULT;
	}
	return 0;
}

static long revoke(struct gnt_file *f, void __user *arg)
{
	struct dbfork_gnt_revoke r;
	struct gnt_entry *e;

	if (copy_from_user(&r, arg, sizeof(r)))
		return -EFAULT;
	list_for_each_entry(e, &f->grants, link) {
		if (e->ref != r.ref)
			continue;
		list_del(&e->link);
		if (!try_end(e)) {
			list_add(&e->link, &f->grants);
			return -EBUSY;
		}
		f->count--;
		return 0;
	}
	return -ENOENT;
}

static long gnt_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct gnt_file *f = filp->private_data;
	void __user *uarg = (void __user *)arg;
	u32 version = DBFORK_GNT_IFACE_VERSION;
	long ret;

	if (cmd == DBFORK_GNT_VERSION)
		return copy_to_user(uarg, &version, sizeof(version)) ? -EFAULT : 0;
	/* Pages are pinned in the address space of the process that opened the file. */
	if (current->mm != f->mm)
		return -EPERM;
	mutex_lock(&f->lock);
	switch (cmd) {
	case DBFORK_GNT_SET_POOL:
		ret = set_pool(f, uarg);
		break;
	case DBFORK_GNT_GRANT:
		ret = grant(f, uarg);
		break;
	case DBFORK_GNT_REVOKE:
		ret = revoke(f, uarg);
		break;
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&f->lock);
	return ret;
}

static const struct file_operations gnt_fops = {
	.owner = THIS_MODULE,
	.open = gnt_open,
	.release = gnt_release,
	.unlocked_ioctl = gnt_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice gnt_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "dbfork_gnt",
	.fops = &gnt_fops,
	.mode = 0600,
};

static int __init dbfork_gnt_init(void)
{
	if (!xen_domain())
		return -ENODEV;
	return misc_register(&gnt_dev);
}

static void __exit dbfork_gnt_exit(void)
{
	misc_deregister(&gnt_dev);
	/* Every deferred grant holds a module reference: none is left here. */
	cancel_delayed_work_sync(&deferred_work);
}

module_init(dbfork_gnt_init);
module_exit(dbfork_gnt_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("dbfork: grant a process's buffer-pool pages read-only to another Xen domain");
