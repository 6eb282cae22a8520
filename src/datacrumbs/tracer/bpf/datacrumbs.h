/* Record and map layouts shared by datacrumbs.bpf.c and tracer/engine.py.
 *
 * engine.py mirrors these structs with numpy dtypes and struct formats;
 * change both together (Engine.attach checks map value sizes against them).
 */
#ifndef DATACRUMBS_H
#define DATACRUMBS_H

#define DC_MAX_SYSCALLS 512
#define DC_MAX_PROBES 16384	/* the original's 8,723-function case and more */
#define DC_PATH_MAX 4096	/* PATH_MAX: HPC paths can be long */
#define DC_HIST_BUCKETS 32
#define DC_PROFILE_SLOTS 16384	/* (process, probe) rows in profile mode */
#define DC_PCACHE 4		/* per-task cache of (probe -> profile slot) */
#define DC_FCACHE 16		/* per-task cache of named descriptors */
#define DC_WALK_MAX 64		/* path components (and mount crossings) walked */
#define DC_NO_PROBE 0xffffffffu
/* glibc x86_64: offsetof(struct _IO_FILE, _fileno) */
#define DC_GLIBC_FILENO_OFF 112

/* DC_SCOPE_CGROUP_NAME: the cgroup v2 directory named in scope_cgname, found
 * when it is created (it appears after the tracer starts), with descendants. */
enum dc_scope_kind {
	DC_SCOPE_PIDS = 0, DC_SCOPE_UID = 1, DC_SCOPE_CGROUP = 2, DC_SCOPE_CGROUP_NAME = 3
};
enum dc_mode { DC_MODE_TRACE = 0, DC_MODE_PROFILE = 1 };
/* Values in scope_pids. A process started for the trace (`datacrumbs trace`'s
 * helper) waits as DC_PID_AT_EXEC and becomes a member when it execs the
 * command: what the helper does before (closing descriptors, reading its
 * release pipe, writing an exec error) is the tracer's, never the job's. */
enum dc_pid_state { DC_PID_MEMBER = 1, DC_PID_AT_EXEC = 2 };
enum dc_bytes_kind {
	DC_BYTES_NONE = 0,	/* not a data operation */
	DC_BYTES_RET = 1,	/* return value when >= 0 */
	DC_BYTES_RET_ARG = 2,	/* ret * arg[bytes_arg] when ret >= 0 */
	DC_BYTES_ARG = 3,	/* arg[bytes_arg] when ret >= 0 */
	DC_BYTES_FIELD = 4,	/* tracepoint field at field_off/field_size */
	DC_BYTES_SECTORS = 5,	/* block request: nr_sector * 512 */
	/* libaio system calls: not an event of their own; io_submit records its
	 * iocbs, io_(p)getevents completes them (one event per iocb) */
	DC_BYTES_AIO_SUBMIT = 6,
	DC_BYTES_AIO_REAP = 7,
};

/* How a library call names the object it works on (an MPI_File, an HDF5 hid_t):
 * the 64-bit value sent as dc_event.handle, from argument dc_spec.handle. */
enum dc_handle_kind {
	DC_HANDLE_NONE = 0,
	DC_HANDLE_ARG = 1,	/* the argument itself (MPI_File_write_at's fh, H5Dwrite's dset_id) */
	DC_HANDLE_PTR = 2,	/* a pointer to it, read at entry (MPI_File_close(MPI_File *fh)) */
	DC_HANDLE_OUT = 3,	/* a pointer the call writes it to, read at return (MPI_File_open) */
};

#define DC_CGNAME_MAX 256	/* a kernfs name (NAME_MAX) and its NUL */
#define DC_SHELL_JOBID_MAX 24	/* a decimal 64-bit job id */
#define DC_SHELL_NAME_MAX 64
#define DC_ARGS_MAX 512		/* the tail of a command line read at exec */

