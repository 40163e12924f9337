// Fused seed losses (eq. 5, eq. 8) and the KL part of the boundary loss (eq. 9) on CUDA.
//
// Contract: see sgan/ops/seed_nll/function.py and sgan/ops/boundary_kl/function.py (schemas are
// defined in csrc/cpu/losses.cpp). One thread per position: consecutive threads read consecutive
// positions of each channel (coalesced); the C channel
// values of a position are re-read from L1 by the later passes instead of materialising the softmax.
// The forward also writes a few statistics per position (row maximum, floored sum, ...), so the
// backward is a single pass over the channels.
// Half, bfloat16 and float accumulate in float, double in double. Per-block partial sums are written
// to a (B, blocks, groups) buffer and reduced by torch in a fixed order (deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace {

constexpr int kThreads = 256;
constexpr int64_t kIgnoreLabel = 255;

// max(a, b) that propagates a NaN in a (the probability or the ratio).
template <typename acc_t>
__device__ __forceinline__ acc_t max_of(acc_t a, acc_t b) {
  return a < b ? b : a;
}

// Per-position statistics written by the forward kernels (rows of the (B, K, N) `stats` tensor).
// p_c = exp(z_c - M) * (1 / E), M the row maximum, E = sum_c exp(z_c - M): the backward recomputes
// exactly the forward's p (a log-sum-exp would lose the low bits of p when |z| is large).
constexpr int kRowMax = 0, kInverseTotal = 1, kFlooredSum = 2, kKeptSum = 3;   // seed and boundary
constexpr int kWeightSum = 4, kKeptWeightSum = 5, kReferenceScale = 6;          // boundary only
constexpr int kSeedStats = 4, kBoundaryStats = 7;

// Softmax statistics of one position: M, E = sum_c exp(z_c - M), 1 / E, S = sum_c max(p_c, floor) and
// T = sum of the p_c >= floor.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void softmax_stats(const scalar_t* __restrict__ z, int64_t C, int64_t N, acc_t floor,
                                              acc_t& row_max, acc_t& total, acc_t& inverse_total, acc_t& floored_sum,
                                              acc_t& kept_sum) {
  row_max = static_cast<acc_t>(z[0]);
  for (int64_t c = 1; c < C; ++c) {
    const acc_t v = static_cast<acc_t>(z[c * N]);
    row_max = v > row_max ? v : row_max;
  }
  total = 0;
  for (int64_t c = 0; c < C; ++c) total += ::exp(static_cast<acc_t>(z[c * N]) - row_max);
  inverse_total = acc_t(1) / total;
  floored_sum = 0;
  kept_sum = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t p = ::exp(static_cast<acc_t>(z[c * N]) - row_max) * inverse_total;
    floored_sum += max_of(p, floor);
    kept_sum += p >= floor ? p : acc_t(0);
  }
}

// Sum of `value` over the block; the result is valid in thread 0.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t value, acc_t* shared) {
  for (int offset = warpSize / 2; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / warpSize; ++w) total += shared[w];
  }
  return total;
}

template <typename scalar_t, typename acc_t>
__global__ void seed_nll_forward_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ seeds,
                                        acc_t* __restrict__ sums, acc_t* __restrict__ counts,
                                        acc_t* __restrict__ stats, int64_t C, int64_t N, int64_t label_offset,
                                        acc_t floor) {
  __shared__ acc_t shared[kThreads / 32];
  const int64_t b = blockIdx.y;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  acc_t nll = 0, counted = 0;
  int64_t label = kIgnoreLabel;
  if (n < N) {
    label = seeds[b * N + n];
    const int64_t channel = label - label_offset;
    if (label != kIgnoreLabel && channel >= 0 && channel < C) {  // statistics only where the backward reads them
      const scalar_t* z = logits + b * C * N + n;
      acc_t row_max, total, inverse_total, floored_sum, kept_sum;
      softmax_stats(z, C, N, floor, row_max, total, inverse_total, floored_sum, kept_sum);
      const acc_t shifted = static_cast<acc_t>(z[channel * N]) - row_max;
      // no floor: -log p = log E - (z - M), finite and exact however small p is
      nll = floor > acc_t(0) ? ::log(floored_sum) - ::log(max_of(::exp(shifted) * inverse_total, floor))
                             : ::log(total) - shifted;
      counted = 1;
      acc_t* out = stats + b * kSeedStats * N + n;
      out[kRowMax * N] = row_max;
      out[kInverseTotal * N] = inverse_total;
      out[kFlooredSum * N] = floored_sum;
      out[kKeptSum * N] = kept_sum;
    }
  }
  const bool background = label == 0;
  const acc_t totals[4] = {block_sum<acc_t>(background ? nll : acc_t(0), shared),
                           block_sum<acc_t>(background ? acc_t(0) : nll, shared),
                           block_sum<acc_t>(background ? counted : acc_t(0), shared),
                           block_sum<acc_t>(background ? acc_t(0) : counted, shared)};
  if (threadIdx.x == 0) {
    const int64_t out = (b * gridDim.x + blockIdx.x) * 2;
    sums[out] = totals[0];
    sums[out + 1] = totals[1];
    counts[out] = totals[2];
    counts[out + 1] = totals[3];
  }
}

