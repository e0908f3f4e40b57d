/*
 * Ring-3 workload of Ferry's embedded test guest: runs natively under PVM.
 *
 * Every vCPU owns one stripe of the working set and sweeps it page by page at
 * the configured dirty rate.  Each page written carries a header (magic, page
 * index, generation, checksum of the body) and a body derived from index and
 * generation, so both the guest and the host can verify it.  Before a page is
 * rewritten it is verified against the generation this vCPU last wrote there;
 * a page that lost a write (for example in a migration) shows up as a failure.
 * Before its first write a page's bit is set in the written-page bitmap (see
 * mark_written), so the host can tell a lost page from one never written.
 *
 * Every ~100 ms each vCPU fills its heartbeat record and asks ring 0 to report
 * it to the VMM (port 0x510); vCPU 0 also prints "HB <seq> t=<ms> pages=<n>
 * err=<n>" on COM1, totals over all vCPUs.
 *
 * Slow accesses: every page write (verify + rewrite of one page) is timed;
 * one that took 16 us or more (a write fault, a preemption) counts in a
 * histogram with four buckets per doubling from 16 us (bucket 4k+q holds
 * [16us * 2^k * (1 + q/4), 16us * 2^k * (1 + (q+1)/4)), the last catches
 * everything over ~1 s).  Every tenth heartbeat vCPU 0 prints the totals over
 * all vCPUs, cumulative since boot: "SA <seq> n=<slow> of=<all> b=<c0>,<c1>,..."
 * (counts of buckets 0.. up to the last non-zero one).
 *
 * Command line (hvm_start_info): cpus=N tsc-khz=N dirty-rate=BYTES|max
 * working-set=BYTES (K/M/G suffixes) access=random.  Without tsc-khz the
 * guest measures the TSC against its LAPIC timer.  dirty-rate=0 is the idle
 * workload: touch the working set once, then only beat.
 *
 * access=random: after each page written, the vCPU also reads one page of its
 * stripe chosen at random (xorshift), verifies it against the generation the
 * sweep left there (a page the sweep has passed in this pass holds pass + 1,
 * one ahead of it holds pass, or zeroes before its first write) and times
 * the read like a write: accesses that land anywhere in memory, as a
 * postcopy destination's faults do.  "of=" then counts reads and writes.
 *
 * free=BYTES: once every vCPU has finished its first pass, the last BYTES of
 * the working set go back to the page allocator (alloc.c): no vCPU touches
 * them again, and their bits leave the written-page bitmap, which from image
 * version 3 on means "in use".  RAM past the working set is free from boot.
 *
 * churn=BYTES: every heartbeat vCPU 0 verifies and frees its oldest 4 MiB
 * block and allocates and writes a new one (generation per block), keeping
 * BYTES allocated: memory that is allocated and freed while it dirties, and
 * that may be a block the balloon driver reported as free.
 *
 * virtio_mmio.device=SIZE@ADDRESS:IRQ (added by the VMM, as microvm does):
 * vCPU 0 drives the virtio-balloon there (balloon.c).
 */
#include "guest.h"
#include "slow.h"

struct start_info {                     /* hvm_start_info, version 1 */
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    u32 memmap_entries, reserved;
};
struct memmap_entry { u64 addr, size; u32 type, reserved; };

struct heartbeat {                      /* 64 bytes: GuestABI.swift HeartbeatRecord */
    u32 magic, cpu;
    u64 seq, tsc, pages_written, verify_errors, ticks, pass;
    u64 first_error_page;
};

struct percpu {                         /* matches PC_* in layout.h */
    u64 self, cpu, ticks, kstack_top, ustack_top;
    volatile u64 writing;               /* page being written + 1: the host verifier skips it */
    u64 pad[2];
    struct heartbeat hb;                /* at offset 64 */
};

extern u64 pdpt[512];
extern u64 high_pds[HIGH_PD_COUNT][512];
#define MAPPED_LIMIT ((4ull + HIGH_PD_COUNT) << 30)

