/* libbpf's print function for the daemon: keeps its last warnings, drops the rest.
 *
 * libbpf calls its print function about 4,000 times per load of datacrumbs' object,
 * nearly all at debug level. A Python callback takes the GIL for each call: the
 * object is loaded in a thread while the daemon imports and verifies in Python,
 * and those calls made the load wait for the GIL (0.67 s against 0.49 s with the
 * main thread busy). This one runs without Python; tracer/libbpf.py reads the
 * warnings it keeps for its error messages. Built beside the BPF object by
 * `datacrumbs build-bpf`. */
#include <stdarg.h>
#include <stdio.h>

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
