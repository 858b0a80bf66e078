// SPDX-License-Identifier: GPL-2.0
/*
 * graft_stall_patch - livepatch of graft_rig_hold() in graft_stall_rig.
 *
 * Its transition cannot finish while the rig's kthread (or a reader of
 * /proc/graft_stall_rig) sleeps in the original graft_rig_hold(): Graft's
 * tests use it to produce a stalled transition on a real kernel. The new
 * function does not hold at all, so a reader that the kernel has switched
 * prints "graft_stall_rig: not held, graft_rig_hold() is patched".
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>

static int graft_stall_patch_rig_hold(const char *who)
{
	return 1;
}

static struct klp_func funcs[] = {
	{
		.old_name = "graft_rig_hold",
		.new_func = graft_stall_patch_rig_hold,
	},
	{ }
};

static struct klp_object objs[] = {
	{
		.name = "graft_stall_rig",
		.funcs = funcs,
	},
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int graft_stall_patch_init(void)
{
	return klp_enable_patch(&patch);
}

static void graft_stall_patch_exit(void)
{
}

module_init(graft_stall_patch_init);
module_exit(graft_stall_patch_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("The Graft authors");
MODULE_DESCRIPTION("Graft test livepatch of graft_rig_hold(): stalls while graft_stall_rig holds");
MODULE_INFO(livepatch, "Y");