// One pass with the forward's statistics: p_c = exp(z_c - M) / E and
// d(-log Phi_y)/dz_c = p_c (m_y + (m_c - T) / S) - [c == y] m_y, with m_c = [p_c >= floor].
template <typename scalar_t, typename acc_t>
__global__ void seed_nll_backward_kernel(const acc_t* __restrict__ grad_sums, const scalar_t* __restrict__ logits,
                                         const int64_t* __restrict__ seeds, const acc_t* __restrict__ stats,
                                         scalar_t* __restrict__ grad, int64_t C, int64_t N, int64_t label_offset,
                                         acc_t floor) {
  const int64_t b = blockIdx.y;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (n >= N) return;
  const int64_t label = seeds[b * N + n];
  const int64_t channel = label - label_offset;
  scalar_t* g = grad + b * C * N + n;
  if (label == kIgnoreLabel || channel < 0 || channel >= C) {
    for (int64_t c = 0; c < C; ++c) g[c * N] = scalar_t(0);
    return;
  }
  const scalar_t* z = logits + b * C * N + n;
  const acc_t* position = stats + b * kSeedStats * N + n;
  const acc_t row_max = position[kRowMax * N];
  const acc_t inverse_total = position[kInverseTotal * N];
  const acc_t coefficient = grad_sums[b * 2 + (label == 0 ? 0 : 1)];
  const acc_t label_p = ::exp(static_cast<acc_t>(z[channel * N]) - row_max) * inverse_total;
  const acc_t label_term = label_p >= floor ? coefficient : acc_t(0);
  const acc_t floor_term = coefficient / position[kFlooredSum * N];
  const acc_t base = label_term - floor_term * position[kKeptSum * N];
  for (int64_t c = 0; c < C; ++c) {
    const acc_t p = ::exp(static_cast<acc_t>(z[c * N]) - row_max) * inverse_total;
    const acc_t value = p * (base + (p >= floor ? floor_term : acc_t(0))) - (c == channel ? label_term : acc_t(0));
    g[c * N] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void boundary_kl_forward_kernel(const scalar_t* __restrict__ logits, const acc_t* __restrict__ target,
                                           acc_t* __restrict__ sums, acc_t* __restrict__ stats, int64_t C, int64_t N,
                                           acc_t floor, acc_t low, acc_t high) {
  __shared__ acc_t shared[kThreads / 32];
  const int64_t b = blockIdx.y;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  acc_t kl = 0;
  if (n < N) {
    const scalar_t* z = logits + b * C * N + n;
    const acc_t* r = target + b * C * N + n;
    acc_t row_max, total, inverse_total, floored_sum, kept_sum;
    softmax_stats(z, C, N, floor, row_max, total, inverse_total, floored_sum, kept_sum);
    acc_t reference_total = 0;
    for (int64_t c = 0; c < C; ++c) reference_total += max_of(r[c * N], floor);
    const acc_t reference_scale = acc_t(1) / reference_total;
    // w_c = R_c inside the clip range (else the term is constant): W = sum_c w_c, U = sum_{c: p_c >= floor} w_c
    acc_t weight_sum = 0, kept_weight_sum = 0;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t p = ::exp(static_cast<acc_t>(z[c * N]) - row_max) * inverse_total;
      const acc_t reference = max_of(r[c * N], floor) * reference_scale;
      const acc_t ratio = reference * floored_sum / max_of(p, floor);
      const bool inside = ratio >= low && ratio <= high;
      kl += reference * ::log(ratio < low ? low : (ratio > high ? high : ratio));
      const acc_t weight = inside ? reference : acc_t(0);
      weight_sum += weight;
      kept_weight_sum += p >= floor ? weight : acc_t(0);
    }
    acc_t* out = stats + b * kBoundaryStats * N + n;
    out[kRowMax * N] = row_max;
    out[kInverseTotal * N] = inverse_total;
    out[kFlooredSum * N] = floored_sum;
    out[kKeptSum * N] = kept_sum;
    out[kWeightSum * N] = weight_sum;
    out[kKeptWeightSum * N] = kept_weight_sum;
    out[kReferenceScale * N] = reference_scale;
  }
  const acc_t total = block_sum<acc_t>(kl, shared);
  if (threadIdx.x == 0) sums[b * gridDim.x + blockIdx.x] = total;
}

// One pass with the forward's statistics: the gradient of sum_c w_c (-log Phi_c) is
// -w_c m_c + p_c U + W p_c (m_c - T) / S, w_c recomputed from R_c and Phi_c.
template <typename scalar_t, typename acc_t>
__global__ void boundary_kl_backward_kernel(const acc_t* __restrict__ grad_sums, const scalar_t* __restrict__ logits,
                                            const acc_t* __restrict__ target, const acc_t* __restrict__ stats,
                                            scalar_t* __restrict__ grad, int64_t C, int64_t N, acc_t floor, acc_t low,
                                            acc_t high) {
  const int64_t b = blockIdx.y;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (n >= N) return;
  const scalar_t* z = logits + b * C * N + n;
  const acc_t* r = target + b * C * N + n;
  const acc_t* position = stats + b * kBoundaryStats * N + n;
  const acc_t row_max = position[kRowMax * N];
  const acc_t inverse_total = position[kInverseTotal * N];
  const acc_t floored_sum = position[kFlooredSum * N];
  const acc_t reference_scale = position[kReferenceScale * N];
  const acc_t coefficient = grad_sums[b];
  const acc_t scaled_weight_sum = position[kWeightSum * N] / floored_sum;
  const acc_t base = coefficient * (position[kKeptWeightSum * N] - scaled_weight_sum * position[kKeptSum * N]);
  const acc_t floor_term = coefficient * scaled_weight_sum;
  scalar_t* g = grad + b * C * N + n;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t p = ::exp(static_cast<acc_t>(z[c * N]) - row_max) * inverse_total;
    const bool kept = p >= floor;
    const acc_t reference = max_of(r[c * N], floor) * reference_scale;
    const acc_t ratio = reference * floored_sum / max_of(p, floor);
    const acc_t weight = kept && ratio >= low && ratio <= high ? coefficient * reference : acc_t(0);
    g[c * N] = static_cast<scalar_t>(p * (base + (kept ? floor_term : acc_t(0))) - weight);
  }
}

