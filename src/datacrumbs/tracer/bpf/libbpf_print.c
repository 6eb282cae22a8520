/* libbpf's print function for the daemon: keeps its last warnings, drops the rest.
 *
 * libbpf calls its print function about 4,000 times per load of datacrumbs' object,
 * nearly all at debug level. A Python callback takes the GIL for each call: the
 * object is loaded in a thread while the daemon imports and verifies in Python,
 * and those calls made the load wait for the GIL (0.67 s against 0.49 s with the
 * main thread busy). This one runs without Python; tracer/libbpf.py reads the
 * warnings it keeps for its error messages. Built beside the BPF object by
 * `datacrumbs build-bpf`.
 *
 * Also here, for the same reason: dc_raw_tp_open_many, the raw tracepoint links of a
 * session in one call, which a thread makes without the GIL while the engine goes on
 * attaching uprobes in Python (844 links of a 10,000-probe file: 0.13 s of kernel time,
 * one system call each). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DC_WARNINGS 4		/* a power of two */
#define DC_WARNING_LEN 1024

static char warnings[DC_WARNINGS][DC_WARNING_LEN];
static unsigned int count;	/* warnings kept so far */

/* libbpf_print_fn_t: (enum libbpf_print_level, const char *format, va_list) */
int dc_libbpf_print(int level, const char *format, va_list args)
{
	unsigned int n;

	if (level != 0)		/* LIBBPF_WARN */
		return 0;
	n = __atomic_fetch_add(&count, 1, __ATOMIC_RELAXED);
	vsnprintf(warnings[n & (DC_WARNINGS - 1)], DC_WARNING_LEN, format, args);
	return 0;
}

/* How many warnings were kept so far; the last one is dc_libbpf_warning(count - 1). */
unsigned int dc_libbpf_warnings(void)
{
	return __atomic_load_n(&count, __ATOMIC_RELAXED);
}

const char *dc_libbpf_warning(unsigned int n)
{
	return warnings[n & (DC_WARNINGS - 1)];
}

/* The raw_tracepoint part of union bpf_attr, with the cookie of kernels >= 6.10 (the
 * system's linux/bpf.h may be older), padded to the size tracer/libbpf.py passes. */
struct dc_raw_tp_attr {
	unsigned long long name;
	unsigned int prog_fd;
	unsigned int pad;
	unsigned long long cookie;
	char tail[120];
};

#define DC_BPF_RAW_TRACEPOINT_OPEN 17

/* Attach prog_fd to the raw tracepoints names[0..n), cookie cookies[i]: fds[i] is the
 * link's fd, or -errno when the kernel refused that one. Returns how many attached. */
int dc_raw_tp_open_many(int prog_fd, const char *const *names,
			const unsigned long long *cookies, int n, int *fds)
{
	struct dc_raw_tp_attr attr;
	int i, attached = 0;

	for (i = 0; i < n; i++) {
		memset(&attr, 0, sizeof(attr));
		attr.name = (unsigned long long)(unsigned long)names[i];
		attr.prog_fd = prog_fd;
		attr.cookie = cookies[i];
		fds[i] = (int)syscall(SYS_bpf, DC_BPF_RAW_TRACEPOINT_OPEN, &attr, sizeof(attr));
		if (fds[i] < 0)
			fds[i] = -errno;
		else
			attached++;
	}
	return attached;
}
