/* The hostile guest of Ember's whole-system tests: run as root by the test guest's init
 * (ember.action=hostile), it abuses every device the VM has, the way a malicious or broken guest
 * kernel could, and prints what it did and what the devices answered. Ember must survive all of
 * it: the host, the management API and other VMs carry on; at worst this VM is stopped.
 *
 * Phases (each prints "EMBER-HOSTILE: <phase> ..." when done):
 *   cpuid   every basic, hypervisor and extended leaf with odd subleaves
 *   msr     reads of three MSR ranges, writes of unknown MSRs (through /dev/cpu/0/msr)
 *   ports   reads of every port below 0x1000 and a sample above; a 40,000-write 8042 loop that
 *           never reads; an exit storm
 *   apic    the local APIC and I/O APIC windows through /dev/mem, if the guest kernel lets it map
 *           them (reads; writes to reserved offsets)
 *   chaos   (last, after "done": it may wedge this guest) random writes to the chipset's ports
 *           (PICs, PIT, RTC, 8042, port 0x61, unclaimed ports; not those that reset or power off
 *           the VM) and to COM1's registers, then the VM is halted (the guest kernel halts with
 *           interrupts disabled)
 *   virtio  the virtio-mmio disk driven by hand (its driver is not loaded): a valid read; the
 *           reproduced attack (a flush, then queue size 0 while the queue is enabled); queue
 *           sizes 0 and 3; descriptors outside RAM, absurd lengths, loops, out-of-range heads and
 *           an available index far ahead; illegal status changes; a notify storm; and after a
 *           reset a valid read again, which must still work
 *
 * Built static by scripts/guest-fixtures (gcc -static). Not part of Ember.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define VIRTIO_BASE 0xd0000000UL
#define SECTOR_MARK 0x5a

static uint32_t rng = 0x9e3779b9;
static uint32_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("EMBER-HOSTILE: ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
}

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void phase_cpuid(void) {
    uint32_t r[4];
    unsigned long n = 0;
    const uint32_t bases[] = {0, 0x40000000, 0x80000000, 0xc0000000, 0x8fffffff, 0xffffffff};
    for (unsigned b = 0; b < sizeof bases / sizeof bases[0]; b++)
        for (uint32_t i = 0; i < 0x120; i++) {
            cpuid(bases[b] + i, next_rand(), r);
            cpuid(bases[b] + i, i, r);
            n += 2;
        }
    say("cpuid done: %lu leaves asked", n);
}

static void phase_msr(void) {
    int fd = open("/dev/cpu/0/msr", O_RDWR);
    if (fd < 0) {
        say("msr skipped: /dev/cpu/0/msr cannot be opened");
        return;
    }
    const uint32_t ranges[][2] = {{0, 0x2000}, {0xc0000000, 0xc0002000}, {0xc0010000, 0xc0012000}, {0x40000000, 0x40000200}};
    unsigned long reads = 0, readable = 0, writes = 0, refused = 0;
    for (unsigned r = 0; r < 4; r++)
        for (uint32_t m = ranges[r][0]; m < ranges[r][1]; m++) {
            uint64_t v;
            reads++;
            if (pread(fd, &v, 8, m) == 8) readable++;
        }
    /* Writes only to MSRs no x86 CPU has (Ember answers #GP): the guest kernel keeps working. */
    const uint32_t unknown[] = {0x2000, 0x3fff, 0x40000100, 0x4fffffff, 0xc0003000, 0xc0020000, 0xdeadbeef, 0xffffffff};
    for (unsigned i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        for (int k = 0; k < 64; k++) {
            uint64_t v = ((uint64_t)next_rand() << 32) | next_rand();
            writes++;
            if (pwrite(fd, &v, 8, unknown[i]) != 8) refused++;
        }
    close(fd);
    say("msr done: %lu reads (%lu answered), %lu writes to unknown MSRs (%lu refused)", reads, readable, writes, refused);
}

