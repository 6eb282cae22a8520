/* Workload for tests/test_engine.py: known I/O after a "go" byte on stdin.
 *
 * engine_io write PATH N      N write(2) calls of size 100*(i%7+1) to PATH
 * engine_io stdio PATH N      N fwrite() of size 10*(i%5+1), then N fread() of the same sizes
 * engine_io fork PATH N       fork; the child does "write PATH N"; the parent waits
 * engine_io spin N            N write(2) calls of 1 byte to /dev/null (throughput)
 * engine_io direct PATH N     N O_DIRECT|O_DSYNC writes of 4096 bytes (block requests)
 * engine_io read PATH N       N read(2) calls of 1 byte from PATH (its first N bytes must exist)
 *
 * Waiting for the go byte lets the test attach to a known pid before any I/O.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char buf[4096];

static int do_write(const char *path, long n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0) {
		perror(path);
		return 1;
	}
	for (long i = 0; i < n; i++)
		if (write(fd, buf, 100 * (i % 7 + 1)) < 0)
			return 1;
	return close(fd) != 0;
}

static int do_direct(const char *path, long n)
{
	void *block;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_DSYNC, 0644);

	if (fd < 0 || posix_memalign(&block, 4096, 4096))
		return 1;
	memset(block, 'd', 4096);
	for (long i = 0; i < n; i++)
		if (write(fd, block, 4096) != 4096)
			return 1;
	return close(fd) != 0;
}

static int do_read(const char *path, long n)
{
	int fd = open(path, O_RDONLY);

	if (fd < 0) {
		perror(path);
		return 1;
	}
	for (long i = 0; i < n; i++)
		if (read(fd, buf, 1) != 1)
			return 1;
	return close(fd) != 0;
}

static int do_stdio(const char *path, long n)
{
	FILE *f = fopen(path, "w+");

	if (!f)
		return 1;
	for (long i = 0; i < n; i++)
		if (fwrite(buf, 10 * (i % 5 + 1), 1, f) != 1)
			return 1;
	if (fflush(f) || fseek(f, 0, SEEK_SET))
		return 1;
	for (long i = 0; i < n; i++)
		if (fread(buf, 10 * (i % 5 + 1), 1, f) != 1)
			return 1;
	return fclose(f) != 0;
}

int main(int argc, char **argv)
{
	char go;

	if (argc < 3)
		return 2;
	memset(buf, 'x', sizeof(buf));
	if (read(0, &go, 1) != 1)
		return 3;
	if (!strcmp(argv[1], "spin")) {
		int fd = open("/dev/null", O_WRONLY);
		long n = atol(argv[2]);

		for (long i = 0; i < n; i++)
			if (write(fd, buf, 1) != 1)
				return 1;
		return 0;
	}
	if (argc < 4)
		return 2;
	if (!strcmp(argv[1], "write"))
		return do_write(argv[2], atol(argv[3]));
	if (!strcmp(argv[1], "read"))
		return do_read(argv[2], atol(argv[3]));
	if (!strcmp(argv[1], "direct"))
		return do_direct(argv[2], atol(argv[3]));
	if (!strcmp(argv[1], "stdio"))
		return do_stdio(argv[2], atol(argv[3]));
	if (!strcmp(argv[1], "fork")) {
		int status;
		pid_t pid = fork();

		if (pid == 0)
			_exit(do_write(argv[2], atol(argv[3])));
		if (pid < 0 || waitpid(pid, &status, 0) != pid)
			return 1;
		return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
	}
	return 2;
}
