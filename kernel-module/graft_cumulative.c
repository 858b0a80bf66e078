// SPDX-License-Identifier: GPL-2.0
/*
 * graft_cumulative - an atomic-replace (cumulative) livepatch.
 *
 * With .replace = true it supersedes every livepatch enabled before it, in
 * particular graft_demo: once its transition ends, /proc/cmdline prints
 * "graft_cumulative: patched" and the replaced patches lose their sysfs
 * directory (their modules stay loaded until someone removes them).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int graft_cumulative_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "graft_cumulative: patched\n");
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = graft_cumulative_cmdline_proc_show,
	},
	{ }
};

static struct klp_object objs[] = {
	{
		.funcs = funcs,
	},
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.replace = true,
};

static int graft_cumulative_init(void)
{
	return klp_enable_patch(&patch);
}

static void graft_cumulative_exit(void)
{
}

module_init(graft_cumulative_init);
module_exit(graft_cumulative_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("The Graft authors");
MODULE_DESCRIPTION("Graft cumulative livepatch: replaces graft_demo");
MODULE_INFO(livepatch, "Y");
