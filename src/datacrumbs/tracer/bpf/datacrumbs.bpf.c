// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* datacrumbs: one generic CO-RE object for every probe kind.
 *
 * Nothing here is specific to one function: tracer/engine.py fills the
 * maps from the probes document (which syscalls, which argument is the fd,
 * the byte count, the path ...) and attaches the generic uprobe, kprobe and
 * tracepoint programs once per target with a BPF cookie naming the probe.
 * Scope (pid tree, uid or cgroup) is decided here, so events of processes
 * outside the job never reach user space. For a trace that goes to an
 * ordinary user, a member that user could not ptrace (set-uid or set-gid
 * program, capabilities, not dumpable) is out of scope too, and its memory is
 * never read: membership (who joins the pid tree) and credentials (who is
 * traced) are decided apart.
 *
 * The system call programs run for every system call of the node. What
 * costs there is helper calls (with this CPU's return-stack mitigation each
 * one is tens of ns), so the hot path makes few: per-task state in task
 * storage (pending call, cached scope decision, comm flag, profile slots),
 * inlined array lookups, one ringbuf_output per event.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "datacrumbs.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Sizes of ring buffers are set by the engine before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} paths SEC(".maps");

/* [0] events lost, [1] paths lost, [2] profile rows lost */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dc_config);
} settings SEC(".maps");

/* Events sent on this CPU since it last woke the reader. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unwoken SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DC_MAX_SYSCALLS);
	__type(key, __u32);
	__type(value, struct dc_spec);
} sys_specs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DC_MAX_PROBES);
	__type(key, __u32);
	__type(value, struct dc_spec);
} probe_specs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} scope_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scope_cgroup SEC(".maps");

/* DC_SCOPE_CGROUP_NAME: the wanted cgroup name and, once found, its id and level. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dc_cgname);
} scope_cgname SEC(".maps");

/* Per-task state: pending system call, cached scope decision, comm flag. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dc_task);
} tasks SEC(".maps");

/* Uprobe/kprobe entry state, per (thread, probe) so nested and recursive
 * calls pair up; LRU bounds it when a function never returns. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);	/* per-CPU LRU lists: no global lock */
	__uint(max_entries, 65536);
	__type(key, struct dc_key);
	__type(value, struct dc_entry);
} entries SEC(".maps");

/* Profile mode: one row per (process, probe) in a per-CPU array, whose
 * lookup the kernel inlines (no helper call); profile_slots names the row of
 * each (process, probe) and slot_owner makes claiming a row atomic. The
 * engine shrinks all three to one entry in trace mode. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DC_PROFILE_SLOTS);
	__type(key, __u32);
	__type(value, struct dc_pval);
} profile SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DC_PROFILE_SLOTS);
	__type(key, struct dc_pkey);
	__type(value, __u32);
} profile_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DC_PROFILE_SLOTS);
	__type(key, __u32);
	__type(value, struct dc_pkey);
} slot_owner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, char[16]);
} comms SEC(".maps");

/* Room to read a path before copying only its length into the ring. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dc_path);
} path_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dc_block_key);
	__type(value, struct dc_block_start);
} block_starts SEC(".maps");

static __always_inline struct dc_config *get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&settings, &zero);
}

static __always_inline void count_lost(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &which);

	if (n)
		*n += 1;
}

static __always_inline bool is_self(struct dc_config *c, __u32 tgid)
{
	struct bpf_pidns_info ns;

	if (!c->self_ns_ino)
		return tgid == c->self_tgid;
	return bpf_get_ns_current_pid_tgid(c->self_ns_dev, c->self_ns_ino, &ns, sizeof(ns)) == 0 &&
	       ns.tgid == c->self_tgid;
}

/* Is the current process (tgid) a member of the job: in its pid tree, of its
 * user, or in its cgroup? Membership alone decides who joins the pid tree
 * (dc_fork): a child of a privileged member (flux-imp) must be a member so
 * that it is traced once it runs as the user again. */
static __always_inline bool is_member(struct dc_config *c, __u32 tgid)
{
	if (is_self(c, tgid))
		return false;
	if (c->scope == DC_SCOPE_CGROUP)
		return bpf_current_task_under_cgroup(&scope_cgroup, 0) == 1;
	if (c->scope == DC_SCOPE_CGROUP_NAME) {
		__u32 zero = 0;
		struct dc_cgname *w = bpf_map_lookup_elem(&scope_cgname, &zero);
		__u64 id = w ? *(volatile __u64 *)&w->id : 0;

		return id && bpf_get_current_ancestor_cgroup_id(w->level) == id;
	}
	if (c->scope == DC_SCOPE_UID && (__u32)bpf_get_current_uid_gid() == c->uid)
		return true;
	{
		__u8 *state = bpf_map_lookup_elem(&scope_pids, &tgid);

		return state && *state == DC_PID_MEMBER;
	}
}

/* kernel_cap_t before 6.3 (commit f122a08b197d): two 32-bit words. */
struct kernel_cap_struct___cap32 {
	__u32 cap[2];
} __attribute__((preserve_access_index));

struct cred___cap32 {
	struct kernel_cap_struct___cap32 cap_permitted;
	struct kernel_cap_struct___cap32 cap_effective;
} __attribute__((preserve_access_index));

/* mm_struct.flags before 6.18 (mm_flags_t): an unsigned long. */
struct mm_struct___ulong {
	unsigned long flags;
} __attribute__((preserve_access_index));

#define DC_MMF_DUMPABLE_MASK 3	/* MMF_DUMPABLE_BITS = 2 */
#define DC_SUID_DUMP_USER 1
#define DC_NO_MM 0xff		/* kernel thread or exited mm: nothing to read */

/* Dumpable bits of a task's mm, read with direct CO-RE loads (no helper call:
 * the cached path checks them on every event). prctl(PR_SET_DUMPABLE) changes
 * them without a new cred. */
static __always_inline __u8 dumpable_of(struct task_struct *task)
{
	struct mm_struct *mm = task->mm;
	unsigned long flags;

	if (!mm)
		return DC_NO_MM;
	if (bpf_core_field_exists(mm->flags.__mm_flags))
		flags = mm->flags.__mm_flags[0];
	else
		flags = ((struct mm_struct___ulong *)mm)->flags;
	return flags & DC_MMF_DUMPABLE_MASK;
}

/* Could job_uid ptrace a task with these credentials without privilege? Every
 * uid is job_uid, no gid is elevated over the real gid (set-gid), and no
 * capability is effective or permitted. */
