// Fused seed losses (eq. 5, eq. 8) and the KL part of the boundary loss (eq. 9) on CPU.
//
// Contract: see sgan/ops/seed_nll/function.py and sgan/ops/boundary_kl/function.py. Logits are
// (B, C, N) contiguous; positions are processed in tiles of kTile consecutive positions of one
// image, so every loop over a tile runs along contiguous
// memory and vectorises. The forward reads a tile's logits once, keeps its softmax in a C x kTile
// buffer (L1-resident), floors and renormalises it on the fly and writes only per-tile partial sums
// and a few statistics per position (row maximum, 1 / sum of exponentials, floored sum, ...). The
// backward reads the logits once more and, with those statistics, computes the gradient in a single
// pass. Partial sums (double) are reduced in a fixed order, so results do not depend on the number
// of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// Float compares may be if-converted into vector selects only when they are not treated as
// trapping; without this GCC keeps every tile loop below scalar (the softmax floors and the
// range reduction of exp_nonpositive are selects). No value changes: NaN still propagates.
// (Functions defined after this line are not inlined into ones defined before it, e.g. std::min,
// hence the ternaries below.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

// The per-tile functions are compiled twice, for x86-64-v3 (AVX2, FMA: 8 floats per vector) and for
// the baseline, and the loader picks one for the running CPU (GCC function multi-versioning); the
// helpers they call are forced inline so that they are compiled for the same target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define SGAN_TILE_KERNEL __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SGAN_TILE_KERNEL
#endif
#define SGAN_INLINE inline __attribute__((always_inline))

namespace {

constexpr int64_t kTile = 64;
constexpr int64_t kIgnoreLabel = 255;
// Per-position statistics written by the forward passes (rows of the (B, K, N) `stats` tensor).
// The softmax is p_c = exp(z_c - M) / E with M the row maximum and E = sum_c exp(z_c - M): the
// backward recomputes exactly the forward's p from M and 1 / E (a log-sum-exp would lose the low
// bits of p when |z| is large).
constexpr int64_t kRowMax = 0, kInverseTotal = 1, kFlooredSum = 2, kKeptSum = 3;       // seed and boundary
constexpr int64_t kWeightSum = 4, kKeptWeightSum = 5, kReferenceScale = 6;             // boundary only
constexpr int64_t kSeedStats = 4, kBoundaryStats = 7;

// exp for x <= 0 in float: Cody-Waite range reduction and a degree-6 polynomial, branch-free so that
// loops over a tile vectorise without -ffast-math (std::exp does not). Relative error ~2 ulp.
SGAN_INLINE float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : (x > 0.0f ? 0.0f : x);  // ternaries: std::min/max would not inline here
  const float rounder = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * 1.44269504088896341f + rounder) - rounder;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float value = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float power;
  std::memcpy(&power, &bits, sizeof(power));
  return value * power;
}
SGAN_INLINE double exp_nonpositive(double x) { return std::exp(x); }

// log for positive normal floats (and NaN): mantissa in [sqrt(1/2), sqrt(2)), degree-9 polynomial in m - 1.
SGAN_INLINE float log_positive(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  int32_t exponent = ((bits >> 23) & 0xff) - 127;
  int32_t mantissa_bits = (bits & 0x007fffff) | 0x3f800000;
  float m;
  std::memcpy(&m, &mantissa_bits, sizeof(m));
  const bool high = m > 1.41421356f;
  m = high ? 0.5f * m : m;
  exponent += high ? 1 : 0;
  const float e = static_cast<float>(exponent);
  const float f = m - 1.0f;
  const float z = f * f;
  float poly = 7.0376836292e-2f;
  poly = poly * f - 1.1514610310e-1f;
  poly = poly * f + 1.1676998740e-1f;
  poly = poly * f - 1.2420140846e-1f;
  poly = poly * f + 1.4249322787e-1f;
  poly = poly * f - 1.6668057665e-1f;
  poly = poly * f + 2.0000714765e-1f;
  poly = poly * f - 2.4999993993e-1f;
  poly = poly * f + 3.3333331174e-1f;
  float y = poly * f * z - 2.12194440e-4f * e - 0.5f * z;
  const float result = (f + y) + 0.693359375f * e;
  return x == x ? result : x;  // NaN in, NaN out
}
SGAN_INLINE double log_positive(double x) { return std::log(x); }