void check_inputs(const at::Tensor& logits, const at::Tensor& other, const char* other_name) {
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 3 && logits.is_contiguous(),
              "sgan_ext losses (CUDA): logits must be a contiguous (B, C, N) CUDA tensor, got ", logits.sizes());
  TORCH_CHECK(logits.size(1) > 0 && logits.size(2) > 0, "sgan_ext losses: empty logits ", logits.sizes());
  TORCH_CHECK(other.device() == logits.device() && other.is_contiguous(), "sgan_ext losses (CUDA): ", other_name,
              " must be contiguous and on the logits' device");
  TORCH_CHECK(logits.size(0) <= 65535, "sgan_ext losses (CUDA): batch larger than 65535");
}

at::ScalarType accumulate_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_seeds(const at::Tensor& seeds, const at::Tensor& logits) {
  check_inputs(logits, seeds, "seeds");
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.dim() == 2 && seeds.size(0) == logits.size(0) &&
                  seeds.size(1) == logits.size(2),
              "sgan_ext losses: seeds must be int64 (B, N), got ", seeds.sizes());
}

void check_target(const at::Tensor& target, const at::Tensor& logits) {
  check_inputs(logits, target, "target");
  TORCH_CHECK(target.sizes() == logits.sizes() && target.scalar_type() == accumulate_type(logits),
              "sgan_ext losses (CUDA): target must have the logits' shape and the accumulation dtype");
}

