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
 * inlined array lookups, one ringbuf_output per 8 events (trace mode stages
 * them per CPU: send_event, dc_flush, tracer/stage.py).
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

/* [0] events lost, [1] paths lost, [2] profile rows (trace mode: totals) lost */
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

/* Trace mode: operations whose event could not be sent, per (process, probe),
 * in the profile slots (dc_tval). The engine shrinks it to one entry in
 * profile mode. A plain array with atomic adds, not a per-CPU one: only a
 * refused event writes it, and the kernel makes a per-CPU array's 16,384 rows
 * with one per-CPU allocation each (a third of an object's load). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DC_PROFILE_SLOTS);
	__type(key, __u32);
	__type(value, struct dc_tval);
} unsent SEC(".maps");

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

/* bpf_rdonly_cast (kernel >= 6.2): the verifier turns it into a register move,
 * so what it casts is read with plain loads, no helper call. Weak: on a kernel
 * without it the address is 0 (see fields_of and kernel_u64). */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

/* The task for reading its fields (cred, mm, files): an untrusted alias of the
 * trusted pointer the task storage needs. Each load of a pointer field through a
 * trusted pointer makes the verifier search the kernel's BTF by name for its
 * "__safe_trusted" and "__safe_rcu" variants, a linear scan of some 100,000 types
 * (kernels before 6.19), repeated for every state it walks: a quarter of a
 * tracer's start went to those scans. Loads through an untrusted pointer are
 * fault-checked loads all the same, and skip the search. */
static __always_inline struct task_struct *fields_of(struct task_struct *task)
{
	if (!bpf_rdonly_cast)
		return task;
	return bpf_rdonly_cast(task, bpf_core_type_id_kernel(struct task_struct));
}

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
	return is_member(c, tgid) && creds_ok(c, fields_of(bpf_get_current_task_btf()));
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
	*in = refresh(c, t, fields_of(task));
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

/* Argument idx of an entry, 0 for none (idx < 0). One bounds check and an indexed
 * load: a switch over the six was a seven-way fork of the verifier's states at each
 * of finish()'s dozen reads (dc_finish_own: most of its 38,000 verified instructions). */
static __always_inline __u64 arg_of(struct dc_entry *e, __s8 idx)
{
	__u32 i = (__u8)idx;

	if (i >= 6)
		return 0;
	return e->args[i];
}

/* The descriptor of a glibc FILE (its _fileno), -1 when it cannot be read. */
static __always_inline __s32 stream_fd(__u64 stream)
{
	__s32 fd = -1;

	if (stream && bpf_probe_read_user(&fd, sizeof(fd),
					  (void *)(stream + DC_GLIBC_FILENO_OFF)) < 0)
		fd = -1;
	return fd;
}

static __always_inline void set_arg(struct dc_entry *e, __s8 idx, __u64 v)
{
	__u32 i = (__u8)idx;

	if (i < 6)
		e->args[i] = v;
}

/* DC_HANDLE_PTR (at entry) and DC_HANDLE_OUT (at return): replace the saved
 * pointer argument by the 64-bit handle it points to, so that finish() sends
 * the handle like a by-value one. Unreadable: 0 (no handle). */
static __always_inline void deref_handle(struct dc_spec *sp, struct dc_entry *e)
{
	__u64 ptr = arg_of(e, sp->handle), v = 0;

	if (!ptr || bpf_probe_read_user(&v, sizeof(v), (void *)ptr) < 0)
		v = 0;
	set_arg(e, sp->handle, v);
}

/* Latency bucket of ns: [0] < 1 us, [i] in [2^(i-1), 2^i) us. No division
 * (tens of cycles): i from the bit length of ns, then one compare with
 * 1000 << (i - 1) settles it (1000 is between 2^9 and 2^10). */
static __always_inline __u32 log2_bucket(__u64 ns)
{
	__u64 x = ns;
	__u32 b = 0, i;

	if (ns < 1000)
		return 0;
	if (x >> 32) { x >>= 32; b += 32; }
	if (x >> 16) { x >>= 16; b += 16; }
	if (x >> 8) { x >>= 8; b += 8; }
	if (x >> 4) { x >>= 4; b += 4; }
	if (x >> 2) { x >>= 2; b += 2; }
	if (x >> 1) { b += 1; }
	i = b - 8;		/* b >= 9 here */
	if (ns < (1000ull << ((i - 1) & 63)))
		i -= 1;
	return i > DC_HIST_BUCKETS - 1 ? DC_HIST_BUCKETS - 1 : i;
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

/* The (process, probe) row's slot, through the task's cache when ``t`` (the
 * current task's state, when the operation is its own) is given; -1 when the
 * table is full (counted). */
static __always_inline int cached_slot(struct dc_config *c, struct dc_task *t, __u32 tgid,
				       __u32 probe, __u32 *slot)
{
	__u32 w = probe & (DC_PCACHE - 1);

	if (t && t->pc_probe[w] == probe + 1) {
		*slot = t->pc_slot[w];
		return 0;
	}
	if (profile_slot(c, tgid, probe, slot) < 0) {
		count_lost(2);
		return -1;
	}
	if (t) {
		t->pc_probe[w] = probe + 1;
		t->pc_slot[w] = *slot;
	}
	return 0;
}

/* The (process, probe) row of ``map`` (profile or unsent: both indexed by the
 * cached slot) for one operation, or NULL (no slot left, counted as lost). */
static __always_inline void *slot_row(struct dc_config *c, struct dc_task *t, __u32 tgid,
				      __u32 probe, void *map)
{
	void *v;
	__u32 slot;

	if (cached_slot(c, t, tgid, probe, &slot) < 0)
		return NULL;
	v = bpf_map_lookup_elem(map, &slot);
	if (!v)
		count_lost(2);
	return v;
}

/* One operation in a row's totals: a profile row starts with them. */
static __always_inline void totals_add(struct dc_tval *v, __u64 dur, __s64 bytes)
{
	v->count += 1;
	if (bytes > 0)
		v->bytes += bytes;
	v->time_ns += dur;
}

static __always_inline void profile_add(struct dc_config *c, struct dc_task *t, __u32 tgid,
					__u32 probe, __u64 dur, __s64 bytes)
{
	struct dc_pval *v = slot_row(c, t, tgid, probe, &profile);

	if (!v)
		return;
	totals_add(&v->total, dur, bytes);
	if (v->total.count == 1 || dur < v->min_ns)
		v->min_ns = dur;
	if (dur > v->max_ns)
		v->max_ns = dur;
	v->hist[log2_bucket(dur) & (DC_HIST_BUCKETS - 1)] += 1;
}

/* Trace mode, the ring buffer was full: count the operation whose event is lost
 * in its (process, probe) row, so totals stay exact (events received + unsent).
 * Only the failed send pays for this. The slot cache is profile_add's. */
static __always_inline void unsent_add(struct dc_config *c, struct dc_task *t, __u32 tgid,
				       __u32 probe, __u64 dur, __s64 bytes)
{
	struct dc_tval *v = slot_row(c, t, tgid, probe, &unsent);

	if (!v)
		return;
	__sync_fetch_and_add(&v->count, 1);	/* one row for all CPUs */
	if (bytes > 0)
		__sync_fetch_and_add(&v->bytes, bytes);
	__sync_fetch_and_add(&v->time_ns, dur);
}

/* unsent_add() for the current task's row cache ``t`` (or none), as a global
 * subprogram: only an event the ring refused runs it, so the call costs nothing on
 * the hot path, while inlined its slot claim (four tries) was verified again in
 * every sender's states. tgid_probe: tgid << 32 | probe. */
__noinline int dc_unsent(struct dc_task *t, __u64 tgid_probe, __u64 dur, __s64 bytes)
{
	struct dc_config *c = get_config();

	if (c)
		unsent_add(c, t, tgid_probe >> 32, (__u32)tgid_probe, dur, bytes);
	return 0;
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

/* Events are staged per CPU and sent DC_STAGE_N to a ring record (one helper call
 * for 8 events: the exit's largest cost). A record is always DC_STAGE_N events; the
 * slots after a partial batch have ts 0 (no event has ts 0), so the reader keeps one
 * stride. ``busy`` (cmpxchg) guards the staging against a program nested on the CPU
 * (an interrupt, or a task preempting a syscall tracepoint program: they are only
 * migration-disabled since 6.14's faultable syscall tracepoints) and against the
 * daemon's flush (dc_flush, run on each CPU before each drain): a nested program
 * sends its event alone, a flush that finds it busy says so and is retried. The lock
 * is an add and a read (the object is built for BPF v1: no cmpxchg): a taker that
 * reads more than its own 1 gives its add back. */
#define DC_STAGE_N 8
struct dc_stage {
	__u32 n;
	__u32 busy;
	struct dc_event ev[DC_STAGE_N];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dc_stage);
} stage SEC(".maps");

static __always_inline bool stage_take(struct dc_stage *st)
{
	__sync_fetch_and_add(&st->busy, 1);
	if (*(volatile __u32 *)&st->busy == 1)
		return true;
	__sync_fetch_and_add(&st->busy, -1);
	return false;
}

static __always_inline void stage_give(struct dc_stage *st)
{
	__sync_fetch_and_add(&st->busy, -1);
}

/* dc_event.probe bit 30 (unused by kind2, bits 27..29): the event's name was lost and
 * counted in lost[1] when it was staged; a batch the ring refuses takes it back. */
#define DC_EV_NAMES_LOST (1u << 30)

/* The wakeup as event_wakeup_flag, counting a record's ``n`` events. */
static __always_inline __u64 event_wakeup_flag_n(struct dc_config *c, __u64 n)
{
	__u32 zero = 0;
	__u64 *u = bpf_map_lookup_elem(&unwoken, &zero);

	if (!u || (*u += n) < c->wakeup_events)
		return BPF_RB_NO_WAKEUP;
	*u = 0;
	return BPF_RB_FORCE_WAKEUP;
}

static __always_inline void uncount_lost(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &which);

	if (n && *n)
		*n -= 1;
}

