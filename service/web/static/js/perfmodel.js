// The speedup-vs-sparsity curve of one layer, for drawing.
//
// With the paper's model (Park et al., ICLR 2017, §2.2; perfmodel/roofline.py PaperRoofline)
// the curve is computed here from the layer's C (flops), S_A (activation_bytes), S_W
// (weight_bytes) and the profile's F, B, α, β, at density x = 1 − sparsity:
//   t_dense  = C / F
//   t_sparse = max(α·x·C/F, (S_A + β·x·S_W) / B)        speedup = t_dense / t_sparse
// The API's `speedup` points (0.5 … 0.95) are the same formula, so they lie on this curve
// (tests/test_web.py checks that). For any other performance model (a calibrated one) the
// page cannot know the formula and draws straight lines through the API's points instead.

/** Speedup of a layer prediction at `sparsity` on `profile` (paper model). */
export function paperSpeedup(layer, profile, sparsity) {
  const F = profile.dense_flops_per_s;
  const B = profile.memory_bandwidth_bytes_per_s;
  const alpha = profile.sparse_overhead;
  const beta = profile.sparse_bytes_per_nonzero;
  const x = 1 - sparsity;
  const dense = layer.flops / F;
  const compute = (alpha * x * layer.flops) / F;
  // NB: CSR row pointers ignored, as in the paper.
  const memory = (layer.activation_bytes + beta * x * layer.weight_bytes) / B;
  return dense / Math.max(compute, memory);
}

/** Points [sparsity, speedup] from 0 to 100% sparsity for a layer of a prediction. */
export function speedupCurve(layer, profile, performanceModel, steps = 200) {
  if (performanceModel === "paper" && profile) {
    const points = [];
    for (let i = 0; i <= steps; i += 1) {
      const s = i / steps;
      points.push([s, paperSpeedup(layer, profile, s)]);
    }
    return points;
  }
  return Object.entries(layer.speedup)
    .map(([s, v]) => [Number(s), v])
    .sort((a, b) => a[0] - b[0]);
}
