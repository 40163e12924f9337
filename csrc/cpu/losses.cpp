// Fused seed losses (eq. 5, eq. 8) and the KL part of the boundary loss (eq. 9) on CPU.
//
// Contract: see sgan/losses/function.py. Logits are (B, C, N) contiguous; positions are processed in
// tiles of kTile consecutive positions of one image, so every loop over a tile runs along contiguous
// memory and vectorises. A tile reads its logits once: the softmax is kept in a C x kTile buffer
// (L1-resident), floored at `floor` and renormalised on the fly; nothing of size B x C x N but the
// gradient is ever written. Per-tile partial sums (double) are reduced in a fixed order, so results
// do not depend on the number of threads.
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

// log for positive normal floats: mantissa in [sqrt(1/2), sqrt(2)), degree-9 polynomial in m - 1.
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
  return (f + y) + 0.693359375f * e;
}
SGAN_INLINE double log_positive(double x) { return std::log(x); }

// Softmax of one tile of `len` positions starting at `start` of one image (logits at `image`,
// channel stride N). Fills prob[c * kTile + t] with the softmax p, floored_sum[t] with
// S = sum_c max(p_c, floor) and kept_sum[t] with T = sum over {c : p_c >= floor} of p_c.
template <typename acc_t, typename scalar_t>
SGAN_INLINE void tile_softmax(const scalar_t* image, int64_t C, int64_t N, int64_t start, int64_t len, acc_t floor,
                  acc_t* prob, acc_t* floored_sum, acc_t* kept_sum) {
  acc_t row_max[kTile];
  acc_t exp_sum[kTile];
  for (int64_t t = 0; t < len; ++t) row_max[t] = static_cast<acc_t>(image[start + t]);
  for (int64_t c = 1; c < C; ++c) {
    const scalar_t* z = image + c * N + start;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t v = static_cast<acc_t>(z[t]);
      row_max[t] = v > row_max[t] ? v : row_max[t];
    }
  }
  for (int64_t t = 0; t < len; ++t) exp_sum[t] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* z = image + c * N + start;
    acc_t* p = prob + c * kTile;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t e = exp_nonpositive(static_cast<acc_t>(z[t]) - row_max[t]);
      p[t] = e;
      exp_sum[t] += e;
    }
  }
  for (int64_t t = 0; t < len; ++t) {
    exp_sum[t] = acc_t(1) / exp_sum[t];
    floored_sum[t] = 0;
    kept_sum[t] = 0;
  }
  for (int64_t c = 0; c < C; ++c) {
    acc_t* p = prob + c * kTile;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t v = p[t] * exp_sum[t];
      p[t] = v;
      floored_sum[t] += v > floor ? v : floor;
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

// Seed losses, forward: adds -log Phi_c at the counted positions to sums[g], counts[g].
template <typename acc_t, typename scalar_t>
SGAN_TILE_KERNEL void seed_tile_forward(const scalar_t* image, const int64_t* seeds, const int64_t* channel, int64_t C, int64_t N,
                       int64_t start, int64_t len, acc_t floor, acc_t* prob, double* sums, double* counts) {
  acc_t floored_sum[kTile], kept_sum[kTile];
  tile_softmax<acc_t>(image, C, N, start, len, floor, prob, floored_sum, kept_sum);
  for (int64_t t = 0; t < len; ++t) {
    if (channel[t] < 0) continue;
    const acc_t p = prob[channel[t] * kTile + t];
    const double nll = std::log(static_cast<double>(floored_sum[t])) -
                       std::log(static_cast<double>(p > floor ? p : floor));
    const int64_t group = seeds[start + t] == 0 ? 0 : 1;
    sums[group] += nll;
    counts[group] += 1.0;
  }
}

// Seed losses, backward: grad = coefficient of the seed's group times
// d(-log Phi_y)/dz_c = p_c (m_y + (m_c - T) / S) - [c == y] m_y, with m_c = [p_c >= floor].
template <typename acc_t, typename scalar_t>
SGAN_TILE_KERNEL void seed_tile_backward(const scalar_t* image, const int64_t* seeds, const int64_t* channel, const acc_t* coefficients,
                        int64_t C, int64_t N, int64_t start, int64_t len, acc_t floor, acc_t* prob,
                        scalar_t* grad_image) {
  acc_t floored_sum[kTile], kept_sum[kTile], label_term[kTile], floor_term[kTile];
  tile_softmax<acc_t>(image, C, N, start, len, floor, prob, floored_sum, kept_sum);
  for (int64_t t = 0; t < len; ++t) {
    const bool counted = channel[t] >= 0;
    const acc_t coefficient = counted ? coefficients[seeds[start + t] == 0 ? 0 : 1] : acc_t(0);
    const acc_t kept = counted && prob[channel[t] * kTile + t] >= floor ? acc_t(1) : acc_t(0);
    label_term[t] = coefficient * kept;
    floor_term[t] = coefficient / floored_sum[t];
  }
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* __restrict p = prob + c * kTile;
    scalar_t* __restrict g = grad_image + c * N + start;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t kept = p[t] >= floor ? acc_t(1) : acc_t(0);
      g[t] = static_cast<scalar_t>(p[t] * (label_term[t] + floor_term[t] * (kept - kept_sum[t])));
    }
  }
  for (int64_t t = 0; t < len; ++t) {  // the -[c == y] m_y term, one channel per position
    if (channel[t] >= 0) {
      scalar_t& g = grad_image[channel[t] * N + start + t];
      g = static_cast<scalar_t>(static_cast<acc_t>(g) - label_term[t]);
    }
  }
}

