// Saliency-guided attention: the CUDA kernels (the schemas are defined in ../cpu/attention.cpp).
// The algorithm, shared with the CPU, is in ../attention_common.h; GEMMs go through ATen (cuBLAS)
// on operands packed in the input dtype (float16/bfloat16 on tensor cores) with results and
// statistics in the accumulation dtype (float32, float64 for float64 inputs). Images are processed
// in chunks whose packed buffers stay under kChunkBudget elements, so the memory beyond inputs,
// outputs and gradients is bounded. Packed groups are sized N (no host copy of the group counts):
// nothing here waits for the device.
#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "../attention_common.h"

namespace sgan {
namespace attention {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t items) {
  return static_cast<unsigned int>((items + kThreads - 1) / kThreads);
}

__device__ inline int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__global__ void build_layout_kernel(const bool* mask, const int64_t* cumulative, int64_t items, int64_t N,
                                    int64_t L0, int64_t L1, int64_t* pos, int64_t* src0, int64_t* src1) {
  const int64_t idx = thread_index();
  if (idx >= items) return;
  const int64_t b = idx / N, j = idx % N;
  const bool salient = mask[idx];
  const int64_t in_group = salient ? cumulative[idx] - 1 : j - cumulative[idx];
  pos[idx] = in_group;
  if (salient) {
    src1[b * L1 + in_group] = j;
  } else {
    src0[b * L0 + in_group] = j;
  }
}

// out[b, r, p] = input[b, r, src[b, p]] - centre[b, g, r] (centre may be null), 0 for padding;
// out's images are out_stride_b apart (packed buffers can have extra rows).
template <typename scalar_t, typename acc_t>
__global__ void pack_kernel(const scalar_t* input, const int64_t* src, const acc_t* centre, int g, int64_t items,
                            int64_t R, int64_t N, int64_t L, int64_t out_stride_b, scalar_t* out) {
  const int64_t idx = thread_index();
  if (idx >= items) return;
  const int64_t p = idx % L, br = idx / L, b = br / R, r = br % R;
  const int64_t j = src[b * L + p];
  scalar_t* o = out + b * out_stride_b + r * L + p;
  if (j < 0) {
    *o = scalar_t(0);
    return;
  }
  acc_t v = static_cast<acc_t>(input[br * N + j]);
  if (centre != nullptr) v -= centre[(b * 2 + g) * R + r];
  *o = static_cast<scalar_t>(v);
}

// One block per tile row: the minimum of s P_ij over the row's group columns, then the masked 0.
template <typename acc_t>
__global__ void row_min_kernel(const acc_t* tile, int64_t T, int64_t L, int64_t first, int g, const int64_t* counts,
                               const int64_t* src, acc_t scale, int64_t N, acc_t* row_min, int64_t* argmin,
                               acc_t* min_packed) {
  __shared__ acc_t best_values[kThreads];
  __shared__ int64_t best_indices[kThreads];
  const int64_t b = blockIdx.x / T, r = blockIdx.x % T;
  const int64_t row = first + r, size = counts[b * 2 + g];
  if (row >= size) return;  // the whole block leaves together
  const acc_t* values = tile + (b * T + r) * L;
  acc_t best = acc_t(0);
  int64_t best_index = -1;
  for (int64_t j = threadIdx.x; j < size; j += blockDim.x) {
    const acc_t v = scale * values[j];
    if (min_candidate_wins(v, j, best, best_index)) {
      best = v;
      best_index = j;
    }
  }
  best_values[threadIdx.x] = best;
  best_indices[threadIdx.x] = best_index;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride &&
        min_candidate_wins(best_values[threadIdx.x + stride], best_indices[threadIdx.x + stride],
                           best_values[threadIdx.x], best_indices[threadIdx.x])) {
      best_values[threadIdx.x] = best_values[threadIdx.x + stride];
      best_indices[threadIdx.x] = best_indices[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    best = best_values[0];
    best_index = best_indices[0];
    apply_masked_zero(counts[b * 2 + 1 - g] > 0, best, best_index);
    const int64_t original = src[b * L + row];
    row_min[b * N + original] = best;
    argmin[b * N + original] = best_index >= 0 ? src[b * L + best_index] : -1;
    min_packed[b * L + row] = best;
  }
}

// out = x + gamma ctx over the positions of group g, with x read from x_packed (the group's packed
// columns (Bc, C, L)): ctx = mean_coef_i xbar_g + gemm_coef_i numerator_i (context_coefficients),
// numerator (Bc, C, L) with images num_stride_b apart, x_mean (Bc, C) = xbar_g.
template <typename scalar_t, typename acc_t>
__global__ void forward_epilogue_kernel(const scalar_t* x_packed, const acc_t* numerator, int64_t num_stride_b,
                                        const acc_t* key_dot_qsum, const acc_t* min_packed, const acc_t* x_mean,
                                        const int64_t* counts, int g, const int64_t* src, const acc_t* gamma,
                                        acc_t scale, acc_t eps, int64_t items, int64_t C, int64_t N, int64_t L,
                                        scalar_t* out) {
  const int64_t idx = thread_index();
  if (idx >= items) return;
  const int64_t p = idx % L, bc = idx / L, b = bc / C;
  const int64_t j = src[b * L + p];
  if (j < 0) return;
  const acc_t count = static_cast<acc_t>(counts[b * 2 + g]);
  const ContextCoefficients<acc_t> r =
      context_coefficients(key_dot_qsum[b * L + p], min_packed[b * L + p], count, scale, eps);
  const acc_t ctx = r.mean_coef * x_mean[bc] + r.gemm_coef * numerator[b * num_stride_b + (bc - b * C) * L + p];
  out[bc * N + j] = static_cast<scalar_t>(static_cast<acc_t>(x_packed[idx]) + gamma[0] * ctx);
}

// One thread per packed row; neighbouring threads read neighbouring columns (coalesced). The row's
// scalars of backward_row, then scaled_key_i = key_coef_i K_i (rows < Ck of scaled_key
// (Bc, Ck + 1, L), mean_coef_i in its row Ck) and, in place in h, dK_i = key_coef_i H_i +
// s q_g dden_i; grad (Bc, C + 1, L) holds G in its rows < C and gets qsum_coef_i in its row C (all
// zero for padding). K_i is read from key (Bc, Ck, N) at the row's position src[b, p].
template <typename scalar_t, typename acc_t>
__global__ void backward_rows_kernel(const scalar_t* key, const int64_t* src, acc_t* h, scalar_t* grad,
                                     const acc_t* q_sum, const acc_t* x_mean, const acc_t* min_packed,
                                     const int64_t* counts, int g, const acc_t* gamma, acc_t scale, acc_t eps,
                                     int64_t items, int64_t Ck, int64_t C, int64_t N, int64_t L, acc_t* dot,
                                     acc_t* dmin, scalar_t* scaled_key) {
  const int64_t idx = thread_index();
  if (idx >= items) return;
  const int64_t b = idx / L, p = idx % L;
  const int64_t size = counts[b * 2 + g];
  const int64_t j = p < size ? src[b * L + p] : -1;
  BackwardRow<acc_t> r{};
  if (p < size) {
    acc_t key_h = 0, key_q = 0, grad_x = 0;
    for (int64_t k = 0; k < Ck; ++k) {
      const acc_t kv = static_cast<acc_t>(key[(b * Ck + k) * N + j]);
      key_h += kv * h[(b * Ck + k) * L + p];
      key_q += kv * q_sum[b * Ck + k];
    }
    for (int64_t c = 0; c < C; ++c) grad_x += static_cast<acc_t>(grad[(b * (C + 1) + c) * L + p]) * x_mean[b * C + c];
    r = backward_row(key_h, key_q, grad_x, min_packed[idx], static_cast<acc_t>(size), gamma[0], scale, eps);
  }
  dot[idx] = r.dot;
  dmin[idx] = r.dmin;
  grad[(b * (C + 1) + C) * L + p] = static_cast<scalar_t>(r.qsum_coef);
  scaled_key[(b * (Ck + 1) + Ck) * L + p] = static_cast<scalar_t>(r.mean_coef);
  const acc_t key_dden = scale * r.dden;
  for (int64_t k = 0; k < Ck; ++k) {
    const int64_t at = (b * Ck + k) * L + p;
    const acc_t kv = j >= 0 ? static_cast<acc_t>(key[(b * Ck + k) * N + j]) : acc_t(0);
    scaled_key[(b * (Ck + 1) + k) * L + p] = static_cast<scalar_t>(r.key_coef * kv);
    h[at] = r.key_coef * h[at] + q_sum[b * Ck + k] * key_dden;
  }
}

// dK_i += s Q_a(i) dm_i (each (k, i) owned by one thread), dQ_a(i) += s K_i dm_i (atomic: several
// rows can share a minimum column), K_i read from key (Bc, Ck, N) at the row's position. query
// holds Q_j - q_mean (packed centred): q_mean is added back.
template <typename scalar_t, typename acc_t>
__global__ void argmin_scatter_kernel(const scalar_t* key, const scalar_t* query, const acc_t* q_mean,
                                      const acc_t* dmin, const int64_t* argmin, const int64_t* pos,
                                      const int64_t* src, const int64_t* counts, int g, acc_t scale, int64_t items,
                                      int64_t Ck, int64_t N, int64_t L, acc_t* grad_key, acc_t* grad_query) {
  const int64_t idx = thread_index();
  if (idx >= items) return;
  const int64_t p = idx % L, bk = idx / L, b = bk / Ck;
  if (p >= counts[b * 2 + g]) return;
  const int64_t a = argmin[b * N + src[b * L + p]];
  if (a < 0) return;
  const int64_t target = pos[b * N + a];
  const acc_t d = scale * dmin[b * L + p];
  grad_key[idx] += d * (static_cast<acc_t>(query[bk * L + target]) + q_mean[bk]);
  gpuAtomicAdd(grad_query + bk * L + target, d * static_cast<acc_t>(key[bk * N + src[b * L + p]]));
}

// out[b, r, src[b, p]] = part[b, r, p] (+ bias[b, r]) (+ addend[b, r, src[b, p]]); part may be
// strided, or null for zeros.
template <typename scalar_t, typename acc_t>
__global__ void unpack_kernel(const acc_t* part, int64_t stride_b, int64_t stride_r, int64_t stride_p,
                              const int64_t* src, const acc_t* bias, const scalar_t* addend, int64_t items, int64_t R,
                              int64_t N, int64_t L, scalar_t* out) {
  const int64_t idx = thread_index();
  if (idx >= items) return;
  const int64_t p = idx % L, br = idx / L, b = br / R, r = br % R;
  const int64_t j = src[b * L + p];
  if (j < 0) return;
  acc_t v = part != nullptr ? part[b * stride_b + r * stride_r + p * stride_p] : acc_t(0);
  if (bias != nullptr) v += bias[br];
  if (addend != nullptr) v += static_cast<acc_t>(addend[br * N + j]);
  out[br * N + j] = static_cast<scalar_t>(v);
}

struct CudaKernels {
  static constexpr bool kOneImagePerChunk = false;
  static constexpr bool kHostCounts = false;
  static constexpr bool kOperandsInAccumulationType = false;  // bfloat16/float16 GEMMs on tensor cores
  static constexpr int64_t kChunkBudget = int64_t(1) << 27;  // packed elements per chunk (512 MiB float)
  static constexpr int64_t kTileBudget = int64_t(1) << 24;   // elements of a row-minimum tile
  static constexpr int64_t kMinTileRows = 32;
  static constexpr int64_t kMaxTileRows = 256;
  static constexpr int64_t kTileColumns = std::numeric_limits<int64_t>::max();  // a tile spans its rows' group