/* Ports whose writes would end or reset this VM (the test wants it to go on): the 8042's reset
 * commands, 0xcf9, ACPI PM1 control. COM1 is this program's console: reading its IIR or LSR
 * would take interrupts the guest's serial driver waits for, so it is abused last (phase_com1). */
static int port_write_allowed(unsigned p, uint8_t v) {
    if (p == 0x64 && (v >= 0xf0 || v == 0xd1)) return 0;
    if (p == 0xcf9 || (p >= 0x600 && p < 0x610)) return 0;
    return 1;
}

static int is_com1(unsigned p) { return p >= 0x3f8 && p <= 0x3ff; }

static void phase_ports(void) {
    if (iopl(3) != 0) {
        say("ports skipped: iopl refused");
        return;
    }
    unsigned long reads = 0;
    /* Every port below 0x1000 in every width, and every 61st port above (each access is an exit,
     * and exits are slow under emulation). */
    for (unsigned p = 0; p < 0x10000; p += p < 0x1000 ? 1 : 61) {
        if (is_com1(p)) continue;
        (void)inb(p);
        reads++;
        if (p < 0xffff) (void)inw(p), (void)inl(p & ~3u), reads += 2;
    }
    say("ports done: %lu reads", reads);
    /* The 8042 written 40,000 times without a read: its answers must not pile up. */
    for (long i = 0; i < 20000; i++) {
        outb(0xaa, 0x64);
        outb(0x55, 0x60);
    }
    unsigned drained = 0;
    while ((inb(0x64) & 1) && drained < 100000) {
        (void)inb(0x60);
        drained++;
    }
    say("8042 flood done: %u answers were waiting", drained);
    /* An exit storm on an unclaimed port. */
    for (long i = 0; i < 30000; i++) outb(0, 0x2f0);
    say("port storm done");
}

static volatile uint32_t *map_phys(unsigned long addr, size_t len) {
    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) return NULL;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, addr);
    close(fd);
    return p == MAP_FAILED ? NULL : (volatile uint32_t *)p;
}

static void phase_apic(void) {
    volatile uint32_t *lapic = map_phys(0xfee00000UL, 4096);
    volatile uint32_t *ioapic = map_phys(0xfec00000UL, 4096);
    if (!lapic && !ioapic) {
        say("apic skipped: the guest kernel does not let /dev/mem map the APIC windows");
        return;
    }
    unsigned long n = 0;
    if (lapic) {
        for (unsigned off = 0; off < 0x1000; off += 4) (void)lapic[off / 4], n++;
        /* Reserved offsets only: the guest's own APIC keeps working. */
        const unsigned reserved[] = {0x000, 0x010, 0x040, 0x050, 0x060, 0x070, 0x090, 0x0c0, 0x3f0, 0x400, 0xff0};
        for (int k = 0; k < 1000; k++)
            for (unsigned i = 0; i < sizeof reserved / sizeof reserved[0]; i++) lapic[reserved[i] / 4] = next_rand(), n++;
    }
    if (ioapic) {
        for (unsigned r = 0x40; r < 0x100; r++) {
            ioapic[0] = r; /* the 8-bit register numbers past the redirection table */
            (void)ioapic[4];
            ioapic[4] = next_rand();
            n += 3;
        }
        for (unsigned off = 0; off < 0x1000; off += 4) (void)ioapic[off / 4], n++;
    }
    say("apic done: %lu accesses (local APIC %s, I/O APIC %s)", n, lapic ? "mapped" : "not mapped", ioapic ? "mapped" : "not mapped");
}

/* Guest-physical address of a locked page of ours (from /proc/self/pagemap). */
static uint64_t phys_of(void *page) {
    int fd = open("/proc/self/pagemap", O_RDONLY);
    uint64_t e = 0;
    if (fd < 0 || pread(fd, &e, 8, ((uintptr_t)page / 4096) * 8) != 8 || !(e & (1ULL << 63)) || (e & ((1ULL << 55) - 1)) == 0) {
        if (fd >= 0) close(fd);
        return 0;
    }
    close(fd);
    return (e & ((1ULL << 55) - 1)) * 4096;
}