// R = max(target, floor) renormalised, into reference[c * kTile + t].
template <typename acc_t>
SGAN_INLINE void tile_reference(const acc_t* target_image, int64_t C, int64_t N, int64_t start, int64_t len, acc_t floor,
                    acc_t* reference) {
  acc_t total[kTile];
  for (int64_t t = 0; t < len; ++t) total[t] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* __restrict r = target_image + c * N + start;
    acc_t* __restrict out = reference + c * kTile;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t v = r[t] > floor ? r[t] : floor;
      out[t] = v;
      total[t] += v;
    }
  }
  for (int64_t t = 0; t < len; ++t) total[t] = acc_t(1) / total[t];
  for (int64_t c = 0; c < C; ++c) {
    acc_t* __restrict out = reference + c * kTile;
    for (int64_t t = 0; t < len; ++t) out[t] *= total[t];
  }
}

// Boundary KL, forward: sum over the tile of sum_c R_c log clip(R_c / Phi_c), Phi_c = max(p_c, floor) / S.
template <typename acc_t, typename scalar_t>
SGAN_TILE_KERNEL double kl_tile_forward(const scalar_t* image, const acc_t* target_image, int64_t C, int64_t N, int64_t start,
                       int64_t len, acc_t floor, acc_t low, acc_t high, acc_t* prob, acc_t* reference) {
  acc_t floored_sum[kTile], kept_sum[kTile], kl[kTile];
  tile_softmax<acc_t>(image, C, N, start, len, floor, prob, floored_sum, kept_sum);
  tile_reference<acc_t>(target_image, C, N, start, len, floor, reference);
  for (int64_t t = 0; t < len; ++t) kl[t] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* __restrict p = prob + c * kTile;
    const acc_t* __restrict r = reference + c * kTile;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t phi = (p[t] > floor ? p[t] : floor) / floored_sum[t];
      acc_t ratio = r[t] / phi;
      ratio = ratio < low ? low : (ratio > high ? high : ratio);
      kl[t] += r[t] * log_positive(ratio);
    }
  }
  double total = 0;
  for (int64_t t = 0; t < len; ++t) total += static_cast<double>(kl[t]);
  return total;
}

