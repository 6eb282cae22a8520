/* Every in-kernel data path of the posix set with known sizes, for test_copy_ops.py:
 *   daemon_copies DIR
 * pwritev2 8192 bytes to DIR/src, preadv2 them back, splice 8192 from DIR/src into a pipe,
 * tee the pipe's 8192 into a second pipe, splice the first pipe's 8192 into DIR/dst,
 * vmsplice 4096 bytes of memory into a pipe, then drain the pipes with read. Then the
 * calls that move no data on DIR/src: ftruncate 16384, fallocate 32768 at 0, fadvise64
 * 8192 at 4096, sync_file_range 8192 at 0, mmap 8192 at 4096, msync and munmap it. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

static void check(long got, long want, const char *what)
{
	if (got != want) {
		fprintf(stderr, "%s: %ld, wanted %ld\n", what, got, want);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	static char a[4096], b[4096], sink[16384];
	char src[4096], dst[4096];
	struct iovec iov[2] = { { a, sizeof(a) }, { b, sizeof(b) } };
	int p[2], q[2], fd, out;
	loff_t off = 0, off_out = 0;

	if (argc != 2)
		return 2;
	snprintf(src, sizeof(src), "%s/src", argv[1]);
	snprintf(dst, sizeof(dst), "%s/dst", argv[1]);
	memset(a, 'a', sizeof(a));
	memset(b, 'b', sizeof(b));
	fd = open(src, O_RDWR | O_CREAT | O_TRUNC, 0644);
	out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || out < 0 || pipe(p) || pipe(q))
		return 3;
	check(pwritev2(fd, iov, 2, 0, 0), 8192, "pwritev2");
	check(preadv2(fd, iov, 2, 0, 0), 8192, "preadv2");
	check(splice(fd, &off, p[1], NULL, 8192, 0), 8192, "splice in");
	check(tee(p[0], q[1], 8192, 0), 8192, "tee");
	check(splice(p[0], NULL, out, &off_out, 8192, 0), 8192, "splice out");
	check(read(q[0], sink, sizeof(sink)), 8192, "read tee'd");
	check(vmsplice(p[1], iov, 1, 0), 4096, "vmsplice");
	check(read(p[0], sink, sizeof(sink)), 4096, "read vmspliced");
	check(ftruncate(fd, 16384), 0, "ftruncate");
	check(fallocate(fd, 0, 0, 32768), 0, "fallocate");
	check(posix_fadvise(fd, 4096, 8192, POSIX_FADV_DONTNEED), 0, "fadvise64");
	check(sync_file_range(fd, 0, 8192, SYNC_FILE_RANGE_WRITE), 0, "sync_file_range");
	{
		char *m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 4096);

		if (m == MAP_FAILED)
			return 4;
		m[0] = 'm';
		check(msync(m, 8192, MS_SYNC), 0, "msync");
		check(munmap(m, 8192), 0, "munmap");
	}
	close(fd);
	close(out);
	printf("done\n");
	return 0;
}