static __always_inline bool cred_is_users(const struct cred *cr, __u32 uid)
{
	__u32 gid;

	if (!cr)
		return false;
	if (cr->uid.val != uid || cr->euid.val != uid || cr->suid.val != uid ||
	    cr->fsuid.val != uid)
		return false;
	gid = cr->gid.val;
	if (cr->egid.val != gid || cr->sgid.val != gid || cr->fsgid.val != gid)
		return false;
	if (bpf_core_field_exists(cr->cap_effective.val))
		return !(cr->cap_effective.val | cr->cap_permitted.val);
	{
		const struct cred___cap32 *o = (const void *)cr;

		return !(o->cap_effective.cap[0] | o->cap_effective.cap[1] |
			 o->cap_permitted.cap[0] | o->cap_permitted.cap[1]);
	}
}

/* The credential half of the scope: a member that the job's user could not
 * ptrace (set-uid or set-gid program, capabilities, not dumpable) is out of
 * scope, so none of its memory is read. Both the objective (real_cred: what
 * ptrace checks) and the subjective creds (cred: what it acts with) count. */
static __always_inline bool creds_ok(struct dc_config *c, struct task_struct *task)
{
	__u8 d;

	if (!c->check_creds)
		return true;
	if (!cred_is_users(task->real_cred, c->job_uid) || !cred_is_users(task->cred, c->job_uid))
		return false;
	d = dumpable_of(task);
	return d == DC_SUID_DUMP_USER || d == DC_NO_MM;
}

/* Is the current process one the job's, and one the job's user may see?
 * Decided here so that other processes' events never leave the kernel. */
static __always_inline bool in_scope(struct dc_config *c, __u32 tgid)
{
	return is_member(c, tgid) && creds_ok(c, bpf_get_current_task_btf());
}

/* Bring t's cached scope decision up to date for the current task ``task``.
 * It is taken again when the scope generation changes (a cgroup move), the
 * task execs (dc_exec clears gen), its creds are replaced (a uid, gid or
 * capability change: set-uid exec, setresuid) or, when credentials are
 * checked, its mm's dumpable bits change. The cached path is a few direct
 * loads, no helper call. */
static __always_inline bool refresh(struct dc_config *c, struct dc_task *t,
				    struct task_struct *task)
{
	__u32 gen = *(volatile __u32 *)&c->scope_gen;	/* before deciding: a move after it re-decides */
	__u64 cred = (__u64)task->cred;
	__u8 dumpable = c->check_creds ? dumpable_of(task) : 0;

	if (t->gen != gen || t->cred != cred || t->dumpable != dumpable) {
		if (t->gen != gen)
			t->tid_tgid = bpf_get_current_pid_tgid();
		t->in_scope = in_scope(c, t->tid_tgid >> 32);
		t->gen = gen;
		t->cred = cred;
		t->dumpable = dumpable;
	}
	return t->in_scope;
}

/* The current task's state with its scope decision brought up to date; NULL
 * when the kernel cannot give storage now (then *in is decided uncached).
 * Helper calls are what costs here (each return pays the CPU's return-stack
 * mitigation), so the cached path makes only the storage lookup. */
static __always_inline struct dc_task *task_state(struct dc_config *c, bool *in)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct dc_task *t = bpf_task_storage_get(&tasks, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!t) {
		*in = in_scope(c, bpf_get_current_pid_tgid() >> 32);
		return NULL;
	}
	*in = refresh(c, t, task);
	return t;
}

/* At the return of an operation begun in scope: is the task still one the
 * user may see? A set-uid execve, or a uprobe'd call that raised privilege,
 * returns with other creds and another memory: nothing of it may be read. */
static __always_inline bool still_in_scope(struct dc_config *c, struct dc_task *t,
					   struct task_struct *task)
{
	if (!c->check_creds)
		return true;
	return t ? refresh(c, t, task) : in_scope(c, bpf_get_current_pid_tgid() >> 32);
}

static __always_inline __u64 arg_of(struct dc_entry *e, __s8 idx)
{
	switch (idx) {
	case 0: return e->args[0];
	case 1: return e->args[1];
	case 2: return e->args[2];
	case 3: return e->args[3];
	case 4: return e->args[4];
	case 5: return e->args[5];
	}
	return 0;
}

static __always_inline __u32 log2_bucket(__u64 ns)
{
	__u64 us = ns / 1000;
	__u32 r = 0;

	if (!us)
		return 0;
	if (us >> 32) { us >>= 32; r += 32; }
	if (us >> 16) { us >>= 16; r += 16; }
	if (us >> 8) { us >>= 8; r += 8; }
	if (us >> 4) { us >>= 4; r += 4; }
	if (us >> 2) { us >>= 2; r += 2; }
	if (us >> 1) { r += 1; }
	r += 1;
	return r > DC_HIST_BUCKETS - 1 ? DC_HIST_BUCKETS - 1 : r;
}

/* The profile slot of (tgid, probe): found or claimed. An unused slot is
 * claimed by inserting it into slot_owner with BPF_NOEXIST, which only one
 * CPU can win (clang's default BPF target has no atomic fetch-and-add). */
static __always_inline int profile_slot(struct dc_config *c, __u32 tgid, __u32 probe, __u32 *slot)
{
	struct dc_pkey k = { .tgid = tgid, .probe = probe };
	__u32 *found = bpf_map_lookup_elem(&profile_slots, &k);
	__u32 s;
	int i;

	if (found) {
		*slot = *found;
		return 0;
	}
	for (i = 0; i < 4; i++) {
		s = *(volatile __u32 *)&c->profile_next;
		if (s >= DC_PROFILE_SLOTS)
			return -1;
		__sync_fetch_and_add(&c->profile_next, 1);
		if (bpf_map_update_elem(&slot_owner, &s, &k, BPF_NOEXIST) == 0)
			break;
	}
	if (i == 4)
		return -1;
	if (bpf_map_update_elem(&profile_slots, &k, &s, BPF_NOEXIST) != 0) {
		/* another CPU named a slot for this key first: use that one */
		found = bpf_map_lookup_elem(&profile_slots, &k);
		if (!found)
			return -1;
		s = *found;
	}
	*slot = s;
	return 0;
}

/* ``t``: the current task's state when the operation is its own (its cache of
 * slots), else NULL. */
