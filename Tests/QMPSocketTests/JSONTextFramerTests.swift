import QMPSocket
import Testing

/// The QMP input's framing: texts by bracket depth outside strings, across reads.
@Suite("JSONTextFramer")
struct JSONTextFramerTests {
    /// Every text `reads` complete, in order, with the offset each ends at.
    func frame(_ reads: [String]) throws(JSONTextFramer.FramingError) -> [(String, Int)] {
        var framer = JSONTextFramer()
        var texts: [(String, Int)] = []
        for read in reads {
            framer.append(Array(read.utf8))
            while let text = try framer.next() { texts.append((String(decoding: text.bytes, as: UTF8.self), text.end)) }
        }
        return texts
    }

    @Test("texts split and joined across reads, whitespace between them skipped, ends counted in the stream")
    func acrossReads() throws {
        let texts = try frame([#" {"execute":"#, #""stop"}"#, "\r\n\t", #"{"execute":"cont"}{"a":[1,{"b":2}]}"#])
        #expect(texts.map(\.0) == [#"{"execute":"stop"}"#, #"{"execute":"cont"}"#, #"{"a":[1,{"b":2}]}"#])
        #expect(texts.map(\.1) == [19, 40, 57])
    }

    @Test("brackets and quotes inside strings, escaped quotes, do not count")
    func strings() throws {
        let text = #"{"s":"}]{[\"}"}"#
        #expect(try frame([text + "{}"]).map(\.0) == [text, "{}"])
    }

    @Test("a text not yet closed waits for more bytes")
    func incomplete() throws {
        #expect(try frame([#"{"execute":"stop""#]).isEmpty)
    }

    @Test("a closing bracket with none open is refused")
    func unbalanced() {
        #expect(throws: JSONTextFramer.FramingError.unbalanced) { try frame(["{}}"]) }
    }

    @Test("a text longer than the bound is refused without waiting for its end")
    func tooLong() {
        let long = "[" + String(repeating: "1,", count: JSONTextFramer.maximumLength / 2 + 1)
        #expect(throws: JSONTextFramer.FramingError.tooLong) { try frame([long]) }
    }
}
