/*
 * A bare test guest: a minimal bzImage (Linux boot protocol 2.12, 64-bit entry) that is not Linux,
 * for checks that need ring 0 and no guest kernel in the way. Built by scripts/guest-fixtures:
 *   gcc -c bare.S -o bare.o && objcopy -O binary -j .text bare.o bare.bzImage
 *
 * The first character of the command line picks the role; both write to COM1 and end by halting
 * with interrupts off (which ends the VM):
 *
 *   P  painter: fills XMM0-XMM15 with 0xa5 bytes, says "EMBER-BARE: painted", then checks for
 *      about 20 s of TSC time that XMM0 keeps its value ("EMBER-BARE: painter kept its registers",
 *      or "EMBER-BARE: painter lost its registers").
 *   R  reader: never writes an XMM register and checks for about 12 s of TSC time whether XMM0
 *      holds the painter's bytes: "EMBER-BARE: LEAK another VM's XMM0" or "EMBER-BARE: clean".
 *      Run next to a painter on the same physical CPU, it catches a hypervisor that restores a
 *      vCPU's FPU/SSE state only under the guest's XCR0 (x87 only after reset), leaving the
 *      previous vCPU's SSE registers in place.
 *   E  exceptions (issue 16, finding 4), the second character of the command line (a digit) set
 *      apart two such VMs: loads DR0-DR3 with values of its own (breakpoints disabled) and an IDT;
 *      runs WBINVD and INVD ("EMBER-BARE: wbinvd and invd went on"), RDPMC ("EMBER-BARE: rdpmc
 *      raised #GP"), and 100,000 single-step #DBs with TF set ("EMBER-BARE: 100000 single-step #DB
 *      delivered"); then checks for about 15 s of TSC time that DR0-DR3 keep its values while other
 *      vCPUs use the CPU ("EMBER-BARE: debug registers kept" or "EMBER-BARE: debug registers
 *      LOST"); then says "EMBER-BARE: #DB delivery loop", gives #DB a stack of its own (IST1 of a
 *      TSS), arms a data breakpoint on the slot of that stack that delivering #DB writes, and raises
 *      #DB: each delivery raises the next #DB (CVE-2015-8104), for ever if the CPU checks
 *      breakpoints during delivery. (The first #DB comes from a store to that slot: ICEBP in a
 *      nested guest crashed QEMU 7.2's TCG with SIGSEGV.) A
 *      hypervisor that did not intercept #DB would lose that CPU; with the intercept the VM spins
 *      through exits and can be stopped. If delivery does not trigger the breakpoint it says
 *      "EMBER-BARE: no #DB delivery loop" and halts.
 */
    .intel_syntax noprefix
    .set IDT, 0x60000                   /* role E's IDT and IDTR: free guest RAM below the stack */
    .set IDTR, 0x61000
    .set GDT, 0x62000
    .set GDTR, 0x62800
    .set TSS, 0x63000
    .set DB_STACK, 0x70000
    .text
    .code64
start:
    .org 0x1f1
    .byte 1                     /* setup_sects: the setup part is 2 sectors (1024 bytes) */
    .org 0x1fe
    .word 0xaa55                /* boot_flag */
    .byte 0xeb, 0x66            /* jump over the header: the header ends at 0x268 */
    .ascii "HdrS"
    .word 0x020c                /* boot protocol 2.12 */
    .org 0x211
    .byte 1                     /* loadflags: LOADED_HIGH */
    .org 0x214
    .long 0x100000              /* code32_start */
    .org 0x22c
    .long 0x7fffffff            /* initrd_addr_max */
    .org 0x236
    .word 1                     /* xloadflags: XLF_KERNEL_64 */
    .long 255                   /* cmdline_size */
    .org 0x260
    .long 0x10000               /* init_size */
    .org 0x400                  /* the protected-mode part, loaded at 0x100000 */
    .org 0x600                  /* its 64-bit entry: code32_start + 0x200 */