static __always_inline void profile_add(struct dc_config *c, struct dc_task *t, __u32 tgid,
					__u32 probe, __u64 dur, __s64 bytes)
{
	__u32 w = probe & (DC_PCACHE - 1), slot;
	struct dc_pval *v;

	if (t && t->pc_probe[w] == probe + 1) {
		slot = t->pc_slot[w];
	} else {
		if (profile_slot(c, tgid, probe, &slot) < 0) {
			count_lost(2);
			return;
		}
		if (t) {
			t->pc_probe[w] = probe + 1;
			t->pc_slot[w] = slot;
		}
	}
	v = bpf_map_lookup_elem(&profile, &slot);
	if (!v) {
		count_lost(2);
		return;
	}
	v->count += 1;
	if (bytes > 0)
		v->bytes += bytes;
	v->time_ns += dur;
	if (v->count == 1 || dur < v->min_ns)
		v->min_ns = dur;
	if (dur > v->max_ns)
		v->max_ns = dur;
	v->hist[log2_bucket(dur) & (DC_HIST_BUCKETS - 1)] += 1;
}

static __always_inline __s64 bytes_of(struct dc_spec *sp, struct dc_entry *e, __s64 ret)
{
	switch (sp->bytes_kind) {
	case DC_BYTES_RET:
		return ret >= 0 ? ret : 0;
	case DC_BYTES_RET_ARG:
		return ret >= 0 ? ret * (__s64)arg_of(e, sp->bytes_arg) : 0;
	case DC_BYTES_ARG:
		return ret >= 0 ? (__s64)arg_of(e, sp->bytes_arg) : 0;
	}
	return -1;
}

/* Events: wake the reader every c->wakeup_events records per CPU (the reader
 * also polls on a timeout); a per-CPU counter costs no helper call. */
static __always_inline __u64 event_wakeup_flag(struct dc_config *c)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&unwoken, &zero);

	if (!n || ++*n < c->wakeup_events)
		return BPF_RB_NO_WAKEUP;
	*n = 0;
	return BPF_RB_FORCE_WAKEUP;
}

/* Paths (rarer): none until a backlog builds up, then on every record until
 * the reader has drained it. */
static __always_inline __u64 wakeup_flag(void *ring, __u64 threshold)
{
	return bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= threshold ? BPF_RB_FORCE_WAKEUP
									 : BPF_RB_NO_WAKEUP;
}

/* Send the path of an open-like call: 1 sent, 0 none to send (NULL or empty),
 * -1 the name is lost (unreadable, or the ring is full). The caller counts a
 * loss only once the event itself was delivered, so names_lost is exactly the
 * delivered events that lack their name. */
static __always_inline int emit_path(struct dc_config *c, struct dc_spec *sp, struct dc_entry *e,
				     __u32 tid)
{
	__u64 ptr = arg_of(e, sp->path);
	__u32 zero = 0;
	struct dc_path *p;
	long n;

	if (!ptr)
		return 0;
	p = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!p)
		return -1;
	/* Read at exit: the kernel has faulted the string in by now, so the
	 * read cannot fail on a not-yet-touched page as it can at entry. */
	if (sp->kernel)
		n = bpf_probe_read_kernel_str(p->path, sizeof(p->path), (void *)ptr);
	else
		n = bpf_probe_read_user_str(p->path, sizeof(p->path), (void *)ptr);
	if (n < 1)
		return -1;
	if (n == 1)
		return 0;
	if (n > DC_PATH_MAX)
		n = DC_PATH_MAX;
	p->ts = e->ts;
	p->tid = tid;
	p->probe = e->probe;
	p->len = n;
	p->pad = 0;
	/* only the string is copied: records are as long as the path */
	return bpf_ringbuf_output(&paths, p, offsetof(struct dc_path, path) + n,
				  wakeup_flag(&paths, c->wakeup_paths)) < 0 ? -1 : 1;
}

/* Once per task (the flag is in its storage), not a hash lookup per event. */
static __always_inline void remember_comm(struct dc_task *t, __u32 tgid)
{
	char comm[16];

	if (t) {
		if (t->comm_done)
			return;
		t->comm_done = 1;
	}
	if (bpf_map_lookup_elem(&comms, &tgid))
		return;
	bpf_get_current_comm(comm, sizeof(comm));
	bpf_map_update_elem(&comms, &tgid, comm, BPF_NOEXIST);
}

/* Common exit path: profile it, or emit one event (and its path). ``own``:
 * the current task is the one the operation belongs to (not an interrupt);
 * ``t`` is its state when the caller has it. */
static __always_inline void finish(struct dc_config *c, struct dc_spec *sp, struct dc_entry *e,
				   __u64 tid_tgid, __s64 ret, __u64 now, bool own,
				   struct dc_task *t)
{
	__u32 tgid = tid_tgid >> 32, tid = (__u32)tid_tgid;
	__s64 bytes = bytes_of(sp, e, ret);
	struct dc_event ev_buf, *ev = &ev_buf;
	int path = 0;

	if (own)
		remember_comm(t, tgid);
	if (c->mode == DC_MODE_PROFILE) {
		profile_add(c, own ? t : NULL, tgid, e->probe, now - e->ts, bytes);
		return;
	}
	if (c->capture_paths && sp->path >= 0)
		path = emit_path(c, sp, e, tid);
	/* built on the stack and sent with one helper call, not reserve + submit */
	ev->ts = e->ts;
	ev->dur = now - e->ts;
	ev->pid = tgid;
	ev->tid = tid;
	ev->probe = path > 0 ? e->probe | DC_EV_PATH_SENT : e->probe;
	ev->ret = ret;
	ev->bytes = bytes;
	ev->count = 0;
	if (sp->count >= 0)
		ev->count = arg_of(e, sp->count);
	else if (sp->size >= 0 && sp->nmemb >= 0)
		ev->count = arg_of(e, sp->size) * arg_of(e, sp->nmemb);
	ev->offset = sp->offset >= 0 ? (__s64)arg_of(e, sp->offset) : -1;
	ev->fd2 = sp->fd2 >= 0 ? (__s32)arg_of(e, sp->fd2) : -1;
	ev->flags = sp->flags >= 0 ? (__u32)arg_of(e, sp->flags) : 0;
	ev->fd = -1;
	if (sp->fd >= 0) {
		ev->fd = (__s32)arg_of(e, sp->fd);
	} else if (sp->stream >= 0 && !sp->kernel) {
		__u64 stream = arg_of(e, sp->stream);
		__s32 fd = -1;

		if (stream && bpf_probe_read_user(&fd, sizeof(fd),
						  (void *)(stream + DC_GLIBC_FILENO_OFF)) < 0)
			fd = -1;
		ev->fd = fd;
	}
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), event_wakeup_flag(c)) < 0)
		count_lost(0);
	else if (path < 0)
		count_lost(1);
}

