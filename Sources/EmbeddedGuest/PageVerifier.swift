import GuestMemory

/// The host-side verifier: checks every page of guest RAM the workload owns
/// against the header the guest wrote into it (magic, page index, checksum of
/// the body).  Pages never written must be all zero.
///
/// Which pages were written comes from the guest's written-page bitmap
/// (``GuestABI/writtenPages(in:)``): a page the guest recorded must check out,
/// even if it reads all zero (a migration that dropped it), and a page it did
/// not record must be all zero.  Without the bitmap (another image, or an
/// older one), an all-zero page counts as never written.
public enum PageVerifier {
    public struct Report: Equatable, Sendable, CustomStringConvertible {
        public var pagesChecked = 0
        public var pagesWritten = 0
        /// Pages whose header or body does not check out, lowest first (at most 64 listed).
        public var failures: [GuestAddress] = []
        public var failureCount = 0
        /// Of the failures, pages the guest recorded writing that read all zero.
        public var pagesLost = 0
        /// Whether the guest's written-page bitmap was there to check against.
        public var checkedAgainstBitmap = false
        /// Pages a vCPU was in the middle of writing, set aside rather than checked.
        public var pagesInFlight = 0
        /// Valid pages the guest has freed (image version 3): free memory, whatever they hold.
        public var pagesFree = 0

        public var description: String {
            "\(pagesChecked) pages checked, \(pagesWritten) written by the guest, \(failureCount) failed"
                + (pagesLost > 0 ? ", \(pagesLost) of them lost (written, now zero)" : "")
                + (pagesInFlight > 0 ? ", \(pagesInFlight) being written set aside" : "")
                + (failures.isEmpty ? "" : " (first at \(failures[0]))")
        }
    }

    /// Verifies all RAM from `GuestABI.workBase` up.  Pause the guest first.
    /// The page each vCPU was in the middle of writing (it says which) is set
    /// aside: it is legitimately half written, and the guest finishes it on resume.
    public static func verify(_ memory: GuestMemoryMap) -> Report {
        var report = Report()
        let inFlight = GuestABI.pagesBeingWritten(in: memory)
        let written = GuestABI.writtenPages(in: memory)
        report.checkedAgainstBitmap = written != nil
        let pageBytes = UInt64(PageSize.base.byteCount)
        for range in memory.ramRanges {
            var address = max(range.start, GuestAddress(GuestABI.workBase))
            while address.rawValue + pageBytes <= range.end.rawValue {
                let index = address.rawValue / pageBytes
                if inFlight.contains(address) {
                    report.pagesInFlight += 1
                    address = address.advanced(by: pageBytes)!
                    continue
                }
                let state = try! memory.withPageWords(at: address) { check(words: $0, index: index) }
                report.pagesChecked += 1
                let result = outcome(of: state, recorded: written.map { $0.contains(index) }, freeable: written?.meansInUse ?? false)
                switch result {
                case .neverWritten: break
                case .free: report.pagesFree += 1
                case .written: report.pagesWritten += 1
                case .lost, .corrupt, .unrecorded:
                    report.failureCount += 1
                    if result == .lost { report.pagesLost += 1 }
                    if report.failures.count < 64 { report.failures.append(address) }
                }
                address = address.advanced(by: pageBytes)!
            }
        }
        return report
    }

    public enum PageState: Equatable, Sendable { case untouched, valid, corrupt }

    /// What a page's contents and the guest's record of it say together.
    public enum Outcome: Equatable, Sendable {
        case neverWritten   // all zero, and not recorded (or no record)
        case written        // valid, and recorded (or no record)
        case lost           // recorded as written, but all zero
        case unrecorded     // valid, but the guest never recorded writing it
        case corrupt        // neither zero nor a valid page
        case free           // valid, not in use: written once, then freed (the bitmap means "in use")
    }

    /// Combines a page's state with the bitmap's bit for it (`nil`: no bitmap).
    /// `freeable`: the bitmap means "in use" (image version 3), so a valid page
    /// without its bit was freed by the guest.
    public static func outcome(of state: PageState, recorded: Bool?, freeable: Bool = false) -> Outcome {
        switch (state, recorded) {
        case (.corrupt, _): .corrupt
        case (.untouched, nil), (.untouched, false): .neverWritten
        case (.untouched, true): .lost
        case (.valid, nil), (.valid, true): .written
        case (.valid, false): freeable ? .free : .unrecorded
        }
    }

    /// Checks one page's words (512 of them) as the guest wrote them for `index`.
    public static func check(words: Span<UInt64>, index: UInt64) -> PageState {
        if words[0] == 0 {
            for i in words.indices where words[i] != 0 { return .corrupt }
            return .untouched
        }
        guard words[0] == GuestABI.pageMagic, words[1] == index, words[3] == checksum(body: words) else { return .corrupt }
        return .valid
    }

    /// The guest's body checksum: four FNV-style lanes over words 4..511, mixed.
    /// Must match checksum_body() in guest/embedded/workload.c.
    public static func checksum(body words: Span<UInt64>) -> UInt64 {
        let prime: UInt64 = 0x100_0000_01b3
        var h0: UInt64 = 0xcbf2_9ce4_8422_2325
        var h1 = h0 ^ 1, h2 = h0 ^ 2, h3 = h0 ^ 3
        var i = 4
        while i < GuestABI.pageWords {
            h0 = (h0 ^ words[i]) &* prime
            h1 = (h1 ^ words[i + 1]) &* prime
            h2 = (h2 ^ words[i + 2]) &* prime
            h3 = (h3 ^ words[i + 3]) &* prime
            i += 4
        }
        return mix(h0 ^ rotate(h1, 16) ^ rotate(h2, 32) ^ rotate(h3, 48))
    }

    static func rotate(_ x: UInt64, _ n: UInt64) -> UInt64 { x << n | x >> (64 - n) }

    static func mix(_ value: UInt64) -> UInt64 {
        var x = value
        x ^= x >> 30; x = x &* 0xbf58_476d_1ce4_e5b9
        x ^= x >> 27; x = x &* 0x94d0_49bb_1331_11eb
        return x ^ (x >> 31)
    }
}
