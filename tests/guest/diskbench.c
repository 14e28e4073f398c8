/* The test guest's disk benchmark (scripts/bench-disk runs it under Ember and under KVM):
 *
 *   diskbench DEVICE MIB SECONDS
 *
 * On DEVICE, with O_DIRECT (no guest page cache): a sequential write of the first MIB MiB in
 * 1 MiB requests followed by fsync (the disk's flush), a sequential read of them back, then for
 * SECONDS each 4 KiB reads and 4 KiB writes at random 4 KiB-aligned offsets in that range (the
 * writes followed by fsync). Prints one line:
 *
 *   EMBER-DISKBENCH: seq_write_mbps=.. seq_read_mbps=.. rand_read_iops=.. rand_write_iops=..
 *
 * Times come from CLOCK_MONOTONIC of the guest. Exits non-zero with a message on any error. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fail(const char *what) {
    perror(what);
    printf("EMBER-DISKBENCH: failed: %s\n", what);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: diskbench DEVICE MIB SECONDS\n");
        return 2;
    }
    long mib = atol(argv[2]), secs = atol(argv[3]);
    if (mib < 1 || secs < 1) {
        fprintf(stderr, "diskbench: MIB and SECONDS must be positive\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR | O_DIRECT);
    if (fd < 0) fail("open");
    void *buf;
    if (posix_memalign(&buf, 4096, 1 << 20)) fail("posix_memalign");
    memset(buf, 0x5a, 1 << 20);

    double t0 = now();
    for (long i = 0; i < mib; i++)
        if (pwrite(fd, buf, 1 << 20, (off_t)i << 20) != 1 << 20) fail("sequential write");
    if (fsync(fd)) fail("fsync");
    double seq_w = mib / (now() - t0);

    t0 = now();
    for (long i = 0; i < mib; i++)
        if (pread(fd, buf, 1 << 20, (off_t)i << 20) != 1 << 20) fail("sequential read");
    double seq_r = mib / (now() - t0);

    uint64_t blocks = (uint64_t)mib << 8, n = 0;
    t0 = now();
    double end = t0 + secs;
    while (now() < end) {
        if (pread(fd, buf, 4096, (off_t)(next() % blocks) << 12) != 4096) fail("random read");
        n++;
    }
    double rand_r = n / (now() - t0);

    n = 0;
    t0 = now();
    end = t0 + secs;
    while (now() < end) {
        if (pwrite(fd, buf, 4096, (off_t)(next() % blocks) << 12) != 4096) fail("random write");
        n++;
    }
    if (fsync(fd)) fail("fsync");
    double rand_w = n / (now() - t0);

    printf("EMBER-DISKBENCH: seq_write_mbps=%.1f seq_read_mbps=%.1f rand_read_iops=%.0f rand_write_iops=%.0f\n",
           seq_w, seq_r, rand_r, rand_w);
    return 0;
}