/* The ring refused a batch: each of its first ``n`` events is lost, counted in the
 * unsent rows (exact totals) like an event refused alone. A global subprogram: only
 * a full ring runs it, yet inlined its eight unsent_add() made about 29,000 of the
 * 70,000 instructions the verifier walks in dc_sys_exit (and as many in every
 * program that sends events); here it is verified once per program. */
__noinline int dc_stage_lost(struct dc_stage *st, __u32 n)
{
	struct dc_config *c = get_config();

	if (!c || !st)
		return 0;
	for (__u32 i = 0; i < DC_STAGE_N; i++) {
		struct dc_event *e = &st->ev[i];

		if (i >= n)
			break;
		count_lost(0);
		if (e->probe & DC_EV_NAMES_LOST)
			uncount_lost(1);
		dc_unsent(NULL, ((__u64)e->pid << 32) | (e->probe & DC_EV_PROBE_MASK), e->dur,
			  e->bytes);
	}
	return 0;
}

/* One event as a record of its own (a nested program): slot 0, the others ts 0. */
static __always_inline long send_alone(struct dc_event *ev, __u64 flags)
{
	struct dc_event *r = bpf_ringbuf_reserve(&events, sizeof(struct dc_event) * DC_STAGE_N, 0);

	if (!r)
		return -1;
	r[0] = *ev;
	for (int i = 1; i < DC_STAGE_N; i++)
		r[i].ts = 0;
	bpf_ringbuf_submit(r, flags);
	return 0;
}

/* Send (stage) one event; < 0: this event is lost (the caller counts it; the other
 * events of a refused batch are counted here). */
static __always_inline long send_event(struct dc_config *c, struct dc_event *ev)
{
	__u32 zero = 0, i;
	struct dc_stage *st = bpf_map_lookup_elem(&stage, &zero);
	long r;

	if (!st)
		return -1;
	if (!stage_take(st))
		return send_alone(ev, event_wakeup_flag(c));
	i = st->n & (DC_STAGE_N - 1);
	st->ev[i] = *ev;
	if (i < DC_STAGE_N - 1) {
		st->n = i + 1;
		stage_give(st);
		return 0;
	}
	r = bpf_ringbuf_output(&events, st->ev, sizeof(st->ev), event_wakeup_flag_n(c, DC_STAGE_N));
	if (r < 0)
		dc_stage_lost(st, DC_STAGE_N - 1);	/* the caller counts this event */
	st->n = 0;
	stage_give(st);
	return r;
}

/* Paths (rarer): none until a backlog builds up, then on every record until
 * the reader has drained it. */
static __always_inline __u64 wakeup_flag(void *ring, __u64 threshold)
{
	return bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= threshold ? BPF_RB_FORCE_WAKEUP
									 : BPF_RB_NO_WAKEUP;
}

/* Send the name in path_scratch (``len`` bytes with its NUL) as a record of
 * event (tid, ts, probe); 1 sent, -1 lost. */
static __always_inline int send_name(int len, __u8 kind, __u8 role, __u64 ino, __u64 tid_fd,
				     __u64 ts, __u32 probe)
{
	__u32 zero = 0, n = (__u32)len;
	struct dc_config *c = get_config();
	struct dc_path *p = bpf_map_lookup_elem(&path_scratch, &zero);

	if (!c || !p || len <= 0 || n > DC_PATH_MAX)
		return -1;
	n = ((n - 1) & (DC_PATH_MAX - 1)) + 1;	/* the same 1..DC_PATH_MAX, bounded for the verifier */
	p->ts = ts;
	p->tid = tid_fd >> 32;
	p->probe = probe;
	p->len = n;
	p->kind = kind;
	p->role = role;
	p->pad = 0;
	p->ino = ino;
	p->fd = (__s32)tid_fd;
	p->pad2 = 0;
	return bpf_ringbuf_output(&paths, p, offsetof(struct dc_path, path) + n,
				  wakeup_flag(&paths, c->wakeup_paths)) < 0 ? -1 : 1;
}

/* Send the path of an open-like call: 1 sent, 2 sent and relative, 0 none to
 * send (NULL or empty), -1 the name is lost (unreadable, or the ring is full). The caller counts a
 * loss only once the event itself was delivered, so names_lost is exactly the
 * delivered events that lack their name. Global, its arguments numbers, so the
 * verifier checks it once per program, not at each call site in finish() (13%
 * fewer instructions to verify in dc_sys_exit and the uretprobe programs). */
__noinline int dc_emit_path(__u64 ptr, __u64 kernel, __u64 tid, __u64 ts, __u32 probe)
{
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
	if (kernel)
		n = bpf_probe_read_kernel_str(p->path, DC_PATH_MAX, (void *)ptr);
	else
		n = bpf_probe_read_user_str(p->path, DC_PATH_MAX, (void *)ptr);
	if (n < 1)
		return -1;
	if (n == 1)
		return 0;
	if (n > DC_PATH_MAX)
		n = DC_PATH_MAX;
	p->pseudo = 0;
	/* only the string is copied: records are as long as the path */
	if (send_name(n, 0, DC_NAME_ARG, 0, (tid << 32) | 0xffffffffu, ts, probe) < 0)
		return -1;
	return p->path[0] == '/' ? 1 : 2;	/* 2: relative, its base is wanted */
}

static __always_inline int emit_path(struct dc_spec *sp, struct dc_entry *e, __u32 tid)
{
	return dc_emit_path(arg_of(e, sp->path), sp->kernel, tid, e->ts, e->probe);
}

/* ---- naming descriptors from the kernel's own objects ----
 *
 * A name taken from a program's argument is relative to its cwd or a
 * directory fd, and a descriptor opened before the trace (or inherited, or
 * made by pipe/socket/dup) has no argument at all. So the kernel side names
 * the file behind a descriptor itself, by walking its dentry and mount chain
 * to the root as d_path does (which tracepoints may not call). The walk runs
 * once per thread and file (dc_task.fc_*): the hot path pays one read of the
 * fd table, and the kind of the descriptor comes from the cache. Kernel
 * objects are read with CO-RE probe reads, so older kernels load this too. */

#define DC_S_IFMT 0170000
#define DC_S_IFSOCK 0140000
#define DC_S_IFLNK 0120000
#define DC_S_IFREG 0100000
#define DC_S_IFBLK 0060000
#define DC_S_IFDIR 0040000
#define DC_S_IFCHR 0020000
#define DC_S_IFIFO 0010000

#define DC_WALK_MOUNT 0xffffffffu	/* a step across a mount point, no component */

struct dc_walk {
	__u64 name[DC_WALK_MAX];
	__u32 len[DC_WALK_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dc_walk);
} walk_scratch SEC(".maps");

/* A kernel struct whose first member is 8 bytes of integer (rb_node's, since
 * 2012): kernel memory read as one gives the verifier a number, not a typed
 * pointer (the fd array is a struct file ** it gives no type, and a typed
 * pointer could be neither passed on to the global functions nor mixed). */
struct rb_node___dcfd {
	unsigned long __rb_parent_color;
} __attribute__((preserve_access_index));

/* 8 bytes of kernel memory at ``addr`` as a number (0: unreadable): a plain
 * load through bpf_rdonly_cast, or a probe read (~40 ns more here) without it. */
static __always_inline __u64 kernel_u64(__u64 addr)
{
	__u64 v = 0;

	if (bpf_rdonly_cast && bpf_core_field_offset(struct rb_node___dcfd, __rb_parent_color) == 0 &&
	    bpf_core_field_size(struct rb_node___dcfd, __rb_parent_color) == 8) {
		struct rb_node___dcfd *k = bpf_rdonly_cast((void *)addr,
							   bpf_core_type_id_kernel(struct rb_node___dcfd));

		return k->__rb_parent_color;
	}
	if (bpf_probe_read_kernel(&v, sizeof(v), (void *)addr) < 0)
		return 0;
	return v;
}

/* The struct file behind descriptor ``fd`` of ``task``, as a number (0: none).
 * Every event on a descriptor reads it (to compare with the per-thread cache),
 * so no helper call where the kernel has bpf_rdonly_cast. */
static __always_inline __u64 fd_file(struct task_struct *task, __s32 fd)
{
	struct files_struct *files = task->files;
	struct fdtable *fdt;

	if (!files || fd < 0)
		return 0;
	fdt = files->fdt;
	if (!fdt || (__u32)fd >= fdt->max_fds)
		return 0;
	return kernel_u64((__u64)fdt->fd + (__u64)fd * 8);
}

/* What the per-thread cache of named descriptors remembers of ``file``. Its
 * address is not enough: a file closed and another opened at the same number
 * by calls this thread does not see (another thread's, or ones no probe
 * records: close_range, memfd_create, io_uring) is often given the freed
 * struct file's memory again, and its dentry's too. So the address is mixed
 * with its dentry's and its inode number (unique for memfds, pipes, sockets;
 * per file system for files): three plain loads. Without bpf_rdonly_cast they
 * would be three probe reads per event, so the key is the address alone there. */
