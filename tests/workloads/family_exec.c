/* family_exec GO: a program (not a shared library) whose file name matches the test
 * family. Mapped executable by its own process, it is a "library of the family" by name
 * that the tracer must refuse to attach to, with a warning. Waits for the file GO. */
#include <stdio.h>
#include <unistd.h>

long dcfam_write(int fd, const void *buf, unsigned long n) { return write(fd, buf, n); }

int main(int argc, char **argv)
{
	for (int i = 0; argc > 1 && i < 3000 && access(argv[1], F_OK) != 0; i++)
		usleep(10000);
	printf("ok %ld\n", dcfam_write(1, "", 0));
	return 0;
}
