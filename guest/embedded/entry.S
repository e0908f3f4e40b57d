/*
 * Ring-0 part of Ferry's embedded test guest.
 *
 * PVM runs guest ring 0 under emulation (about 0.4 M instructions/s), so this
 * file does as little as possible at run time: the page tables, GDT and IDT are
 * built by the assembler as static data, and each vCPU only loads them, sets
 * its stacks, starts its LAPIC timer (the BSP also masks the 8259s: device
 * drivers poll) and drops to ring 3 (workload.c), where
 * all real work runs natively.  Afterwards ring 0 runs only three things:
 *   - the timer interrupt (count a tick, EOI),
 *   - services ring 3 asks for with `ud2` (heartbeat, serial write, sleep),
 *   - a panic path for any other exception.
 *
 * Boot ABI: the PVH entry (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode,
 * flat segments, paging off, %ebx = guest physical address of hvm_start_info.
 * Ferry enters every vCPU there; the CPU number comes from the LAPIC ID.
 */
#include "layout.h"

#define MSR_EFER        0xc0000080
#define MSR_GS_BASE     0xc0000101
/* An address in .text as an assemble-time constant (the image is linked at LOAD_ADDRESS). */
#define ADDR(sym) ((sym) - _start + LOAD_ADDRESS)

        .section .note.Xen, "a", @note
        .balign 4
        .long 4                         /* namesz: "Xen\0" */
        .long 8                         /* descsz */
        .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .quad pvh_entry                 /* 8 bytes, upper half zero */

/* ------------------------------------------------------------------ header */
        .section .text, "ax"
        .globl _start
_start:
image_header:                           /* read by the VMM: GuestABI.swift */
        .ascii "FERRYGST"
        .long IMAGE_HEADER_VERSION      /* 0x08 */
        .long MAX_CPUS                  /* 0x0c */
        .quad start_info_slot           /* 0x10: where the BSP saves %ebx */
        .quad percpu                    /* 0x18: per-CPU blocks, PERCPU_SIZE each */
        .quad written_pages             /* 0x20: written-page bitmap (version 2) */
        .quad WRITTEN_BITMAP_PAGES      /* 0x28: pages the bitmap covers (version 2) */

/* --------------------------------------------------------- 32-bit entry */
        .code32
        .globl pvh_entry
pvh_entry:
        cli
        cld
        /* CPU number = LAPIC ID (KVM sets it to the vCPU id). */
        movl    LAPIC_BASE + 0x20, %ebp
        shrl    $24, %ebp
        cmpl    $MAX_CPUS, %ebp
        jae     dead32
        testl   %ebp, %ebp
        jnz     1f
        movl    %ebx, start_info_slot   /* only the BSP's %ebx is meaningful */
1:
        lgdt    gdt_pointer
        movl    %cr4, %eax
        orl     $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT */
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $0x100, %eax            /* LME */
        wrmsr
        movl    %cr0, %eax
        andl    $~0x4, %eax             /* EM off: ring 3 may use SSE */
        orl     $0x80000023, %eax       /* PG | NE | MP | PE */
        movl    %eax, %cr0
        ljmp    $SEL_KCODE, $long_mode
dead32:
        hlt
        jmp     dead32

/* --------------------------------------------------------- 64-bit set-up */
        .code64
long_mode:
        movl    $SEL_KDATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
        movl    %ebp, %ebp              /* zero-extend the CPU number */

        /* per-CPU block: rbx = percpu + cpu * PERCPU_SIZE */
        movq    %rbp, %rbx
        shlq    $8, %rbx
        addq    $percpu, %rbx
        movq    %rbx, PC_SELF(%rbx)
        movq    %rbp, PC_CPU(%rbx)
        movq    %rbx, %rax
        movq    %rbx, %rdx
        shrq    $32, %rdx
        movl    $MSR_GS_BASE, %ecx
        wrmsr

        /* kernel stack top = kstacks + (cpu + 1) * KSTACK_SIZE */
        leaq    1(%rbp), %rax
        shlq    $12, %rax
        addq    $kstacks, %rax
        movq    %rax, %rsp
        movq    %rax, PC_KSTACK_TOP(%rbx)
        /* TSS.RSP0 (offset 4 in this CPU's 104-byte TSS) */
        imulq   $104, %rbp, %rcx
        movq    %rax, tss_array + 4(%rcx)
        leaq    SEL_TSS0(,%rbp,8), %rax
        leaq    (%rax,%rbp,8), %rax     /* SEL_TSS0 + cpu * 16 */
        ltr     %ax
        lidt    idt_pointer

        /* LAPIC: software enable, periodic timer at 100 Hz.  (A register
         * holds the base: a 64-bit disp32 would be sign-extended.) */
        movl    $LAPIC_BASE, %edi
        movl    $0x100 | SPURIOUS_VECTOR, 0xf0(%rdi)
        movl    $0xb, 0x3e0(%rdi)                  /* divide by 1 */
        movl    $0x20000 | TIMER_VECTOR, 0x320(%rdi)
        movl    $TIMER_INITIAL, 0x380(%rdi)

        /* Device interrupts are not used (drivers poll): mask both 8259 PICs,
         * whose reset state would deliver an IRQ as a low vector through the
         * BSP's ExtINT LINT0.  The IOAPIC's pins are masked from reset. */
        testq   %rbp, %rbp
        jnz     1f
        movb    $0xff, %al
        outb    %al, $0x21
        outb    %al, $0xa1
