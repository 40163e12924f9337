// Saliency-guided attention, factorised algorithm of docs/design.md §2.1: the device-independent driver.
//
// The driver is written once with ATen GEMMs (MKL / cuBLAS) and calls a kernel policy `K`
// (CpuKernels in cpu/attention.cpp, CudaKernels in cuda/attention.cu) for everything that is not
// a GEMM or a plain reduction: building the group layout, packing, the row-minimum reduction, the
// epilogues and the argmin scatter-add. Nothing of size N x N is allocated: the only quadratic
// work, the row minimum, runs over tiles of at most K::kMaxTileRows rows x K::kTileColumns columns.
//
// Group layout. Per image, group g = 0 holds the non-salient positions and g = 1 the salient ones,
// in their original order. Images are processed in chunks of Bc images; in a chunk group g is
// packed into (Bc, R, L_g) tensors, zero-padded, in the input dtype (the GEMM operand dtype):
// L_g = the largest group size in the chunk where the counts are on the host (CPU), else N (CUDA:
// an upper bound that needs no copy of the counts to the host, so nothing waits for the device):
//   pos (Bc, N)      index of position j inside its group
//   src_g (Bc, L_g)  original position of packed column p, -1 for padding
// Padded columns are zero, so they add nothing to the sums and GEMMs; kernels skip p >= n_{b,g}.
//
// Operand dtype. The packed buffers hold the GEMM operand dtype (operand_type): the input dtype on
// CUDA (bfloat16/float16 GEMMs with float32 accumulation), the accumulation dtype on the CPU, whose
// kernels convert while they pack and round once while they unpack, so that a bfloat16/float16
// input is never copied whole into float32.
#pragma once

#include <ATen/ATen.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/record_function.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <tuple>
#include <vector>