// Softmax of one tile of `len` positions starting at `start` of one image (logits at `image`,
// channel stride N). Fills prob[c * kTile + t] with the softmax p, and per position row_max[t] with
// M, exp_sum[t] with E = sum_c exp(z_c - M), inverse_total[t] with 1 / E, floored_sum[t] with
// S = sum_c max(p_c, floor) and kept_sum[t] with T = sum over {c : p_c >= floor} of p_c.
template <typename acc_t, typename scalar_t>
SGAN_INLINE void tile_softmax(const scalar_t* image, int64_t C, int64_t N, int64_t start, int64_t len, acc_t floor,
                              acc_t* prob, acc_t* row_max, acc_t* exp_sum, acc_t* inverse_total, acc_t* floored_sum,
                              acc_t* kept_sum) {
  for (int64_t t = 0; t < len; ++t) row_max[t] = static_cast<acc_t>(image[start + t]);
  for (int64_t c = 1; c < C; ++c) {
    const scalar_t* __restrict z = image + c * N + start;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t v = static_cast<acc_t>(z[t]);
      row_max[t] = v > row_max[t] ? v : row_max[t];
    }
  }
  for (int64_t t = 0; t < len; ++t) exp_sum[t] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* __restrict z = image + c * N + start;
    acc_t* __restrict p = prob + c * kTile;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t e = exp_nonpositive(static_cast<acc_t>(z[t]) - row_max[t]);
      p[t] = e;
      exp_sum[t] += e;
    }
  }
  for (int64_t t = 0; t < len; ++t) {
    inverse_total[t] = acc_t(1) / exp_sum[t];
    floored_sum[t] = 0;
    kept_sum[t] = 0;
  }
  for (int64_t c = 0; c < C; ++c) {
    acc_t* __restrict p = prob + c * kTile;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t v = p[t] * inverse_total[t];
      p[t] = v;
      floored_sum[t] += v < floor ? floor : v;  // NaN propagates
      kept_sum[t] += v >= floor ? v : acc_t(0);
    }
  }
}

// Channel of the seed at each position of the tile, -1 where it does not count; true if any counts.
bool tile_channels(const int64_t* seeds, int64_t start, int64_t len, int64_t label_offset, int64_t C,
                   int64_t* channel) {
  bool any = false;
  for (int64_t t = 0; t < len; ++t) {
    const int64_t label = seeds[start + t];
    const int64_t c = label - label_offset;
    const bool counted = label != kIgnoreLabel && c >= 0 && c < C;
    channel[t] = counted ? c : -1;
    any = any || counted;
  }
  return any;
}

// ---- one tile of positions: the hot loops, outside any lambda so that the pragma above applies ----

// Seed losses, forward: adds -log Phi_c at the counted positions to sums[g], counts[g]; writes the
// tile's statistics (M, 1 / E, S, T) to the image's rows of `stats`. With floor 0, -log p_c is
// log E - (z_c - M): finite and exact however small p_c is.
template <typename acc_t, typename scalar_t>
SGAN_TILE_KERNEL void seed_tile_forward(const scalar_t* image, const int64_t* seeds, const int64_t* channel, int64_t C,
                                        int64_t N, int64_t start, int64_t len, acc_t floor, acc_t* prob,
                                        acc_t* stats, double* sums, double* counts) {
  acc_t* row_max = stats + kRowMax * N + start;
  acc_t* floored_sum = stats + kFlooredSum * N + start;
  acc_t exp_sum[kTile];
  tile_softmax<acc_t>(image, C, N, start, len, floor, prob, row_max, exp_sum, stats + kInverseTotal * N + start,
                      floored_sum, stats + kKeptSum * N + start);
  acc_t picked[kTile], nll[kTile];
  if (floor > 0) {
    for (int64_t t = 0; t < len; ++t) {
      const acc_t p = channel[t] >= 0 ? prob[channel[t] * kTile + t] : acc_t(1);
      picked[t] = p < floor ? floor : p;
    }
    for (int64_t t = 0; t < len; ++t) nll[t] = log_positive(floored_sum[t]) - log_positive(picked[t]);
  } else {
    for (int64_t t = 0; t < len; ++t) {
      picked[t] = channel[t] >= 0 ? static_cast<acc_t>(image[channel[t] * N + start + t]) - row_max[t] : acc_t(0);
    }
    for (int64_t t = 0; t < len; ++t) nll[t] = log_positive(exp_sum[t]) - picked[t];
  }
  for (int64_t t = 0; t < len; ++t) {
    if (channel[t] < 0) continue;
    const int64_t group = seeds[start + t] == 0 ? 0 : 1;
    sums[group] += static_cast<double>(nll[t]);
    counts[group] += 1.0;
  }
}

