import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Histogram, renderGauge } from "./metrics.js";

describe("agent metrics", () => {
  // Bug caught: buckets not cumulative (Prometheus' histogram_quantile then lies), or a count
  // and sum that leave out observations.
  test("a histogram renders cumulative buckets, +Inf, sum and count", () => {
    const histogram = new Histogram("trellis_x_seconds", "X.", [0.01, 0.1, 1]);
    for (const value of [0.005, 0.05, 0.05, 2]) histogram.observe(value);
    histogram.observe(Number.NaN);
    assert.equal(
      histogram.render(),
      [
        "# HELP trellis_x_seconds X.",
        "# TYPE trellis_x_seconds histogram",
        'trellis_x_seconds_bucket{le="0.01"} 1',
        'trellis_x_seconds_bucket{le="0.1"} 3',
        'trellis_x_seconds_bucket{le="1"} 3',
        'trellis_x_seconds_bucket{le="+Inf"} 4',
        "trellis_x_seconds_sum 2.105",
        "trellis_x_seconds_count 4",
        "",
      ].join("\n"),
    );
  });

  // Bug caught: a label value with a quote or newline breaking the exposition format.
  test("gauges escape their label values", () => {
    assert.equal(renderGauge("trellis_y", "Y.", [{ labels: { family: 'a"b\nc' }, value: 3 }]), '# HELP trellis_y Y.\n# TYPE trellis_y gauge\ntrellis_y{family="a\\"b\\nc"} 3\n');
  });
});