entry:
    cld
    mov rsp, 0x80000
    mov eax, dword ptr [rsi + 0x228]    /* cmd_line_ptr in the zero page */
    movzx ebx, byte ptr [rax]
    mov rax, cr0                        /* SSE on: CR0.EM clear, CR0.MP set */
    and rax, ~4
    or rax, 2
    mov cr0, rax
    mov rax, cr4                        /* CR4.OSFXSR | CR4.OSXMMEXCPT; XCR0 stays x87 only */
    or rax, 0x600
    mov cr4, rax
    cmp bl, 'P'
    je painter
    cmp bl, 'E'
    je exceptions

reader:
    lea rsi, [rip + msg_reader]
    call puts
    call now
    mov r12, rax
1:  movq rax, xmm0
    movabs rcx, 0xa5a5a5a5a5a5a5a5
    cmp rax, rcx
    je leak
    call now
    sub rax, r12
    movabs rcx, 30000000000
    cmp rax, rcx
    jb 1b
    lea rsi, [rip + msg_clean]
    call puts
    jmp stop
leak:
    lea rsi, [rip + msg_leak]
    call puts
    jmp stop

painter:
    movabs rax, 0xa5a5a5a5a5a5a5a5
    movq xmm0, rax
    punpcklqdq xmm0, xmm0
    movdqa xmm1, xmm0
    movdqa xmm2, xmm0
    movdqa xmm3, xmm0
    movdqa xmm4, xmm0
    movdqa xmm5, xmm0
    movdqa xmm6, xmm0
    movdqa xmm7, xmm0
    movdqa xmm8, xmm0
    movdqa xmm9, xmm0
    movdqa xmm10, xmm0
    movdqa xmm11, xmm0
    movdqa xmm12, xmm0
    movdqa xmm13, xmm0
    movdqa xmm14, xmm0
    movdqa xmm15, xmm0
    lea rsi, [rip + msg_painted]
    call puts
    call now
    mov r12, rax
2:  movq rax, xmm0
    movabs rcx, 0xa5a5a5a5a5a5a5a5
    cmp rax, rcx
    jne lost
    call now
    sub rax, r12
    movabs rcx, 50000000000
    cmp rax, rcx
    jb 2b
    lea rsi, [rip + msg_kept]
    call puts
    jmp stop
lost:
    lea rsi, [rip + msg_lost]
    call puts

stop:
    cli
    hlt
    jmp stop

/* Role E. r15 = this VM's DR0 value (DR1-DR3 follow it); r13 counts #GP, r14 #DB. */
exceptions:
    mov eax, dword ptr [rsi + 0x228]    /* the command line again: its second character */
    movzx r15d, byte ptr [rax + 1]
    shl r15, 20
    or r15, 0x1000
    mov rax, r15
    mov dr0, rax
    add rax, 0x100
    mov dr1, rax
    add rax, 0x100
    mov dr2, rax
    add rax, 0x100
    mov dr3, rax
    mov edi, 1
    lea rax, [rip + db_handler]
    call set_gate
    mov edi, 13
    lea rax, [rip + gp_handler]
    call set_gate
    mov word ptr [IDTR], 0xfff
    mov qword ptr [IDTR + 2], IDT
    lidt [IDTR]
    xor r13d, r13d
    xor r14d, r14d
    wbinvd
    invd
    lea rsi, [rip + msg_cache]
    call puts
    xor ecx, ecx
    rdpmc                               /* #GP(0): the handler skips it */
    lea rsi, [rip + msg_rdpmc]
    cmp r13, 1
    je 5f
    lea rsi, [rip + msg_rdpmc_bad]
5:  call puts
    pushfq
    or qword ptr [rsp], 0x100           /* TF: #DB after every instruction from here */
    popfq
6:  cmp r14, 100000
    jb 6b                               /* the handler clears TF at the 100,000th */
    lea rsi, [rip + msg_stepped]
    cmp r14, 100000
    je 7f
    lea rsi, [rip + msg_stepped_bad]
7:  call puts
    call now
    mov r12, rax
8:  call check_drs
    jne drs_lost
    call now
    sub rax, r12
    movabs rcx, 40000000000
    cmp rax, rcx
    jb 8b
    lea rsi, [rip + msg_drs_kept]
    call puts
    jmp db_loop
drs_lost:
    lea rsi, [rip + msg_drs_lost]
    call puts
db_loop:
    /* A GDT with a TSS whose IST1 is the #DB stack: every delivery then writes the same slot. */
    sgdt [GDTR]
    mov rsi, qword ptr [GDTR + 2]
    xor ecx, ecx