// Seed losses, backward, one pass: p_c = exp(z_c - M) / E and the gradient
// coefficient * d(-log Phi_y)/dz_c = coefficient * (p_c (m_y + (m_c - T) / S) - [c == y] m_y),
// with m_c = [p_c >= floor] and the coefficient of the seed's group (0 where it does not count).
template <typename acc_t, typename scalar_t>
SGAN_TILE_KERNEL void seed_tile_backward(const scalar_t* image, const int64_t* seeds, const int64_t* channel,
                                         const acc_t* coefficients, const acc_t* stats, int64_t C, int64_t N,
                                         int64_t start, int64_t len, acc_t floor, scalar_t* grad_image) {
  const acc_t* row_max = stats + kRowMax * N + start;
  const acc_t* inverse_total = stats + kInverseTotal * N + start;
  const acc_t* floored_sum = stats + kFlooredSum * N + start;
  const acc_t* kept_sum = stats + kKeptSum * N + start;
  acc_t label_term[kTile], floor_term[kTile], base[kTile];
  for (int64_t t = 0; t < len; ++t) {
    const bool counted = channel[t] >= 0;
    const acc_t coefficient = counted ? coefficients[seeds[start + t] == 0 ? 0 : 1] : acc_t(0);
    const acc_t label_p =
        counted ? exp_nonpositive(static_cast<acc_t>(image[channel[t] * N + start + t]) - row_max[t]) *
                      inverse_total[t]
                : acc_t(0);
    label_term[t] = label_p >= floor ? coefficient : acc_t(0);
    floor_term[t] = counted ? coefficient / floored_sum[t] : acc_t(0);
    base[t] = label_term[t] - floor_term[t] * (counted ? kept_sum[t] : acc_t(0));
  }
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* __restrict z = image + c * N + start;
    scalar_t* __restrict g = grad_image + c * N + start;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t p = exp_nonpositive(static_cast<acc_t>(z[t]) - row_max[t]) * inverse_total[t];
      const acc_t kept_term = p >= floor ? floor_term[t] : acc_t(0);
      g[t] = static_cast<scalar_t>(p * (base[t] + kept_term));
    }
  }
  for (int64_t t = 0; t < len; ++t) {  // the -[c == y] m_y term, one channel per position
    if (channel[t] >= 0) {
      scalar_t& g = grad_image[channel[t] * N + start + t];
      g = static_cast<scalar_t>(static_cast<acc_t>(g) - label_term[t]);
    }
  }
}

// R = max(target, floor) renormalised, into reference[c * kTile + t]; scale[t] = 1 / sum_c max(target_c, floor).
template <typename acc_t>
SGAN_INLINE void tile_reference(const acc_t* target_image, int64_t C, int64_t N, int64_t start, int64_t len,
                                acc_t floor, acc_t* reference, acc_t* scale) {
  for (int64_t t = 0; t < len; ++t) scale[t] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* __restrict r = target_image + c * N + start;
    acc_t* __restrict out = reference + c * kTile;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t v = r[t] < floor ? floor : r[t];
      out[t] = v;
      scale[t] += v;
    }
  }
  for (int64_t t = 0; t < len; ++t) scale[t] = acc_t(1) / scale[t];
  for (int64_t c = 0; c < C; ++c) {
    acc_t* __restrict out = reference + c * kTile;
    for (int64_t t = 0; t < len; ++t) out[t] *= scale[t];
  }
}