/* Written-page bitmap (entry.S, published in the image header). */
extern volatile u64 written_pages[WRITTEN_BITMAP_PAGES / 64];
_Static_assert((u64)WRITTEN_BITMAP_PAGES * PAGE_SIZE == MAPPED_LIMIT, "the bitmap covers all mapped RAM");

/* Set by vCPU 0 once RAM above 4 GiB is mapped; the others wait for it. */
static volatile u64 memory_mapped;

/* Totals for the serial line, one slot per vCPU (vCPU 0 sums them). */
static volatile u64 shared_pages[MAX_CPUS];
static volatile u64 shared_errors[MAX_CPUS];
/* Random reads (access=random), one slot per vCPU. */
static volatile u64 shared_reads[MAX_CPUS];

/* Slow page writes per vCPU (see the top of this file). */
static volatile u64 slow_counts[MAX_CPUS][SLOW_BUCKETS];
static volatile u64 slow_total[MAX_CPUS];
static char slow_line[1024];

struct range { u64 base, pages; };
#define MAX_RANGES 16

struct config {
    u64 cpus, tsc_khz, dirty_rate, working_set, free, churn;
    int max_rate, random_access;
};

static inline u64 rdtsc(void) {
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

static struct percpu *this_cpu(void) {
    struct percpu *p;
    __asm__ volatile("movq %%gs:0, %0" : "=r"(p));
    return p;
}

/* ------------------------------------------------------------ page format */
static inline u64 mix(u64 x) {          /* splitmix64 finaliser */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27; x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Body words 4..511: word i = (seed + i) * K, seed = mix(index, generation). */
static void fill_page(u64 *page, u64 index, u64 generation) {
    u64 seed = mix(index * 0x9e3779b97f4a7c15ull ^ generation);
    for (u64 i = 4; i < 512; i++) page[i] = (seed + i) * 0xd6e8feb86659fd93ull;
}

/* Four independent FNV-style lanes so the multiply chain pipelines. */
static u64 checksum_body(const u64 *page) {
    u64 h0 = 0xcbf29ce484222325ull, h1 = h0 ^ 1, h2 = h0 ^ 2, h3 = h0 ^ 3;
    for (u64 i = 4; i < 512; i += 4) {
        h0 = (h0 ^ page[i]) * 0x100000001b3ull;
        h1 = (h1 ^ page[i + 1]) * 0x100000001b3ull;
        h2 = (h2 ^ page[i + 2]) * 0x100000001b3ull;
        h3 = (h3 ^ page[i + 3]) * 0x100000001b3ull;
    }
    return mix(h0 ^ (h1 << 16 | h1 >> 48) ^ (h2 << 32 | h2 >> 32) ^ (h3 << 48 | h3 >> 16));
}

void write_page(u64 *page, u64 index, u64 generation) {
    fill_page(page, index, generation);
    page[1] = index;
    page[2] = generation;
    page[3] = checksum_body(page);
    page[0] = PAGE_MAGIC;
}

/* Generation 0 means "never written": the page must still be all zero. */
int verify_page(const u64 *page, u64 index, u64 generation) {
    if (generation == 0) {
        u64 any = 0;
        for (u64 i = 0; i < 512; i++) any |= page[i];
        return any == 0;
    }
    return page[0] == PAGE_MAGIC && page[1] == index && page[2] == generation
        && page[3] == checksum_body(page);
}

/* Records that page `index` is being written.  Called after pc->writing is
 * published, so a guest paused in between still has the page set aside by the
 * host verifier.  Pages of neighbouring stripes share words: the OR is atomic.
 * A bit already set is only read, so the bitmap stops being dirtied after the
 * first pass (it would otherwise be rewritten with every page). */
void mark_written(u64 index) {
    volatile u64 *word = &written_pages[index / 64];
    u64 bit = 1ull << (index % 64);
    if (!(*word & bit)) __atomic_fetch_or(word, bit, __ATOMIC_SEQ_CST);
}

/* Page `index` is no longer in use (freed, or given to the balloon). */
void mark_free(u64 index) {
    volatile u64 *word = &written_pages[index / 64];
    u64 bit = 1ull << (index % 64);
    if (*word & bit) __atomic_fetch_and(word, ~bit, __ATOMIC_SEQ_CST);
}

/* ------------------------------------------------------------ text output */
u64 put_str(char *out, u64 at, const char *s) {
    while (*s) out[at++] = *s++;
    return at;
}
u64 put_dec(char *out, u64 at, u64 v) {
    char tmp[20];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) out[at++] = tmp[--n];
    return at;
}
u64 put_hex(char *out, u64 at, u64 v) {
    at = put_str(out, at, "0x");
    int shift = 60;
    while (shift > 0 && !((v >> shift) & 0xf)) shift -= 4;
    for (; shift >= 0; shift -= 4) out[at++] = "0123456789abcdef"[(v >> shift) & 0xf];
    return at;
}

/* ------------------------------------------------------------ command line */
static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

int key_is(const char *s, const char *key, const char **value) {
    while (*key && *s == *key) { s++; key++; }
    if (*key || *s != '=') return 0;
    *value = s + 1;
    return 1;
}

static u64 parse_size(const char *s) {
    u64 v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0');
    switch (*s) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    default: break;
    }
    return v;
}