static __always_inline __u64 file_key(__u64 file)
{
	__u64 dentry, inode;

	if (!bpf_rdonly_cast)
		return file;
	dentry = kernel_u64(file + bpf_core_field_offset(struct file, f_path.dentry));
	inode = kernel_u64(file + bpf_core_field_offset(struct file, f_inode));
	return file ^ (dentry * 0x9e3779b97f4a7c15ull) ^
	       (kernel_u64(inode + bpf_core_field_offset(struct inode, i_ino)) * 0xc2b2ae3d27d4eb4full);
}

static __always_inline __u8 kind_of_file(__u64 file, __u64 *ino_nr)
{
	struct inode *ino = BPF_CORE_READ((struct file *)file, f_inode);
	__u32 major;

	if (!ino)
		return DC_FK_UNKNOWN;
	*ino_nr = BPF_CORE_READ(ino, i_ino);
	switch (BPF_CORE_READ(ino, i_mode) & DC_S_IFMT) {
	case DC_S_IFREG: return DC_FK_REG;
	case DC_S_IFDIR: return DC_FK_DIR;
	case DC_S_IFIFO: return DC_FK_PIPE;
	case DC_S_IFSOCK: return DC_FK_SOCK;
	case DC_S_IFLNK: return DC_FK_LNK;
	case DC_S_IFBLK: return DC_FK_BLK;
	case DC_S_IFCHR:
		/* tty majors: 4 (tty*), 5 (/dev/tty, console, ptmx), 136-143 (pts) */
		major = BPF_CORE_READ(ino, i_rdev) >> 20;
		return major == 4 || major == 5 || (major >= 136 && major <= 143) ? DC_FK_TTY
										    : DC_FK_CHR;
	case 0: return DC_FK_ANON;	/* anon inodes (eventfd, epoll, io_uring) have no type */
	}
	return DC_FK_UNKNOWN;
}

/* Write the absolute name of (dentry, vfsmount) into the per-CPU path_scratch
 * record from the root of the mount tree; return its length with the NUL, 0
 * when it could not be read (or is longer than PATH_MAX: better no name than a
 * cut one, and the loss is counted). A file of an internal file system (pipe,
 * socket, anon inode) has no place in the tree: its own name is written and
 * pseudo set, and the reader makes "pipe:[ino]" of it as /proc does.
 *
 * The naming functions are global (not static) so the verifier checks each
 * once, not once per call site: their loops are its costliest part. Their
 * arguments are numbers, as global functions take no kernel pointers. */
struct dc_walk_ctx {
	struct dentry *d;
	struct mount *mnt;
	struct dc_walk *w;
	struct dc_path *p;
	__u32 n;		/* steps walked */
	__u32 off;		/* bytes of name written */
	int done;		/* 1 reached the root, -1 failed */
};

/* One step up: a component, or a mount crossing kept as DC_WALK_MOUNT. */
static long walk_step(__u32 i, void *arg)
{
	struct dc_walk_ctx *x = arg;
	struct dentry *d = x->d, *parent = BPF_CORE_READ(d, d_parent);
	struct mount *mnt = x->mnt, *top;

	if (d == BPF_CORE_READ(mnt, mnt.mnt_root) || d == parent) {
		top = BPF_CORE_READ(mnt, mnt_parent);
		if (!top || top == mnt) {
			x->done = 1;	/* the root of the mount tree */
			return 1;
		}
		x->d = BPF_CORE_READ(mnt, mnt_mountpoint);
		x->mnt = top;
		x->w->len[i & (DC_WALK_MAX - 1)] = DC_WALK_MOUNT;
	} else {
		x->w->name[i & (DC_WALK_MAX - 1)] = (__u64)BPF_CORE_READ(d, d_name.name);
		x->w->len[i & (DC_WALK_MAX - 1)] = BPF_CORE_READ(d, d_name.len);
		x->d = parent;
	}
	x->n = i + 1;
	return 0;
}

/* Copy step n-1-i's component after a slash (from the root down). */
static long copy_step(__u32 i, void *arg)
{
	struct dc_walk_ctx *x = arg;
	__u32 k = (x->n - 1 - i) & (DC_WALK_MAX - 1), len, off = x->off;

	if (i >= x->n)
		return 1;
	len = x->w->len[k];
	if (len == DC_WALK_MOUNT)
		return 0;
	len &= 255;
	if (off + 1 + len >= DC_PATH_MAX - 1) {
		x->done = -1;	/* longer than PATH_MAX */
		return 1;
	}
	x->p->path[off & (DC_PATH_MAX - 1)] = '/';
	off = (off + 1) & (DC_PATH_MAX - 1);
	if (len && bpf_probe_read_kernel(&x->p->path[off], len, (void *)x->w->name[k]) < 0) {
		x->done = -1;
		return 1;
	}
	x->off = off + len;
	return 0;
}

/* Write the absolute name of (dentry, vfsmount) into the per-CPU path_scratch
 * record from the root of the mount tree; return its length with the NUL, 0
 * when it could not be read (or is longer than PATH_MAX or DC_WALK_MAX steps:
 * better no name than a cut one, and the loss is counted). A file of an
 * internal file system (pipe, socket, anon inode) has no place in the tree:
 * its own name is written and pseudo set, and the reader makes "pipe:[ino]"
 * of it as /proc does.
 *
 * Global (not static), so the verifier checks it once, not once per call
 * site, and its loops run through bpf_loop, checked once per step function:
 * its arguments are numbers, as global functions take no kernel pointers. */
__noinline int dc_walk_name(__u64 dentry, __u64 vfsmount)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct dc_walk_ctx x = {};
	struct mount *mnt;
	struct dentry *d;
	__u32 zero = 0;
	long len;

	x.w = bpf_map_lookup_elem(&walk_scratch, &zero);
	x.p = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!x.w || !x.p || !dentry || !vfsmount)
		return 0;
	x.d = (struct dentry *)dentry;
	x.mnt = (struct mount *)(vfsmount - bpf_core_field_offset(struct mount, mnt));
	x.p->pseudo = 0;
	bpf_loop(DC_WALK_MAX, walk_step, &x, 0);
	if (x.done != 1)
		return 0;	/* deeper than the walk goes */
	/* nothing but the top of a tree that is not the task's namespace: an
	 * internal mount (pipefs, sockfs, anon_inodefs) */
	mnt = x.mnt;
	d = x.d;
	if (x.n == 0 && BPF_CORE_READ(mnt, mnt_ns) != BPF_CORE_READ(task, nsproxy, mnt_ns)) {
		x.p->pseudo = 1;
		len = bpf_probe_read_kernel_str(x.p->path, 256, BPF_CORE_READ(d, d_name.name));
		return len > 0 ? len : 0;
	}
	x.done = 0;
	bpf_loop(DC_WALK_MAX, copy_step, &x, 0);
	if (x.done < 0)
		return 0;
	if (x.off == 0)
		x.p->path[x.off++] = '/';	/* the root itself */
	x.p->path[x.off & (DC_PATH_MAX - 1)] = 0;
	return (x.off & (DC_PATH_MAX - 1)) + 1;
}


#define DC_NAMED_SENT 0x100
#define DC_NAMED_LOST 0x200
/* What became of an event's names: some sent (the reader waits for them),
 * some lost (counted once, in the kernel). */
#define DC_NAMES_SENT 1
#define DC_NAMES_LOST 2

/* The cache missed: the kind of ``file`` (the struct file behind descriptor
 * (__s32)tid_fd), and its name sent for event (tid, ts, probe). Returns the
 * kind, with DC_NAMED_SENT or DC_NAMED_LOST. */
__noinline __u32 dc_name_fd(__u64 file, __u64 tid_fd, __u64 ts, __u32 probe, __u32 capture)
{
	__u64 ino = 0;
	__u8 kind = kind_of_file(file, &ino);
	int len;

	if (!capture)
		return kind;
	len = dc_walk_name((__u64)BPF_CORE_READ((struct file *)file, f_path.dentry),
			   (__u64)BPF_CORE_READ((struct file *)file, f_path.mnt));
	if (len <= 0)
		return kind | DC_NAMED_LOST;
	return kind | (send_name(len, kind, DC_NAME_FD, ino, tid_fd, ts, probe) < 0
		       ? DC_NAMED_LOST : DC_NAMED_SENT);
}

/* The kind of descriptor fd of the current task; its name is sent once per
 * thread and file (``force``: send it even if this thread named it before: the
 * descriptor is new). Adds DC_NAMES_SENT to *names when a name went out,
 * DC_NAMES_LOST when one was lost. */
static __always_inline __u8 fd_kind_named(struct dc_config *c, struct dc_task *t,
					  struct task_struct *task, __s32 fd, struct dc_entry *e,
					  __u32 tid, bool force, __u32 *names)
{
	__u64 file = fd_file(task, fd), ino, key;
	__u32 w = (__u32)fd & (DC_FCACHE - 1), r;

	if (!file)
		return DC_FK_UNKNOWN;
	if (!t)
		return kind_of_file(file, &ino);
	/* a rename since this thread named the file: name it again */
	key = file_key(file) ^ ((__u64)*(volatile __u32 *)&c->name_gen * 0xff51afd7ed558ccdull);
	if (!force && t->fc_fd[w] == fd && t->fc_file[w] == key)
		return t->fc_kind[w];
	r = dc_name_fd(file, ((__u64)tid << 32) | (__u32)fd, e->ts, e->probe, c->capture_paths);
	if (r & DC_NAMED_LOST) {
		*names |= DC_NAMES_LOST;
		t->fc_fd[w] = -1;	/* try again next time */
	} else {
		if (r & DC_NAMED_SENT)
			*names |= DC_NAMES_SENT;
		t->fc_fd[w] = fd;
		t->fc_file[w] = key;
		t->fc_kind[w] = (__u8)r;
	}
	return (__u8)r;
}