// Boundary KL, forward: returns the tile's sum of sum_c R_c log clip(R_c / Phi_c), Phi_c = max(p_c, floor) / S,
// and writes the statistics the backward needs, among them W = sum_c w_c and U = sum_c w_c m_c, with
// w_c = R_c where R_c / Phi_c is inside the clip range (else the term is constant) and m_c = [p_c >= floor].
template <typename acc_t, typename scalar_t>
SGAN_TILE_KERNEL double kl_tile_forward(const scalar_t* image, const acc_t* target_image, int64_t C, int64_t N,
                                        int64_t start, int64_t len, acc_t floor, acc_t low, acc_t high, acc_t* prob,
                                        acc_t* reference, acc_t* stats) {
  acc_t* floored_sum = stats + kFlooredSum * N + start;
  acc_t* weight_sum = stats + kWeightSum * N + start;
  acc_t* kept_weight_sum = stats + kKeptWeightSum * N + start;
  acc_t exp_sum[kTile];
  tile_softmax<acc_t>(image, C, N, start, len, floor, prob, stats + kRowMax * N + start, exp_sum,
                      stats + kInverseTotal * N + start, floored_sum, stats + kKeptSum * N + start);
  tile_reference<acc_t>(target_image, C, N, start, len, floor, reference, stats + kReferenceScale * N + start);
  acc_t kl[kTile];
  for (int64_t t = 0; t < len; ++t) kl[t] = weight_sum[t] = kept_weight_sum[t] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* __restrict p = prob + c * kTile;
    const acc_t* __restrict r = reference + c * kTile;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t kept = p[t] >= floor ? acc_t(1) : acc_t(0);
      const acc_t ratio = r[t] * floored_sum[t] / (p[t] < floor ? floor : p[t]);
      const bool inside = ratio >= low && ratio <= high;
      const acc_t clipped = ratio < low ? low : (ratio > high ? high : ratio);
      kl[t] += r[t] * log_positive(clipped);
      const acc_t weight = inside ? r[t] : acc_t(0);
      weight_sum[t] += weight;
      kept_weight_sum[t] += weight * kept;
    }
  }
  double total = 0;
  for (int64_t t = 0; t < len; ++t) total += static_cast<double>(kl[t]);
  return total;
}

// Boundary KL, backward, one pass over the channels (p_c = exp(z_c - M) / E):
// d/dz_c sum_k w_k (-log Phi_k) = -w_c m_c + p_c U + W p_c (m_c - T) / S,
// with w_c recomputed from R_c and Phi_c, and U, W, T, S from the forward.
template <typename acc_t, typename scalar_t>
SGAN_TILE_KERNEL void kl_tile_backward(const scalar_t* image, const acc_t* target_image, acc_t coefficient,
                                       const acc_t* stats, int64_t C, int64_t N, int64_t start, int64_t len,
                                       acc_t floor, acc_t low, acc_t high, scalar_t* grad_image) {
  const acc_t* row_max = stats + kRowMax * N + start;
  const acc_t* inverse_total = stats + kInverseTotal * N + start;
  const acc_t* floored_sum = stats + kFlooredSum * N + start;
  const acc_t* reference_scale = stats + kReferenceScale * N + start;
  acc_t base[kTile], floor_term[kTile];
  for (int64_t t = 0; t < len; ++t) {
    const acc_t scaled_weight_sum = stats[kWeightSum * N + start + t] / floored_sum[t];
    const acc_t kept_weight_sum = stats[kKeptWeightSum * N + start + t];
    base[t] = coefficient * (kept_weight_sum - scaled_weight_sum * stats[kKeptSum * N + start + t]);
    floor_term[t] = coefficient * scaled_weight_sum;
  }
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* __restrict z = image + c * N + start;
    const acc_t* __restrict target = target_image + c * N + start;
    scalar_t* __restrict g = grad_image + c * N + start;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t p = exp_nonpositive(static_cast<acc_t>(z[t]) - row_max[t]) * inverse_total[t];
      const bool kept = p >= floor;
      const acc_t r = (target[t] < floor ? floor : target[t]) * reference_scale[t];
      const acc_t ratio = r * floored_sum[t] / (p < floor ? floor : p);
      const acc_t weight = ratio >= low && ratio <= high && kept ? coefficient * r : acc_t(0);
      g[t] = static_cast<scalar_t>(p * (base[t] + (kept ? floor_term[t] : acc_t(0))) - weight);
    }
  }
}

// ---- operators ----

void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 3, "sgan_ext losses: logits must be (B, C, N), got ", logits.sizes());
  TORCH_CHECK(logits.is_contiguous(), "sgan_ext losses: logits must be contiguous");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
              "sgan_ext losses (CPU): logits must be float32 or float64, got ", logits.scalar_type());
  TORCH_CHECK(logits.size(1) > 0 && logits.size(2) > 0, "sgan_ext losses: empty logits ", logits.sizes());
}

