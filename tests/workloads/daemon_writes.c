/* Known I/O for the daemon tests and the benchmark.
 *
 * usage: daemon_writes PATH COUNT SIZE [RATE]
 * Opens PATH (created, truncated), makes exactly COUNT write(2) calls of SIZE
 * bytes each, closes it. With RATE > 0 it paces itself to RATE writes per
 * second (checked every 1000 writes) for sustained-rate tests. Before the
 * first write it waits for a line on stdin when DC_WAIT_STDIN=1, so a test can
 * start the tracer in between. Prints "done COUNT BYTES" and exits 0, or 1 on
 * any failed or short write.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s PATH COUNT SIZE [RATE]\n", argv[0]);
        return 2;
    }
    long count = atol(argv[2]);
    size_t size = (size_t)atol(argv[3]);
    double rate = argc > 4 ? atof(argv[4]) : 0;
    char *buf = malloc(size ? size : 1);
    memset(buf, 'x', size ? size : 1);
    const char *wait = getenv("DC_WAIT_STDIN");
    if (wait && strcmp(wait, "1") == 0) {
        char line[16];
        if (!fgets(line, sizeof line, stdin))
            return 1;
    }
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    double start = now();
    long long total = 0;
    for (long i = 0; i < count; i++) {
        ssize_t n = write(fd, buf, size);
        if (n != (ssize_t)size) {
            perror("write");
            return 1;
        }
        total += n;
        if (rate > 0 && i % 1000 == 999) {
            double ahead = (i + 1) / rate - (now() - start);
            if (ahead > 0)
                usleep((useconds_t)(ahead * 1e6));
        }
    }
    close(fd);
    printf("done %ld %lld\n", count, total);
    return 0;
}
