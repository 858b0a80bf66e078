// SPDX-License-Identifier: GPL-2.0
/*
 * graft_demo - Graft's demonstration livepatch.
 *
 * Replaces cmdline_proc_show() so that reading /proc/cmdline prints a fixed
 * marker instead of the boot command line: user space can see at once
 * whether the patched code runs.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int graft_demo_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "graft_demo: patched\n");
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = graft_demo_cmdline_proc_show,
	},
	{ }
};

static struct klp_object objs[] = {
	{
		/* name NULL: the function lives in vmlinux */
		.funcs = funcs,
	},
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int graft_demo_init(void)
{
	return klp_enable_patch(&patch);
}

static void graft_demo_exit(void)
{
}

module_init(graft_demo_init);
module_exit(graft_demo_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("The Graft authors");
MODULE_DESCRIPTION("Graft demo livepatch: /proc/cmdline prints 'graft_demo: patched'");
MODULE_INFO(livepatch, "Y");
