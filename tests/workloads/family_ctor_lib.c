/* The test family's library with a constructor that calls its own probed functions
 * (dlopen() runs it before returning): opens /dev/null, writes 16 bytes
 * DCFAM_CTOR_WRITES times, closes it. */
#include "family_lib.c"

#define DCFAM_CTOR_WRITES 3

__attribute__((constructor)) static void dcfam_init(void)
{
	int fd = dcfam_open("/dev/null");

	for (int i = 0; i < DCFAM_CTOR_WRITES; i++)
		dcfam_write(fd, "0123456789abcdef", 16);
	dcfam_close(fd);
}
