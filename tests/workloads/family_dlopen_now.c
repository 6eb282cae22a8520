/* family_dlopen_now LIB OUT N [wait]
 *
 * dlopen()s LIB and at once, with no pause, opens OUT through it, writes 16 bytes N
 * times and closes it; prints "ok <bytes written>". With "wait", first reads one byte
 * from stdin (a test attaches meanwhile). The calls race the tracer: without the
 * dlopen hold the first ones would run before the family's probes are on LIB. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*open_fn)(const char *);
typedef long (*write_fn)(int, const void *, unsigned long);
typedef int (*close_fn)(int);

int main(int argc, char **argv)
{
	char go;

	if (argc < 4) {
		fprintf(stderr, "usage: %s LIB OUT N [wait]\n", argv[0]);
		return 2;
	}
	if (argc > 4 && strcmp(argv[4], "wait") == 0 && read(0, &go, 1) != 1)
		return 3;
	void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
		return 1;
	}
	open_fn op = (open_fn)dlsym(h, "dcfam_open");
	write_fn wr = (write_fn)dlsym(h, "dcfam_write");
	close_fn cl = (close_fn)dlsym(h, "dcfam_close");
	if (!op || !wr || !cl)
		return 1;
	int n = atoi(argv[3]), fd = op(argv[2]);
	long total = 0;
	for (int i = 0; i < n; i++)
		total += wr(fd, "0123456789abcdef", 16);
	cl(fd);
	printf("ok %ld\n", total);
	return 0;
}