static __noinline int aio_submitted(struct dc_config *c, struct dc_entry *e, __u64 tid_tgid,
				    long n);
static __noinline int aio_reaped(struct dc_config *c, struct dc_entry *e, __u64 tid_tgid, long n);

/* ---- system calls: one pair of programs, a table of wanted numbers ---- */

/* BTF-enabled raw tracepoints: no copy of the arguments into a perf
 * buffer, the cheapest hook on the hottest path (every syscall of the node). */
SEC("tp_btf/sys_enter")
int BPF_PROG(dc_sys_enter, struct pt_regs *regs, long nr)
{
	__u32 k = (__u32)nr;
	struct dc_spec *sp;
	struct dc_config *c;
	struct dc_task *t;
	bool in;

	/* every system call of the node comes here: one array lookup to leave */
	if ((unsigned long)nr >= DC_MAX_SYSCALLS)
		return 0;
	sp = bpf_map_lookup_elem(&sys_specs, &k);
	if (!sp || !sp->active)
		return 0;
	c = get_config();
	if (!c)
		return 0;
	t = task_state(c, &in);
	if (!in)
		return 0;
	if (!t) {
		count_lost(0);
		return 0;
	}
	t->sys.ts = bpf_ktime_get_ns();
	t->sys.nr = k;
	t->sys.probe = sp->probe;
	/* x86_64 syscall ABI: rdi rsi rdx r10 r8 r9 */
	t->sys.args[0] = regs->di;
	t->sys.args[1] = regs->si;
	t->sys.args[2] = regs->dx;
	t->sys.args[3] = regs->r10;
	t->sys.args[4] = regs->r8;
	t->sys.args[5] = regs->r9;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(dc_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	__u32 k = (__u32)nr;
	struct task_struct *task;
	struct dc_spec *sp;
	struct dc_config *c;
	struct dc_task *t;

	if ((unsigned long)nr >= DC_MAX_SYSCALLS)
		return 0;
	sp = bpf_map_lookup_elem(&sys_specs, &k);
	if (!sp || !sp->active)
		return 0;
	task = bpf_get_current_task_btf();
	t = bpf_task_storage_get(&tasks, task, 0, 0);
	if (!t || !t->sys.ts)
		return 0;
	c = get_config();
	/* a set-uid execve returns in another program with other creds */
	if (c && t->sys.nr == k && still_in_scope(c, t, task)) {
		if (sp->bytes_kind == DC_BYTES_AIO_SUBMIT)
			aio_submitted(c, &t->sys, t->tid_tgid, ret);
		else if (sp->bytes_kind == DC_BYTES_AIO_REAP)
			aio_reaped(c, &t->sys, t->tid_tgid, ret);
		else
			finish(c, sp, &t->sys, t->tid_tgid, ret, bpf_ktime_get_ns(), true, t);
	}
	t->sys.ts = 0;
	return 0;
}

/* ---- uprobes and kprobes: generic, the cookie is the probe index ---- */

static __always_inline int probe_entry(struct pt_regs *ctx)
{
	__u32 probe = (__u32)bpf_get_attach_cookie(ctx);
	__u64 tid_tgid = bpf_get_current_pid_tgid();
	struct dc_config *c = get_config();
	struct dc_spec *sp;
	struct dc_entry e = {};
	struct dc_key key;
	bool in;

	if (!c)
		return 0;
	task_state(c, &in);
	if (!in)
		return 0;
	sp = bpf_map_lookup_elem(&probe_specs, &probe);
	if (!sp || !sp->active)
		return 0;
	e.ts = bpf_ktime_get_ns();
	e.probe = probe;
	e.args[0] = PT_REGS_PARM1(ctx);
	e.args[1] = PT_REGS_PARM2(ctx);
	e.args[2] = PT_REGS_PARM3(ctx);
	e.args[3] = PT_REGS_PARM4(ctx);
	e.args[4] = PT_REGS_PARM5(ctx);
#ifdef PT_REGS_PARM6
	e.args[5] = PT_REGS_PARM6(ctx);
#else
	e.args[5] = ctx->r9;	/* x86_64 ABI; libbpf 1.1 lacks PT_REGS_PARM6 */
#endif
	key.tid = (__u32)tid_tgid;
	key.slot = probe;
	bpf_map_update_elem(&entries, &key, &e, BPF_ANY);
	return 0;
}

static __always_inline int probe_return(struct pt_regs *ctx)
{
	__u32 probe = (__u32)bpf_get_attach_cookie(ctx);
	__u64 tid_tgid = bpf_get_current_pid_tgid();
	struct dc_config *c;
	struct dc_spec *sp;
	struct dc_entry *e;
	struct dc_key key = { .tid = (__u32)tid_tgid, .slot = probe };
	struct task_struct *task;
	struct dc_task *t;
	__s64 ret;

	e = bpf_map_lookup_elem(&entries, &key);
	if (!e)
		return 0;
	c = get_config();
	sp = bpf_map_lookup_elem(&probe_specs, &probe);
	task = bpf_get_current_task_btf();
	t = bpf_task_storage_get(&tasks, task, 0, 0);
	if (c && sp && still_in_scope(c, t, task)) {
		ret = (__s64)PT_REGS_RC(ctx);
		if (sp->ret32)
			ret = (__s64)(__s32)ret;
		finish(c, sp, e, tid_tgid, ret, bpf_ktime_get_ns(), true, t);
	}
	bpf_map_delete_elem(&entries, &key);
	return 0;
}

SEC("uprobe")
int dc_uprobe(struct pt_regs *ctx)
{
	return probe_entry(ctx);
}

SEC("uretprobe")
int dc_uretprobe(struct pt_regs *ctx)
{
	return probe_return(ctx);
}

SEC("kprobe")
int dc_kprobe(struct pt_regs *ctx)
{
	return probe_entry(ctx);
}

SEC("kretprobe")
int dc_kretprobe(struct pt_regs *ctx)
{
	return probe_return(ctx);
}

/* ---- tracepoints ---- */

/* Any tracepoint: one instant event (or a profile count) per hit in scope. */
SEC("tp")
int dc_tracepoint(void *ctx)
{
	__u32 probe = (__u32)bpf_get_attach_cookie(ctx);
	__u64 tid_tgid = bpf_get_current_pid_tgid();
	struct dc_config *c = get_config();
	struct dc_spec *sp;
	struct dc_entry e = {};
	struct dc_task *t;
	__u64 value = 0;
	__s64 ret = 0;
	bool in;

	if (!c)
		return 0;
	t = task_state(c, &in);
	if (!in)
		return 0;
	sp = bpf_map_lookup_elem(&probe_specs, &probe);
	if (!sp || !sp->active)
		return 0;
	e.ts = bpf_ktime_get_ns();
	e.probe = probe;
	if (sp->bytes_kind == DC_BYTES_FIELD) {
		__u32 size = sp->field_size;

		if (size > 8)
			size = 8;
		bpf_probe_read_kernel(&value, size & 15, (char *)ctx + (sp->field_off & 4095));
		/* finish() turns "arg0 when ret >= 0" into bytes */
		e.args[0] = value;
		sp = &(struct dc_spec){ .probe = probe, .bytes_kind = DC_BYTES_ARG, .bytes_arg = 0,
					.fd = -1, .count = -1, .offset = -1, .path = -1,
					.size = -1, .nmemb = -1, .stream = -1,
					.fd2 = -1, .flags = -1 };
	}
	finish(c, sp, &e, tid_tgid, ret, e.ts, true, t);	/* an instant: no duration */
	return 0;
}

/* Block requests: issue (in the submitting process) starts the clock,
 * complete (often in interrupt context) ends it and is attributed to the
 * issuer. Requests issued by kernel workers on the job's behalf (writeback)
 * are outside any job's scope and are not reported. */
SEC("tp/block/block_rq_issue")
int dc_block_issue(struct trace_event_raw_block_rq *ctx)
{
	__u64 tid_tgid = bpf_get_current_pid_tgid();
	struct dc_config *c = get_config();
	struct dc_block_key k = {};
	struct dc_block_start s;

	if (!c || !in_scope(c, tid_tgid >> 32))
		return 0;
	k.dev = BPF_CORE_READ(ctx, dev);
	k.sector = BPF_CORE_READ(ctx, sector);
	s.ts = bpf_ktime_get_ns();
	s.tid_tgid = tid_tgid;
	bpf_map_update_elem(&block_starts, &k, &s, BPF_ANY);
	return 0;
}

SEC("tp/block/block_rq_complete")
int dc_block_complete(struct trace_event_raw_block_rq_completion *ctx)
{
	__u32 probe = (__u32)bpf_get_attach_cookie(ctx);
	struct dc_config *c = get_config();
	struct dc_block_key k = {};
	struct dc_block_start *s;
	struct dc_spec *sp;
	struct dc_entry e = {};
	__u64 tid_tgid;

	k.dev = BPF_CORE_READ(ctx, dev);
	k.sector = BPF_CORE_READ(ctx, sector);
	s = bpf_map_lookup_elem(&block_starts, &k);
	if (!s)
		return 0;
	e.ts = s->ts;
	tid_tgid = s->tid_tgid;
	bpf_map_delete_elem(&block_starts, &k);
	sp = bpf_map_lookup_elem(&probe_specs, &probe);
	if (!c || !sp || !sp->active)
		return 0;
	e.probe = probe;
	e.args[0] = (__u64)BPF_CORE_READ(ctx, nr_sector) << 9;
	e.args[1] = BPF_CORE_READ(ctx, sector) << 9;	/* byte offset on the device */
	sp = &(struct dc_spec){ .probe = probe, .bytes_arg = 0,
				.bytes_kind = sp->bytes_kind == DC_BYTES_NONE ? DC_BYTES_NONE : DC_BYTES_ARG,
				.fd = -1, .count = 0, .offset = 1, .path = -1,
				.size = -1, .nmemb = -1, .stream = -1,
				.fd2 = -1, .flags = -1 };
	finish(c, sp, &e, tid_tgid, BPF_CORE_READ(ctx, error), bpf_ktime_get_ns(), false, NULL);
	return 0;
}

/* ---- process tree and names ---- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(dc_fork, struct task_struct *parent, struct task_struct *child)
{
	struct dc_config *c = get_config();
	__u32 ctgid = child->tgid;
	__u8 one = 1;

	if (!c || !c->follow || child->pid != ctgid)
		return 0;
	/* membership only, not credentials: the child of a privileged member
	 * (flux-imp) is the job's once it runs as the user again */
	if (!is_member(c, parent->tgid))
		return 0;
	bpf_map_update_elem(&scope_pids, &ctgid, &one, BPF_ANY);
	return 0;
}

