// SPDX-License-Identifier: GPL-2.0
/*
 * graft_stall_rig - a plain (non-livepatch) helper module that makes a
 * livepatch transition stall on purpose, for Graft's real-kernel tests.
 *
 * On load it starts the kthread "graft_stall_rig", which sleeps inside
 * graft_rig_hold() until the module parameter "release" is set:
 *
 *   echo 1 > /sys/module/graft_stall_rig/parameters/release
 *
 * Readers of /proc/graft_stall_rig sleep in the same function. The companion
 * livepatch graft_stall_patch replaces graft_rig_hold(), so its transition
 * cannot finish while any task still sleeps in the original: the livepatch
 * consistency model switches a task only when none of the patched functions
 * is on its stack.
 *
 * The kernel sends fake signals to tasks that block a transition (about
 * every 15 s since 5.1). A reader sleeps interruptibly, so it returns
 * -ERESTARTSYS, is switched on its way back to user space and its read()
 * restarts in the new function. The kthread gets only a wake-up, finds
 * "release" still unset and sleeps again: it keeps the transition stalled
 * until it is released.
 *
 * Parameters (under /sys/module/graft_stall_rig/parameters/):
 *   release  (rw, bool) 1 lets every holder go
 *   holders  (ro, int)  tasks sleeping in graft_rig_hold() right now
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/err.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/wait.h>

static bool release;
static bool stopping;
static atomic_t holders = ATOMIC_INIT(0);
static DECLARE_WAIT_QUEUE_HEAD(hold_wq);
static DECLARE_WAIT_QUEUE_HEAD(entered_wq);
static struct task_struct *rig_thread;

/* Global (not static) so that the compiler neither clones nor renames it. */
int graft_rig_hold(const char *who);

/*
 * Sleeps until "release" is set (or the module is being removed).
 *
 * Returns 0 when released and -ERESTARTSYS when a signal, real or the
 * livepatch's fake one, interrupts the sleep of a user task. A replacement
 * may return a positive value to say that it did not hold at all.
 *
 * It must keep its own frame on the stack while the task sleeps: noinline,
 * and schedule() is called inside the wait loop with more work after it, so
 * the call can never become a tail call.
 */
noinline int graft_rig_hold(const char *who)
{
	int ret;

	atomic_inc(&holders);
	wake_up_all(&entered_wq);
	pr_info("%s (pid %d) holds in %s()\n", who, task_pid_nr(current), __func__);

	ret = wait_event_interruptible(hold_wq,
				       READ_ONCE(release) || READ_ONCE(stopping));

	atomic_dec(&holders);
	pr_info("%s (pid %d) leaves %s(): %d\n", who, task_pid_nr(current),
		__func__, ret);
	return ret;
}

static int rig_thread_fn(void *data)
{
	graft_rig_hold("kthread");
	/* Released: wait for kthread_stop() outside graft_rig_hold(). */
	wait_event_interruptible(hold_wq, kthread_should_stop());
	return 0;
}

static int rig_proc_show(struct seq_file *m, void *v)
{
	int ret = graft_rig_hold("reader");

	if (ret < 0)
		return ret;
	if (ret > 0)
		seq_puts(m, "graft_stall_rig: not held, graft_rig_hold() is patched\n");
	else
		seq_puts(m, "graft_stall_rig: released\n");
	return 0;
}

static int release_set(const char *val, const struct kernel_param *kp)
{
	int ret = param_set_bool(val, kp);

	if (!ret)
		wake_up_all(&hold_wq);
	return ret;
}

static const struct kernel_param_ops release_ops = {
	.set = release_set,
	.get = param_get_bool,
};
module_param_cb(release, &release_ops, &release, 0644);
MODULE_PARM_DESC(release, "Set to 1 to let every task sleeping in graft_rig_hold() go");

static int holders_get(char *buffer, const struct kernel_param *kp)
{
	return sysfs_emit(buffer, "%d\n", atomic_read(&holders));
}

static const struct kernel_param_ops holders_ops = {
	.get = holders_get,
};
module_param_cb(holders, &holders_ops, NULL, 0444);
MODULE_PARM_DESC(holders, "Number of tasks sleeping in graft_rig_hold() now");

static int graft_stall_rig_init(void)
{
	if (!proc_create_single("graft_stall_rig", 0444, NULL, rig_proc_show))
		return -ENOMEM;

	rig_thread = kthread_run(rig_thread_fn, NULL, "graft_stall_rig");
	if (IS_ERR(rig_thread)) {
		remove_proc_entry("graft_stall_rig", NULL);
		return PTR_ERR(rig_thread);
	}
	/* When insmod returns, the kthread already sleeps in graft_rig_hold(). */
	wait_event(entered_wq, atomic_read(&holders) > 0 || READ_ONCE(release));
	return 0;
}

static void graft_stall_rig_exit(void)
{
	WRITE_ONCE(stopping, true);
	wake_up_all(&hold_wq);
	remove_proc_entry("graft_stall_rig", NULL);
	kthread_stop(rig_thread);
}

module_init(graft_stall_rig_init);
module_exit(graft_stall_rig_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("The Graft authors");
MODULE_DESCRIPTION("Graft test helper: tasks sleep in graft_rig_hold() until released");
