/* USDT workload for tests/test_usdt.py: probes of provider myprov.
 *   usdt_prog N   fires myprov:plain N times (no semaphore: an int, a long, a string
 *                 pointer (label) and the constant 42) and myprov:guarded each time its
 *                 semaphore says a tracer is attached (guarded.c), then prints
 *                 "plain=N guarded=G label=0xADDR" (G: how often it saw it enabled).
 *   usdt_prog N wait   the same once a byte arrives on stdin. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/sdt.h>

int fire_guarded(int i);

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 10, guarded = 0;
	/* on the heap, written here: a tracer reads it without faulting a page in (a
	 * uprobe cannot), as it would read a string the program works with */
	char *label = strdup("datacrumbs-usdt");
	char go;

	/* usdt_prog N wait: start, then wait for a byte on stdin (a tracer attaches
	 * to a process that already runs) */
	if (argc > 2 && read(0, &go, 1) != 1)
		return 1;

	for (int i = 0; i < n; i++) {
		long big = (long)i * 1000000007L - 5;

		DTRACE_PROBE4(myprov, plain, i, big, label, 42);
		guarded += fire_guarded(i);
	}
	printf("plain=%d guarded=%d label=%p\n", n, guarded, (void *)label);
	return 0;
}