/* The driver's side of one virtio-mmio device, by hand. */
struct dev {
    volatile uint32_t *r;
    uint8_t *desc, *avail, *used, *hdr, *data; /* one locked page each */
    uint64_t desc_pa, avail_pa, used_pa, hdr_pa, data_pa;
    uint16_t avail_idx, num;
};

static uint32_t rd(struct dev *d, unsigned off) { return d->r[off / 4]; }
static void wr(struct dev *d, unsigned off, uint32_t v) { d->r[off / 4] = v; }

static void put_desc(struct dev *d, unsigned i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    uint8_t *e = d->desc + 16 * (i % 256);
    memcpy(e, &addr, 8);
    memcpy(e + 8, &len, 4);
    memcpy(e + 12, &flags, 2);
    memcpy(e + 14, &next, 2);
}

/* Reset, ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK, queue 0 of size `num`, DRIVER_OK. Returns the
 * status register after it all. */
static uint32_t dev_init(struct dev *d, uint32_t num) {
    wr(d, 0x70, 0);
    wr(d, 0x70, 1 | 2);
    wr(d, 0x24, 1);
    wr(d, 0x20, 1);
    wr(d, 0x24, 0);
    wr(d, 0x20, 1u << 9);
    wr(d, 0x70, 1 | 2 | 8);
    wr(d, 0x30, 0);
    wr(d, 0x38, num);
    wr(d, 0x80, (uint32_t)d->desc_pa);
    wr(d, 0x84, (uint32_t)(d->desc_pa >> 32));
    wr(d, 0x90, (uint32_t)d->avail_pa);
    wr(d, 0x94, (uint32_t)(d->avail_pa >> 32));
    wr(d, 0xa0, (uint32_t)d->used_pa);
    wr(d, 0xa4, (uint32_t)(d->used_pa >> 32));
    wr(d, 0x44, 1);
    wr(d, 0x70, 1 | 2 | 8 | 4);
    memset(d->avail, 0, 4096);
    memset(d->used, 0, 4096);
    d->avail_idx = 0;
    d->num = num;
    return rd(d, 0x70);
}

static uint16_t used_idx(struct dev *d) { return *(volatile uint16_t *)(d->used + 2); }

/* Makes head `head` available and notifies. */
static void submit(struct dev *d, uint16_t head) {
    uint16_t slot = d->avail_idx % (d->num ? d->num : 1);
    memcpy(d->avail + 4 + 2 * slot, &head, 2);
    __sync_synchronize();
    d->avail_idx++;
    *(volatile uint16_t *)(d->avail + 2) = d->avail_idx;
    __sync_synchronize();
    wr(d, 0x50, 0);
}

/* A request (type, sector) with `len` data bytes in chain 0-1-2; returns its status byte (0xee:
 * not completed). */
static uint8_t request(struct dev *d, uint32_t type, uint64_t sector, uint32_t len) {
    memset(d->hdr, 0, 64);
    memcpy(d->hdr, &type, 4);
    memcpy(d->hdr + 8, &sector, 8);
    d->hdr[32] = 0xee;
    put_desc(d, 0, d->hdr_pa, 16, 1, 1);
    if (len) {
        put_desc(d, 1, d->data_pa, len, 1 | (type == 0 ? 2 : 0), 2);
        put_desc(d, 2, d->hdr_pa + 32, 1, 2, 0);
    } else {
        put_desc(d, 1, d->hdr_pa + 32, 1, 2, 0);
    }
    submit(d, 0);
    return *(volatile uint8_t *)(d->hdr + 32);
}

static int needs_reset(struct dev *d) { return (rd(d, 0x70) & 0x40) != 0; }

/* A disk on a datastore completes requests later (the host's management CPU executes them): the
 * status byte of a valid request is watched for up to 10 s (it was 0xee until completion). */