/* DC_SCOPE_PIDS by the job's shell: a process that execs with the job id as its
 * last argument and the job shell (basename ``name``) as an earlier one joins
 * the pid tree (Flux runs ``flux-shell <jobid>``, through ``flux-imp exec`` in
 * multi-user instances), with every process it forks. */
struct dc_shell {
	__u32 active;
	__u32 jobid_len;
	__u32 name_len;
	__u32 pad;
	char jobid[DC_SHELL_JOBID_MAX];
	char name[DC_SHELL_NAME_MAX];
};

/* The job's cgroup by name: the engine sets name and len; id and level are
 * set when the cgroup is found (id 0: not yet, nothing is in scope). */
struct dc_cgname {
	__u64 id;		/* cgroup v2 id (kernfs node id = directory inode) */
	__u32 level;		/* depth below the cgroup v2 root */
	__u32 len;		/* bytes of name without its NUL */
	char name[DC_CGNAME_MAX];
};

struct dc_config {
	__u32 scope;		/* enum dc_scope_kind */
	__u32 mode;		/* enum dc_mode */
	__u32 uid;
	__u32 self_tgid;	/* the tracer never traces itself */
	__u32 follow;		/* add forked children of in-scope processes */
	__u32 capture_paths;
	/* Bumped whenever a task may have changed scope (cgroup moves): cached
	 * per-task scope decisions of an older generation are taken again. */
	__u32 scope_gen;
	__u32 profile_next;	/* next profile slot to try to claim */
	/* When the tracer runs in a child pid namespace, self_tgid is a pid
	 * there: these name that namespace (st_dev, st_ino of /proc/self/ns/pid). */
	__u64 self_ns_dev;
	__u64 self_ns_ino;
	/* Wake the reader only every wakeup_events events per CPU, and once
	 * wakeup_paths bytes of paths wait: a wakeup per event costs more than
	 * the event itself. The reader polls with a timeout. */
	__u64 wakeup_events;
	__u64 wakeup_paths;
	/* The trace goes to job_uid (not root): leave out every process that
	 * user could not ptrace (set-uid/set-gid, capabilities, not dumpable),
	 * even when it is a member of the scope. */
	__u32 job_uid;
	__u32 check_creds;
	/* Bumped by every rename the job makes (dc_spec.renames): descriptors are named
	 * once per thread and file, and a file renamed while open would keep its old name
	 * for the threads that named it before. A newer generation names them again. */
	__u32 name_gen;
	__u32 pad;
};

/* How to read one probe's arguments: -1 = role absent, else argument index. */
struct dc_spec {
	__u32 probe;		/* index into Engine.probes */
	__u8 active;
	__u8 bytes_kind;
	__s8 bytes_arg;
	__u8 kernel;		/* kprobe: pointers are kernel memory */
	__s8 fd;
	__s8 count;
	__s8 offset;
	__s8 path;
	__s8 size;
	__s8 nmemb;
	__s8 stream;
	__s8 ret32;		/* return value is a C int: sign-extend 32 bits */
	__u16 field_off;
	__u16 field_size;
	__s8 fd2;		/* second descriptor (copy_file_range, sendfile, splice: the output) */
	__s8 flags;		/* open flags and the like: sent as the event's flags */
	__u8 ret_fd;		/* the return value is a new descriptor (open-like) */
	__u8 closes;		/* the call closes descriptor fd (close) or stream (fclose) */
	__s8 handle;		/* argument the event's handle comes from (see handle_kind) */
	__u8 handle_kind;	/* enum dc_handle_kind; 0: the event carries no handle */
	__u8 renames;		/* the call renames a path: success bumps dc_config.name_gen */
	__u8 pad;
	/* a function the catalog does not know: the registers of its first integer-class
	 * arguments plus one (0: none, so a zeroed spec has none), sent in count, offset,
	 * handle and fd|fd2 (tracer/scalars.py) */
	__u8 scalar[4];
};