namespace sgan {
namespace attention {

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// ---------------------------------------------------------------------------------------------
// Per-element math of the kernels (CPU loops and CUDA kernels).

// The context is computed around the group mean xbar_g = x_g / n_g, with the centred
// Atilde_g = A_g - q_g xbar_g^T = sum_{j in g} Q_j (X_j - xbar_g)^T. Since x_g = n_g xbar_g,
//   num_i = s A_g^T K_i - m_i x_g = s Atilde_g^T K_i + (den_i - eps) xbar_g,  so
//   ctx_i = xbar_g + (s Atilde_g^T K_i - eps xbar_g) / den_i.
// Exact like the plain form, but it keeps the small differences ctx_i - xbar_g (and the small
// gradients of nearly saturated rows) free of cancellation: with a group of one position,
// Atilde_g is exactly 0.

// den_i = s K_i . q_g - m_i n_g + eps
template <typename acc_t>
C10_HOST_DEVICE inline acc_t attention_denominator(acc_t key_dot_qsum, acc_t row_min, acc_t count, acc_t scale,
                                                   acc_t eps) {
  return scale * key_dot_qsum - row_min * count + eps;
}

// A row whose group is its own position alone, with the shift taking that entry as the minimum
// (m_i = P_ii != 0): its weight P_ii - m_i is identically 0, so ctx_i = 0 and the row passes no
// gradient to K, Q (the reference's P - min cancels exactly; the factorised sums would leave a
// rounding residue divided by eps).
template <typename acc_t>
C10_HOST_DEVICE inline bool weights_vanish(acc_t count, acc_t row_min) {
  return count == acc_t(1) && (row_min < acc_t(0) || row_min > acc_t(0));
}

// ctx_i[c] = mean_coef_i xbar[c] + gemm_coef_i (Atilde_g^T K_i)[c], i.e.
// xbar + (s Atilde^T K_i - eps xbar) / den_i with mean_coef = 1 - eps / den_i, gemm_coef = s / den_i.
template <typename acc_t>
struct ContextCoefficients {
  acc_t mean_coef, gemm_coef;
};

template <typename acc_t>
C10_HOST_DEVICE inline ContextCoefficients<acc_t> context_coefficients(acc_t key_dot_qsum, acc_t row_min, acc_t count,
                                                                       acc_t scale, acc_t eps) {
  ContextCoefficients<acc_t> r;
  if (weights_vanish(count, row_min)) {
    r.mean_coef = r.gemm_coef = acc_t(0);
    return r;
  }
  const acc_t den = attention_denominator(key_dot_qsum, row_min, count, scale, eps);
  r.mean_coef = acc_t(1) - eps / den;
  r.gemm_coef = scale / den;
  return r;
}

// True when candidate (value, index) replaces the current (best, best_index) in the row-minimum
// reduction: NaN wins (as torch.min propagates it), then the smaller value, then the lower index.
// best_index < 0 means "nothing yet".
template <typename acc_t>
C10_HOST_DEVICE inline bool min_candidate_wins(acc_t value, int64_t index, acc_t best, int64_t best_index) {
  if (index < 0) return false;
  if (best_index < 0) return true;
  const bool value_nan = at::_isnan(value), best_nan = at::_isnan(best);
  if (best_nan) return value_nan && index < best_index;
  if (value_nan) return true;
  return value < best || (value == best && index < best_index);
}

// The masked zeros of the other group take part in the row minimum: when that group is not empty,
// m_i = min(0, min_{j in g} P_ij), and argmin = -1 when the 0 wins (its gradient is 0).
template <typename acc_t>
C10_HOST_DEVICE inline void apply_masked_zero(bool other_group_nonempty, acc_t& best, int64_t& best_index) {
  if (other_group_nonempty && !at::_isnan(best) && !(best < acc_t(0))) {
    best = acc_t(0);
    best_index = -1;
  }
}

// Per-row scalars of the backward (docs/design.md §2.1 in the centred form above), with
// H_i = Atilde_g G_i and t_i = G_i . (ctx_i - xbar_g) = (s K_i . H_i - eps G_i . xbar_g) / den_i:
//   dot_i = G_i . ctx_i = G_i . xbar_g + t_i                          (dgamma contribution)
//   dden_i = -gamma t_i / den_i,  dm_i = -n_g dden_i
//   key_coef_i = gamma s / den_i       dK_i = key_coef_i H_i + s q_g dden_i,
//                                      dAtilde_g = sum_i key_coef_i K_i G_i^T
//   qsum_coef_i = -t_i                 dq_g = s sum_i K_i dden_i = sum_i qsum_coef_i key_coef_i K_i
//   mean_coef_i = gamma (1 - eps / den_i)   dxbar_g (direct) = sum_i mean_coef_i G_i
// (qsum_coef turns dq_g into a sum over the scaled keys key_coef_i K_i, which dAtilde_g sums too.)
template <typename acc_t>
struct BackwardRow {
  acc_t dot, dden, dmin, key_coef, qsum_coef, mean_coef;
};

template <typename acc_t>
C10_HOST_DEVICE inline BackwardRow<acc_t> backward_row(acc_t key_dot_h, acc_t key_dot_qsum, acc_t grad_dot_xmean,
                                                       acc_t row_min, acc_t count, acc_t gamma, acc_t scale,
                                                       acc_t eps) {
  BackwardRow<acc_t> r;
  if (weights_vanish(count, row_min)) {
    r.dot = r.dden = r.dmin = r.key_coef = r.qsum_coef = r.mean_coef = acc_t(0);
    return r;
  }
  const acc_t den = attention_denominator(key_dot_qsum, row_min, count, scale, eps);
  const acc_t t = (scale * key_dot_h - eps * grad_dot_xmean) / den;
  r.dot = grad_dot_xmean + t;
  r.dden = -gamma * t / den;
  r.dmin = -count * r.dden;
  r.key_coef = gamma * scale / den;
  r.qsum_coef = -t;
  r.mean_coef = gamma * (acc_t(1) - eps / den);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Input checks (TORCH_CHECK: RuntimeError with the argument name, what was expected and got).

inline void check_tensor(const at::Tensor& t, const char* name, const at::Device& device, int64_t dim) {
  TORCH_CHECK(t.defined(), "sgan_ext attention: ", name, " is undefined");
  TORCH_CHECK(t.device() == device, "sgan_ext attention: ", name, " expected on device ", device, ", got ",
              t.device());
  TORCH_CHECK(t.dim() == dim, "sgan_ext attention: ", name, " expected ", dim, " dimensions, got shape ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), "sgan_ext attention: ", name, " expected a contiguous tensor (shape ",
              t.sizes(), ", strides ", t.strides(), ")");
}

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, "sgan_ext attention: ", name, " expected shape ", expected, ", got ",
              t.sizes());
}

inline void check_dtype(const at::Tensor& t, const char* name, at::ScalarType expected) {
  TORCH_CHECK(t.scalar_type() == expected, "sgan_ext attention: ", name, " expected dtype ", expected, ", got ",
              t.scalar_type());
}

inline at::ScalarType accumulate_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The dtype of the packed GEMM operands for inputs of `dtype` (see the layout notes above).
template <class K>
at::ScalarType operand_type(at::ScalarType dtype) {
  return K::kOperandsInAccumulationType ? accumulate_type(dtype) : dtype;
}

// Checks x, key, query, saliency_mask, gamma; `allowed` lists the dtypes the device supports.
inline void check_inputs(const at::Tensor& x, const at::Tensor& key, const at::Tensor& query,
                         const at::Tensor& saliency_mask, const at::Tensor& gamma,
                         const std::vector<at::ScalarType>& allowed, const char* device_name) {
  TORCH_CHECK(x.defined() && x.dim() == 3, "sgan_ext attention: x expected 3 dimensions (B, C, N), got shape ",
              x.defined() ? x.sizes() : at::IntArrayRef{});
  const at::Device device = x.device();
  TORCH_CHECK(std::find(allowed.begin(), allowed.end(), x.scalar_type()) != allowed.end(),
              "sgan_ext attention (", device_name, "): x has unsupported dtype ", x.scalar_type());
  check_tensor(x, "x", device, 3);
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  TORCH_CHECK(B > 0 && C > 0 && N > 0, "sgan_ext attention: x expected non-empty (B, C, N), got shape ", x.sizes());
  check_tensor(key, "key", device, 3);
  const int64_t Ck = key.size(1);
  TORCH_CHECK(Ck > 0, "sgan_ext attention: key expected Ck > 0, got shape ", key.sizes());
  check_shape(key, "key", {B, Ck, N});
  check_tensor(query, "query", device, 3);
  check_shape(query, "query", {B, Ck, N});
  check_dtype(key, "key", x.scalar_type());
  check_dtype(query, "query", x.scalar_type());
  check_tensor(saliency_mask, "saliency_mask", device, 2);
  check_shape(saliency_mask, "saliency_mask", {B, N});
  check_dtype(saliency_mask, "saliency_mask", at::kBool);
  check_tensor(gamma, "gamma", device, 0);
  check_dtype(gamma, "gamma", accumulate_type(x.scalar_type()));
}

// Group layout.

struct Layout {
  at::Tensor cumulative;   // (B, N) int64: salient positions up to and including j
  at::Tensor counts;       // (B, 2) int64 on the device: n_0, n_1
  at::Tensor counts_host;  // the same on the CPU, only when K::kHostCounts
};

// kHostCounts: the packed buffers are sized by the chunk's largest group, read from a host copy of
// the counts (free on the CPU). Without it (CUDA) every group is sized N, an upper bound known
// without copying anything to the host, so forward and backward never wait for the device.
template <class K>
Layout make_layout(const at::Tensor& saliency_mask) {
  Layout layout;
  const int64_t N = saliency_mask.size(1);
  layout.cumulative = saliency_mask.to(at::kLong).cumsum(1);
  at::Tensor n_salient = layout.cumulative.select(1, N - 1);
  layout.counts = at::stack({at::full_like(n_salient, N) - n_salient, n_salient}, 1).contiguous();
  if (K::kHostCounts) layout.counts_host = layout.counts.to(at::kCPU);
  return layout;
}

struct Chunk {
  int64_t begin, size;     // images [begin, begin + size)
  int64_t length[2];       // L_0, L_1
  at::Tensor counts;       // (Bc, 2) int64
  at::Tensor pos;          // (Bc, N) int64
  at::Tensor src[2];       // (Bc, L_g) int64
};

// Images per chunk: all of them when the packed buffers of the whole batch fit `budget` elements,
// else as few chunks as needed, balanced. Without host counts each group is sized N: twice the
// elements of the exact layout.
template <class K>
int64_t chunk_images(int64_t B, int64_t N, int64_t C, int64_t Ck) {
  if (K::kOneImagePerChunk) return 1;
  const int64_t per_image = std::max<int64_t>(1, (K::kHostCounts ? 1 : 2) * N * (3 * C + 5 * Ck));
  const int64_t max_images = std::max<int64_t>(1, std::min<int64_t>(B, K::kChunkBudget / per_image));
  const int64_t chunks = (B + max_images - 1) / max_images;
  return (B + chunks - 1) / chunks;
}

template <class K>
Chunk make_chunk(const Layout& layout, const at::Tensor& saliency_mask, int64_t begin, int64_t size) {
  Chunk chunk;
  chunk.begin = begin;
  chunk.size = size;
  const int64_t N = saliency_mask.size(1);
  for (int g = 0; g < 2; ++g) {
    int64_t longest = N;
    if (K::kHostCounts) {
      auto host = layout.counts_host.accessor<int64_t, 2>();
      longest = 0;
      for (int64_t b = begin; b < begin + size; ++b) longest = std::max(longest, host[b][g]);
    }
    chunk.length[g] = longest;
  }
  const auto index_options = saliency_mask.options().dtype(at::kLong);
  chunk.counts = layout.counts.narrow(0, begin, size);
  chunk.pos = at::empty({size, N}, index_options);
  for (int g = 0; g < 2; ++g) chunk.src[g] = at::full({size, chunk.length[g]}, -1, index_options);
  K::build_layout(saliency_mask.narrow(0, begin, size), layout.cumulative.narrow(0, begin, size), chunk.pos,
                  chunk.src[0], chunk.src[1]);
  return chunk;
}

// The columns of each wanted, non-empty group of a (B, R, N) tensor, for the images of `chunk`:
// {(Bc, R, L_0), (Bc, R, L_1)} in the GEMM operand dtype (operand_type), zero-padded;
// undefined where not wanted. With extra_rows the buffers have R + extra_rows rows, the last ones
// left for the caller to fill.
// Both groups come from one pass over the input, which also
//   subtracts centre (Bc, 2, R) acc when defined: out_g[b, r, p] = input[b, r, j] - centre[b, g, r];
//   writes sums (Bc, 2, R) acc when defined (and centre is not): sums[b, g, r] = sum of the
//   group's values, packed or not (0 for an empty group), accumulated in float64 and rounded
//   once, since these sums (x_g, q_g, sum of G) feed dgamma, itself a long sum.
template <class K>
std::array<at::Tensor, 2> pack(const at::Tensor& input, const Chunk& chunk, std::array<bool, 2> wanted,
                               const at::Tensor& centre = at::Tensor(), const at::Tensor& sums = at::Tensor(),
                               int64_t extra_rows = 0) {
  const at::Tensor part = input.narrow(0, chunk.begin, chunk.size);
  const int64_t R = input.size(1);
  std::array<at::Tensor, 2> out;
  for (int g = 0; g < 2; ++g) {
    if (wanted[g] && chunk.length[g] > 0) {
      out[g] = at::empty({chunk.size, R + extra_rows, chunk.length[g]},
                         input.options().dtype(operand_type<K>(input.scalar_type())));
    }
  }
  if (sums.defined()) sums.zero_();
  std::array<at::Tensor, 2> rows;  // the packed rows, without the extra ones
  for (int g = 0; g < 2; ++g) {
    if (out[g].defined()) rows[g] = out[g].narrow(1, 0, R);
  }
  if (out[0].defined() || out[1].defined() || sums.defined()) {
    K::pack(part, chunk.src[0], chunk.src[1], centre, rows[0], rows[1], sums);
  }
  return out;
}

// A batched GEMM of packed operands, result in `acc`. Low-precision operands (float16, bfloat16)
// stay in their dtype with float32 accumulation and output (cuBLAS tensor cores); an operand in
// `acc` (the small statistics) is rounded to the operand dtype first.
inline at::Tensor gemm(const at::Tensor& a, const at::Tensor& b, at::ScalarType operand, at::ScalarType acc) {
  if (operand == acc) return at::bmm(a.to(acc), b.to(acc));
  return at::bmm(a.to(operand), b.to(operand), acc);
}

// gemm() written into `out` (acc dtype), without a temporary when out is contiguous.
inline void gemm_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, at::ScalarType operand,
                      at::ScalarType acc) {
  if (!out.is_contiguous()) {
    out.copy_(gemm(a, b, operand, acc));
  } else if (operand == acc) {
    at::bmm_out(out, a.to(acc), b.to(acc));
  } else {
    at::bmm_out(out, a.to(operand), b.to(operand), acc);
  }
}

// xbar_g = x_g / n_g per image (Bc, R); images where the group is empty get 0.
inline at::Tensor group_mean(const at::Tensor& group_sum, const at::Tensor& group_count) {
  return group_sum / group_count.clamp_min(1).unsqueeze(1);
}

// gamma ctx (Bc, C) of the background's mean rows (bg_mean), ctx = x_g / (n_g + eps), the same for
// each row of the group: out_j = x_j + gamma ctx.
inline at::Tensor gamma_mean_context(const at::Tensor& x_sum_g, const at::Tensor& count_g, const at::Tensor& gamma,
                                     double eps) {
  return (x_sum_g * (gamma / (count_g + eps)).unsqueeze(1)).contiguous();
}

// Atilde_g = A_g - q_g xbar_g^T, (Bc, Ck, C), in one elementwise pass.
inline at::Tensor centred_products(const at::Tensor& A_g, const at::Tensor& q_sum_g, const at::Tensor& x_mean) {
  return at::addcmul(A_g, q_sum_g.unsqueeze(2), x_mean.unsqueeze(1), -1);
}

// A vector v (Bc, R) in the accumulation dtype as extra rows (Bc, e, R) of a GEMM operand, so that
// the GEMM yields its products with the other operand's columns (K_i . q_g) instead of a separate
// matrix-vector pass: v itself (e = 1) when the operands are in the accumulation dtype, else v
// split into its rounding to the operand dtype and the remainder (e = 2), so that the sum of the
// two product rows keeps the precision of the accumulation dtype.
inline at::Tensor vector_rows(const at::Tensor& v, at::ScalarType operand, at::ScalarType acc) {
  if (operand == acc) return v.unsqueeze(1);
  const at::Tensor high = v.to(operand).to(acc);
  return at::stack({high, v - high}, 1);
}

// The product rows (Bc, e, L) of vector_rows' rows, summed into (Bc, L).
inline at::Tensor vector_products(const at::Tensor& rows) {
  return rows.size(1) == 1 ? rows.select(1, 0).contiguous() : rows.sum(1);
}

// ---------------------------------------------------------------------------------------------
// Forward.
//
// Autocast: forward and backward choose their GEMM dtypes themselves, so both run with the
// autocast dispatch keys excluded: under torch.autocast the ATen ops inside would otherwise be
// recast (float32 GEMMs run in bfloat16, results of another dtype than the kernels expect).

template <class K>
void row_minimum(const at::Tensor& key_g, const at::Tensor& query_g, const Chunk& chunk, int g, double scale,
                 at::ScalarType acc, at::Tensor& row_min, at::Tensor& argmin, at::Tensor& min_packed) {
  // a profiler scope, so that the pass's tile GEMMs can be told from the algorithm's own GEMMs
  RECORD_FUNCTION("sgan_attention_row_minimum", std::vector<c10::IValue>());
  const int64_t L = chunk.length[g];
  const at::ScalarType operand = key_g.scalar_type();
  const int64_t columns = std::min(L, K::kTileColumns);
  const int64_t budget_rows = K::kTileBudget / std::max<int64_t>(1, chunk.size * columns);
  const int64_t rows =
      std::min<int64_t>(L, std::max<int64_t>(K::kMinTileRows, std::min<int64_t>(K::kMaxTileRows, budget_rows)));
  for (int64_t first = 0; first < L; first += rows) {
    const at::Tensor key_rows = key_g.narrow(2, first, std::min(rows, L - first)).transpose(1, 2);
    // each row's columns in order, so that the kernel can carry the row's minimum from tile to tile
    for (int64_t column = 0; column < L; column += columns) {
      // P tile (Bc, rows, columns) = K_rows^T Q_columns, unscaled; the kernel scales, as the reference does
      const at::Tensor tile =
          gemm(key_rows, query_g.narrow(2, column, std::min(columns, L - column)), operand, acc);
      K::row_min_tile(tile, first, column, g, chunk.counts, chunk.src[g], scale, row_min, argmin, min_packed);
    }
  }
}

template <class K>
ForwardResult forward(const at::Tensor& x, const at::Tensor& key, const at::Tensor& query,
                      const at::Tensor& saliency_mask, const at::Tensor& gamma, double scale, double eps, bool shift,
                      bool bg_mean) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // see above forward()
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2), Ck = key.size(1);
  const at::ScalarType acc = accumulate_type(x.scalar_type()), operand = operand_type<K>(x.scalar_type());
  const auto acc_options = x.options().dtype(acc);
  at::Tensor out = at::empty_like(x);
  at::Tensor A = at::empty({B, 2, Ck, C}, acc_options);
  at::Tensor q_sum = at::empty({B, 2, Ck}, acc_options);
  at::Tensor x_sum = at::empty({B, 2, C}, acc_options);
  at::Tensor row_min = at::zeros({B, N}, acc_options);
  at::Tensor argmin = at::full({B, N}, -1, x.options().dtype(at::kLong));
  const Layout layout = make_layout<K>(saliency_mask);
  const at::Tensor count = layout.counts.to(acc);

  const int64_t images = chunk_images<K>(B, N, C, Ck);
  for (int64_t begin = 0; begin < B; begin += images) {
    const Chunk chunk = make_chunk<K>(layout, saliency_mask, begin, std::min(images, B - begin));
    at::Tensor out_chunk = out.narrow(0, begin, chunk.size);
    at::Tensor row_min_chunk = row_min.narrow(0, begin, chunk.size);
    at::Tensor argmin_chunk = argmin.narrow(0, begin, chunk.size);
    // the group sums q_g, x_g come out of the packing pass, straight into the statistics
    at::Tensor q_sums = q_sum.narrow(0, begin, chunk.size), x_sums = x_sum.narrow(0, begin, chunk.size);
    // only the attending groups are packed; the sums cover both
    const std::array<bool, 2> attending = {!bg_mean, true};
    std::array<at::Tensor, 2> query_p = pack<K>(query, chunk, attending, at::Tensor(), q_sums);
    std::array<at::Tensor, 2> x_p = pack<K>(x, chunk, attending, at::Tensor(), x_sums);
    std::array<at::Tensor, 2> key_p = pack<K>(key, chunk, attending);
    for (int g = 0; g < 2; ++g) {
      at::Tensor A_g = A.narrow(0, begin, chunk.size).select(1, g);
      const at::Tensor q_sum_g = q_sums.select(1, g);  // (Bc, Ck)
      const at::Tensor x_sum_g = x_sums.select(1, g);  // (Bc, C)
      if (!attending[g] || chunk.length[g] == 0) {  // nothing reads A_g (or the group is empty)
        A_g.zero_();
        if (!attending[g] && chunk.length[g] > 0) {  // the background's mean rows
          const at::Tensor bias = gamma_mean_context(x_sum_g, count.narrow(0, begin, chunk.size).select(1, g),
                                                     gamma, eps);
          K::unpack(at::Tensor(), chunk.src[g], bias, x.narrow(0, begin, chunk.size), out_chunk);
        }
        continue;
      }
      at::Tensor& query_g = query_p[g];
      gemm_into(A_g, query_g, x_p[g].transpose(1, 2), operand, acc);  // A_g = sum_j Q_j X_j^T
      const at::Tensor key_g = std::move(key_p[g]);
      at::Tensor min_packed = at::zeros({chunk.size, chunk.length[g]}, acc_options);
      if (shift) row_minimum<K>(key_g, query_g, chunk, g, scale, acc, row_min_chunk, argmin_chunk, min_packed);
      query_g.reset();
      const at::Tensor x_mean = group_mean(x_sum_g, count.narrow(0, begin, chunk.size).select(1, g));
      const at::Tensor A_centred = centred_products(A_g, q_sum_g, x_mean);
      // one GEMM for the numerator Atilde_g^T K_i (Bc, C, L_g) and K_i . q_g (Bc, L_g)
      const at::Tensor products =
          gemm(at::cat({A_centred.transpose(1, 2), vector_rows(q_sum_g, operand, acc)}, 1), key_g, operand, acc);
      const at::Tensor numerator = products.narrow(1, 0, C);
      const at::Tensor key_dot_qsum = vector_products(products.narrow(1, C, products.size(1) - C));
      K::forward_epilogue(x_p[g], numerator, key_dot_qsum, min_packed, x_mean.contiguous(), chunk.counts, g,
                          chunk.src[g], gamma, scale, eps, out_chunk);
      x_p[g].reset();
    }
  }
  return ForwardResult(out, A, q_sum, x_sum, count, row_min, argmin);
}

