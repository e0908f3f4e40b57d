import Histogram

/// A latency distribution's summary in microseconds, as `query-migrate` reports it.
public struct LatencySummary: Equatable, Sendable {
    public var p50: UInt64
    public var p99: UInt64
    public var max: UInt64
    public var mean: Double

    public init(p50: UInt64, p99: UInt64, max: UInt64, mean: Double) { (self.p50, self.p99, self.max, self.mean) = (p50, p99, max, mean) }

    /// The summary of `histogram`; nil when it holds nothing.
    init?(_ histogram: Histogram<UInt64>) {
        guard histogram.totalCount > 0 else { return nil }
        self.init(p50: histogram.valueAtPercentile(50), p99: histogram.valueAtPercentile(99), max: histogram.max, mean: histogram.mean)
    }
}
