/*
 * Layout and ABI of Ferry's embedded test guest, shared by the ring-0 entry
 * (entry.S) and the ring-3 workload (workload.c).  The VMM side mirrors these
 * numbers in Sources/EmbeddedGuest/GuestABI.swift; keep the two in step.
 */
#ifndef FERRY_GUEST_LAYOUT_H
#define FERRY_GUEST_LAYOUT_H

#define LOAD_ADDRESS      0x100000      /* the PT_LOAD segment starts at 1 MiB */
#define MAX_CPUS          32            /* static GDT/TSS/per-CPU slots */
#define WORK_BASE         0x800000      /* first byte the workload may dirty (8 MiB) */
#define HIGH_PD_COUNT     64            /* RAM mapped above 4 GiB: up to 68 GiB in all */
#define PAGE_SIZE         4096

/* Written-page bitmap (.bss, address in the image header): bit n set = the
 * workload has started writing guest physical page n.  One bit per 4 KiB page
 * up to the mapped limit (4 + HIGH_PD_COUNT GiB): 2.125 MiB. */
#define WRITTEN_BITMAP_PAGES  ((4 + HIGH_PD_COUNT) << 18)
#define IMAGE_HEADER_VERSION  3         /* 2: written-page bitmap address and page count;
                                           3: the bitmap means "in use": a freed page's bit is cleared */

/* The page allocator's unit (alloc.c): 4 MiB, aligned, as Linux hands
 * free-page-hint buffers out (MAX_ORDER - 1). */
#define BLOCK_SIZE        (4ull << 20)
#define BLOCK_PAGES       (BLOCK_SIZE / PAGE_SIZE)
#define MAX_BLOCKS        (((4ull + HIGH_PD_COUNT) << 30) / BLOCK_SIZE)

/* GDT selectors */
#define SEL_KCODE         0x08
#define SEL_KDATA         0x10
#define SEL_UDATA         0x1b          /* index 3, RPL 3 */
#define SEL_UCODE         0x23          /* index 4, RPL 3 */
#define SEL_TSS0          0x28          /* index 5: two 8-byte slots per CPU */
#define SEL_KCODE32       0x228         /* SEL_TSS0 + 16 * MAX_CPUS: flat 32-bit code, after the TSSs */

/* Per-CPU sizes */
#define KSTACK_SIZE       4096
#define USTACK_SIZE       8192          /* workload_main needs < 1 KiB; halved for the bitmap */
#define PERCPU_SIZE       256

/* Ports the guest talks to the VMM through (ring 0 only). */
#define PORT_COM1         0x3f8
#define PORT_HEARTBEAT    0x510         /* 32-bit out: guest physical address of a heartbeat record */
#define PORT_PANIC        0x511         /* 32-bit out: exception vector, guest is dead */

/* Services ring 3 asks for with ud2 (number in eax). */
#define SVC_HEARTBEAT     1             /* rdi = record address */
#define SVC_WRITE         2             /* rdi = buffer, rsi = length: bytes to COM1 */
#define SVC_SLEEP         3             /* halt until the next interrupt */

#define AP_TRAMPOLINE     0x8000        /* real-mode AP entry, below 1 MiB (SIPI vector 8) */
#define TIMER_HZ          100           /* LAPIC timer ticks per second (KVM's APIC bus is 1 GHz) */

/* LAPIC */
#define LAPIC_BASE        0xfee00000
#define TIMER_VECTOR      32
#define SPURIOUS_VECTOR   0xff
#define TIMER_INITIAL     10000000      /* 100 Hz at KVM's 1 GHz APIC bus */

/* Per-CPU block offsets (GS base points at the block in both rings). */
#define PC_SELF           0
#define PC_CPU            8
#define PC_TICKS          16
#define PC_KSTACK_TOP     24
#define PC_USTACK_TOP     32
#define PC_WRITING        40            /* address of the page being written + 1, or 0 */

/* Heartbeat record, 64 bytes, little-endian (GuestABI.swift: HeartbeatRecord). */
#define HB_MAGIC          0x31544248    /* "HBT1" */

/* Page header, first 32 bytes of every page the workload writes. */
#define PAGE_MAGIC        0x3147505952524546ull   /* "FERRYPG1" little-endian */

#endif