11: mov rax, qword ptr [rsi + rcx * 8]  /* null, null, code 0x10, data 0x18 */
    mov qword ptr [GDT + rcx * 8], rax
    inc ecx
    cmp ecx, 4
    jb 11b
    movabs rax, 0x0000890630000067      /* 0x20: 64-bit TSS at 0x63000, limit 0x67 */
    mov qword ptr [GDT + 0x20], rax
    mov qword ptr [GDT + 0x28], 0
    mov qword ptr [TSS + 0x24], DB_STACK /* IST1 */
    mov word ptr [GDTR], 0x2f
    mov qword ptr [GDTR + 2], GDT
    lgdt [GDTR]
    mov ax, 0x20
    ltr ax
    mov byte ptr [IDT + 16 + 4], 1      /* #DB's gate uses IST1 */
    lea rsi, [rip + msg_loop]
    call puts
    mov rax, DB_STACK - 8               /* where delivery pushes SS */
    mov dr0, rax
    mov rax, 0xd0401                    /* DR7: L0, data writes, 8 bytes */
    mov dr7, rax
    mov r14, 200000                     /* the handler leaves TF alone from now on */
    mov qword ptr [DB_STACK - 8], rax   /* the breakpoint's own slot: #DB */
    xor eax, eax
    mov dr7, rax
    lea rsi, [rip + msg_no_loop]
    call puts
    jmp stop

/* ZF set if DR0-DR3 hold this VM's values. */
check_drs:
    mov rax, dr0
    cmp rax, r15
    jne 9f
    mov rax, dr1
    lea rcx, [r15 + 0x100]
    cmp rax, rcx
    jne 9f
    mov rax, dr2
    lea rcx, [r15 + 0x200]
    cmp rax, rcx
    jne 9f
    mov rax, dr3
    lea rcx, [r15 + 0x300]
    cmp rax, rcx
9:  ret

/* IDT entry edi: a 64-bit interrupt gate to rax in the boot code segment (0x10). */
set_gate:
    shl edi, 4
    add edi, IDT
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x10
    mov word ptr [rdi + 4], 0x8e00
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    ret

gp_handler:
    inc r13
    add qword ptr [rsp + 8], 2          /* past RDPMC (0F 33); the error code is at rsp */
    add rsp, 8
    iretq

db_handler:
    inc r14
    cmp r14, 100000
    jne 10f
    and qword ptr [rsp + 16], ~0x100    /* RFLAGS in the frame: TF off */
10: iretq

/* rax = TSC */
now:
    rdtsc
    shl rdx, 32
    or rax, rdx
    ret

/* Writes the NUL-terminated string at rsi to COM1. */
puts:
    mov dx, 0x3f8
3:  lodsb
    test al, al
    jz 4f
    out dx, al
    jmp 3b
4:  ret

msg_cache:   .asciz "EMBER-BARE: wbinvd and invd went on\n"
msg_rdpmc:   .asciz "EMBER-BARE: rdpmc raised #GP\n"
msg_rdpmc_bad: .asciz "EMBER-BARE: rdpmc did not raise #GP once\n"
msg_stepped: .asciz "EMBER-BARE: 100000 single-step #DB delivered\n"
msg_stepped_bad: .asciz "EMBER-BARE: single-step #DB count wrong\n"
msg_drs_kept: .asciz "EMBER-BARE: debug registers kept\n"
msg_drs_lost: .asciz "EMBER-BARE: debug registers LOST\n"
msg_loop:    .asciz "EMBER-BARE: #DB delivery loop\n"
msg_no_loop: .asciz "EMBER-BARE: no #DB delivery loop\n"
msg_reader:  .asciz "EMBER-BARE: reader started\n"
msg_clean:   .asciz "EMBER-BARE: clean\n"
msg_leak:    .asciz "EMBER-BARE: LEAK another VM's XMM0\n"
msg_painted: .asciz "EMBER-BARE: painted\n"
msg_kept:    .asciz "EMBER-BARE: painter kept its registers\n"
msg_lost:    .asciz "EMBER-BARE: painter lost its registers\n"
    .balign 512
