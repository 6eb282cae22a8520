/* family_dlopen LIB OUT N LOADED GO [LIB2 N2 [OTHER]]
 *
 * dlopen()s LIB after start (and OTHER, a library that only matches the family's name),
 * writes LOADED, waits (at most 30 s) for the file GO, then through LIB opens OUT, writes
 * 16 bytes N times and closes it; then the same N2 times through LIB2. Prints
 * "ok <bytes written>". The test creates GO once the tracer says it attached LIB. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef int (*open_fn)(const char *);
typedef long (*write_fn)(int, const void *, unsigned long);
typedef int (*close_fn)(int);

static long run(const char *lib, const char *out, int n)
{
	void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		fprintf(stderr, "dlopen %s: %s\n", lib, dlerror());
		exit(1);
	}
	open_fn op = (open_fn)dlsym(h, "dcfam_open");
	write_fn wr = (write_fn)dlsym(h, "dcfam_write");
	close_fn cl = (close_fn)dlsym(h, "dcfam_close");
	if (!op || !wr || !cl) {
		fprintf(stderr, "%s lacks the dcfam functions\n", lib);
		exit(1);
	}
	int fd = op(out);
	long total = 0;
	for (int i = 0; i < n; i++)
		total += wr(fd, "0123456789abcdef", 16);
	cl(fd);
	return total;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s LIB OUT N LOADED GO [LIB2 N2 [OTHER]]\n", argv[0]);
		return 2;
	}
	if (!dlopen(argv[1], RTLD_NOW | RTLD_LOCAL)) {
		fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
		return 1;
	}
	if (argc >= 9 && !dlopen(argv[8], RTLD_NOW | RTLD_LOCAL)) {
		fprintf(stderr, "dlopen %s: %s\n", argv[8], dlerror());
		return 1;
	}
	FILE *f = fopen(argv[4], "w");
	if (!f)
		return 1;
	fputs("loaded\n", f);
	fclose(f);
	for (int i = 0; i < 3000 && access(argv[5], F_OK) != 0; i++)
		usleep(10000);
	long total = run(argv[1], argv[2], atoi(argv[3]));
	if (argc >= 8)
		total += run(argv[6], argv[2], atoi(argv[7]));
	printf("ok %ld\n", total);
	return 0;
}