static void parse_cmdline(const char *s, struct config *c) {
    while (s && *s) {
        while (is_space(*s)) s++;
        const char *v;
        if (key_is(s, "cpus", &v)) c->cpus = parse_size(v);
        else if (key_is(s, "tsc-khz", &v)) c->tsc_khz = parse_size(v);
        else if (key_is(s, "working-set", &v)) c->working_set = parse_size(v);
        else if (key_is(s, "access", &v)) c->random_access = v[0] == 'r';
        else if (key_is(s, "free", &v)) c->free = parse_size(v);
        else if (key_is(s, "churn", &v)) c->churn = parse_size(v);
        else if (key_is(s, "dirty-rate", &v)) {
            if (v[0] == 'm' && v[1] == 'a' && v[2] == 'x') c->max_rate = 1;
            else c->dirty_rate = parse_size(v);
        }
        while (*s && !is_space(*s)) s++;
    }
}

/* --------------------------------------------------------------- workload */
struct stripe {
    struct range ranges[MAX_RANGES];
    u64 nranges, pages;
};

/* Usable RAM from WORK_BASE up, in memory-map order: the guest's linear page
 * space (the working set is its first pages).  Returns the number of ranges. */
static u64 usable_ranges(const struct start_info *si, struct range *all) {
    u64 n = 0;
    const struct memmap_entry *map = (const struct memmap_entry *)si->memmap_paddr;
    for (u32 i = 0; i < si->memmap_entries && n < MAX_RANGES; i++) {
        if (map[i].type != 1) continue;
        u64 start = map[i].addr, end = map[i].addr + map[i].size;
        if (start < WORK_BASE) start = WORK_BASE;
        if (end > MAPPED_LIMIT) end = MAPPED_LIMIT;
        start = (start + PAGE_SIZE - 1) & ~(u64)(PAGE_SIZE - 1);
        end &= ~(u64)(PAGE_SIZE - 1);
        if (end <= start) continue;
        all[n].base = start; all[n].pages = (end - start) / PAGE_SIZE; n++;
    }
    return n;
}

/* The physical ranges of linear pages [first, last) into `out`; returns how many. */
static u64 linear_ranges(const struct range *all, u64 n, u64 first, u64 last, struct range *out) {
    u64 count = 0, seen = 0;
    for (u64 i = 0; i < n; i++) {
        u64 lo = seen, hi = seen + all[i].pages;
        seen = hi;
        if (hi <= first || lo >= last) continue;
        u64 from = lo < first ? first : lo, to = hi > last ? last : hi;
        out[count].base = all[i].base + (from - lo) * PAGE_SIZE;
        out[count].pages = to - from;
        count++;
    }
    return count;
}