struct dc_key {
	__u32 tid;
	__u32 slot;		/* probe index (system calls: task storage) */
};

struct dc_entry {
	__u64 ts;
	__u64 args[6];
	/* system call number; a uprobe that closes a stream (fclose): the stream's
	 * descriptor read at entry, as glibc sets it to -1 before returning */
	__u32 nr;
	__u32 probe;
};

/* Per-task state (BPF_MAP_TYPE_TASK_STORAGE): freed with the task, so a
 * thread that exits mid-syscall leaves nothing behind. Holds the pending
 * system call and the cached scope decision, so the hot path needs no hash
 * map operation. */
struct dc_task {
	struct dc_entry sys;	/* pending system call; sys.ts == 0: none */
	__u32 gen;		/* scope generation of in_scope (0: not decided) */
	__u32 pad0;
	__u8 in_scope;
	__u8 comm_done;		/* this task's process name is in comms */
	__u8 dumpable;		/* mm dumpable bits in_scope was decided with */
	/* the pending close(2)'s DC_NAMES_* bits: its file is named at entry, while the
	 * descriptor still has one (nothing named an inherited, unused descriptor) */
	__u8 close_names;
	__u8 pad[4];
	__u64 tid_tgid;		/* as bpf_get_current_pid_tgid(): a helper call saved per use */
	/* task->cred in_scope was decided with: creds are immutable and replaced
	 * as a whole (commit_creds), so a different pointer means a uid, gid or
	 * capability change to decide again on. */
	__u64 cred;
	/* profile mode: slot of (this process, probe) in the profile array,
	 * direct-mapped by probe % DC_PCACHE; pc_probe holds probe + 1 (0: empty) */
	__u32 pc_probe[DC_PCACHE];
	__u32 pc_slot[DC_PCACHE];
	/* Descriptors whose file this thread has already named to user space,
	 * direct-mapped by fd % DC_FCACHE: the struct file it named (file_key():
	 * its address mixed with its dentry's and inode number) and its kind. A
	 * different file behind the same number (dup2, an fd inherited or opened
	 * before the trace, reuse after close: close and exec forget the entry,
	 * and the key tells a freed struct file's memory given to another file,
	 * even by another thread) is named again, so no event's file is guessed. */
	__u64 fc_file[DC_FCACHE];
	__s32 fc_fd[DC_FCACHE];
	__u8 fc_kind[DC_FCACHE];
};

/* Set in dc_event.probe when a dc_path record was sent for the event: the
 * reader then knows the event must find its path, and counts it when not. */
#define DC_EV_PATH_SENT (1u << 31)
/* dc_event.probe also carries the kind of the event's fd (bits 23..26) and of
 * its fd2 (bits 27..30), so readers tell file I/O from waiting on a pipe. */
#define DC_EV_KIND_SHIFT 23
#define DC_EV_KIND2_SHIFT 27
#define DC_EV_PROBE_MASK ((1u << DC_EV_KIND_SHIFT) - 1)

/* What a descriptor refers to, from its inode (enum order is the trace's). */
enum dc_fkind {
	DC_FK_UNKNOWN = 0, DC_FK_REG = 1, DC_FK_DIR = 2, DC_FK_PIPE = 3, DC_FK_SOCK = 4,
	DC_FK_TTY = 5, DC_FK_CHR = 6, DC_FK_BLK = 7, DC_FK_LNK = 8, DC_FK_ANON = 9
};

/* What a dc_path record names. */
enum dc_name_role {
	DC_NAME_ARG = 0,	/* the event's path argument, as the program passed it */
	DC_NAME_FD = 1,		/* the file of descriptor dc_path.fd, from the kernel */
	DC_NAME_BASE = 2,	/* the directory a relative path argument starts from */
};