// ---------------------------------------------------------------------------------------------
// Backward.

inline void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& key,
                                  const at::Tensor& A, const at::Tensor& q_sum, const at::Tensor& x_sum,
                                  const at::Tensor& count, const at::Tensor& row_min, const at::Tensor& argmin) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2), Ck = key.size(1);
  const at::Device device = x.device();
  const at::ScalarType acc = accumulate_type(x.scalar_type());
  check_tensor(grad_out, "grad_out", device, 3);
  check_shape(grad_out, "grad_out", x.sizes());
  check_dtype(grad_out, "grad_out", x.scalar_type());
  const struct {
    const at::Tensor& t;
    const char* name;
    std::vector<int64_t> shape;
    at::ScalarType dtype;
  } stats[] = {{A, "A", {B, 2, Ck, C}, acc},       {q_sum, "q_sum", {B, 2, Ck}, acc},
               {x_sum, "x_sum", {B, 2, C}, acc},    {count, "count", {B, 2}, acc},
               {row_min, "row_min", {B, N}, acc},   {argmin, "argmin", {B, N}, at::kLong}};
  for (const auto& s : stats) {
    check_tensor(s.t, s.name, device, static_cast<int64_t>(s.shape.size()));
    check_shape(s.t, s.name, s.shape);
    check_dtype(s.t, s.name, s.dtype);
  }
}