/* This vCPU's stripe of a working set of `total` pages, [cpu * total / cpus,
 * (cpu + 1) * total / cpus), cut off at linear page `cap` (free=). */
static void make_stripe(const struct range *all, u64 n, u64 total, u64 cap, u64 cpu, u64 cpus, struct stripe *st) {
    u64 first = cpu * total / cpus, last = (cpu + 1) * total / cpus;
    if (last > cap) last = cap;
    if (last < first) last = first;
    st->nranges = linear_ranges(all, n, first, last, st->ranges);
    st->pages = last - first;
}

/* Maps RAM above 4 GiB with 2 MiB pages.  Each directory is filled while it is
 * not yet part of the page tables (plain native stores), then linked into the
 * PDPT: under shadow paging only those few linking stores trap. */
static void map_high_memory(const struct start_info *si) {
    const struct memmap_entry *map = (const struct memmap_entry *)si->memmap_paddr;
    for (u32 i = 0; i < si->memmap_entries; i++) {
        if (map[i].type != 1) continue;
        u64 end = map[i].addr + map[i].size;
        if (end > MAPPED_LIMIT) end = MAPPED_LIMIT;
        for (u64 gib = map[i].addr >> 30; (gib << 30) < end; gib++) {
            if (gib < 4 || pdpt[gib]) continue;
            u64 *pd = high_pds[gib - 4];
            for (u64 e = 0; e < 512; e++) pd[e] = (gib << 30) + (e << 21) + 0x87;
            pdpt[gib] = (u64)pd + 0x7;
        }
    }
    memory_mapped = 1;
}

struct cursor { u64 range, offset, pass, linear; };

static u64 *cursor_page(const struct stripe *st, const struct cursor *cur) {
    return (u64 *)(st->ranges[cur->range].base + cur->offset * PAGE_SIZE);
}

static void advance(const struct stripe *st, struct cursor *cur) {
    cur->linear++;
    if (++cur->offset < st->ranges[cur->range].pages) return;
    cur->offset = 0;
    if (++cur->range < st->nranges) return;
    cur->range = 0;
    cur->linear = 0;
    cur->pass++;
}

/* The page at position `linear` of the stripe. */
static u64 *stripe_page(const struct stripe *st, u64 linear) {
    for (u64 r = 0; r < st->nranges; r++) {
        if (linear < st->ranges[r].pages) return (u64 *)(st->ranges[r].base + linear * PAGE_SIZE);
        linear -= st->ranges[r].pages;
    }
    return 0;
}

static inline u64 xorshift(u64 *state) {
    u64 x = *state;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *state = x;
}

/* Counts one page write of `micros` us (>= 16). */
static void record_slow(u64 cpu, u64 micros) {
    slow_counts[cpu][slow_bucket(micros)]++;
    slow_total[cpu]++;
}

static void print_slow(const struct config *c, u64 seq) {
    u64 sums[SLOW_BUCKETS], slow = 0, all = 0, last = 0;
    for (u64 b = 0; b < SLOW_BUCKETS; b++) {
        sums[b] = 0;
        for (u64 i = 0; i < c->cpus && i < MAX_CPUS; i++) sums[b] += slow_counts[i][b];
        if (sums[b]) last = b + 1;
    }
    for (u64 i = 0; i < c->cpus && i < MAX_CPUS; i++) { slow += slow_total[i]; all += shared_pages[i] + shared_reads[i]; }
    u64 at = put_str(slow_line, 0, "SA ");
    at = put_dec(slow_line, at, seq);
    at = put_str(slow_line, at, " n=");
    at = put_dec(slow_line, at, slow);
    at = put_str(slow_line, at, " of=");
    at = put_dec(slow_line, at, all);
    at = put_str(slow_line, at, " b=");
    for (u64 b = 0; b < last; b++) {
        if (b) slow_line[at++] = ',';
        at = put_dec(slow_line, at, sums[b]);
    }
    slow_line[at++] = '\n';
    print(slow_line, at);
}

