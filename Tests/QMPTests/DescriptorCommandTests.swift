import Testing
@testable import QMP

@Suite("QEMU's descriptor commands: getfd, closefd, add-fd, remove-fd, query-fdsets")
struct DescriptorCommandTests {
    @Test("arguments decode with QEMU's names, and only getfd and add-fd take the passed descriptor")
    func decode() throws {
        #expect(try QMPCommand(name: "getfd", arguments: ["fdname": "mig"]) == .getfd(fdname: "mig"))
        #expect(try QMPCommand(name: "closefd", arguments: ["fdname": "mig"]) == .closefd(fdname: "mig"))
        #expect(try QMPCommand(name: "add-fd", arguments: [:]) == .addFd(fdsetID: nil, opaque: nil))
        #expect(try QMPCommand(name: "add-fd", arguments: ["fdset-id": 2, "opaque": "rdonly"]) == .addFd(fdsetID: 2, opaque: "rdonly"))
        #expect(try QMPCommand(name: "remove-fd", arguments: ["fdset-id": 2]) == .removeFd(fdsetID: 2, fd: nil))
        #expect(try QMPCommand(name: "remove-fd", arguments: ["fdset-id": 2, "fd": 9]) == .removeFd(fdsetID: 2, fd: 9))
        #expect(try QMPCommand(name: "query-fdsets", arguments: [:]) == .queryFdsets)

        #expect(QMPCommand.getfd(fdname: "x").takesDescriptor && QMPCommand.addFd(fdsetID: nil, opaque: nil).takesDescriptor)
        #expect(!QMPCommand.closefd(fdname: "x").takesDescriptor && !QMPCommand.queryFdsets.takesDescriptor)
        #expect(QMPCommand.humanMonitorCommand(commandLine: "getfd x", cpuIndex: nil).takesDescriptor)
        #expect(!QMPCommand.humanMonitorCommand(commandLine: "closefd x", cpuIndex: nil).takesDescriptor)
        #expect(!QMPCommand.humanMonitorCommand(commandLine: "getfd", cpuIndex: nil).takesDescriptor)     // a bad line runs nothing
    }

    @Test("wrong types, missing and unexpected arguments get QEMU's errors")
    func refusals() {
        let cases: [(String, [String: JSONValue], String)] = [
            ("getfd", [:], "Parameter 'fdname' is missing"),
            ("getfd", ["fdname": 1], "Invalid parameter type for 'fdname', expected: string"),
            ("closefd", ["fdname": .null], "Invalid parameter type for 'fdname', expected: string"),
            ("getfd", ["fdname": "x", "fd": 3], "Parameter 'fd' is unexpected"),
            ("add-fd", ["fdset-id": "1"], "Invalid parameter type for 'fdset-id', expected: integer"),
            ("add-fd", ["fdset-id": .double(1.5)], "Invalid parameter type for 'fdset-id', expected: integer"),
            ("add-fd", ["opaque": 1], "Invalid parameter type for 'opaque', expected: string"),
            ("remove-fd", [:], "Parameter 'fdset-id' is missing"),
            ("remove-fd", ["fdset-id": 1, "fd": true], "Invalid parameter type for 'fd', expected: integer"),
            ("query-fdsets", ["all": true], "Parameter 'all' is unexpected"),
        ]
        for (name, arguments, message) in cases {
            #expect(throws: QMPError.generic(message), "\(name) \(arguments)") { try QMPCommand(name: name, arguments: arguments) }
        }
    }

    @Test("HMP getfd and closefd, with QEMU's help lines")
    func hmp() throws {
        #expect(try HMPCommand(parsing: "getfd mig") == .run(.getfd(fdname: "mig"), .nothing))
        #expect(try HMPCommand(parsing: "closefd mig") == .run(.closefd(fdname: "mig"), .nothing))
        #expect(throws: HMPError("getfd: missing argument 'fdname'")) { try HMPCommand(parsing: "getfd") }
        #expect(throws: HMPError("closefd: extraneous characters at the end of line")) { try HMPCommand(parsing: "closefd a b") }
        #expect(HMPFormatter.help("getfd") == "getfd name  -- receive a file descriptor via SCM rights and assign it a name\n")
    }
}
