import Foundation
import HostThreads
import Synchronization
import Testing

@Suite struct HostThreadTests {
    /// The kernel's name (what `top -H` and perf show), not only Foundation's:
    /// a thread takes its starter's kernel name otherwise.
    @Test func startedThreadCarriesItsNameInTheKernel() {
        let seen = Mutex<[String]>([])
        let done = DispatchSemaphore(value: 0)
        for name in ["mig/src/send_3", "a-name-longer-than-fifteen"] {
            HostThread.start(name) {
                let kernel = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? ""
                seen.withLock { $0.append(kernel.trimmingCharacters(in: .newlines)) }
                done.signal()
            }
            done.wait()
        }
        #expect(seen.withLock { $0 } == ["mig/src/send_3", "a-name-longer-t"])
    }
}