static void heartbeat(struct percpu *pc, const struct config *c, u64 t0, u64 now, u64 cpu) {
    struct heartbeat *hb = &pc->hb;
    hb->magic = HB_MAGIC;
    hb->cpu = (u32)cpu;
    hb->seq++;
    hb->tsc = now;
    hb->ticks = pc->ticks;
    shared_pages[cpu] = hb->pages_written;
    shared_errors[cpu] = hb->verify_errors;
    service(SVC_HEARTBEAT, (u64)hb, 0);
    if (cpu != 0) return;
    u64 pages = 0, errors = 0;
    for (u64 i = 0; i < c->cpus && i < MAX_CPUS; i++) { pages += shared_pages[i]; errors += shared_errors[i]; }
    char line[96];
    u64 at = put_str(line, 0, "HB ");
    at = put_dec(line, at, hb->seq);
    at = put_str(line, at, " t=");
    at = put_dec(line, at, (now - t0) / c->tsc_khz);
    at = put_str(line, at, " pages=");
    at = put_dec(line, at, pages);
    at = put_str(line, at, " err=");
    at = put_dec(line, at, errors);
    line[at++] = '\n';
    print(line, at);
    if (hb->seq % 10 == 0) print_slow(c, hb->seq);
}

static void banner(const struct config *c, const struct stripe *st) {
    char line[128];
    u64 at = put_str(line, 0, "ferry-guest: cpus=");
    at = put_dec(line, at, c->cpus);
    at = put_str(line, at, " working-set-pages=");
    at = put_dec(line, at, st->pages * c->cpus);
    at = put_str(line, at, " dirty-rate=");
    if (c->max_rate) at = put_str(line, at, "max");
    else at = put_dec(line, at, c->dirty_rate);
    if (c->random_access) at = put_str(line, at, " access=random");
    line[at++] = '\n';
    print(line, at);
}

/* vCPU 0 measures the TSC against its LAPIC timer (KVM's in-kernel LAPIC
 * runs at a 1 GHz bus under every VMM, so TIMER_HZ ticks a second) when the
 * command line has no tsc-khz; the others wait for its answer. */
static volatile u64 calibrated_khz;

static u64 tsc_at_next_tick(const struct percpu *pc) {
    u64 ticks = ((volatile const struct percpu *)pc)->ticks;
    while (((volatile const struct percpu *)pc)->ticks == ticks) __asm__ volatile("pause");
    return rdtsc();
}

static u64 tsc_khz_shared(u64 cpu, const struct percpu *pc) {
    if (cpu == 0) {
        const u64 span = 5;                     /* 50 ms */
        u64 start = tsc_at_next_tick(pc), end = start;
        for (u64 i = 0; i < span; i++) end = tsc_at_next_tick(pc);
        u64 khz = (end - start) * TIMER_HZ / span / 1000;
        calibrated_khz = khz ? khz : 1000000;
    }
    while (!calibrated_khz) __asm__ volatile("pause");
    return calibrated_khz;
}

/* ------------------------------------------------------------------ churn */
#define CHURN_MAX 64
struct churn_block { u64 base, generation; };
static struct churn_block churn_ring[CHURN_MAX];
static u64 churn_head, churn_live, churn_generation;

/* Verifies, then frees, the oldest live block: each page must still hold what
 * was written there (a page a migration lost or a hint wrongly dropped fails). */
static void churn_free_oldest(struct percpu *pc) {
    struct churn_block b = churn_ring[churn_head];
    churn_head = (churn_head + 1) % CHURN_MAX;
    churn_live--;
    for (u64 i = 0; i < BLOCK_PAGES; i++) {
        u64 *page = (u64 *)(b.base + i * PAGE_SIZE);
        u64 index = (u64)page / PAGE_SIZE;
        if (!verify_page(page, index, b.generation)) {
            if (pc->hb.verify_errors++ == 0) pc->hb.first_error_page = index;
        }
        mark_free(index);
    }
    free_block(b.base);
}