SEC("tp/sched/sched_process_exec")
int dc_exec(void *ctx)
{
	__u64 tid_tgid = bpf_get_current_pid_tgid();
	struct dc_config *c = get_config();
	__u32 tgid = tid_tgid >> 32;
	char comm[16];

	struct dc_task *t = bpf_task_storage_get(&tasks, bpf_get_current_task_btf(), 0, 0);
	__u8 *state = bpf_map_lookup_elem(&scope_pids, &tgid);

	/* the tracer's helper has become the command: from here on it is the job's
	 * (the execve itself began outside, so its own exit is no event) */
	if (state && *state == DC_PID_AT_EXEC)
		*state = DC_PID_MEMBER;
	/* a set-uid program may change the decision: take it again; a thread
	 * other than the leader that execs takes the leader's pid */
	if (t) {
		t->gen = 0;
		t->tid_tgid = tid_tgid;
	}
	if (!c || !in_scope(c, tgid))
		return 0;
	bpf_get_current_comm(comm, sizeof(comm));
	bpf_map_update_elem(&comms, &tgid, comm, BPF_ANY);
	return 0;
}

/* A task moved between cgroups: every cached scope decision is stale.
 * Attached only for cgroup scopes. */
SEC("tp_btf/cgroup_attach_task")
int BPF_PROG(dc_cgroup_moved, struct cgroup *dst, const char *path, struct task_struct *task,
	     bool threadgroup)
{
	struct dc_config *c = get_config();

	if (c)
		__sync_fetch_and_add(&c->scope_gen, 1);
	return 0;
}