/* A relative path argument starts at the directory fd ((__s32)tid_fd >= 0) or
 * the cwd: send that directory's name so the reader can make the path
 * absolute. 1 sent, -1 lost. */
__noinline int dc_emit_base(__u64 dir_file, __u64 tid_fd, __u64 ts, __u32 probe)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 d, vm;

	if ((__s32)tid_fd >= 0) {
		if (!dir_file)
			return -1;
		d = (__u64)BPF_CORE_READ((struct file *)dir_file, f_path.dentry);
		vm = (__u64)BPF_CORE_READ((struct file *)dir_file, f_path.mnt);
	} else {
		d = (__u64)BPF_CORE_READ(task, fs, pwd.dentry);
		vm = (__u64)BPF_CORE_READ(task, fs, pwd.mnt);
	}
	return send_name(dc_walk_name(d, vm), DC_FK_DIR, DC_NAME_BASE, 0, tid_fd, ts, probe);
}

/* A descriptor the operation closed: the next file behind its number is
 * named again even if the kernel reuses the struct file's memory for it. */
static __always_inline void forget_fd(struct dc_task *t, __s32 fd)
{
	if (t && fd >= 0 && t->fc_fd[(__u32)fd & (DC_FCACHE - 1)] == fd)
		t->fc_fd[(__u32)fd & (DC_FCACHE - 1)] = -1;
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

/* Common exit path: profile it, or emit one event (and its names). ``own``:
 * the current task is the one the operation belongs to (not an interrupt);
 * ``t`` and ``task`` are its state and task_struct when the caller has them. */
/* A function without argument roles: its scalar arguments in the fields no role uses. */
static __always_inline void put_scalars(struct dc_spec *sp, struct dc_entry *e,
					struct dc_event *ev)
{
	__u64 v3;

	/* arg_of(e, -1) is 0: a slot without an argument */
	ev->count = arg_of(e, (__s8)sp->scalar[0] - 1);
	ev->offset = (__s64)arg_of(e, (__s8)sp->scalar[1] - 1);
	ev->handle = arg_of(e, (__s8)sp->scalar[2] - 1);
	v3 = arg_of(e, (__s8)sp->scalar[3] - 1);
	ev->fd = (__s32)(__u32)v3;
	ev->fd2 = (__s32)(__u32)(v3 >> 32);
}

static __always_inline void finish(struct dc_config *c, struct dc_spec *sp, struct dc_entry *e,
				   __u64 tid_tgid, __s64 ret, __u64 now, bool own,
				   struct dc_task *t, struct task_struct *task)
{
	__u32 tgid = tid_tgid >> 32, tid = (__u32)tid_tgid;
	__s64 bytes = bytes_of(sp, e, ret);
	struct dc_event ev_buf, *ev = &ev_buf;
	__u32 kind = 0, kind2 = 0;
	__u32 names = 0;
	int r;

	if (own)
		remember_comm(t, tgid);
	if (c->mode == DC_MODE_PROFILE) {
		profile_add(c, own ? t : NULL, tgid, e->probe, now - e->ts, bytes);
		return;
	}
	ev->fd2 = sp->fd2 >= 0 ? (__s32)arg_of(e, sp->fd2) : -1;
	ev->fd = -1;
	if (sp->fd >= 0) {
		ev->fd = (__s32)arg_of(e, sp->fd);
	} else if (sp->stream >= 0 && !sp->kernel) {
		/* fclose: read at entry (its FILE is closed, even freed, by now) */
		ev->fd = sp->closes ? (__s32)e->nr : stream_fd(arg_of(e, sp->stream));
	}
	if (own && task && sp->ret_fd && ret >= 0) {
		/* a new descriptor: its file's name from the kernel, absolute */
		fd_kind_named(c, t, task, (__s32)ret, e, tid, true, &names);
		if ((names & DC_NAMES_LOST) && c->capture_paths && sp->path >= 0) {
			/* then the name as the program gave it */
			r = emit_path(sp, e, tid);
			if (r > 0)
				names = DC_NAMES_SENT;
		}
	} else if (c->capture_paths && sp->path >= 0) {
		r = emit_path(sp, e, tid);
		names = r > 0 ? DC_NAMES_SENT : r < 0 ? DC_NAMES_LOST : 0;
		/* a name relative to a handle argument (H5Dopen2(loc_id, name)) is a name
		 * inside that object, not a file's: it has no directory to start from */
		if (r == 2 && own && task && sp->handle_kind != DC_HANDLE_ARG) {
			/* a relative name: from the dirfd (the fd role, AT_FDCWD < 0) or the cwd */
			__s32 dirfd = sp->fd >= 0 ? (__s32)arg_of(e, sp->fd) : -1;

			r = dc_emit_base(dirfd >= 0 ? fd_file(task, dirfd) : 0,
					 ((__u64)tid << 32) | (__u32)dirfd, e->ts, e->probe);
			if (r < 0)
				names |= DC_NAMES_LOST;
		}
	} else if (own && task && ev->fd >= 0) {
		if (sp->closes) {
			forget_fd(t, ev->fd);
			if (t && sp->stream < 0) {
				/* close(2): named at its entry (dc_sys_enter) */
				names |= t->close_names;
				t->close_names = 0;
			}
		}
		else
			kind = fd_kind_named(c, t, task, ev->fd, e, tid, false, &names);
	}
	if (own && task && ev->fd2 >= 0)
		kind2 = fd_kind_named(c, t, task, ev->fd2, e, tid, false, &names);
	if (own && sp->renames && ret == 0)
		__sync_fetch_and_add(&c->name_gen, 1);
	/* built on the stack and sent with one helper call, not reserve + submit */
	ev->ts = e->ts;
	ev->dur = now - e->ts;
	ev->pid = tgid;
	ev->tid = tid;
	ev->probe = (e->probe & DC_EV_PROBE_MASK) | (kind << DC_EV_KIND_SHIFT) |
		    ((kind2 & 7) << DC_EV_KIND2_SHIFT);
	if (names & DC_NAMES_SENT)
		ev->probe |= DC_EV_PATH_SENT;
	ev->ret = ret;
	ev->bytes = bytes;
	ev->count = 0;
	if (sp->count >= 0)
		ev->count = arg_of(e, sp->count);
	else if (sp->size >= 0 && sp->nmemb >= 0)
		ev->count = arg_of(e, sp->size) * arg_of(e, sp->nmemb);
	ev->offset = sp->offset >= 0 ? (__s64)arg_of(e, sp->offset) : -1;
	ev->flags = sp->flags >= 0 ? (__u32)arg_of(e, sp->flags) : 0;
	ev->handle = sp->handle_kind ? arg_of(e, sp->handle) : 0;
	if (sp->scalar[0])
		put_scalars(sp, e, ev);
	/* a lost name is counted before the event is staged (a flush that finds the ring
	 * full takes it back), and taken back here if the event itself is lost */
	if (names & DC_NAMES_LOST) {
		ev->probe |= DC_EV_NAMES_LOST;
		count_lost(1);
	}
	if (send_event(c, ev) < 0) {
		count_lost(0);
		dc_unsent(own ? t : NULL, ((__u64)tgid << 32) | e->probe, ev->dur, bytes);
		if (names & DC_NAMES_LOST)
			uncount_lost(1);
	}
}

/* finish()'s profile mode, inlined where dc_finish_own is called: a count in
 * the task's row costs no call. */
static __always_inline void finish_profile(struct dc_config *c, struct dc_spec *sp,
					   struct dc_entry *e, __u64 tid_tgid, __s64 ret,
					   __u64 now, struct dc_task *t)
{
	__s64 bytes = bytes_of(sp, e, ret);

	remember_comm(t, tid_tgid >> 32);
	profile_add(c, t, tid_tgid >> 32, e->probe, now - e->ts, bytes);
}

/* finish() for the task's own operation, as a global subprogram: the verifier
 * checks it once per program with generic arguments instead of in each
 * caller's states (dc_uretprobe_multi: 45,000 verified instructions, the
 * largest part of the start's kernel time, now about half the verifier's time).
 * dc_sys_exit keeps it inlined: a call costs about 10 ns (the return thunk)
 * on every traced system call. Five arguments at
 * most: the pointers typed, the numbers in a struct on the caller's stack;
 * the task (a typed pointer the callee cannot be given before kernel 6.8)
 * comes as a number and is read through bpf_rdonly_cast (6.2; uprobe_multi,
 * its caller's attach type, is 6.6). */
struct dc_fin {
	__u64 tid_tgid;
	__s64 ret;
	__u64 now;
	__u64 task;
};

__noinline int dc_finish_own(struct dc_spec *sp, struct dc_entry *e, struct dc_task *t,
			     struct dc_fin *a)
{
	struct dc_config *c = get_config();
	struct task_struct *task;

	if (!c || !sp || !e || !a)
		return 0;
	task = bpf_rdonly_cast((void *)a->task, bpf_core_type_id_kernel(struct task_struct));
	finish(c, sp, e, a->tid_tgid, a->ret, a->now, true, t, task);
	return 0;
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
		if (c->mode == DC_MODE_TRACE)
			count_lost(2);	/* not in the unsent rows either */
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
	t->close_names = 0;
	if (sp->closes && c->mode == DC_MODE_TRACE) {
		/* close: its file is named now or never (at the return the descriptor is gone,
		 * and /proc can only show a file given its number later) */
		__u32 names = 0;

		fd_kind_named(c, t, fields_of(bpf_get_current_task_btf()), (__s32)regs->di,
			      &t->sys, (__u32)t->tid_tgid, false, &names);
		t->close_names = (__u8)names;
	}
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
	task = fields_of(task);		/* from here on only read */
	c = get_config();
	/* a set-uid execve returns in another program with other creds */
	if (c && t->sys.nr == k && still_in_scope(c, t, task)) {
		if (sp->bytes_kind == DC_BYTES_AIO_SUBMIT)
			aio_submitted(c, &t->sys, t->tid_tgid, ret);
		else if (sp->bytes_kind == DC_BYTES_AIO_REAP)
			aio_reaped(c, &t->sys, t->tid_tgid, ret);
		else
			finish(c, sp, &t->sys, t->tid_tgid, ret, bpf_ktime_get_ns(), true, t, task);
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
	if (sp->handle_kind == DC_HANDLE_PTR && !sp->kernel)
		deref_handle(sp, &e);	/* the call may free or clear it (MPI_File_close) */
	if (sp->closes && sp->stream >= 0 && !sp->kernel)
		/* fclose sets the FILE's descriptor to -1 and frees it before it returns */
		e.nr = (__u32)stream_fd(arg_of(&e, sp->stream));
	key.tid = (__u32)tid_tgid;
	key.slot = probe;
	bpf_map_update_elem(&entries, &key, &e, BPF_ANY);
	return 0;
}

/* ``global``: finish through dc_finish_own (the uprobe_multi program: kernels
 * with uprobe_multi, 6.6, have bpf_rdonly_cast, 6.2). The per-probe programs,
 * the fallback for older kernels, inline finish(). */
static __always_inline int probe_return(struct pt_regs *ctx, bool global)
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
	task = fields_of(task);		/* from here on only read */
	if (c && sp && still_in_scope(c, t, task)) {
		ret = (__s64)PT_REGS_RC(ctx);
		if (sp->ret32)
			ret = (__s64)(__s32)ret;
		if (sp->handle_kind == DC_HANDLE_OUT && !sp->kernel)
			deref_handle(sp, e);	/* written by the call: readable now */
		if (global && c->mode == DC_MODE_PROFILE) {
			finish_profile(c, sp, e, tid_tgid, ret, bpf_ktime_get_ns(), t);
		} else if (global) {
			struct dc_fin a = { tid_tgid, ret, bpf_ktime_get_ns(), (__u64)task };

			dc_finish_own(sp, e, t, &a);
		} else
			finish(c, sp, e, tid_tgid, ret, bpf_ktime_get_ns(), true, t, task);
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
	return probe_return(ctx, false);
}

SEC("kprobe")
int dc_kprobe(struct pt_regs *ctx)
{
	return probe_entry(ctx);
}

SEC("kretprobe")
int dc_kretprobe(struct pt_regs *ctx)
{
	return probe_return(ctx, false);
}

/* ---- tracepoints ---- */

/* Any tracepoint: one instant event (or a profile count) per hit in scope. */
/* One hit of a tracepoint in scope: an instant event (or a profile count).
 * ``record``: the perf tracepoint's formatted record, whose fields a bytes
 * rule may read (NULL for raw tracepoints, which have none). */
static __always_inline int tracepoint_hit(void *ctx, void *record)
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
	if (record && sp->bytes_kind == DC_BYTES_FIELD) {
		__u32 size = sp->field_size;

		if (size > 8)
			size = 8;
		bpf_probe_read_kernel(&value, size & 15, (char *)record + (sp->field_off & 4095));
		/* finish() turns "arg0 when ret >= 0" into bytes */
		e.args[0] = value;
		sp = &(struct dc_spec){ .probe = probe, .bytes_kind = DC_BYTES_ARG, .bytes_arg = 0,
					.fd = -1, .count = -1, .offset = -1, .path = -1,
					.size = -1, .nmemb = -1, .stream = -1,
					.fd2 = -1, .flags = -1 };
	}
	finish(c, sp, &e, tid_tgid, ret, e.ts, true, t, NULL);	/* an instant: no duration */
	return 0;
}

/* Any tracepoint, through its perf event: its record's fields can be read. */
SEC("tp")
int dc_tracepoint(void *ctx)
{
	return tracepoint_hit(ctx, ctx);
}

/* Any tracepoint, raw (kernel >= 6.10 for the cookie): no record to read, but
 * attached and detached without the RCU wait a perf tracepoint costs on each
 * detach (850 file system tracepoints: a minute). The engine loads it only
 * where the kernel takes it. */
SEC("raw_tp")
int dc_raw_tracepoint(struct bpf_raw_tracepoint_args *ctx)
{
	return tracepoint_hit(ctx, NULL);
}

/* Block requests: issue (in the submitting process) starts the clock,
 * complete (often in interrupt context) ends it and is attributed to the
 * issuer. Requests issued by kernel workers on the job's behalf (writeback)
 * are outside any job's scope and are not reported. BTF tracepoints, not perf
 * ones: the kernel skips a perf tracepoint's program that interrupts another
 * BPF program on its CPU (a completion in an interrupt during a file system
 * tracepoint's program was lost that way), a BTF one only if it interrupts itself. */

/* Inodes the job wrote (see struct dc_job_inode): a kernel thread's work on
 * them is the job's. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DC_JOB_INODES);
	__type(key, __u64);		/* inode number */
	__type(value, struct dc_job_inode);
} job_inodes SEC(".maps");