/* One churn step (vCPU 0, every heartbeat): a new block is allocated and
 * written, then the oldest beyond `target` live ones is verified and freed.
 * Allocating first means an empty free list (every free block reported as a
 * hint) makes the allocator take a reported block back. */
static void churn_step(struct percpu *pc, u64 target) {
    if (target > CHURN_MAX) target = CHURN_MAX;
    if (target == 0) target = 1;
    u64 base;
    if (churn_live >= CHURN_MAX) churn_free_oldest(pc);
    if (!alloc_block(&base)) { if (churn_live) churn_free_oldest(pc); return; }
    u64 generation = ++churn_generation;
    for (u64 i = 0; i < BLOCK_PAGES; i++) {
        u64 *page = (u64 *)(base + i * PAGE_SIZE);
        u64 index = (u64)page / PAGE_SIZE;
        pc->writing = (u64)page + 1;
        barrier();
        mark_written(index);
        write_page(page, index, generation);
        barrier();
        pc->writing = 0;
    }
    churn_ring[(churn_head + churn_live) % CHURN_MAX] = (struct churn_block){ base, generation };
    churn_live++;
    while (churn_live > target) churn_free_oldest(pc);
}

/* ---------------------------------------------------------------- free= */
static volatile u64 first_pass_done[MAX_CPUS];

static int all_first_passes_done(u64 cpus) {
    for (u64 i = 0; i < cpus; i++) if (!first_pass_done[i]) return 0;
    return 1;
}

/* Linear pages [from, to) go back to the allocator and out of the in-use bitmap. */
static u64 free_linear(const struct range *all, u64 n, u64 from, u64 to, int was_in_use) {
    struct range parts[MAX_RANGES];
    u64 count = linear_ranges(all, n, from, to, parts), before = alloc_free_blocks();
    for (u64 i = 0; i < count; i++) {
        if (was_in_use) for (u64 p = 0; p < parts[i].pages; p++) mark_free(parts[i].base / PAGE_SIZE + p);
        alloc_add_range(parts[i].base, parts[i].base + parts[i].pages * PAGE_SIZE);
    }
    return alloc_free_blocks() - before;
}

static void say_free(const char *what, u64 pages, u64 blocks) {
    char line[96];
    u64 at = put_str(line, 0, what);
    at = put_dec(line, at, pages);
    at = put_str(line, at, " blocks=");
    at = put_dec(line, at, blocks);
    line[at++] = '\n';
    print(line, at);
}