/* DC_SCOPE_CGROUP_NAME: the job's cgroup (its name ends in e.g.
 * -f2kP8DU5B.service) is created after the tracer starts; record its id here, in the kernel, so no
 * process entering it can run before the scope knows it. Only the cgroup v2
 * hierarchy (id 0) counts: a hybrid host makes the same name under v1 too. */
SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(dc_cgroup_made, struct cgroup *cgrp, const char *path)
{
	struct dc_config *c = get_config();
	char name[DC_CGNAME_MAX];
	struct dc_cgname *w;
	__u32 zero = 0, off;
	long n;

	if (!c || c->scope != DC_SCOPE_CGROUP_NAME || BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	w = bpf_map_lookup_elem(&scope_cgname, &zero);
	if (!w)
		return 0;
	n = bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(cgrp, kn, name));
	/* The wanted text is a suffix of the name (a whole name matches too): Flux
	 * names the unit <shell>-<rank>-<f58 jobid>.service, and the rank and the
	 * shell's name vary by node and site while the job id does not. */
	if (n <= 0 || n - 1 < (long)w->len)
		return 0;
	off = (__u32)(n - 1) - w->len;
	for (__u32 i = 0; i < DC_CGNAME_MAX; i++) {
		if (i >= w->len)
			break;
		if (name[(off + i) & (DC_CGNAME_MAX - 1)] != w->name[i])
			return 0;
	}
	w->level = BPF_CORE_READ(cgrp, level);
	asm volatile("" ::: "memory");	/* level first: an early reader re-decides on the bump */
	w->id = BPF_CORE_READ(cgrp, kn, id);
	__sync_fetch_and_add(&c->scope_gen, 1);
	return 0;
}

SEC("tp/sched/sched_process_exit")
int dc_exit(void *ctx)
{
	__u64 tid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = tid_tgid >> 32;

	if (tgid == (__u32)tid_tgid) {
		struct dc_config *c = get_config();

		if (c && in_scope(c, tgid)) {
			char comm[16];

			bpf_get_current_comm(comm, sizeof(comm));
			bpf_map_update_elem(&comms, &tgid, comm, BPF_NOEXIST);
		}
		bpf_map_delete_elem(&scope_pids, &tgid);
	}
	return 0;
}

/* The same uprobe programs for uprobe_multi links (one link per library and
 * direction, a cookie per function): the engine loads them with the
 * BPF_TRACE_UPROBE_MULTI attach type, which the attach cookie helper needs. */
SEC("uprobe")
int dc_uprobe_multi(struct pt_regs *ctx)
{
	return probe_entry(ctx);
}

SEC("uretprobe")
int dc_uretprobe_multi(struct pt_regs *ctx)
{
	return probe_return(ctx);
}

/* ---- asynchronous I/O: io_uring and libaio ----
 *
 * fio's io_uring and libaio engines move data without read/write system
 * calls. Each request is recorded where it is submitted (in the submitting
 * task, so the scope check is the usual one) and reported where it completes,
 * as one event of the submitter: bytes = the completion's result, latency =
 * submit -> complete. In-flight requests wait in bounded hash maps; a request
 * that finds no room is counted as a lost event. The io_uring programs are
 * loaded only when the probes ask for an io_uring class; libaio's system calls
 * are handled at the exit of the system call programs (DC_BYTES_AIO_*), so
 * nothing here costs other system calls. */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DC_ASYNC_CLASSES);
	__type(key, __u32);
	__type(value, __u32);
} async_probes SEC(".maps");

/* io_uring requests in flight, by struct io_kiocb address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct dc_async_req);
} uring_inflight SEC(".maps");

/* libaio iocbs in flight, by (process, iocb user address). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dc_aio_key);
	__type(value, struct dc_async_req);
} aio_inflight SEC(".maps");

/* Own flavours (CO-RE) of the kernel types read here: the object still builds
 * from the BTF of a kernel without io_uring, whose programs then stay unloaded. */
struct trace_event_raw_io_uring_submit_req___dc {
	void *req;
	__u8 opcode;
	__u64 flags;
} __attribute__((preserve_access_index));

struct trace_event_raw_io_uring_complete___dc {
	void *req;
	int res;
} __attribute__((preserve_access_index));

struct io_cqe___dc {
	__s32 fd;
} __attribute__((preserve_access_index));

struct io_kiocb___dc {
	struct io_cqe___dc cqe;
} __attribute__((preserve_access_index));

struct kiocb___dc {
	long long ki_pos;
} __attribute__((preserve_access_index));

/* struct io_rw is the first bytes of its io_kiocb (io_kiocb_to_cmd) */
struct io_rw___dc {
	struct kiocb___dc kiocb;
	__u32 len;
} __attribute__((preserve_access_index));

struct io_kiocb___dcfile {
	struct file *file;
} __attribute__((preserve_access_index));

struct mount___dc {
	struct mount___dc *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} __attribute__((preserve_access_index));

/* uapi (linux/aio_abi.h): fixed layouts */
struct dc_iocb {
	__u64 aio_data;
	__u32 aio_key;
	__u32 aio_rw_flags;
	__u16 aio_lio_opcode;
	__s16 aio_reqprio;
	__u32 aio_fildes;
	__u64 aio_buf;
	__u64 aio_nbytes;
	__s64 aio_offset;
	__u64 aio_reserved2;
	__u32 aio_flags;
	__u32 aio_resfd;
};

struct dc_io_event {
	__u64 data;
	__u64 obj;
	__s64 res;
	__s64 res2;
};

#define DC_REQ_F_FIXED_FILE 1ull	/* REQ_F_FIXED_FILE_BIT = IOSQE_FIXED_FILE_BIT = 0 */

static __always_inline void count_lost_n(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&lost, &which);

	if (v)
		*v += n;
}

/* The probe of an async class, or DC_NO_PROBE when the probes do not ask for it. */
static __always_inline __u32 async_probe(__u32 cls)
{
	__u32 *p = bpf_map_lookup_elem(&async_probes, &cls);

	return p && *p ? *p - 1 : DC_NO_PROBE;
}

#define DC_PATH_DEPTH 48		/* components of a file's path walked */
/* keep clang from dropping a mask the verifier needs to bound an index */
#define DC_OPAQUE(v) asm volatile("" : "+r"(v))
#define DC_PATH_HALF (DC_PATH_MAX / 2)

struct dc_walk {
	struct dentry *d;
	struct vfsmount *vm;
	struct mount___dc *m;
	__u32 off;		/* bytes written so far */
	int state;		/* 0 walking, 1 reached the root, -1 failed */
};