1:
        /* The BSP wakes the APs the standard way (every VMM keeps them waiting
         * for SIPI): copy the real-mode trampoline below 1 MiB, then INIT and
         * SIPI to all but itself.  The APs come back through pvh_entry. */
        testq   %rbp, %rbp
        jnz     1f
        leaq    ap_trampoline, %rsi
        movl    $AP_TRAMPOLINE, %edi
        movl    $ap_trampoline_end - ap_trampoline, %ecx
        rep movsb
        movl    $LAPIC_BASE, %edi
        movl    $0xc4500, 0x300(%rdi)              /* INIT, assert, all excluding self */
        movl    $0xc4600 | (AP_TRAMPOLINE >> 12), 0x300(%rdi)   /* STARTUP */
1:

        /* user stack top = ustacks + (cpu + 1) * USTACK_SIZE */
        leaq    1(%rbp), %rax
        imulq   $USTACK_SIZE, %rax
        addq    $ustacks, %rax
        movq    %rax, PC_USTACK_TOP(%rbx)

        /* iretq to ring 3: workload_main(cpu, start_info) */
        pushq   $SEL_UDATA
        pushq   %rax
        pushq   $0x202                  /* IF */
        pushq   $SEL_UCODE
        pushq   $workload_main
        movq    %rbp, %rdi
        movl    start_info_slot, %esi
        iretq

/* ------------------------------------------------------ interrupt stubs */
/* One 16-byte stub per vector 0..31: push the vector, go to the common path. */
        .balign 16
exception_stubs:
        .set vector, 0
        .rept 32
        .balign 16
        pushq   $vector
        jmp     exception_common
        .set vector, vector + 1
        .endr

exception_common:
        cmpq    $6, (%rsp)              /* #UD: a ud2 from ring 3 is a service call */
        jne     panic
        testb   $3, 16(%rsp)            /* CS of the interrupted code */
        jz      panic
        addq    $8, %rsp                /* drop the vector */
        addq    $2, (%rsp)              /* resume after ud2 */
        cmpl    $SVC_HEARTBEAT, %eax
        je      svc_heartbeat
        cmpl    $SVC_WRITE, %eax
        je      svc_write
        cmpl    $SVC_SLEEP, %eax
        je      svc_sleep
        iretq                           /* unknown service: ignored */

svc_heartbeat:
        pushq   %rdx
        movl    %edi, %eax
        movl    $PORT_HEARTBEAT, %edx
        outl    %eax, %dx
        popq    %rdx
        iretq

svc_write:
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        movq    %rsi, %rcx
        movq    %rdi, %rsi
        movl    $PORT_COM1, %edx
        rep outsb
        popq    %rsi
        popq    %rdx
        popq    %rcx
        iretq

svc_sleep:
        sti
        hlt
        cli
        iretq

panic:
        popq    %rax
        movl    $PORT_PANIC, %edx
        outl    %eax, %dx
1:      cli
        hlt
        jmp     1b

        .balign 16
timer_interrupt:
        incq    %gs:PC_TICKS
        pushq   %rax
        movl    $LAPIC_BASE, %eax
        movl    $0, 0xb0(%rax)          /* EOI */
        popq    %rax
        iretq

        .balign 16
spurious_interrupt:
        iretq

/* ---------------------------------------------------- AP trampoline */
/* Copied to AP_TRAMPOLINE; an AP starts here in real mode (CS = 0x0800). */
        .code16
