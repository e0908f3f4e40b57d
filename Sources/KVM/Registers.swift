import CLinuxUAPI

/// General-purpose registers, `rip` and `rflags` (`struct kvm_regs`).
public struct Registers: Equatable, Sendable {
    public var rax: UInt64 = 0, rbx: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0
    public var rsi: UInt64 = 0, rdi: UInt64 = 0, rsp: UInt64 = 0, rbp: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0
    public var rflags: UInt64 = 0x2      // bit 1 is reserved and always set

    public init() {}

    init(_ r: kvm_regs) {
        (rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp) = (r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp)
        (r8, r9, r10, r11, r12, r13, r14, r15) = (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15)
        (rip, rflags) = (r.rip, r.rflags)
    }

    var raw: kvm_regs {
        kvm_regs(rax: rax, rbx: rbx, rcx: rcx, rdx: rdx, rsi: rsi, rdi: rdi, rsp: rsp, rbp: rbp,
                 r8: r8, r9: r9, r10: r10, r11: r11, r12: r12, r13: r13, r14: r14, r15: r15,
                 rip: rip, rflags: rflags)
    }
}

/// A segment register as KVM describes it (`struct kvm_segment`).
public struct SegmentRegister: Equatable, Sendable {
    public var base: UInt64, limit: UInt32, selector: UInt16
    public var type: UInt8, present: Bool, dpl: UInt8, db: Bool, s: Bool, l: Bool, g: Bool

    public init(base: UInt64, limit: UInt32, selector: UInt16, type: UInt8, present: Bool = true, dpl: UInt8 = 0,
                db: Bool, s: Bool = true, l: Bool = false, g: Bool) {
        (self.base, self.limit, self.selector, self.type) = (base, limit, selector, type)
        (self.present, self.dpl, self.db, self.s, self.l, self.g) = (present, dpl, db, s, l, g)
    }

    init(_ k: kvm_segment) {
        self.init(base: k.base, limit: k.limit, selector: k.selector, type: k.type, present: k.present != 0,
                  dpl: k.dpl, db: k.db != 0, s: k.s != 0, l: k.l != 0, g: k.g != 0)
    }

    var raw: kvm_segment {
        var k = kvm_segment()
        (k.base, k.limit, k.selector, k.type) = (base, limit, selector, type)
        k.present = present ? 1 : 0
        k.dpl = dpl
        k.db = db ? 1 : 0
        k.s = s ? 1 : 0
        k.l = l ? 1 : 0
        k.g = g ? 1 : 0
        return k
    }
}

/// Segment, control and descriptor-table registers (`struct kvm_sregs`).
/// Fields not named here (interrupt bitmap, APIC base) keep what KVM reported.
public struct SpecialRegisters: @unchecked Sendable {
    // @unchecked: a plain C value type with no pointers.
    var raw: kvm_sregs

    public var cs: SegmentRegister { get { SegmentRegister(raw.cs) } set { raw.cs = newValue.raw } }
    public var ds: SegmentRegister { get { SegmentRegister(raw.ds) } set { raw.ds = newValue.raw } }
    public var es: SegmentRegister { get { SegmentRegister(raw.es) } set { raw.es = newValue.raw } }
    public var fs: SegmentRegister { get { SegmentRegister(raw.fs) } set { raw.fs = newValue.raw } }
    public var gs: SegmentRegister { get { SegmentRegister(raw.gs) } set { raw.gs = newValue.raw } }
    public var ss: SegmentRegister { get { SegmentRegister(raw.ss) } set { raw.ss = newValue.raw } }
    public var tr: SegmentRegister { get { SegmentRegister(raw.tr) } set { raw.tr = newValue.raw } }
    public var cr0: UInt64 { get { raw.cr0 } set { raw.cr0 = newValue } }
    public var cr3: UInt64 { get { raw.cr3 } set { raw.cr3 = newValue } }
    public var cr4: UInt64 { get { raw.cr4 } set { raw.cr4 = newValue } }
    public var efer: UInt64 { get { raw.efer } set { raw.efer = newValue } }

}