  static cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

  static void build_layout(const at::Tensor& mask, const at::Tensor& cumulative, at::Tensor& pos, at::Tensor& src0,
                           at::Tensor& src1) {
    const int64_t items = mask.numel();
    if (items == 0) return;
    build_layout_kernel<<<blocks_for(items), kThreads, 0, stream()>>>(
        mask.data_ptr<bool>(), cumulative.data_ptr<int64_t>(), items, mask.size(1), src0.size(1), src1.size(1),
        pos.data_ptr<int64_t>(), src0.data_ptr<int64_t>(), src1.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // out_g[b, r, p] = input[b, r, src_g[b, p]] (- centre[b, g, r]), 0 for padding, for the defined
  // outputs; sums[b, g, r] = sum over p of out_g, accumulated in float64 (see pack() in the driver),
  // a group wanted for its sums alone packed into a temporary.
  static void pack(const at::Tensor& input, const at::Tensor& src0, const at::Tensor& src1, const at::Tensor& centre,
                   at::Tensor& out0, at::Tensor& out1, const at::Tensor& sums) {
    const at::Tensor* sources[2] = {&src0, &src1};
    at::Tensor* outputs[2] = {&out0, &out1};
    for (int g = 0; g < 2; ++g) {
      at::Tensor out = *outputs[g];
      if (!out.defined() && sums.defined()) {
        out = at::empty({input.size(0), input.size(1), sources[g]->size(1)}, input.options());
      }
      const int64_t items = out.defined() ? out.numel() : 0;
      if (items == 0) continue;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "sgan_attention_pack_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        pack_kernel<scalar_t, acc_t><<<blocks_for(items), kThreads, 0, stream()>>>(
            input.data_ptr<scalar_t>(), sources[g]->data_ptr<int64_t>(),
            centre.defined() ? centre.data_ptr<acc_t>() : nullptr, g, items, out.size(1), input.size(2), out.size(2),
            out.stride(0), out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      if (sums.defined()) sums.select(1, g).copy_(out.sum(-1, false, at::kDouble));
    }
  }

  static void row_min_tile(const at::Tensor& tile, int64_t first, int64_t column, int g, const at::Tensor& counts,
                           const at::Tensor& src, double scale, at::Tensor& row_min, at::Tensor& argmin,
                           at::Tensor& min_packed) {
    TORCH_INTERNAL_ASSERT(column == 0, "CUDA tiles span every column of the group (kTileColumns)");
    const int64_t Bc = tile.size(0), T = tile.size(1), L = tile.size(2);
    if (Bc * T == 0) return;
    AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "sgan_attention_row_min_cuda", [&] {
      row_min_kernel<scalar_t><<<static_cast<unsigned int>(Bc * T), kThreads, 0, stream()>>>(
          tile.data_ptr<scalar_t>(), T, L, first, g, counts.data_ptr<int64_t>(), src.data_ptr<int64_t>(),
          static_cast<scalar_t>(scale), row_min.size(1), row_min.data_ptr<scalar_t>(), argmin.data_ptr<int64_t>(),
          min_packed.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void forward_epilogue(const at::Tensor& x_packed, const at::Tensor& numerator,
                               const at::Tensor& key_dot_qsum, const at::Tensor& min_packed, const at::Tensor& x_mean,
                               const at::Tensor& counts, int g, const at::Tensor& src, const at::Tensor& gamma,
                               double scale, double eps, at::Tensor& out) {
    const int64_t Bc = x_packed.size(0), C = x_packed.size(1), N = out.size(2), L = src.size(1);
    const int64_t items = Bc * C * L;
    if (items == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_packed.scalar_type(), "sgan_attention_forward_cuda",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      forward_epilogue_kernel<scalar_t, acc_t><<<blocks_for(items), kThreads, 0, stream()>>>(
          x_packed.data_ptr<scalar_t>(), numerator.data_ptr<acc_t>(), numerator.stride(0),
          key_dot_qsum.data_ptr<acc_t>(), min_packed.data_ptr<acc_t>(), x_mean.data_ptr<acc_t>(),
          counts.data_ptr<int64_t>(), g, src.data_ptr<int64_t>(), gamma.data_ptr<acc_t>(), static_cast<acc_t>(scale), static_cast<acc_t>(eps),
          items, C, N, L, out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void backward_rows(const at::Tensor& key, const at::Tensor& src, at::Tensor& h, at::Tensor& grad_g,
                            const at::Tensor& q_sum_g, const at::Tensor& x_mean, const at::Tensor& min_packed,
                            const at::Tensor& counts, int g, const at::Tensor& gamma, double scale, double eps,
                            at::Tensor& dot, at::Tensor& dmin, at::Tensor& scaled_key) {
    const int64_t Bc = key.size(0), Ck = key.size(1), N = key.size(2), L = src.size(1), C = grad_g.size(1) - 1;
    const int64_t items = Bc * L;
    if (items == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, key.scalar_type(),
                                    "sgan_attention_backward_rows_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_rows_kernel<scalar_t, acc_t><<<blocks_for(items), kThreads, 0, stream()>>>(
          key.data_ptr<scalar_t>(), src.data_ptr<int64_t>(), h.data_ptr<acc_t>(), grad_g.data_ptr<scalar_t>(),
          q_sum_g.data_ptr<acc_t>(), x_mean.data_ptr<acc_t>(), min_packed.data_ptr<acc_t>(),
          counts.data_ptr<int64_t>(), g, gamma.data_ptr<acc_t>(), static_cast<acc_t>(scale),
          static_cast<acc_t>(eps), items, Ck, C, N, L, dot.data_ptr<acc_t>(), dmin.data_ptr<acc_t>(),
          scaled_key.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void argmin_scatter(const at::Tensor& key, const at::Tensor& query_g, const at::Tensor& q_mean,
                             const at::Tensor& dmin, const at::Tensor& argmin, const at::Tensor& pos,
                             const at::Tensor& src, const at::Tensor& counts, int g, double scale,
                             at::Tensor& grad_key_g, at::Tensor& grad_query_g) {
    TORCH_INTERNAL_ASSERT(grad_key_g.is_contiguous() && grad_query_g.is_contiguous());
    const int64_t items = grad_key_g.numel();  // (Bc, Ck, L)
    if (items == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, key.scalar_type(),
                                    "sgan_attention_argmin_scatter_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      argmin_scatter_kernel<scalar_t, acc_t><<<blocks_for(items), kThreads, 0, stream()>>>(
          key.data_ptr<scalar_t>(), query_g.data_ptr<scalar_t>(), q_mean.data_ptr<acc_t>(), dmin.data_ptr<acc_t>(),
          argmin.data_ptr<int64_t>(), pos.data_ptr<int64_t>(), src.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
          g, static_cast<acc_t>(scale), items, key.size(1), pos.size(1), src.size(1),
          grad_key_g.data_ptr<acc_t>(), grad_query_g.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void unpack(const at::Tensor& part, const at::Tensor& src, const at::Tensor& bias, const at::Tensor& addend,
                     at::Tensor& out) {
    TORCH_INTERNAL_ASSERT(!bias.defined() || bias.is_contiguous());
    const int64_t R = out.size(1), L = src.size(1), items = out.size(0) * R * L;
    if (items == 0) return;
    const bool zeros = !part.defined();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sgan_attention_unpack_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      unpack_kernel<scalar_t, acc_t><<<blocks_for(items), kThreads, 0, stream()>>>(
          zeros ? nullptr : part.data_ptr<acc_t>(), zeros ? 0 : part.stride(0), zeros ? 0 : part.stride(1),
          zeros ? 0 : part.stride(2), src.data_ptr<int64_t>(), bias.defined() ? bias.data_ptr<acc_t>() : nullptr,
          addend.defined() ? addend.data_ptr<scalar_t>() : nullptr, items, R, out.size(2), L,
          out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

const std::vector<at::ScalarType> kCudaDtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.defined() && x.is_cuda(), "sgan_ext attention (CUDA kernel): x expected on a CUDA device, got ",
              x.defined() ? x.device() : at::Device(at::kCPU));
}

ForwardResult forward_cuda(const at::Tensor& x, const at::Tensor& key, const at::Tensor& query,
                           const at::Tensor& saliency_mask, const at::Tensor& gamma, double scale, double eps,
                           bool shift, bool bg_mean) {
  check_cuda(x);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  check_inputs(x, key, query, saliency_mask, gamma, kCudaDtypes, "cuda");
  return forward<CudaKernels>(x, key, query, saliency_mask, gamma, scale, eps, shift, bg_mean);
}

BackwardResult backward_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& key,
                             const at::Tensor& query, const at::Tensor& saliency_mask, const at::Tensor& gamma,
                             const at::Tensor& A, const at::Tensor& q_sum, const at::Tensor& x_sum,
                             const at::Tensor& count, const at::Tensor& row_min, const at::Tensor& argmin,
                             double scale, double eps, bool shift, bool bg_mean) {
  check_cuda(x);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  check_inputs(x, key, query, saliency_mask, gamma, kCudaDtypes, "cuda");
  check_backward_inputs(grad_out, x, key, A, q_sum, x_sum, count, row_min, argmin);
  return backward<CudaKernels>(grad_out, x, key, query, saliency_mask, gamma, A, q_sum, x_sum, count, row_min,
                               argmin, scale, eps, shift, bg_mean);
}

}  // namespace
}  // namespace attention
}  // namespace sgan

TORCH_LIBRARY_IMPL(sgan_ext, CUDA, m) {
  m.impl("saliency_attention_forward", &sgan::attention::forward_cuda);
  m.impl("saliency_attention_backward", &sgan::attention::backward_cuda);
}
