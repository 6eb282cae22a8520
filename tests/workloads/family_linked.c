/* family_linked OUT N: linked against the test family's library (DT_NEEDED), opens OUT
 * through it first thing in main(), writes 16 bytes N times, closes it; prints
 * "ok <bytes written>". */
#include <stdio.h>
#include <stdlib.h>

int dcfam_open(const char *path);
long dcfam_write(int fd, const void *buf, unsigned long n);
int dcfam_close(int fd);

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s OUT N\n", argv[0]);
		return 2;
	}
	int n = atoi(argv[2]), fd = dcfam_open(argv[1]);
	long total = 0;
	for (int i = 0; i < n; i++)
		total += dcfam_write(fd, "0123456789abcdef", 16);
	dcfam_close(fd);
	printf("ok %ld\n", total);
	return 0;
}
