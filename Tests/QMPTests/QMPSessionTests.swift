import QMP
import Testing

@Suite struct QMPSessionTests {
    func step(_ session: inout QMPSession, _ text: String) -> QMPSession.Step { session.step(Array(text.utf8)) }

    @Test func negotiationComesFirst() {
        var session = QMPSession()
        #expect(step(&session, #"{"execute":"query-status"}"#)
                == .reply(#"{"error":{"class":"CommandNotFound","desc":"Expecting capabilities negotiation with 'qmp_capabilities'"}}"#))
        #expect(step(&session, #"{"execute":"qmp_capabilities","id":"a"}"#) == .reply(#"{"id":"a","return":{}}"#))
        #expect(session.phase == .commandMode)
        #expect(step(&session, #"{"execute":"query-status","id":3}"#) == .execute(.queryStatus, id: 3))
        #expect(step(&session, #"{"execute":"qmp_capabilities"}"#)
                == .reply(#"{"error":{"class":"CommandNotFound","desc":"Capabilities negotiation is already complete, command ignored"}}"#))
    }

    @Test func garbageGetsErrorsNotCrashes() {
        var session = QMPSession()
        _ = step(&session, #"{"execute":"qmp_capabilities"}"#)
        for (input, desc) in [("not json", "JSON parse error, invalid JSON input"),
                              ("[1,2]", "QMP input must be a JSON object"),
                              (#"{"id":1}"#, "QMP input lacks member 'execute'"),
                              (#"{"execute":"stop","arguments":[]}"#, "QMP input member 'arguments' must be an object"),
                              (#"{"execute":"stop","bogus":1}"#, "QMP input member 'bogus' is unexpected"),
                              (#"{"execute":"stop","arguments":{"now":true}}"#, "Parameter 'now' is unexpected"),
                              (#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#, "Capability 'oob' not available")] {
            guard case .reply(let reply) = step(&session, input) else { Issue.record("\(input) executed"); continue }
            #expect(reply.contains(desc), "\(input) -> \(reply)")
        }
        #expect(step(&session, #"{"execute":"frobnicate"}"#)
                == .reply(#"{"error":{"class":"CommandNotFound","desc":"The command frobnicate has not been found"}}"#))
    }

    @Test func eventsCarryQEMUTimestamps() {
        let event = QMPEvent(name: "STOP", seconds: 12, microseconds: 34)
        #expect(QMPSession.encode(event.json) == #"{"event":"STOP","timestamp":{"microseconds":34,"seconds":12}}"#)
    }
}