/* One completed operation: fixed 80 bytes so the ring buffer has a fixed stride. */
struct dc_event {
	__u64 ts;		/* bpf_ktime_get_ns() at entry */
	__u64 dur;
	__u32 pid;
	__u32 tid;
	__u32 probe;
	__s32 fd;
	__s64 ret;
	__u64 count;
	__s64 offset;
	__s64 bytes;
	__s32 fd2;		/* second descriptor (-1 if none): where a copy writes */
	__u32 flags;		/* the flags argument (open's O_*), 0 if none */
	__u64 handle;		/* library object handle (enum dc_handle_kind), 0 if none */
};

/* A path read for an open-like operation, matched to its event by (tid, ts).
 * Records are variable-sized: only len bytes of path (with its NUL) are sent. */
struct dc_path {
	__u64 ts;
	__u32 tid;
	__u32 probe;
	__u32 len;
	__u8 kind;		/* enum dc_fkind of the named file (DC_NAME_FD) */
	__u8 role;		/* enum dc_name_role */
	__u8 pseudo;		/* a pipe, socket or anon inode: path is its own name only */
	__u8 pad;
	__u64 ino;
	__s32 fd;		/* DC_NAME_FD: the descriptor named */
	__u32 pad2;
	/* walked names are built here: DC_PATH_MAX plus room for one last component */
	char path[DC_PATH_MAX + 256];
};

struct dc_pkey {
	__u32 tgid;
	__u32 probe;
};

/* Trace mode: what the kernel could not send (ring buffer full), per (process,
 * probe). The totals of a run are the events received plus these rows: exact
 * however many events are lost, and the hot path pays nothing for them (only a
 * failed send counts here). The slot is the profile mode's (profile_slots,
 * slot_owner). */
struct dc_tval {
	__u64 count;
	__u64 bytes;
	__u64 time_ns;
};

struct dc_pval {
	struct dc_tval total;	/* count, bytes, time_ns: as an unsent row */
	__u64 min_ns;
	__u64 max_ns;
	__u64 hist[DC_HIST_BUCKETS];	/* [0] < 1 us, [i] in [2^(i-1), 2^i) us */
};

struct dc_block_key {
	__u32 dev;
	__u32 pad;
	__u64 sector;
};

struct dc_block_start {
	__u64 ts;
	__u64 tid_tgid;
	/* a kernel thread's request for pages of an inode the job wrote (writeback):
	 * that inode (the completion is the job's, async); 0 for the job's own */
	__u64 ino;
};

/* ---- asynchronous I/O: io_uring requests and libaio iocbs ----
 * The submitting task starts the clock, the completion (any context) ends it;
 * the event belongs to the submitter. async_probes[class] holds the probe
 * index + 1 of each class the probes ask for (0: not traced). */
enum dc_async_class {
	DC_ASYNC_URING_READ = 0, DC_ASYNC_URING_WRITE = 1, DC_ASYNC_URING_FSYNC = 2,
	DC_ASYNC_AIO_READ = 3, DC_ASYNC_AIO_WRITE = 4, DC_ASYNC_AIO_FSYNC = 5,
	DC_ASYNC_CLASSES = 6
};
/* In an async event's flags: the opcode (IORING_OP_* or IOCB_CMD_*) in the low
 * byte; this bit when fd is an io_uring fixed-file index, not a descriptor. */
#define DC_ASYNC_FIXED_FILE (1u << 31)
/* iocbs read per io_submit, io_events per io_(p)getevents: the rest are lost events */
#define DC_AIO_MAX_BATCH 64

struct dc_async_req {
	__u64 ts;		/* submission (io_submit: its entry) */
	__u64 tid_tgid;		/* the submitter */
	__s64 offset;
	__u64 count;		/* bytes asked for (0 if unknown: vectored) */
	__s32 fd;
	__u32 probe;
	__u32 flags;
	__u32 data;		/* 1: the result is bytes moved */
};

struct dc_aio_key {
	__u32 tgid;
	__u32 pad;
	__u64 iocb;		/* user address of the iocb (io_event.obj) */
};