void workload_main(u64 cpu, const struct start_info *si) {
    struct config c = { .cpus = 1, .tsc_khz = 0, .dirty_rate = 0, .working_set = 0, .free = 0, .churn = 0,
                        .max_rate = 0, .random_access = 0 };
    const char *cmdline = si && si->cmdline_paddr ? (const char *)si->cmdline_paddr : 0;
    if (cmdline) parse_cmdline(cmdline, &c);
    if (c.cpus == 0 || c.cpus > MAX_CPUS) c.cpus = 1;
    struct percpu *pc = this_cpu();
    if (c.tsc_khz == 0) c.tsc_khz = tsc_khz_shared(cpu, pc);
    if (cpu == 0) map_high_memory(si);
    while (!memory_mapped) __asm__ volatile("pause");
    struct range all[MAX_RANGES];
    u64 nall = usable_ranges(si, all), total = 0;
    for (u64 i = 0; i < nall; i++) total += all[i].pages;
    u64 working = c.working_set / PAGE_SIZE;
    if (working == 0 || working > total) working = total;
    u64 freeing = c.free / PAGE_SIZE;
    if (freeing > working) freeing = working;
    struct stripe st;
    make_stripe(all, nall, working, working, cpu, c.cpus, &st);
    if (st.pages == 0 || freeing == 0) first_pass_done[cpu] = 1;
    int truncated = freeing == 0, freed = freeing == 0;
    if (cpu == 0) {
        banner(&c, &st);
        u64 blocks = free_linear(all, nall, working, total, 0);
        say_free("FREE boot pages=", total - working, blocks);
        balloon_probe(cmdline);
    }

    u64 hz = c.tsc_khz * 1000, beat = hz / 10;
    u64 slow_from = slow_cycles(c.tsc_khz);
    u64 t0 = rdtsc(), next_beat = t0;      /* first heartbeat at once */
    u64 rate_pages = c.dirty_rate / PAGE_SIZE / c.cpus;   /* per vCPU per second */
    struct cursor cur = { 0, 0, 0, 0 };
    u64 random_state = mix(cpu + 1 + rdtsc());
    u64 written = 0;                     /* pages written since t0 (rate control) */

    for (;;) {
        u64 now = rdtsc();
        if (now >= next_beat) {
            heartbeat(pc, &c, t0, now, cpu);
            if (cpu == 0 && c.churn) churn_step(pc, c.churn / BLOCK_SIZE);
            next_beat += beat;
            if (next_beat <= now) next_beat = now + beat;   /* after a long pause */
        }
        if (cpu == 0) {
            if (!freed && all_first_passes_done(c.cpus)) {
                freed = 1;
                u64 blocks = free_linear(all, nall, working - freeing, working, 1);
                say_free("FREE pages=", freeing, blocks);
            }
            balloon_tick(pc->ticks);
        }
        u64 due;
        if (st.pages == 0) due = 0;
        else if (c.max_rate) due = written + 64;
        else if (rate_pages == 0) due = cur.pass == 0 ? written + 64 : 0;   /* idle: one pass */
        else {
            due = (now - t0) / 1000 * rate_pages / (hz / 1000);
            if (due > written + 4096) { written = due - 4096; }           /* do not bank a backlog */
        }
        if (due <= written) { service(SVC_SLEEP, 0, 0); continue; }
        for (u64 n = due - written; n; n--) {
            u64 started = rdtsc();
            u64 *page = cursor_page(&st, &cur);
            u64 index = (u64)page / PAGE_SIZE;
            if (!verify_page(page, index, cur.pass)) {
                if (pc->hb.verify_errors++ == 0) pc->hb.first_error_page = index;
            }
            pc->writing = (u64)page + 1;
            __asm__ volatile("" ::: "memory");
            mark_written(index);
            write_page(page, index, cur.pass + 1);
            __asm__ volatile("" ::: "memory");
            pc->writing = 0;
            pc->hb.pages_written++;
            pc->hb.pass = cur.pass;
            advance(&st, &cur);
            written++;
            if (!truncated && cur.pass == 1) {
                /* free=: the first pass is over; the tail of the working set is no longer ours. */
                truncated = 1;
                make_stripe(all, nall, working, working - freeing, cpu, c.cpus, &st);
                first_pass_done[cpu] = 1;
                if (st.pages == 0) break;
            }
            u64 took = rdtsc() - started;
            if (took >= slow_from) record_slow(cpu, slow_micros(took, c.tsc_khz));
            if (c.random_access) {
                /* A page anywhere in the stripe, as the sweep left it. */
                u64 at = xorshift(&random_state) % st.pages;
                u64 generation = at < cur.linear ? cur.pass + 1 : cur.pass;
                u64 *target = stripe_page(&st, at);
                started = rdtsc();
                if (target && !verify_page(target, (u64)target / PAGE_SIZE, generation)) {
                    if (pc->hb.verify_errors++ == 0) pc->hb.first_error_page = (u64)target / PAGE_SIZE;
                }
                shared_reads[cpu]++;
                took = rdtsc() - started;
                if (took >= slow_from) record_slow(cpu, slow_micros(took, c.tsc_khz));
            }
            if (rdtsc() >= next_beat) break;
        }
    }
}
