/* myprov:guarded, behind its semaphore: fires only while a tracer has counted the
 * semaphore up (the kernel does, for a uprobe attached with its ref_ctr_offset). */
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>

__extension__ unsigned short myprov_guarded_semaphore
	__attribute__((unused)) __attribute__((section(".probes")));

int fire_guarded(int i)
{
	if (__builtin_expect(myprov_guarded_semaphore, 0)) {
		DTRACE_PROBE2(myprov, guarded, -i, (unsigned char)(i & 0xff));
		return 1;
	}
	return 0;
}