static uint8_t completed(struct dev *d) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        uint8_t s = *(volatile uint8_t *)(d->hdr + 32);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (s != 0xee || now.tv_sec - start.tv_sec >= 10) return s;
        __builtin_ia32_pause();
    }
}

static void phase_virtio(void) {
    struct dev d;
    memset(&d, 0, sizeof d);
    d.r = map_phys(VIRTIO_BASE, 4096);
    if (!d.r || rd(&d, 0) != 0x74726976 || rd(&d, 8) != 2) {
        say("virtio FAILED: no virtio block device at %#lx", VIRTIO_BASE);
        return;
    }
    uint8_t **pages[] = {&d.desc, &d.avail, &d.used, &d.hdr, &d.data};
    uint64_t *pas[] = {&d.desc_pa, &d.avail_pa, &d.used_pa, &d.hdr_pa, &d.data_pa};
    for (int i = 0; i < 5; i++) {
        *pages[i] = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
        memset(*pages[i], 0, 4096);
        *pas[i] = phys_of(*pages[i]);
        if (!*pas[i]) {
            say("virtio FAILED: no physical address for our pages (pagemap)");
            return;
        }
    }
    /* 1. A valid read of sector 0. */
    uint32_t st = dev_init(&d, 8);
    request(&d, 0, 0, 512);
    uint8_t s = completed(&d);
    say("virtio valid read: status register %#x, request status %u, used %u, first byte %#x", st, s, used_idx(&d), d.data[0]);
    /* 2. The reproduced attack: a flush, then queue size 0 while the queue is enabled. */
    s = request(&d, 4, 0, 0);
    wr(&d, 0x38, 0);
    request(&d, 0, 0, 512);
    say("virtio queue size 0 while enabled: flush status %u, needs reset %d", s, needs_reset(&d));
    /* 3. Queue sizes 0, 3 and above the maximum; misaligned rings. */
    int refused = 0;
    const uint32_t sizes[] = {0, 3, 100, 512, 65536};
    for (unsigned i = 0; i < 5; i++) {
        dev_init(&d, sizes[i]);
        refused += rd(&d, 0x44) == 0 && needs_reset(&d);
        request(&d, 0, 0, 512);
    }
    dev_init(&d, 8);
    wr(&d, 0x70, 0);
    wr(&d, 0x70, 3);
    wr(&d, 0x80, (uint32_t)d.desc_pa + 8);
    wr(&d, 0x44, 1);
    refused += needs_reset(&d);
    say("virtio bad queue sizes and alignment: %d of 6 refused", refused);
    /* 4. Bad descriptors: outside RAM, absurd lengths, loops, next out of range, indirect. */
    int bad = 0, ioerr = 0;
    for (int k = 0; k < 200; k++) {
        if (needs_reset(&d) || k == 0) dev_init(&d, 8);
        uint64_t addr;
        uint32_t len;
        uint16_t flags = 1, next = 1;
        switch (k % 6) {
        case 0: addr = 0xfffffffffffff000ULL; len = 512; break;
        case 1: addr = d.data_pa; len = 0xffffffff; break;
        case 2: addr = (uint64_t)next_rand() << 20; len = next_rand(); break;
        case 3: addr = d.data_pa; len = 512; next = 0; break; /* loop 0 -> 1 -> 0 */
        case 4: addr = d.data_pa; len = 512; next = 200; break;
        default: addr = d.data_pa; len = 512; flags = 1 | 4; break;
        }
        memset(d.hdr, 0, 64);
        d.hdr[32] = 0xee;
        put_desc(&d, 0, d.hdr_pa, 16, 1, 1);
        put_desc(&d, 1, addr, len, flags | 2, next);
        put_desc(&d, 2, d.hdr_pa + 32, 1, 2, 0);
        uint16_t before = used_idx(&d);
        submit(&d, 0);
        bad++;
        if (used_idx(&d) != before && (d.hdr[32] == 1 || d.hdr[32] == 0xee)) ioerr++;
    }
    say("virtio bad descriptors: %d submitted, %d returned with an error or unused", bad, ioerr);
    /* 5. Out-of-range heads, an available index far ahead, absurd sectors. */
    int flagged = 0;
    dev_init(&d, 8);
    submit(&d, 4000);
    flagged += needs_reset(&d);
    dev_init(&d, 8);
    *(volatile uint16_t *)(d.avail + 2) = 1000;
    wr(&d, 0x50, 0);
    flagged += needs_reset(&d);
    dev_init(&d, 8);
    s = request(&d, 0, 0xffffffffffffffffULL, 512);
    say("virtio bad ring indexes: %d of 2 need a reset; sector 2^64-1 gives status %u", flagged, s);
    /* 6. Illegal status changes. */
    int illegal = 0;
    wr(&d, 0x70, 0);
    wr(&d, 0x70, 1 | 2 | 4);
    illegal += needs_reset(&d);
    dev_init(&d, 8);
    wr(&d, 0x70, 1);
    illegal += needs_reset(&d);
    dev_init(&d, 8);
    wr(&d, 0x20, 0);
    illegal += needs_reset(&d);
    say("virtio illegal status changes: %d of 3 need a reset", illegal);
    /* 7. A notify storm, and random register traffic. */
    dev_init(&d, 8);
    for (long i = 0; i < 30000; i++) wr(&d, 0x50, 0);
    for (long i = 0; i < 10000; i++) {
        uint32_t v = next_rand();
        unsigned off = (v >> 4) & 0x1fc;
        if (v & 1) wr(&d, off, v * 2654435761u);
        else (void)rd(&d, off);
    }
    say("virtio notify storm and register noise done");
    /* 8. After a reset the device works as before. */
    memset(d.data, 0, 512);
    st = dev_init(&d, 8);
    request(&d, 0, 0, 512);
    s = completed(&d);
    say("virtio after reset: status register %#x, request status %u, first byte %#x", st, s, d.data[0]);
    wr(&d, 0x70, 0);
}