void check_stats(const at::Tensor& stats, const at::Tensor& logits, int64_t rows) {
  check_inputs(logits, stats, "stats");
  TORCH_CHECK(stats.dim() == 3 && stats.size(0) == logits.size(0) && stats.size(1) == rows &&
                  stats.size(2) == logits.size(2) && stats.scalar_type() == accumulate_type(logits),
              "sgan_ext losses (CUDA): stats must be (B, ", rows, ", N) in the accumulation dtype, got ",
              stats.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> seed_nll_forward_cuda(const at::Tensor& logits, const at::Tensor& seeds,
                                                                    int64_t label_offset, double floor) {
  check_seeds(seeds, logits);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const dim3 grid((N + kThreads - 1) / kThreads, B);
  const auto options = logits.options().dtype(accumulate_type(logits));
  at::Tensor sums = at::empty({B, static_cast<int64_t>(grid.x), 2}, options);
  at::Tensor counts = at::empty({B, static_cast<int64_t>(grid.x), 2}, options);
  at::Tensor stats = at::empty({B, kSeedStats, N}, options);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "seed_nll_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    seed_nll_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), seeds.data_ptr<int64_t>(), sums.data_ptr<acc_t>(), counts.data_ptr<acc_t>(),
        stats.data_ptr<acc_t>(), C, N, label_offset, static_cast<acc_t>(floor));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {sums.sum(1), counts.sum(1), stats};
}

at::Tensor seed_nll_backward_cuda(const at::Tensor& grad_sums, const at::Tensor& logits, const at::Tensor& seeds,
                                  const at::Tensor& stats, int64_t label_offset, double floor) {
  check_seeds(seeds, logits);
  check_stats(stats, logits, kSeedStats);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const at::Tensor coefficients = grad_sums.to(accumulate_type(logits)).contiguous();
  TORCH_CHECK(coefficients.numel() == 2 * B, "sgan_ext losses: grad_sums must be (B, 2)");
  at::Tensor grad = at::empty_like(logits);
  const dim3 grid((N + kThreads - 1) / kThreads, B);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "seed_nll_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    seed_nll_backward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        coefficients.data_ptr<acc_t>(), logits.data_ptr<scalar_t>(), seeds.data_ptr<int64_t>(),
        stats.data_ptr<acc_t>(), grad.data_ptr<scalar_t>(), C, N, label_offset, static_cast<acc_t>(floor));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> boundary_kl_forward_cuda(const at::Tensor& logits, const at::Tensor& target,
                                                           double floor, double ratio_min, double ratio_max) {
  check_target(target, logits);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const dim3 grid((N + kThreads - 1) / kThreads, B);
  const auto options = logits.options().dtype(accumulate_type(logits));
  at::Tensor sums = at::empty({B, static_cast<int64_t>(grid.x)}, options);
  at::Tensor stats = at::empty({B, kBoundaryStats, N}, options);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "boundary_kl_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    boundary_kl_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), target.data_ptr<acc_t>(), sums.data_ptr<acc_t>(), stats.data_ptr<acc_t>(), C,
        N, static_cast<acc_t>(floor), static_cast<acc_t>(ratio_min), static_cast<acc_t>(ratio_max));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {sums.sum(1), stats};
}

at::Tensor boundary_kl_backward_cuda(const at::Tensor& grad_sums, const at::Tensor& logits, const at::Tensor& target,
                                     const at::Tensor& stats, double floor, double ratio_min, double ratio_max) {
  check_target(target, logits);
  check_stats(stats, logits, kBoundaryStats);
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const int64_t B = logits.size(0), C = logits.size(1), N = logits.size(2);
  const at::Tensor coefficients = grad_sums.to(accumulate_type(logits)).contiguous();
  TORCH_CHECK(coefficients.numel() == B, "sgan_ext losses: grad_sums must be (B,)");
  at::Tensor grad = at::empty_like(logits);
  const dim3 grid((N + kThreads - 1) / kThreads, B);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "boundary_kl_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    boundary_kl_backward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        coefficients.data_ptr<acc_t>(), logits.data_ptr<scalar_t>(), target.data_ptr<acc_t>(), stats.data_ptr<acc_t>(),
        grad.data_ptr<scalar_t>(), C, N, static_cast<acc_t>(floor), static_cast<acc_t>(ratio_min),
        static_cast<acc_t>(ratio_max));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(sgan_ext, CUDA, m) {
  m.impl("seed_nll_forward", &seed_nll_forward_cuda);
  m.impl("seed_nll_backward", &seed_nll_backward_cuda);
  m.impl("boundary_kl_forward", &boundary_kl_forward_cuda);
  m.impl("boundary_kl_backward", &boundary_kl_backward_cuda);
}
