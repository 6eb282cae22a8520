/* A tiny library of a test-only family (libdcfam*.so*): the probes of the family set
 * in tests/test_library_families.py reach these three functions. */
#include <fcntl.h>
#include <unistd.h>

int dcfam_open(const char *path) { return open(path, O_WRONLY | O_CREAT | O_APPEND, 0644); }
long dcfam_write(int fd, const void *buf, unsigned long n) { return write(fd, buf, n); }
int dcfam_close(int fd) { return close(fd); }