ap_trampoline:
        cli
        cld
        lgdtl   %cs:(ap_gdt_pointer - ap_trampoline)
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $SEL_KCODE32, $ap_protected
        .balign 8
ap_gdt_pointer:
        .word   gdt_end - gdt - 1
        .long   ADDR(gdt)
ap_trampoline_end:
        .code32
ap_protected:
        movl    $SEL_KDATA, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        jmp     pvh_entry
        .code64

/* ------------------------------------------------------------ static data */
/* Static tables stay in .text so that the assembler can split their
 * addresses into descriptor fields (ADDR() is an assemble-time constant). */

/* Identity map of the first 4 GiB (RAM below the hole, IOAPIC, LAPIC) with
 * 2 MiB pages, user-accessible.  PVM's shadow MMU does not take 1 GiB pages.
 * RAM above 4 GiB gets page directories from ring 3 (map_high_memory in
 * workload.c), which writes them at native speed before linking them here. */
        .balign 4096
        .globl pml4, pdpt
pml4:
        .quad ADDR(pdpt) + 0x7          /* present, writable, user */
        .fill 511, 8, 0
pdpt:
        .quad ADDR(low_pds) + 0x7
        .quad ADDR(low_pds) + 0x1007
        .quad ADDR(low_pds) + 0x2007
        .quad ADDR(low_pds) + 0x3007
        .fill 508, 8, 0
low_pds:
        .set entry, 0
        .rept 2048
        .quad (entry << 21) + 0x87      /* present, writable, user, 2 MiB page */
        .set entry, entry + 1
        .endr

        .balign 16
tss_array:
        .fill MAX_CPUS * 104, 1, 0
        /* I/O map base beyond the limit: no I/O bitmap */

        .balign 16
gdt:
        .quad 0
        .quad 0x00209a0000000000        /* 0x08 kernel code, 64-bit */
        .quad 0x00cf92000000ffff        /* 0x10 kernel data, flat 4 GiB (APs use it in 32-bit mode) */
        .quad 0x0000f20000000000        /* 0x1b user data */
        .quad 0x0020fa0000000000        /* 0x23 user code, 64-bit */
        .set cpu, 0
        .rept MAX_CPUS                  /* 0x28 + 16 * cpu: 64-bit available TSS */
        .set tss_base, ADDR(tss_array) + cpu * 104
        .word 103
        .word tss_base & 0xffff
        .byte (tss_base >> 16) & 0xff
        .byte 0x89
        .byte 0
        .byte (tss_base >> 24) & 0xff
        .long 0
        .long 0
        .set cpu, cpu + 1
        .endr
        .quad 0x00cf9a000000ffff        /* SEL_KCODE32: flat 32-bit code, for APs */
gdt_end:
gdt_pointer:
        .word gdt_end - gdt - 1
        .quad gdt

        .balign 16
idt:
        .set vector, 0
        .rept 32
        .set handler, ADDR(exception_stubs) + vector * 16
        .word handler & 0xffff
        .word SEL_KCODE
        .byte 0, 0x8e
        .word (handler >> 16) & 0xffff
        .long 0, 0
        .set vector, vector + 1
        .endr
        .set handler, ADDR(timer_interrupt)   /* vector 32 */
        .word handler & 0xffff
        .word SEL_KCODE
        .byte 0, 0x8e
        .word (handler >> 16) & 0xffff
        .long 0, 0
        .fill (SPURIOUS_VECTOR - 33) * 16, 1, 0
        .set handler, ADDR(spurious_interrupt)
        .word handler & 0xffff
        .word SEL_KCODE
        .byte 0, 0x8e
        .word (handler >> 16) & 0xffff
        .long 0, 0
idt_end:
idt_pointer:
        .word idt_end - idt - 1
        .quad idt

start_info_slot:
        .quad 0

        .section .bss, "aw", @nobits
        .balign 4096
        .globl high_pds
high_pds:                               /* page directories for 4..68 GiB */
        .fill HIGH_PD_COUNT * 4096, 1, 0
percpu:
        .fill MAX_CPUS * PERCPU_SIZE, 1, 0
        .balign 4096
kstacks:
        .fill MAX_CPUS * KSTACK_SIZE, 1, 0
ustacks:
        .fill MAX_CPUS * USTACK_SIZE, 1, 0
        .balign 4096
        .globl written_pages
written_pages:                          /* one bit per page the workload wrote: workload.c */
        .fill WRITTEN_BITMAP_PAGES / 8, 1, 0