void check_seeds(const at::Tensor& seeds, const at::Tensor& logits) {
  TORCH_CHECK(seeds.dim() == 2 && seeds.size(0) == logits.size(0) && seeds.size(1) == logits.size(2),
              "sgan_ext losses: seeds must be (B, N) = (", logits.size(0), ", ", logits.size(2), "), got ",
              seeds.sizes());
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.is_contiguous(),
              "sgan_ext losses: seeds must be contiguous int64");
}

void check_same_dtype(const at::Tensor& tensor, const at::Tensor& logits, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(tensor.sizes() == shape, "sgan_ext losses: ", name, " must have shape ", shape, ", got ",
              tensor.sizes());
  TORCH_CHECK(tensor.scalar_type() == logits.scalar_type() && tensor.is_contiguous(), "sgan_ext losses (CPU): ",
              name, " must be contiguous with the logits' dtype ", logits.scalar_type());
}

// Runs body(b, start, len, tile_index, workspace) over every tile of every image in parallel;
// workspace holds `buffers` C x kTile arrays, allocated once per parallel chunk.
template <typename acc_t, typename Body>
void for_each_tile(int64_t B, int64_t C, int64_t N, int64_t buffers, const Body& body) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  at::parallel_for(0, B * tiles, 8, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> workspace(std::max<int64_t>(buffers, 1) * C * kTile);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t b = index / tiles;
      const int64_t start = (index % tiles) * kTile;
      body(b, start, std::min(kTile, N - start), index, workspace.data());
    }
  });
}

// Sum of the per-tile partials (B, tiles, groups) in tile order, as a (B, groups) tensor of the logits' dtype.
at::Tensor reduce_partials(const std::vector<double>& partials, int64_t B, int64_t tiles, int64_t groups,
                           const at::Tensor& like) {
  at::Tensor out = at::empty({B, groups}, like.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < groups; ++g) {
      double total = 0;
      for (int64_t tile = 0; tile < tiles; ++tile) total += partials[(b * tiles + tile) * groups + g];
      o[b * groups + g] = total;
    }
  }
  return out.to(like.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> seed_nll_forward_cpu(const at::Tensor& logits, const at::Tensor& seeds,
                                                                   int64_t label_offset, double floor) {
  check_logits(logits);
  check_seeds(seeds, logits);
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const int64_t tiles = (N + kTile - 1) / kTile;
  std::vector<double> sums(B * tiles * 2, 0.0), counts(B * tiles * 2, 0.0);
  at::Tensor stats = at::empty({B, kSeedStats, N}, logits.options());
  const int64_t* seed_data = seeds.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "seed_nll_forward_cpu", [&] {
    const scalar_t* data = logits.data_ptr<scalar_t>();
    scalar_t* stats_data = stats.data_ptr<scalar_t>();
    const scalar_t floor_value = static_cast<scalar_t>(floor);
    for_each_tile<scalar_t>(B, C, N, 1, [&](int64_t b, int64_t start, int64_t len, int64_t index, scalar_t* work) {
      int64_t channel[kTile];
      if (!tile_channels(seed_data + b * N, start, len, label_offset, C, channel)) return;
      seed_tile_forward<scalar_t>(data + b * C * N, seed_data + b * N, channel, C, N, start, len, floor_value, work,
                                  stats_data + b * kSeedStats * N, &sums[index * 2], &counts[index * 2]);
    });
  });
  return {reduce_partials(sums, B, tiles, 2, logits), reduce_partials(counts, B, tiles, 2, logits), stats};
}