// Boundary KL, backward: w_c = R_c where R_c / Phi_c is inside the clip range (else the term is
// constant), then d/dz_c sum_k w_k (-log Phi_k) = -w_c m_c + p_c sum_k w_k m_k + (sum_k w_k) p_c (m_c - T) / S.
template <typename acc_t, typename scalar_t>
SGAN_TILE_KERNEL void kl_tile_backward(const scalar_t* image, const acc_t* target_image, acc_t coefficient, int64_t C, int64_t N,
                      int64_t start, int64_t len, acc_t floor, acc_t low, acc_t high, acc_t* prob, acc_t* weight,
                      scalar_t* grad_image) {
  acc_t floored_sum[kTile], kept_sum[kTile], weight_sum[kTile], kept_weight_sum[kTile];
  tile_softmax<acc_t>(image, C, N, start, len, floor, prob, floored_sum, kept_sum);
  tile_reference<acc_t>(target_image, C, N, start, len, floor, weight);
  for (int64_t t = 0; t < len; ++t) weight_sum[t] = kept_weight_sum[t] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* __restrict p = prob + c * kTile;
    acc_t* __restrict w = weight + c * kTile;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t phi = (p[t] > floor ? p[t] : floor) / floored_sum[t];
      const acc_t ratio = w[t] / phi;
      const acc_t value = ratio >= low && ratio <= high ? w[t] : acc_t(0);
      w[t] = value;
      weight_sum[t] += value;
      kept_weight_sum[t] += p[t] >= floor ? value : acc_t(0);
    }
  }
  for (int64_t t = 0; t < len; ++t) {
    kept_weight_sum[t] *= coefficient;
    weight_sum[t] *= coefficient / floored_sum[t];
  }
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* __restrict p = prob + c * kTile;
    const acc_t* __restrict w = weight + c * kTile;
    scalar_t* __restrict g = grad_image + c * N + start;
    for (int64_t t = 0; t < len; ++t) {
      const acc_t kept = p[t] >= floor ? acc_t(1) : acc_t(0);
      const acc_t value = p[t] * (kept_weight_sum[t] + weight_sum[t] * (kept - kept_sum[t])) - coefficient * w[t] * kept;
      g[t] = static_cast<scalar_t>(value);
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

void check_target(const at::Tensor& target, const at::Tensor& logits) {
  TORCH_CHECK(target.sizes() == logits.sizes(), "sgan_ext losses: target must have the shape of the logits ",
              logits.sizes(), ", got ", target.sizes());
  TORCH_CHECK(target.scalar_type() == logits.scalar_type() && target.is_contiguous(),
              "sgan_ext losses (CPU): target must be contiguous with the logits' dtype ", logits.scalar_type());
}

void check_grad_sums(const at::Tensor& grad_sums, const at::Tensor& logits, at::IntArrayRef shape) {
  TORCH_CHECK(grad_sums.sizes() == shape, "sgan_ext losses: grad_sums must have shape ", shape, ", got ",
              grad_sums.sizes());
  TORCH_CHECK(grad_sums.scalar_type() == logits.scalar_type(),
              "sgan_ext losses (CPU): grad_sums must have the logits' dtype");
}

// Runs body(b, start, len, tile_index, workspace) over every tile of every image in parallel;
// workspace holds `buffers` C x kTile arrays, allocated once per parallel chunk.
template <typename acc_t, typename Body>
void for_each_tile(int64_t B, int64_t C, int64_t N, int64_t buffers, const Body& body) {
  const int64_t tiles = (N + kTile - 1) / kTile;
  at::parallel_for(0, B * tiles, 8, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> workspace(buffers * C * kTile);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t b = index / tiles;
      const int64_t start = (index % tiles) * kTile;
      body(b, start, std::min(kTile, N - start), index, workspace.data());
    }
  });
}

// Sum of the per-tile partials (B, tiles, groups) in tile order, as a (B, groups) tensor of `dtype`.
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

std::tuple<at::Tensor, at::Tensor> seed_nll_forward_cpu(const at::Tensor& logits, const at::Tensor& seeds,
                                                       int64_t label_offset, double floor) {
  check_logits(logits);
  check_seeds(seeds, logits);
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const int64_t tiles = (N + kTile - 1) / kTile;
  std::vector<double> sums(B * tiles * 2, 0.0), counts(B * tiles * 2, 0.0);
  const int64_t* seed_data = seeds.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "seed_nll_forward_cpu", [&] {
    const scalar_t* data = logits.data_ptr<scalar_t>();
    const scalar_t floor_value = static_cast<scalar_t>(floor);
    for_each_tile<scalar_t>(B, C, N, 1, [&](int64_t b, int64_t start, int64_t len, int64_t index, scalar_t* work) {
      int64_t channel[kTile];
      if (!tile_channels(seed_data + b * N, start, len, label_offset, C, channel)) return;
      seed_tile_forward<scalar_t>(data + b * C * N, seed_data + b * N, channel, C, N, start, len, floor_value, work,
                                  &sums[index * 2], &counts[index * 2]);
    });
  });
  return {reduce_partials(sums, B, tiles, 2, logits), reduce_partials(counts, B, tiles, 2, logits)};
}