/* One step up a file's path (a bpf_loop callback: verified once, not per step). */
static long dc_walk_step(__u32 i, struct dc_walk *w)
{
	struct dentry *d = w->d, *parent;
	struct vfsmount *vm = w->vm;
	struct mount___dc *m = w->m, *up;
	__u32 zero = 0, off = w->off, at;
	struct dc_path *p;
	long n;

	if (d == BPF_CORE_READ(vm, mnt_root)) {	/* top of this mount: go to its mount point */
		up = BPF_CORE_READ(m, mnt_parent);
		if (up == m) {
			w->state = 1;
			return 1;
		}
		w->d = BPF_CORE_READ(m, mnt_mountpoint);
		w->m = up;
		w->vm = (struct vfsmount *)((char *)up + bpf_core_field_offset(struct mount___dc, mnt));
		return 0;
	}
	parent = BPF_CORE_READ(d, d_parent);
	if (parent == d) {			/* a root of no mount here: detached */
		w->state = 1;
		return 1;
	}
	p = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!p || off >= DC_PATH_HALF) {
		w->state = -1;
		return 1;
	}
	n = bpf_probe_read_kernel_str(&p->path[off & (DC_PATH_HALF - 1)], DC_PATH_HALF,
				      BPF_CORE_READ(d, d_name.name));
	if (n <= 1) {
		w->state = -1;
		return 1;
	}
	off += n;
	at = off - 1;
	DC_OPAQUE(at);
	p->path[at & (DC_PATH_MAX - 1)] = '/';		/* over its NUL */
	w->off = off;
	w->d = parent;
	return 0;
}

/* The path of an open file, for an io_uring fixed file (an index into the ring's
 * table, which no fd table names). Walked from the file up through dentries and
 * mounts and written leaf first ("name/dir/.../"): pad = DC_PATH_REVERSED tells
 * the reader to turn it around. 1 sent, -1 lost (unreadable, deeper than
 * DC_PATH_DEPTH, longer than DC_PATH_HALF, or the ring is full). */
static __always_inline int emit_file_path(struct dc_config *c, struct file *file, __u64 ts,
					  __u32 tid, __u32 probe)
{
	struct dc_walk w = {};
	__u32 zero = 0, off;
	struct dc_path *p;

	w.d = BPF_CORE_READ(file, f_path.dentry);
	w.vm = BPF_CORE_READ(file, f_path.mnt);
	w.m = (void *)((char *)w.vm - bpf_core_field_offset(struct mount___dc, mnt));
	if (!w.d || !w.vm)
		return -1;
	bpf_loop(DC_PATH_DEPTH, dc_walk_step, &w, 0);
	p = bpf_map_lookup_elem(&path_scratch, &zero);
	off = w.off;
	if (!p || w.state != 1 || !off || off >= DC_PATH_HALF)
		return -1;
	DC_OPAQUE(off);
	off &= DC_PATH_HALF - 1;
	p->path[off] = 0;
	p->ts = ts;
	p->tid = tid;
	p->probe = probe;
	p->len = off + 1;
	p->pad = DC_PATH_REVERSED;
	return bpf_ringbuf_output(&paths, p, offsetof(struct dc_path, path) + off + 1,
				  wakeup_flag(&paths, c->wakeup_paths)) < 0 ? -1 : 1;
}

/* One completed request: an event of its submitter (or a profile count).
 * ``file``: the request's open file when its path must be sent (fixed files). */
static __always_inline void async_done(struct dc_config *c, struct dc_async_req *r, __s64 res,
				       __u64 now, struct file *file)
{
	struct dc_event ev_buf, *ev = &ev_buf;
	__u64 dur = now > r->ts ? now - r->ts : 0;
	__s64 bytes = r->data ? (res >= 0 ? res : 0) : -1;
	int path = 0;

	if (c->mode == DC_MODE_PROFILE) {
		profile_add(c, NULL, r->tid_tgid >> 32, r->probe, dur, bytes);
		return;
	}
	if (file && c->capture_paths)
		path = emit_file_path(c, file, r->ts, (__u32)r->tid_tgid, r->probe);
	ev->ts = r->ts;
	ev->dur = dur;
	ev->pid = r->tid_tgid >> 32;
	ev->tid = (__u32)r->tid_tgid;
	ev->probe = path > 0 ? r->probe | DC_EV_PATH_SENT : r->probe;
	ev->fd = r->fd;
	ev->ret = res;
	ev->count = r->count;
	ev->offset = r->offset;
	ev->bytes = bytes;
	ev->fd2 = -1;
	ev->flags = r->flags;
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), event_wakeup_flag(c)) < 0)
		count_lost(0);
	else if (path < 0)
		count_lost(1);
}

/* IORING_OP_* -> class; -1: not traced (polls, timeouts, sockets, ...). */
static __always_inline int uring_class(__u8 op, bool *vectored)
{
	*vectored = op == 1 || op == 2 || op == 60 || op == 61;
	switch (op) {
	case 1:		/* READV */
	case 4:		/* READ_FIXED */
	case 22:	/* READ */
	case 60:	/* READV_FIXED */
		return DC_ASYNC_URING_READ;
	case 2:		/* WRITEV */
	case 5:		/* WRITE_FIXED */
	case 23:	/* WRITE */
	case 61:	/* WRITEV_FIXED */
		return DC_ASYNC_URING_WRITE;
	case 3:		/* FSYNC */
	case 8:		/* SYNC_FILE_RANGE */
		return DC_ASYNC_URING_FSYNC;
	}
	return -1;
}

/* After the request's prep (io_init_req), in the submitting task: with SQPOLL
 * that is the ring's poller thread, a thread of the ring owner's process. */