/* The inode whose page cache a request's first page is (0: none, e.g. metadata
 * of the device itself or an anonymous page), and its file system's device. */
static __always_inline __u64 rq_inode(struct request *rq, __u32 *dev)
{
	struct page *page = BPF_CORE_READ(rq, bio, bi_io_vec, bv_page);
	struct address_space *m;
	struct inode *ip;

	if (!page)
		return 0;
	m = BPF_CORE_READ(page, mapping);
	if (!m || ((__u64)m & 3))
		return 0;
	ip = BPF_CORE_READ(m, host);
	if (!ip)
		return 0;
	*dev = BPF_CORE_READ(ip, i_sb, s_dev);
	return BPF_CORE_READ(ip, i_ino);
}

/* The block:block_rq_complete probe's index + 1 (0: not traced): BTF
 * tracepoints take no cookie on older kernels. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} block_probe SEC(".maps");

/* request->rq_disk before 5.16 (the disk moved to request_queue->disk) */
struct request___rq_disk {
	struct gendisk *rq_disk;
} __attribute__((preserve_access_index));

/* The request's device as the block tracepoints' records give it (disk_devt). */
static __always_inline __u32 rq_dev(struct request *rq)
{
	struct request_queue *q = BPF_CORE_READ(rq, q);
	struct gendisk *disk;

	if (bpf_core_field_exists(q->disk))
		disk = BPF_CORE_READ(q, disk);
	else
		disk = BPF_CORE_READ((struct request___rq_disk *)rq, rq_disk);

	if (!disk)
		return 0;
	return ((__u32)BPF_CORE_READ(disk, major) << 20) | (__u32)BPF_CORE_READ(disk, first_minor);
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(dc_block_issue, struct request *rq)
{
	__u64 tid_tgid = bpf_get_current_pid_tgid();
	struct dc_config *c = get_config();
	struct dc_block_key k = {};
	struct dc_block_start s;

	if (!c)
		return 0;
	s.ino = 0;
	if (!in_scope(c, tid_tgid >> 32)) {
		/* a kernel thread writing back (or reading ahead) pages of a file the job
		 * wrote: the request is the job's, for its process that last wrote it */
		struct task_struct *task = bpf_get_current_task_btf();
		struct dc_job_inode *j;
		__u32 fdev = 0;
		__u64 ino;

		if (!(task->flags & DC_PF_KTHREAD))
			return 0;
		ino = rq_inode(rq, &fdev);
		j = ino ? bpf_map_lookup_elem(&job_inodes, &ino) : 0;
		if (!j || (j->dev && fdev && j->dev != fdev))
			return 0;
		tid_tgid = (j->tid_tgid & 0xffffffff00000000ull) | (__u32)tid_tgid;
		s.ino = ino;
	}
	k.dev = rq_dev(rq);
	k.sector = BPF_CORE_READ(rq, __sector);
	s.ts = bpf_ktime_get_ns();
	s.tid_tgid = tid_tgid;
	bpf_map_update_elem(&block_starts, &k, &s, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(dc_block_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	struct dc_config *c = get_config();
	struct dc_block_key k = {};
	struct dc_block_start *s;
	struct dc_spec *sp;
	struct dc_entry e = {};
	__u32 zero = 0, *slot, probe;
	__u64 tid_tgid;

	k.dev = rq_dev(rq);
	k.sector = BPF_CORE_READ(rq, __sector);
	s = bpf_map_lookup_elem(&block_starts, &k);
	if (!s)
		return 0;
	e.ts = s->ts;
	tid_tgid = s->tid_tgid;
	e.args[3] = s->ino;				/* async: the job's inode, as the handle */
	bpf_map_delete_elem(&block_starts, &k);
	slot = bpf_map_lookup_elem(&block_probe, &zero);
	if (!c || !slot || !*slot)
		return 0;
	probe = *slot - 1;
	sp = bpf_map_lookup_elem(&probe_specs, &probe);
	if (!sp || !sp->active)
		return 0;
	e.probe = probe;
	e.args[0] = nr_bytes >> 9 << 9;			/* as the record's nr_sector << 9 */
	e.args[1] = k.sector << 9;			/* byte offset on the device */
	e.args[2] = k.dev;				/* the device, in the event's flags */
	sp = &(struct dc_spec){ .probe = probe, .bytes_arg = 0,
				.bytes_kind = sp->bytes_kind == DC_BYTES_NONE ? DC_BYTES_NONE : DC_BYTES_ARG,
				.fd = -1, .count = 0, .offset = 1, .path = -1,
				.size = -1, .nmemb = -1, .stream = -1,
				.fd2 = -1, .flags = 2, .handle = 3, .handle_kind = DC_HANDLE_ARG };
	/* blk_status_t: any failure is sent as EIO */
	finish(c, sp, &e, tid_tgid, (error & 0xff) ? -5 : 0, bpf_ktime_get_ns(), false, NULL, NULL);
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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dc_shell);
} scope_shell SEC(".maps");

struct dc_args {
	char buf[DC_ARGS_MAX + DC_SHELL_NAME_MAX + 2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dc_args);
} args_scratch SEC(".maps");

struct dc_shell_ctx {
	struct dc_shell *sh;
	struct dc_args *a;
	__u32 end;		/* the job shell's name must end before this offset */
	__u32 found;
};

/* Does the job shell's name start at offset i, as a whole argument or after a '/'? */
static long shell_at(__u32 i, void *arg)
{
	struct dc_shell_ctx *x = arg;
	__u32 k, len = x->sh->name_len;

	if (i + len > x->end || len == 0 || len >= DC_SHELL_NAME_MAX)
		return 1;
	if (i > 0) {
		char before = x->a->buf[(i - 1) & (DC_ARGS_MAX - 1)];

		if (before != '/' && before != 0)
			return 0;
	}
	for (k = 0; k < DC_SHELL_NAME_MAX; k++) {
		if (k >= len)
			break;
		if (x->a->buf[(i + k) & (DC_ARGS_MAX - 1)] != x->sh->name[k])
			return 0;
	}
	if (x->a->buf[(i + len) & (DC_ARGS_MAX - 1)] != 0)
		return 0;
	x->found = 1;
	return 1;
}

/* Is the current process's new command line the job's shell for our job? */
static __always_inline bool is_job_shell(struct task_struct *task)
{
	__u32 zero = 0, n, L, k;
	struct dc_shell *sh = bpf_map_lookup_elem(&scope_shell, &zero);
	struct dc_args *a;
	struct dc_shell_ctx x = {};
	unsigned long start, end;

	if (!sh || !sh->active)
		return false;
	a = bpf_map_lookup_elem(&args_scratch, &zero);
	if (!a)
		return false;
	start = BPF_CORE_READ(task, mm, arg_start);
	end = BPF_CORE_READ(task, mm, arg_end);
	if (end <= start)
		return false;
	if (end - start > DC_ARGS_MAX)
		start = end - DC_ARGS_MAX;	/* the tail holds the job id */
	n = (__u32)(end - start) & (DC_ARGS_MAX * 2 - 1);
	if (n > DC_ARGS_MAX || bpf_probe_read_user(a->buf, n, (void *)start) < 0)
		return false;
	L = sh->jobid_len;
	/* "...<shell>\0<jobid>\0": the job id is the last argument, whole */
	if (L == 0 || L >= DC_SHELL_JOBID_MAX || n < L + 3 || a->buf[(n - 1) & (DC_ARGS_MAX - 1)])
		return false;
	if (a->buf[(n - 2 - L) & (DC_ARGS_MAX - 1)] != 0)
		return false;
	for (k = 0; k < DC_SHELL_JOBID_MAX; k++) {
		if (k >= L)
			break;
		if (a->buf[(n - 1 - L + k) & (DC_ARGS_MAX - 1)] != sh->jobid[k])
			return false;
	}
	x.sh = sh;
	x.a = a;
	x.end = n - 2 - L;
	bpf_loop(DC_ARGS_MAX, shell_at, &x, 0);
	return x.found;
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
	/* the job's shell starts: it and what it forks are the job */
	if (!state && c && c->scope == DC_SCOPE_PIDS && is_job_shell(fields_of(bpf_get_current_task_btf()))) {
		__u8 member = DC_PID_MEMBER;

		bpf_map_update_elem(&scope_pids, &tgid, &member, BPF_ANY);
	}
	/* a set-uid program may change the decision: take it again; a thread
	 * other than the leader that execs takes the leader's pid */
	if (t) {
		t->gen = 0;
		t->tid_tgid = tid_tgid;
		/* close-on-exec descriptors closed without a close call */
		for (int i = 0; i < DC_FCACHE; i++)
			t->fc_fd[i] = -1;
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
	return probe_return(ctx, true);
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

/* The name of an io_uring fixed file (an index into the ring's table, which no
 * fd table names), from the file itself: sent as the event's path. 1 sent, -1 lost. */
static __always_inline int emit_file_path(struct file *file, __u64 ts, __u32 tid, __u32 probe)
{
	__u64 ino = BPF_CORE_READ(file, f_inode, i_ino);
	int len = dc_walk_name((__u64)BPF_CORE_READ(file, f_path.dentry),
			       (__u64)BPF_CORE_READ(file, f_path.mnt));

	if (len <= 0)
		return -1;
	return send_name(len, DC_FK_REG, DC_NAME_ARG, ino, ((__u64)tid << 32) | 0xffffffffu, ts,
			 probe);
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
		path = emit_file_path(file, r->ts, (__u32)r->tid_tgid, r->probe);
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
	ev->handle = 0;
	if (path < 0) {
		ev->probe |= DC_EV_NAMES_LOST;
		count_lost(1);
	}
	if (send_event(c, ev) < 0) {
		count_lost(0);
		dc_unsent(NULL, (r->tid_tgid & ~0xffffffffull) | r->probe, dur, bytes);
		if (path < 0)
			uncount_lost(1);
	}
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

/* ---- dlopen holds: no call missed after a dlopen() (tracer/dlhold.py) ----
 *
 * Library families attach to the libraries a job maps, found by reading its
 * processes' maps; a process calling into a library right after dlopen()
 * would run ahead of that. dc_dl_hook, a uprobe on the dynamic linker's
 * debugger hook _dl_debug_state (its cookie: the distance from there to
 * _r_debug), looks at the objects each dlopen() (or the program's start) has
 * just mapped, while they are not yet relocated and their constructors have
 * not run. One whose file name begins like a probed family and that the
 * tracer has not judged yet (hold_known) gets the process stopped
 * (SIGSTOP) and the tracer told (holds, woken at once): it attaches, then
 * sends SIGCONT. Only the debugger hook pays this, never a system call. */

#define DC_SIGCONT 18
#define DC_SIGSTOP 19
#define DC_EBUSY 16
#define DC_RT_CONSISTENT 0
#define DC_RT_ADD 1
/* the public heads of struct r_debug and struct link_map (<link.h>) are ABI */
#define DC_LM_LD 16
#define DC_LM_NEXT 24
#define DC_LM_PREV 32

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 10);
} holds SEC(".maps");

/* Processes stopped by dc_dl_hook, by tgid, until the tracer resumes them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct dc_held);
} held SEC(".maps");

/* Per thread, between RT_ADD and RT_CONSISTENT: the link_map before the one
 * the list ended at when RT_ADD was signalled (0: look at the whole list).
 * glibc 2.36 adds the dlopen()ed object itself before RT_ADD, its
 * dependencies after; older ones add all after: from there, both are seen. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} dl_tails SEC(".maps");

/* Files the tracer has judged (attached, or found not attachable): mapping
 * them again holds nothing. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DC_HOLD_KNOWN);
	__type(key, struct dc_file_key);
	__type(value, __u8);
} hold_known SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dc_needles);
} hold_needles SEC(".maps");

/* Dynamic linkers dc_dl_hook is on (or that cannot have it): a job process
 * exec'ing with another one (a container's glibc) is held until it is. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct dc_file_key);
	__type(value, __u8);
} hold_interps SEC(".maps");

struct dc_rdebug {
	__s32 r_version;
	__u32 pad;
	__u64 r_map;
	__u64 r_brk;
	__s32 r_state;
	__u32 pad2;
};

/* The callbacks of bpf_loop keep no counters: the verifier follows a callback
 * until its state repeats, and a counter never repeats. */
static long dl_tail_step(__u32 i, void *arg)
{
	__u64 *cur = arg, next = 0;

	if (bpf_probe_read_user(&next, sizeof(next), (void *)(*cur + DC_LM_NEXT)) || !next)
		return 1;
	*cur = next;
	return 0;
}

static __always_inline __u64 dl_next(__u64 lm)
{
	__u64 next = 0;

	if (lm)
		bpf_probe_read_user(&next, sizeof(next), (void *)(lm + DC_LM_NEXT));
	return next;
}

struct dl_file {
	__u64 dev;
	__u64 ino;
	__u64 name[DC_NEEDLE_MAX / 8];	/* zero-padded */
	__u32 seen;		/* the address is in a mapping */
	__u32 file;		/* ... of a file */
};

static long dl_vma_file(struct task_struct *task, struct vm_area_struct *vma, void *arg)
{
	struct dl_file *f = arg;
	struct file *file = BPF_CORE_READ(vma, vm_file);
	struct inode *inode;

	f->seen = 1;
	if (!file)
		return 0;
	inode = BPF_CORE_READ(file, f_inode);
	f->ino = BPF_CORE_READ(inode, i_ino);
	f->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	bpf_probe_read_kernel_str(f->name, sizeof(f->name),
				  BPF_CORE_READ(file, f_path.dentry, d_name.name));
	f->file = 1;
	return 0;
}

/* Does the file name (zero-padded) begin with one of the families' literal prefixes? */
static __always_inline bool dl_needle_match(struct dc_needles *nd, const __u64 *name)
{
	for (__u32 k = 0; k < DC_NEEDLES; k++) {
		if (k >= nd->n)
			break;
		if ((name[0] & nd->mask[k][0]) == nd->word[k][0] &&
		    (name[1] & nd->mask[k][1]) == nd->word[k][1] &&
		    (name[2] & nd->mask[k][2]) == nd->word[k][2] &&
		    (name[3] & nd->mask[k][3]) == nd->word[k][3])
			return true;
	}
	return false;
}

struct dl_check {
	__u64 cur;			/* next link_map to look at */
	struct dl_file f;
	struct dc_file_key first;	/* the first new matching file */
	__u64 name[DC_NEEDLE_MAX / 8];
	__u32 matches;			/* 1: a new matching file */
	__u32 unsure;			/* 1: an object whose file could not be looked up */
};

static long dl_check_step(__u32 i, void *arg)
{
	struct dl_check *k = arg;
	struct dc_needles *nd;
	struct dc_file_key key;
	__u64 ld = 0, next = 0, cur = k->cur;
	__u32 zero = 0;
	long err;

	if (!cur)
		return 1;
	if (bpf_probe_read_user(&ld, sizeof(ld), (void *)(cur + DC_LM_LD)) ||
	    bpf_probe_read_user(&next, sizeof(next), (void *)(cur + DC_LM_NEXT)))
		return 1;
	k->cur = next;
	if (!ld)
		return 0;
	__builtin_memset(&k->f, 0, sizeof(k->f));
	/* the file mapped at the object's dynamic section: the kernel's word for
	 * which file it is, whatever name the process gave it */
	err = bpf_find_vma(bpf_get_current_task_btf(), ld, dl_vma_file, &k->f, 0);
	if (err == -DC_EBUSY)
		k->unsure = 1;		/* another thread holds the mm: hold to be sure */
	if (err || !k->f.file)
		return 0;
	nd = bpf_map_lookup_elem(&hold_needles, &zero);
	if (!nd || !dl_needle_match(nd, k->f.name))
		return 0;
	key.dev = k->f.dev;
	key.ino = k->f.ino;
	if (bpf_map_lookup_elem(&hold_known, &key))
		return 0;
	if (!k->matches) {
		k->first = key;
		__builtin_memcpy(k->name, k->f.name, sizeof(k->name));
	}
	k->matches = 1;
	return 0;
}

/* Stop the current process and tell the tracer. Ring space is taken first: a
 * process is never stopped without the tracer being told. */
static __always_inline void dl_hold(__u64 tid_tgid, struct dl_check *k, __u32 kind)
{
	__u32 tgid = tid_tgid >> 32;
	struct dc_held h = { .ts = bpf_ktime_get_ns(), .tid = (__u32)tid_tgid,
			     .state = DC_HOLD_ARMING };
	struct dc_hold_msg *m = bpf_ringbuf_reserve(&holds, sizeof(*m), 0);
	struct dc_held *hp;

	if (!m)
		return;		/* not told, not held: the periodic scan finds the file */
	m->ts = h.ts;
	m->pid = tgid;
	m->tid = h.tid;
	m->dev = k->first.dev;
	m->ino = k->first.ino;
	m->matches = k->matches;
	m->held = 0;
	m->kind = kind;
	m->pad = 0;
	__builtin_memcpy(m->name, k->name, sizeof(m->name));
	if (bpf_map_update_elem(&held, &tgid, &h, BPF_ANY) == 0) {
		/* generated right here (task context): dc_hold_signal sees ARMING */
		if (bpf_send_signal(DC_SIGSTOP) == 0) {
			hp = bpf_map_lookup_elem(&held, &tgid);
			if (hp)
				hp->state = DC_HOLD_HELD;
			m->held = 1;
		} else {
			bpf_map_delete_elem(&held, &tgid);
		}
	}
	bpf_ringbuf_submit(m, BPF_RB_FORCE_WAKEUP);
}

SEC("uprobe")
int dc_dl_hook(struct pt_regs *ctx)
{
	struct dc_config *c = get_config();
	__u64 ip = PT_REGS_IP(ctx), tid_tgid, tail, *saved;
	struct dl_check k = {};
	struct dc_rdebug r;
	__u32 tid;
	bool in;

	if (!c)
		return 0;
	task_state(c, &in);
	if (!in)
		return 0;
	/* r_brk is the hook's own address: a check that the cookie found _r_debug */
	if (bpf_probe_read_user(&r, sizeof(r), (void *)(ip + bpf_get_attach_cookie(ctx))) ||
	    r.r_brk != ip)
		return 0;
	tid_tgid = bpf_get_current_pid_tgid();
	tid = (__u32)tid_tgid;
	if (r.r_state == DC_RT_ADD) {
		/* At most the program, ld.so and the vdso: the program is starting, and
		 * ld.so moves its own entry behind the libraries it loads: look at all. */
		tail = dl_next(dl_next(dl_next(r.r_map))) ? r.r_map : 0;
		if (tail) {
			bpf_loop(DC_DL_WALK, dl_tail_step, &tail, 0);
			if (bpf_probe_read_user(&tail, sizeof(tail), (void *)(tail + DC_LM_PREV)))
				tail = 0;
		}
		bpf_map_update_elem(&dl_tails, &tid, &tail, BPF_ANY);
		return 0;
	}
	if (r.r_state != DC_RT_CONSISTENT)
		return 0;
	saved = bpf_map_lookup_elem(&dl_tails, &tid);
	if (!saved)
		return 0;
	tail = *saved;
	bpf_map_delete_elem(&dl_tails, &tid);
	if (!tail)
		k.cur = r.r_map;
	else if (bpf_probe_read_user(&k.cur, sizeof(k.cur), (void *)(tail + DC_LM_NEXT)))
		return 0;
	bpf_loop(DC_DL_NEW, dl_check_step, &k, 0);
	if (k.matches || k.unsure)
		dl_hold(tid_tgid, &k, DC_HOLD_DLOPEN);
	return 0;
}

#define DC_AT_NULL 0
#define DC_AT_BASE 7

/* The dynamic linker's load address (AT_BASE in the auxiliary vector the kernel
 * gave the program; 0 for a static program). */
static __always_inline __u64 dl_at_base(struct mm_struct *mm)
{
	__u64 off = bpf_core_field_offset(mm->saved_auxv);
	__u32 n = bpf_core_field_size(mm->saved_auxv) / 16;
	__u64 pair[2];

	for (__u32 i = 0; i < 64; i++) {
		if (i >= n || bpf_probe_read_kernel(pair, sizeof(pair), (void *)mm + off + i * 16))
			return 0;
		if (pair[0] == DC_AT_NULL)
			return 0;
		if (pair[0] == DC_AT_BASE)
			return pair[1];
	}
	return 0;
}

/* A job process starts with a dynamic linker dc_dl_hook is not on (a
 * container's glibc): hold it before its first instruction, so the tracer
 * hooks that linker before it maps anything. Once per linker file. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(dc_hold_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct dc_config *c = get_config();
	__u64 tid_tgid = bpf_get_current_pid_tgid(), base;
	__u32 tgid = tid_tgid >> 32;
	__u8 *state = bpf_map_lookup_elem(&scope_pids, &tgid);
	struct dl_check k = {};
	struct dc_file_key key;

	/* a member from this exec on (DC_PID_AT_EXEC): dc_exec may run after this */
	if (!c || !((state && *state == DC_PID_AT_EXEC) || is_member(c, tgid)) || !creds_ok(c, fields_of(p)))
		return 0;
	base = dl_at_base(BPF_CORE_READ(p, mm));
	if (!base || bpf_find_vma(p, base, dl_vma_file, &k.f, 0) || !k.f.file)
		return 0;
	key.dev = k.f.dev;
	key.ino = k.f.ino;
	if (bpf_map_lookup_elem(&hold_interps, &key))
		return 0;
	k.first = key;
	__builtin_memcpy(k.name, k.f.name, sizeof(k.name));
	k.matches = 1;
	dl_hold(tid_tgid, &k, DC_HOLD_INTERP);
	return 0;
}

/* A held process that someone else stops (SIGSTOP) stays stopped when the
 * tracer is done; one someone else continues needs no SIGCONT from it. */
SEC("tp_btf/signal_generate")
int BPF_PROG(dc_hold_signal, int sig, struct kernel_siginfo *info, struct task_struct *task,
	     int group, int result)
{
	struct dc_held *h;
	__u32 tgid;

	if (sig != DC_SIGSTOP && sig != DC_SIGCONT)
		return 0;
	tgid = BPF_CORE_READ(task, tgid);
	h = bpf_map_lookup_elem(&held, &tgid);
	if (!h || h->state == DC_HOLD_ARMING)
		return 0;
	h->state = sig == DC_SIGSTOP ? DC_HOLD_USER_STOPPED : DC_HOLD_CONTINUED;
	return 0;
}

/* A held process that exits (SIGKILL) is no longer held: its pid may be reused. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(dc_hold_exit, struct task_struct *p)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);

	/* every exit of the node passes here: a lookup (no lock) before a delete */
	if (BPF_CORE_READ(p, signal, live.counter) == 0 && bpf_map_lookup_elem(&held, &tgid))
		bpf_map_delete_elem(&held, &tgid);
	return 0;
}

/* ---- kernel layers (see struct dc_kfields in datacrumbs.h) ---- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DC_MAX_PROBES);
	__type(key, __u32);
	__type(value, struct dc_kfields);
} ktp_fields SEC(".maps");

static __always_inline __u64 ktp_field(void *record, struct dc_kfield *f)
{
	__u32 size = f->size;
	__u64 v = 0;

	if (!size)
		return 0;
	if (size > 8)
		size = 8;
	bpf_probe_read_kernel(&v, size & 15, (char *)record + (f->off & 4095));
	return v << (f->shift & 63);
}

/* One kernel-layer event: in a job task's context it is the job's (and, when it
 * writes the inode, the inode becomes the job's); a kernel thread's work on an
 * inode the job wrote is sent for the job's process with ret 1 (async). */
static __always_inline int ktp_send(struct dc_config *c, __u32 probe, __u64 ino, __u32 dev,
				    bool remember, __u64 bytes, bool has_bytes, __u64 offset)
{
	struct dc_spec *sp = bpf_map_lookup_elem(&probe_specs, &probe);
	struct dc_entry e = {};
	struct dc_task *t;
	__u64 tid_tgid;
	__s64 ret = 0;
	bool in;

	if (!sp || !sp->active)
		return 0;
	t = task_state(c, &in);
	if (in) {
		tid_tgid = bpf_get_current_pid_tgid();
		if (ino && remember) {
			struct dc_job_inode *j = bpf_map_lookup_elem(&job_inodes, &ino);

			if (j) {
				j->tid_tgid = tid_tgid;
				if (dev)
					j->dev = dev;
			} else {
				struct dc_job_inode n = { .tid_tgid = tid_tgid, .dev = dev };

				bpf_map_update_elem(&job_inodes, &ino, &n, BPF_ANY);
			}
		}
	} else {
		struct task_struct *task = bpf_get_current_task_btf();
		struct dc_job_inode *j;

		if (!ino || !(task->flags & DC_PF_KTHREAD))
			return 0;
		j = bpf_map_lookup_elem(&job_inodes, &ino);
		if (!j || (j->dev && dev && j->dev != dev))
			return 0;
		tid_tgid = (j->tid_tgid & 0xffffffff00000000ull) | (__u32)bpf_get_current_pid_tgid();
		ret = 1;
	}
	e.ts = bpf_ktime_get_ns();
	e.probe = probe;
	e.args[0] = bytes;
	e.args[1] = offset;
	e.args[2] = ino;
	e.args[3] = dev;
	sp = &(struct dc_spec){ .probe = probe, .active = 1, .bytes_arg = 0,
				.bytes_kind = has_bytes ? DC_BYTES_ARG : DC_BYTES_NONE,
				.fd = -1, .count = has_bytes ? 0 : -1, .offset = 1,
				.path = -1, .size = -1, .nmemb = -1, .stream = -1, .fd2 = -1,
				.flags = 3, .handle = 2, .handle_kind = DC_HANDLE_ARG };
	finish(c, sp, &e, tid_tgid, ret, e.ts, in, in ? t : NULL, NULL);	/* an instant */
	return 0;
}

/* A file system, page cache, writeback, journal or block tracepoint whose record
 * fields the event carries (ktp_fields[probe]). Not on the system call path. */
SEC("tp")
int dc_ktp(void *ctx)
{
	__u32 probe = (__u32)bpf_get_attach_cookie(ctx);
	struct dc_config *c = get_config();
	struct dc_kfields *kf;

	if (!c)
		return 0;
	kf = bpf_map_lookup_elem(&ktp_fields, &probe);
	if (!kf)
		return 0;
	return ktp_send(c, probe, ktp_field(ctx, &kf->f[DC_KF_INO]),
			(__u32)ktp_field(ctx, &kf->f[DC_KF_DEV]), kf->remember,
			ktp_field(ctx, &kf->f[DC_KF_BYTES]), kf->f[DC_KF_BYTES].size != 0,
			kf->f[DC_KF_OFFSET].size ? ktp_field(ctx, &kf->f[DC_KF_OFFSET]) : (__u64)-1);
}

/* ---- the same through raw tracepoints: the inode from the call's arguments ---- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DC_MAX_PROBES);
	__type(key, __u32);
	__type(value, struct dc_kraw);
} ktp_raw SEC(".maps");

/* XFS may be a module: its types are matched by name in its BTF (CO-RE). */
struct xfs_inode___dc {
	struct inode i_vnode;
} __attribute__((preserve_access_index));

struct xfs_mount___dc {
	struct super_block *m_super;
} __attribute__((preserve_access_index));

/* jbd2 is a module on many kernels, folios are new in 5.16: flavours matched by name */
struct journal_s___dc {
	struct block_device *j_fs_dev;
} __attribute__((preserve_access_index));

struct folio___dc {
	struct address_space *mapping;
} __attribute__((preserve_access_index));

/* The inode an argument leads to (0: none), or through *dev only its device. */
static __always_inline struct inode *raw_inode(__u64 p, __u8 how, __u32 *dev)
{
	struct address_space *m = 0;

	if (!p)
		return 0;
	switch (how) {
	case DC_KRAW_INODE:
		return (struct inode *)p;
	case DC_KRAW_FILE:
		return BPF_CORE_READ((struct file *)p, f_inode);
	case DC_KRAW_KIOCB:
		return BPF_CORE_READ((struct kiocb *)p, ki_filp, f_inode);
	case DC_KRAW_FOLIO:
		if (bpf_core_type_exists(struct folio___dc))
			m = BPF_CORE_READ((struct folio___dc *)p, mapping);
		break;
	case DC_KRAW_PAGE:
		m = BPF_CORE_READ((struct page *)p, mapping);
		break;
	case DC_KRAW_MAPPING:
		m = (struct address_space *)p;
		break;
	case DC_KRAW_DENTRY:
		return BPF_CORE_READ((struct dentry *)p, d_inode);
	case DC_KRAW_XFS_INODE:
		if (bpf_core_type_exists(struct xfs_inode___dc))
			return (struct inode *)&((struct xfs_inode___dc *)p)->i_vnode;
		return 0;
	case DC_KRAW_SB:
		*dev = BPF_CORE_READ((struct super_block *)p, s_dev);
		return 0;
	case DC_KRAW_XFS_MOUNT:
		if (bpf_core_type_exists(struct xfs_mount___dc))
			*dev = BPF_CORE_READ((struct xfs_mount___dc *)p, m_super, s_dev);
		return 0;
	case DC_KRAW_JOURNAL:
		if (bpf_core_type_exists(struct journal_s___dc))
			*dev = BPF_CORE_READ((struct journal_s___dc *)p, j_fs_dev, bd_dev);
		return 0;
	}
	/* a file's page cache, not an anonymous or movable page's (low bits set) */
	if (!m || ((__u64)m & 3))
		return 0;
	return BPF_CORE_READ(m, host);
}

/* The kernel checks at attach that a raw tracepoint program reads no argument
 * beyond the tracepoint's own: one program per argument the inode comes from. */
static __always_inline int raw_ktp(struct bpf_raw_tracepoint_args *ctx, __u64 arg)
{
	__u32 probe = (__u32)bpf_get_attach_cookie(ctx);
	struct dc_config *c = get_config();
	struct dc_kraw *kr;
	struct inode *ip;
	__u64 ino = 0;
	__u32 dev = 0;

	if (!c)
		return 0;
	kr = bpf_map_lookup_elem(&ktp_raw, &probe);
	if (!kr)
		return 0;
	ip = raw_inode(arg, kr->how, &dev);
	if (ip) {
		ino = BPF_CORE_READ(ip, i_ino);
		dev = BPF_CORE_READ(ip, i_sb, s_dev);
	}
	return ktp_send(c, probe, ino, dev, kr->remember, 0, false, (__u64)-1);
}

SEC("raw_tp")
int dc_raw_ktp(struct bpf_raw_tracepoint_args *ctx)
{
	return raw_ktp(ctx, ctx->args[0]);
}

SEC("raw_tp")
int dc_raw_ktp1(struct bpf_raw_tracepoint_args *ctx)
{
	return raw_ktp(ctx, ctx->args[1]);
}

/* Run by the daemon on each CPU (BPF_PROG_TEST_RUN, BPF_F_TEST_RUN_ON_CPU) before
 * each drain: send the CPU's partial batch. 1: the staging was busy, try again. */
SEC("raw_tp")
int dc_flush(void *ctx)
{
	__u32 zero = 0, n;
	struct dc_stage *st = bpf_map_lookup_elem(&stage, &zero);
	struct dc_config *c = get_config();

	if (!st || !c)
		return 0;
	if (!stage_take(st))
		return 1;
	n = st->n & (DC_STAGE_N - 1);
	if (n) {
		for (__u32 i = 1; i < DC_STAGE_N; i++)
			if (i >= n)
				st->ev[i].ts = 0;
		if (bpf_ringbuf_output(&events, st->ev, sizeof(st->ev), BPF_RB_NO_WAKEUP) < 0)
			dc_stage_lost(st, n);
		st->n = 0;
	}
	stage_give(st);
	return 0;
}

#include "usdt.bpf.h"