template <class K>
BackwardResult backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& key,
                        const at::Tensor& query, const at::Tensor& saliency_mask, const at::Tensor& gamma,
                        const at::Tensor& A, const at::Tensor& q_sum, const at::Tensor& x_sum,
                        const at::Tensor& count, const at::Tensor& row_min, const at::Tensor& argmin, double scale,
                        double eps, bool shift, bool bg_mean) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // see above forward()
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2), Ck = key.size(1);
  const at::ScalarType acc = accumulate_type(x.scalar_type()), operand = operand_type<K>(x.scalar_type());
  const auto acc_options = x.options().dtype(acc);
  at::Tensor grad_x, grad_key, grad_query;
  at::Tensor grad_gamma = at::zeros({}, acc_options.dtype(at::kDouble));  // a sum over B N C terms
  const Layout layout = make_layout<K>(saliency_mask);
  const at::Tensor group_count = count.clamp_min(1).unsqueeze(2);  // (B, 2, 1)
  const at::Tensor x_means = x_sum / group_count, q_means = q_sum / group_count;  // (B, 2, C), (B, 2, Ck)

  const int64_t images = chunk_images<K>(B, N, C, Ck);
  for (int64_t begin = 0; begin < B; begin += images) {
    const Chunk chunk = make_chunk<K>(layout, saliency_mask, begin, std::min(images, B - begin));
    const int64_t Bc = chunk.size;
    const at::Tensor grad_out_chunk = grad_out.narrow(0, begin, Bc);
    const at::Tensor key_chunk = key.narrow(0, begin, Bc);  // the kernels read K_i where it is: no packed keys
    const at::Tensor x_mean_chunk = x_means.narrow(0, begin, Bc), q_mean_chunk = q_means.narrow(0, begin, Bc);
    const std::array<bool, 2> attending = {!bg_mean, true};
    // the sums of G's groups, for the background's mean rows only
    const at::Tensor grad_sums = bg_mean ? at::empty({Bc, 2, C}, acc_options) : at::Tensor();
    // G with a row for the kernel's qsum_coef (backward_rows), which the GEMM of dAtilde_g takes along
    std::array<at::Tensor, 2> grad_p = pack<K>(grad_out, chunk, attending, at::Tensor(), grad_sums, 1);
    // X and Q packed around their group means: the GEMMs below take X_j - xbar_g and Q_j - q_g / n_g
    std::array<at::Tensor, 2> x_p = pack<K>(x, chunk, attending, x_mean_chunk);
    std::array<at::Tensor, 2> query_p = pack<K>(query, chunk, attending, q_mean_chunk);
    std::array<at::Tensor, 2> min_p = pack<K>(row_min.unsqueeze(1), chunk, {shift && !bg_mean, shift});
    if (!grad_x.defined()) {  // after the first packs: the packed buffers reuse what the forward freed
      grad_x = at::empty_like(x);
      grad_key = at::empty_like(key);
      grad_query = at::empty_like(query);
    }
    at::Tensor grad_x_chunk = grad_x.narrow(0, begin, Bc);
    at::Tensor grad_key_chunk = grad_key.narrow(0, begin, Bc);
    at::Tensor grad_query_chunk = grad_query.narrow(0, begin, Bc);
    for (int g = 0; g < 2; ++g) {
      const int64_t L = chunk.length[g];
      if (L == 0) continue;
      const at::Tensor x_sum_g = x_sum.narrow(0, begin, Bc).select(1, g).contiguous();  // (Bc, C)
      if (bg_mean && g == 0) {
        // ctx_i = x_bg / (n_bg + eps) for every background row i: dgamma += G_i . ctx_i and every
        // background column j gets dX_j += gamma G_i / (n_bg + eps), summed over those rows.
        const at::Tensor grad_sum = grad_sums.select(1, 0);                                  // (Bc, C)
        const at::Tensor inv_count = (count.narrow(0, begin, Bc).select(1, 0) + eps).reciprocal();  // (Bc)
        grad_gamma.add_(((grad_sum.to(at::kDouble) * x_sum_g).sum(1) * inv_count).sum());
        // gamma_mean_context's quantity for G, in the rounding order training runs have used so far:
        // changing it moves a float32 training run's last bits, and with them the committed results/demo
        const at::Tensor grad_x_bias = (grad_sum * inv_count.unsqueeze(1) * gamma).contiguous();  // (Bc, C)
        K::unpack(at::Tensor(), chunk.src[g], grad_x_bias, grad_out_chunk, grad_x_chunk);
        K::unpack(at::Tensor(), chunk.src[g], at::Tensor(), at::Tensor(), grad_key_chunk);
        K::unpack(at::Tensor(), chunk.src[g], at::Tensor(), at::Tensor(), grad_query_chunk);
        continue;
      }
      at::Tensor grad_rows = std::move(grad_p[g]);                                      // (Bc, C + 1, L)
      const at::Tensor grad_g = grad_rows.narrow(1, 0, C);                              // (Bc, C, L)
      const at::Tensor count_g = count.narrow(0, begin, Bc).select(1, g);              // (Bc)
      const at::Tensor q_sum_g = q_sum.narrow(0, begin, Bc).select(1, g).contiguous();  // (Bc, Ck)
      const at::Tensor x_mean = x_mean_chunk.select(1, g).contiguous();                 // (Bc, C)
      const at::Tensor A_centred = centred_products(A.narrow(0, begin, Bc).select(1, g), q_sum_g, x_mean);
      const at::Tensor min_packed = shift ? min_p[g].squeeze(1) : at::zeros({Bc, L}, acc_options);  // (Bc, L)
      // H = Atilde_g G; backward_rows turns it, in place, into dK_i = key_coef_i H_i + s q_g dden_i
      at::Tensor grad_key_g = gemm(A_centred, grad_g, operand, acc);
      at::Tensor dot = at::empty({Bc, L}, acc_options), dmin = at::empty({Bc, L}, acc_options);
      // rows key_coef_i K_i and, as row Ck, mean_coef_i; backward_rows also writes qsum_coef_i into G's row C
      at::Tensor scaled_key = at::empty({Bc, Ck + 1, L}, key.options().dtype(operand));
      K::backward_rows(key_chunk, chunk.src[g], grad_key_g, grad_rows, q_sum_g, x_mean, min_packed, chunk.counts, g,
                       gamma, scale, eps, dot, dmin, scaled_key);
      grad_gamma.add_(dot.sum(at::kDouble));
      // one GEMM, sum_i [key_coef_i K_i; mean_coef_i] [G_i; qsum_coef_i]^T (Bc, Ck + 1, C + 1), holds
      //   dAtilde_g = sum_i key_coef_i K_i G_i^T, dq_g = sum_i qsum_coef_i key_coef_i K_i (column C)
      //   and dxbar_g = sum_i mean_coef_i G_i (row Ck)
      const at::Tensor grad_stats = gemm(scaled_key, grad_rows.transpose(1, 2), operand, acc);
      scaled_key.reset();
      const at::Tensor grad_A = grad_stats.narrow(1, 0, Ck).narrow(2, 0, C);                // (Bc, Ck, C)
      const at::Tensor grad_qsum = grad_stats.narrow(1, 0, Ck).select(2, C).contiguous();  // (Bc, Ck)
      const at::Tensor grad_xsum =
          grad_stats.select(1, Ck).narrow(1, 0, C).div(count_g.clamp_min(1).unsqueeze(1));  // dxbar_g / n_g
      // Through Atilde_g = sum_j Q_j (X_j - xbar_g)^T and xbar_g = x_g / n_g:
      //   dQ_j = dAtilde_g (X_j - xbar_g) + dq_g,  dX_j = G_j + dAtilde_g^T (Q_j - q_g / n_g) + dxbar_g / n_g
      // (the per-channel terms dq_g, dxbar_g / n_g and G_j are added when unpacking)
      at::Tensor grad_query_g = gemm(grad_A, x_p[g], operand, acc);  // + dq_g at unpack
      x_p[g].reset();
      const at::Tensor query_g = std::move(query_p[g]);  // Q_j - q_g / n_g
      if (shift) {  // dK_i += s Q_a(i) dm_i, dQ_a(i) += s K_i dm_i
        K::argmin_scatter(key_chunk, query_g, q_mean_chunk.select(1, g).contiguous(), dmin, argmin.narrow(0, begin, Bc),
                          chunk.pos, chunk.src[g], chunk.counts, g, scale, grad_key_g, grad_query_g);
      }
      // dX_j - dxbar_g / n_g: with operands in the accumulation dtype G_j enters the GEMM (in place in
      // the packed G, read for the last time); else it is added when unpacking, as dxbar_g / n_g is
      if (operand == acc) {
        K::unpack(grad_g.baddbmm_(grad_A.transpose(1, 2), query_g), chunk.src[g], grad_xsum, at::Tensor(),
                  grad_x_chunk);
      } else {
        K::unpack(gemm(grad_A.transpose(1, 2), query_g, operand, acc), chunk.src[g], grad_xsum, grad_out_chunk,
                  grad_x_chunk);
      }
      K::unpack(grad_key_g, chunk.src[g], at::Tensor(), at::Tensor(), grad_key_chunk);
      K::unpack(grad_query_g, chunk.src[g], grad_qsum, at::Tensor(), grad_query_chunk);
    }
  }
  return BackwardResult(grad_x, grad_key, grad_query, grad_gamma.to(gamma.scalar_type()).reshape(gamma.sizes()));
}

}  // namespace attention
}  // namespace sgan