/* ---- dlopen holds (tracer/dlhold.py) ----
 * A uprobe on the dynamic linker's debugger hook (_dl_debug_state, which
 * glibc calls with _r_debug.r_state RT_ADD before it maps objects and
 * RT_CONSISTENT once they are mapped, before relocating them and running
 * their constructors) stops a job process that has just mapped a file whose
 * name begins like a probed family and that the tracer has not judged yet,
 * and tells the tracer through the holds ring; the tracer attaches and
 * sends SIGCONT. */
#define DC_NEEDLES 8		/* family name prefixes */
#define DC_NEEDLE_MAX 32	/* bytes of a prefix compared (a longer one is cut) */
#define DC_DL_WALK 8192		/* link_map entries walked to find the list's end */
#define DC_DL_NEW 256		/* new link_map entries looked at per dlopen */
#define DC_HOLD_KNOWN 8192	/* files already judged (dev, ino) */

/* A name begins with needle k when (word i of the name & mask[k][i]) ==
 * word[k][i] for every i: whole-word compares, no byte loop to verify. */
struct dc_needles {
	__u32 n;
	__u32 pad;
	__u64 word[DC_NEEDLES][DC_NEEDLE_MAX / 8];
	__u64 mask[DC_NEEDLES][DC_NEEDLE_MAX / 8];
};

/* A file as the kernel names it: dev is the superblock's dev_t (major << 20
 * | minor, as /proc/<pid>/maps shows it), ino its inode number. */
struct dc_file_key {
	__u64 dev;
	__u64 ino;
};

enum dc_hold_state {
	DC_HOLD_ARMING = 1,		/* the SIGSTOP is being sent (our own signal) */
	DC_HOLD_HELD = 2,		/* stopped by the tracer only: it sends SIGCONT */
	DC_HOLD_USER_STOPPED = 3,	/* someone else sent SIGSTOP meanwhile: left stopped */
	DC_HOLD_CONTINUED = 4,		/* someone else sent SIGCONT meanwhile: running */
};

struct dc_held {
	__u64 ts;		/* bpf_ktime_get_ns() when stopped (CLOCK_MONOTONIC) */
	__u32 tid;
	__u32 state;		/* enum dc_hold_state */
};

/* One message per hold (or per match that could not be held: held = 0). */
struct dc_hold_msg {
	__u64 ts;
	__u32 pid;
	__u32 tid;
	__u64 dev;		/* the first unjudged matching file (struct dc_file_key) */
	__u64 ino;
	__u32 held;		/* 1: the process was stopped and waits for SIGCONT */
	__u32 matches;		/* 1: a new matching file (0: a file that could not be looked at) */
	__u32 kind;		/* enum dc_hold_kind */
	__u32 pad;
	char name[DC_NEEDLE_MAX];	/* its file name (cut) */
};

enum dc_hold_kind {
	DC_HOLD_DLOPEN = 0,	/* the dynamic linker mapped a family file (dc_dl_hook) */
	DC_HOLD_INTERP = 1,	/* an exec with a dynamic linker not hooked yet (dc_hold_exec):
				 * dev/ino/name are the dynamic linker's */
};

/* ---- USDT probes (tracer/usdt.py, usdt.bpf.h) ----
 * One uprobe per site (a note's pc), its BPF cookie the site's key in
 * usdt_specs; the spec names the probe and how to read the first DC_USDT_ARGS
 * arguments, as the note's argument spec says (libbpf's usdt.bpf.h does the
 * same). An event of a USDT probe is an instant (dur 0) whose ret, count,
 * offset and handle carry arguments 0..3, bytes is -1 (not a data operation),
 * fd and fd2 are -1, and flags says which were read: bit i for argument i,
 * the note's argument count in bits 8..15. With paths captured, an argument
 * that may be a pointer (8 bytes, unsigned) whose memory holds a NUL-terminated
 * string is also sent as text (DC_NAME_USDT_STR). */