at::Tensor seed_nll_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& logits, const at::Tensor& seeds,
                                 int64_t label_offset, double floor) {
  check_logits(logits);
  check_seeds(seeds, logits);
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  check_grad_sums(grad_sums, logits, {B, 2});
  at::Tensor grad = at::empty_like(logits);
  const at::Tensor grad_sums_c = grad_sums.contiguous();
  const int64_t* seed_data = seeds.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "seed_nll_backward_cpu", [&] {
    const scalar_t* data = logits.data_ptr<scalar_t>();
    const scalar_t* coefficients = grad_sums_c.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const scalar_t floor_value = static_cast<scalar_t>(floor);
    for_each_tile<scalar_t>(B, C, N, 1, [&](int64_t b, int64_t start, int64_t len, int64_t, scalar_t* work) {
      int64_t channel[kTile];
      scalar_t* grad_image = out + b * C * N;
      if (!tile_channels(seed_data + b * N, start, len, label_offset, C, channel)) {
        for (int64_t c = 0; c < C; ++c) {
          std::memset(grad_image + c * N + start, 0, sizeof(scalar_t) * len);
        }
        return;
      }
      seed_tile_backward<scalar_t>(data + b * C * N, seed_data + b * N, channel, coefficients + b * 2, C, N, start,
                                   len, floor_value, work, grad_image);
    });
  });
  return grad;
}

at::Tensor boundary_kl_forward_cpu(const at::Tensor& logits, const at::Tensor& target, double floor,
                                   double ratio_min, double ratio_max) {
  check_logits(logits);
  check_target(target, logits);
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const int64_t tiles = (N + kTile - 1) / kTile;
  std::vector<double> sums(B * tiles, 0.0);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "boundary_kl_forward_cpu", [&] {
    const scalar_t* data = logits.data_ptr<scalar_t>();
    const scalar_t* target_data = target.data_ptr<scalar_t>();
    const scalar_t floor_value = static_cast<scalar_t>(floor);
    const scalar_t low = static_cast<scalar_t>(ratio_min), high = static_cast<scalar_t>(ratio_max);
    for_each_tile<scalar_t>(B, C, N, 2, [&](int64_t b, int64_t start, int64_t len, int64_t index, scalar_t* work) {
      sums[index] = kl_tile_forward<scalar_t>(data + b * C * N, target_data + b * C * N, C, N, start, len,
                                              floor_value, low, high, work, work + C * kTile);
    });
  });
  return reduce_partials(sums, B, tiles, 1, logits).reshape({B});
}

at::Tensor boundary_kl_backward_cpu(const at::Tensor& grad_sums, const at::Tensor& logits, const at::Tensor& target,
                                    double floor, double ratio_min, double ratio_max) {
  check_logits(logits);
  check_target(target, logits);
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  check_grad_sums(grad_sums, logits, {B});
  at::Tensor grad = at::empty_like(logits);
  const at::Tensor grad_sums_c = grad_sums.contiguous();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "boundary_kl_backward_cpu", [&] {
    const scalar_t* data = logits.data_ptr<scalar_t>();
    const scalar_t* target_data = target.data_ptr<scalar_t>();
    const scalar_t* coefficients = grad_sums_c.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const scalar_t floor_value = static_cast<scalar_t>(floor);
    const scalar_t low = static_cast<scalar_t>(ratio_min), high = static_cast<scalar_t>(ratio_max);
    for_each_tile<scalar_t>(B, C, N, 2, [&](int64_t b, int64_t start, int64_t len, int64_t, scalar_t* work) {
      kl_tile_backward<scalar_t>(data + b * C * N, target_data + b * C * N, coefficients[b], C, N, start, len,
                                 floor_value, low, high, work, work + C * kTile, out + b * C * N);
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(sgan_ext, m) {
  m.def("seed_nll_forward(Tensor logits, Tensor seeds, int label_offset, float floor) -> (Tensor, Tensor)");
  m.def("seed_nll_backward(Tensor grad_sums, Tensor logits, Tensor seeds, int label_offset, float floor) -> Tensor");
  m.def("boundary_kl_forward(Tensor logits, Tensor target, float floor, float ratio_min, float ratio_max) -> Tensor");
  m.def(
      "boundary_kl_backward(Tensor grad_sums, Tensor logits, Tensor target, float floor, float ratio_min, "
      "float ratio_max) -> Tensor");
}

TORCH_LIBRARY_IMPL(sgan_ext, CPU, m) {
  m.impl("seed_nll_forward", &seed_nll_forward_cpu);
  m.impl("seed_nll_backward", &seed_nll_backward_cpu);
  m.impl("boundary_kl_forward", &boundary_kl_forward_cpu);
  m.impl("boundary_kl_backward", &boundary_kl_backward_cpu);
}