SEC("tp/io_uring/io_uring_submit_req")
int dc_uring_submit(struct trace_event_raw_io_uring_submit_req___dc *ctx)
{
	struct dc_config *c = get_config();
	struct dc_async_req r = {};
	struct dc_task *t;
	bool vectored, in;
	__u8 op;
	__u64 key;
	int cls;

	if (!c)
		return 0;
	op = BPF_CORE_READ(ctx, opcode);
	cls = uring_class(op, &vectored);
	if (cls < 0)
		return 0;
	r.probe = async_probe(cls);
	if (r.probe == DC_NO_PROBE)
		return 0;
	t = task_state(c, &in);
	if (!in)
		return 0;
	r.tid_tgid = bpf_get_current_pid_tgid();
	remember_comm(t, r.tid_tgid >> 32);
	key = (__u64)BPF_CORE_READ(ctx, req);
	r.ts = bpf_ktime_get_ns();
	r.fd = BPF_CORE_READ((struct io_kiocb___dc *)key, cqe.fd);
	r.flags = op;
	if (BPF_CORE_READ(ctx, flags) & DC_REQ_F_FIXED_FILE)
		r.flags |= DC_ASYNC_FIXED_FILE;
	r.offset = -1;
	if (cls != DC_ASYNC_URING_FSYNC) {
		struct io_rw___dc *rw = (void *)key;

		r.data = 1;
		r.offset = BPF_CORE_READ(rw, kiocb.ki_pos);
		if (!vectored)
			r.count = BPF_CORE_READ(rw, len);
	}
	if (bpf_map_update_elem(&uring_inflight, &key, &r, BPF_ANY) < 0)
		count_lost(0);
	return 0;
}

/* The request's CQE is filled: often in the submitter, but also in io-wq
 * workers or interrupt-driven task work; the event is the submitter's. */
SEC("tp/io_uring/io_uring_complete")
int dc_uring_complete(struct trace_event_raw_io_uring_complete___dc *ctx)
{
	__u64 key = (__u64)BPF_CORE_READ(ctx, req);
	struct dc_async_req *r = bpf_map_lookup_elem(&uring_inflight, &key);
	struct dc_config *c;

	if (!r)
		return 0;
	c = get_config();
	if (c) {
		/* a fixed file is named here: req->file is the table's file by now */
		struct file *file = r->flags & DC_ASYNC_FIXED_FILE ?
			BPF_CORE_READ((struct io_kiocb___dcfile *)key, file) : NULL;

		async_done(c, r, BPF_CORE_READ(ctx, res), bpf_ktime_get_ns(), file);
	}
	bpf_map_delete_elem(&uring_inflight, &key);
	return 0;
}

/* libaio's system calls come through dc_sys_enter/dc_sys_exit (sys_specs with
 * bytes_kind DC_BYTES_AIO_*): no program of their own, so nothing is added to
 * the path of other system calls. */

/* One submitted iocb (``slot``: its address in the user's iocb pointer array).
 * A global function (scalar arguments only): the kernel verifies it once, not
 * once per step of the batch loop, which keeps dc_sys_exit quick to load. */
__noinline int dc_aio_submit_one(__u64 slot, __u64 tid_tgid, __u64 ts)
{
	struct dc_aio_key key = { .tgid = tid_tgid >> 32 };
	struct dc_async_req r;
	struct dc_iocb cb;
	__u64 ptr;
	int cls;

	if (bpf_probe_read_user(&ptr, sizeof(ptr), (void *)slot) < 0 ||
	    bpf_probe_read_user(&cb, sizeof(cb), (void *)ptr) < 0) {
		count_lost(0);
		return 0;
	}
	switch (cb.aio_lio_opcode) {
	case 0: case 7: cls = DC_ASYNC_AIO_READ; break;		/* PREAD, PREADV */
	case 1: case 8: cls = DC_ASYNC_AIO_WRITE; break;	/* PWRITE, PWRITEV */
	case 2: case 3: cls = DC_ASYNC_AIO_FSYNC; break;	/* FSYNC, FDSYNC */
	default: return 0;
	}
	r.probe = async_probe(cls);
	if (r.probe == DC_NO_PROBE)
		return 0;
	r.ts = ts;
	r.tid_tgid = tid_tgid;
	r.fd = (__s32)cb.aio_fildes;
	r.flags = cb.aio_lio_opcode;
	r.data = cls != DC_ASYNC_AIO_FSYNC;
	r.offset = r.data ? cb.aio_offset : -1;
	/* PREADV/PWRITEV: aio_nbytes counts iovecs, not bytes */
	r.count = cb.aio_lio_opcode <= 1 ? cb.aio_nbytes : 0;
	key.iocb = ptr;
	if (bpf_map_update_elem(&aio_inflight, &key, &r, BPF_ANY) < 0)
		count_lost(0);
	return 0;
}

/* io_submit returned: its first ret iocbs were submitted; read them now that
 * the kernel has touched them (no unfaulted page to fail on). The clock
 * started at the call's entry. */
static __noinline int aio_submitted(struct dc_config *c, struct dc_entry *e, __u64 tid_tgid,
				    long n)
{
	__u64 iocbpp = e->args[2], ts = e->ts;

	if (n <= 0)
		return 0;
	if (n > DC_AIO_MAX_BATCH)
		count_lost_n(0, n - DC_AIO_MAX_BATCH);
	for (int i = 0; i < DC_AIO_MAX_BATCH; i++) {
		if (i >= n)
			break;
		dc_aio_submit_one(iocbpp + i * 8, tid_tgid, ts);
	}
	return 0;
}

/* One reaped io_event (at user address ``uev``): completes the iocb its obj names.
 * Global, like dc_aio_submit_one. */
__noinline int dc_aio_reap_one(__u64 uev, __u32 tgid, __u64 now)
{
	struct dc_aio_key key = { .tgid = tgid };
	struct dc_config *c = get_config();
	struct dc_async_req *r;
	struct dc_io_event ev;

	if (!c)
		return 0;
	if (bpf_probe_read_user(&ev, sizeof(ev), (void *)uev) < 0) {
		count_lost(0);
		return 0;
	}
	key.iocb = ev.obj;
	r = bpf_map_lookup_elem(&aio_inflight, &key);
	if (!r)
		return 0;
	async_done(c, r, ev.res, now, NULL);
	bpf_map_delete_elem(&aio_inflight, &key);
	return 0;
}

/* io_(p)getevents returned n io_events. Beyond DC_AIO_MAX_BATCH they are counted
 * as lost (an over-count only when io_submit's batches were cut too). */
static __noinline int aio_reaped(struct dc_config *c, struct dc_entry *e, __u64 tid_tgid, long n)
{
	__u64 events = e->args[3], now;

	if (n <= 0)
		return 0;
	now = bpf_ktime_get_ns();
	if (n > DC_AIO_MAX_BATCH)
		count_lost_n(0, n - DC_AIO_MAX_BATCH);
	for (int i = 0; i < DC_AIO_MAX_BATCH; i++) {
		if (i >= n)
			break;
		dc_aio_reap_one(events + i * sizeof(struct dc_io_event), tid_tgid >> 32, now);
	}
	return 0;
}