#define DC_USDT_ARGS 4
/* A string argument's text: a dc_path record of the event, role DC_NAME_USDT_STR,
 * fd = the argument's index (not a dc_name_role of files: readers keep it apart). */
#define DC_NAME_USDT_STR 3
#define DC_USDT_STR_MAX 256
#define DC_USDT_SITES 4096
enum dc_usdt_arg_kind {
	DC_USDT_NONE = 0,	/* not decoded (a form other than these three) */
	DC_USDT_CONST = 1,	/* val */
	DC_USDT_REG = 2,	/* the register at pt_regs offset reg */
	DC_USDT_MEM = 3,	/* memory at register reg + val */
};

struct dc_usdt_arg {
	__s64 val;
	__u16 reg;		/* offset in struct pt_regs */
	__u8 kind;		/* enum dc_usdt_arg_kind */
	__u8 size;		/* 1, 2, 4 or 8 bytes */
	__u8 is_signed;
	__u8 str;		/* 8-byte unsigned (a pointer?): its text is sent too */
	__u8 pad[2];
};

struct dc_usdt_spec {
	__u32 probe;		/* index into Engine.probes */
	__u32 nargs;		/* arguments in the note (up to 12) */
	struct dc_usdt_arg args[DC_USDT_ARGS];
};

/* ---- kernel layers: file system, page cache, writeback, journal, block tracepoints ----
 * dc_ktp reads up to four fields of a perf tracepoint's record (ktp_fields[probe]):
 * bytes moved, byte offset, inode and device. An event in a job task's context is
 * the job's, and when the event writes its inode (remember), the (inode, device)
 * is remembered in job_inodes; an event of a
 * kernel thread (writeback kworker, jbd2) on an inode the job touched is sent for
 * the job's process that touched it last, with the kernel thread's tid and ret 1
 * (the trace's args.async = 1). Other kernel threads' events are left out. */
enum dc_kfield_role { DC_KF_BYTES = 0, DC_KF_OFFSET = 1, DC_KF_INO = 2, DC_KF_DEV = 3, DC_KF_N = 4 };
#define DC_JOB_INODES 65536	/* inodes of the job remembered (LRU) */
#define DC_PF_KTHREAD 0x00200000	/* task->flags: a kernel thread */

struct dc_kfield {
	__u16 off;		/* offset in the tracepoint's record */
	__u8 size;		/* 0: the tracepoint has no such field */
	__u8 shift;		/* value << shift: page index (12), sector (9) to bytes */
};

struct dc_kfields {
	struct dc_kfield f[DC_KF_N];
	__u8 remember;		/* the event writes its inode: remember it as the job's */
	__u8 pad[3];
};

/* dc_raw_ktp: a raw tracepoint reaches the inode (or only the device) from
 * argument ``arg`` of the kernel's trace call, by ``how`` (enum dc_kraw_how). */
enum dc_kraw_how {
	DC_KRAW_NONE = 0, DC_KRAW_INODE = 1, DC_KRAW_FILE = 2, DC_KRAW_KIOCB = 3,
	DC_KRAW_FOLIO = 4, DC_KRAW_PAGE = 5, DC_KRAW_XFS_INODE = 6, DC_KRAW_DENTRY = 7,
	DC_KRAW_MAPPING = 8, DC_KRAW_SB = 9, DC_KRAW_XFS_MOUNT = 10, DC_KRAW_JOURNAL = 11
};

struct dc_kraw {
	__u8 arg;		/* 0 or 1: dc_raw_ktp or dc_raw_ktp1 */
	__u8 how;
	__u8 remember;
	__u8 pad;
};

struct dc_job_inode {
	__u64 tid_tgid;		/* the job's thread that last touched the inode */
	__u32 dev;		/* kernel dev_t of its file system (0: not known yet) */
	__u32 pad;
};

#endif