/* Last, as they may wedge this guest (its timers, its interrupt controllers, its console - a
 * lost COM1 interrupt stops the serial driver for good): random writes to the chipset's ports,
 * then every COM1 register read and written at random; then the VM is halted from here (a guest
 * still working halts with interrupts disabled, which ends the VM; a wedged one is stopped
 * through the API by the test). */
static void phase_chaos(void) {
    tcdrain(1);
    const unsigned chipset[] = {0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71,
                                0x60, 0x64, 0x80, 0x92, 0x510, 0xcf8, 0x2f8, 0x2fc, 0x3f0};
    for (int round = 0; round < 400; round++)
        for (unsigned i = 0; i < sizeof chipset / sizeof chipset[0]; i++) {
            uint32_t v = next_rand();
            unsigned p = chipset[i];
            if (!port_write_allowed(p, (uint8_t)v)) continue;
            switch (v >> 30) {
            case 0: outw((uint16_t)v, p); break;
            case 1: outl(v, p & ~3u); break;
            default: outb((uint8_t)v, p);
            }
        }
    /* PIT channel 0 back to a sane rate and the PICs masked, as Linux left them (it runs on its
     * local APIC timer). */
    outb(0x34, 0x43);
    outb(0xa9, 0x40);
    outb(0x04, 0x40);
    outb(0xff, 0x21);
    outb(0xff, 0xa1);
    for (int round = 0; round < 20000; round++) {
        uint32_t v = next_rand();
        unsigned p = 0x3f8 + (v >> 8) % 8;
        if (v & 1) outb((uint8_t)(v >> 16), p);
        else (void)inb(p);
    }
    sync();
    reboot(RB_HALT_SYSTEM);
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    setvbuf(stdout, NULL, _IONBF, 0);
    say("start");
    phase_cpuid();
    phase_msr();
    phase_ports();
    phase_apic();
    phase_virtio();
    say("done; chipset and COM1 writes next, then halt with interrupts disabled");
    phase_chaos();
    return 0;
}