at::Tensor seed_nll_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& logits, const at::Tensor& seeds,
                                 const at::Tensor& stats, int64_t label_offset, double floor) {
  check_logits(logits);
  check_seeds(seeds, logits);
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  check_same_dtype(grad_sums, logits, {B, 2}, "grad_sums");
  check_same_dtype(stats, logits, {B, kSeedStats, N}, "stats");
  at::Tensor grad = at::empty_like(logits);
  const int64_t* seed_data = seeds.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "seed_nll_backward_cpu", [&] {
    const scalar_t* data = logits.data_ptr<scalar_t>();
    const scalar_t* coefficients = grad_sums.data_ptr<scalar_t>();
    const scalar_t* stats_data = stats.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const scalar_t floor_value = static_cast<scalar_t>(floor);
    for_each_tile<scalar_t>(B, C, N, 0, [&](int64_t b, int64_t start, int64_t len, int64_t, scalar_t*) {
      int64_t channel[kTile];
      scalar_t* grad_image = out + b * C * N;
      if (!tile_channels(seed_data + b * N, start, len, label_offset, C, channel)) {
        // no statistics were written for this tile, and its gradient is zero
        for (int64_t c = 0; c < C; ++c) std::memset(grad_image + c * N + start, 0, sizeof(scalar_t) * len);
        return;
      }
      seed_tile_backward<scalar_t>(data + b * C * N, seed_data + b * N, channel, coefficients + b * 2,
                                   stats_data + b * kSeedStats * N, C, N, start, len, floor_value, grad_image);
    });
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> boundary_kl_forward_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                          double floor, double ratio_min, double ratio_max) {
  check_logits(logits);
  check_same_dtype(target, logits, logits.sizes(), "target");
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const int64_t tiles = (N + kTile - 1) / kTile;
  std::vector<double> sums(B * tiles, 0.0);
  at::Tensor stats = at::empty({B, kBoundaryStats, N}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "boundary_kl_forward_cpu", [&] {
    const scalar_t* data = logits.data_ptr<scalar_t>();
    const scalar_t* target_data = target.data_ptr<scalar_t>();
    scalar_t* stats_data = stats.data_ptr<scalar_t>();
    const scalar_t floor_value = static_cast<scalar_t>(floor);
    const scalar_t low = static_cast<scalar_t>(ratio_min), high = static_cast<scalar_t>(ratio_max);
    for_each_tile<scalar_t>(B, C, N, 2, [&](int64_t b, int64_t start, int64_t len, int64_t index, scalar_t* work) {
      sums[index] = kl_tile_forward<scalar_t>(data + b * C * N, target_data + b * C * N, C, N, start, len,
                                              floor_value, low, high, work, work + C * kTile,
                                              stats_data + b * kBoundaryStats * N);
    });
  });
  return {reduce_partials(sums, B, tiles, 1, logits).reshape({B}), stats};
}

at::Tensor boundary_kl_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& logits, const at::Tensor& target,
                                    const at::Tensor& stats, double floor, double ratio_min, double ratio_max) {
  check_logits(logits);
  check_same_dtype(target, logits, logits.sizes(), "target");
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  check_same_dtype(grad_sums, logits, {B}, "grad_sums");
  check_same_dtype(stats, logits, {B, kBoundaryStats, N}, "stats");
  at::Tensor grad = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "boundary_kl_backward_cpu", [&] {
    const scalar_t* data = logits.data_ptr<scalar_t>();
    const scalar_t* target_data = target.data_ptr<scalar_t>();
    const scalar_t* coefficients = grad_sums.data_ptr<scalar_t>();
    const scalar_t* stats_data = stats.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const scalar_t floor_value = static_cast<scalar_t>(floor);
    const scalar_t low = static_cast<scalar_t>(ratio_min), high = static_cast<scalar_t>(ratio_max);
    for_each_tile<scalar_t>(B, C, N, 0, [&](int64_t b, int64_t start, int64_t len, int64_t, scalar_t*) {
      kl_tile_backward<scalar_t>(data + b * C * N, target_data + b * C * N, coefficients[b],
                                 stats_data + b * kBoundaryStats * N, C, N, start, len, floor_value, low, high,
                                 out + b * C * N);
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sgan_ext, m) {
  m.def("seed_nll_forward(Tensor logits, Tensor seeds, int label_offset, float floor) -> (Tensor, Tensor, Tensor)");
  m.def(
      "seed_nll_backward(Tensor grad_sums, Tensor logits, Tensor seeds, Tensor stats, int label_offset, float floor)"
      " -> Tensor");
  m.def(
      "boundary_kl_forward(Tensor logits, Tensor target, float floor, float ratio_min, float ratio_max)"
      " -> (Tensor, Tensor)");
  m.def(
      "boundary_kl_backward(Tensor grad_sums, Tensor logits, Tensor target, Tensor stats, float floor, "
      "float ratio_min, float ratio_max) -> Tensor");
}

TORCH_LIBRARY_IMPL(sgan_ext, CPU, m) {
  m.impl("seed_nll_forward", &seed_nll_forward_cpu);
  m.impl("seed_nll_backward", &seed_nll_backward_cpu);
  m.impl("boundary_kl_forward", &boundary_kl_forward_cpu);
  m.impl("boundary_kl_backward", &boundary_kl_backward_cpu);
}
