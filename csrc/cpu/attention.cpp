// Saliency-guided attention: operator schemas (torch.ops.sgan_ext.*) and the CPU kernels.
// The algorithm (shared with CUDA) is in ../attention_common.h; the contract is the docstring of
// sgan/ops/attention/function.py. CPU: one image per chunk (no padding), MKL GEMMs through ATen,
// the loops below parallel over rows or channels with at::parallel_for; bfloat16/float16 inputs are
// computed in float32: packed into float32 buffers (converted while packing, the keys while they
// are gathered) and rounded once where results are written, never copied whole.
#include <torch/library.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../attention_common.h"

namespace sgan {
namespace attention {
namespace {

// Work items per parallel task for loops whose items cost `per_item` elements.
int64_t grain(int64_t per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, per_item));
}

// The row minimum's scan, compiled for AVX-512, AVX2 and the baseline, chosen at load time.
#if defined(__GNUC__) && defined(__x86_64__)
#define SGAN_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SGAN_VECTOR_CLONES
#endif

// (best, best_index) = the minimum of scale * row[p] over p < L and its column, under
// min_candidate_wins: lanes of 64 bytes each keep their first strictly smaller value (so the lower
// column on ties) and whether they saw a NaN; the lanes are then merged by the same rule, a row
// holding a NaN takes its first NaN, and the columns past the last full lane block are added one
// by one. Index lanes have the width of the values (the comparison masks'), int32 for float.
template <typename scalar_t, typename index_t>
__attribute__((always_inline)) inline void scaled_row_minimum_lanes(const scalar_t* row, int64_t L, scalar_t scale,
                                                                    scalar_t& best, int64_t& best_index) {
  constexpr int kLanes = 64 / sizeof(scalar_t);
  typedef scalar_t values_t __attribute__((vector_size(64)));
  typedef index_t indices_t __attribute__((vector_size(64)));
  best = scalar_t(0);
  best_index = -1;
  int64_t p = 0;
  if (L >= kLanes) {
    values_t lane_best;
    std::memcpy(&lane_best, row, sizeof(values_t));
    lane_best *= scale;
    indices_t column, lane_index;
    for (int u = 0; u < kLanes; ++u) column[u] = u;
    lane_index = column;
    indices_t lane_nan = lane_best != lane_best;
    for (p = kLanes; p + kLanes <= L; p += kLanes) {
      values_t v;
      std::memcpy(&v, row + p, sizeof(values_t));
      v *= scale;
      column += kLanes;
      const indices_t smaller = v < lane_best;
      lane_best = smaller ? v : lane_best;
      lane_index = smaller ? column : lane_index;
      lane_nan |= v != v;
    }
    bool any_nan = false;
    for (int u = 0; u < kLanes; ++u) any_nan = any_nan || lane_nan[u] != 0;
    if (any_nan) {
      int64_t q = 0;
      while (!at::_isnan(row[q] * scale)) ++q;
      best = row[q] * scale;
      best_index = q;
      return;
    }
    for (int u = 0; u < kLanes; ++u) {
      if (min_candidate_wins(lane_best[u], static_cast<int64_t>(lane_index[u]), best, best_index)) {
        best = lane_best[u];
        best_index = lane_index[u];
      }
    }
  }
  for (; p < L; ++p) {
    const scalar_t v = row[p] * scale;
    if (min_candidate_wins(v, p, best, best_index)) {
      best = v;
      best_index = p;
    }
  }
}

SGAN_VECTOR_CLONES void scaled_row_minimum(const float* row, int64_t L, float scale, float& best,
                                           int64_t& best_index) {
  scaled_row_minimum_lanes<float, int32_t>(row, L, scale, best, best_index);
}

SGAN_VECTOR_CLONES void scaled_row_minimum(const double* row, int64_t L, double scale, double& best,
                                           int64_t& best_index) {
  scaled_row_minimum_lanes<double, int64_t>(row, L, scale, best, best_index);
}

// The per-row loops of backward_rows over a block of `width` packed rows, each row of a channel
// being `width` contiguous values (channel rows `stride` apart):
//   weighted_rows: out[i] += sum_c rows[c][i] weight[c]   (G . xbar_g, K . q_g)
//   row_dots:      out[i] += sum_k a[k][i] b[k][i]         (K . H)
//   scale_rows:    s[k][i] = coef[i] keys[k][i], h[k][i] = coef[i] h[k][i] + q[k] shift[i]
template <typename scalar_t>
__attribute__((always_inline)) inline void weighted_rows_impl(const scalar_t* rows, int64_t stride,
                                                              const scalar_t* weight, int64_t count, int64_t width,
                                                              scalar_t* out) {
  for (int64_t c = 0; c < count; ++c) {
    const scalar_t* row = rows + c * stride;
    const scalar_t w = weight[c];
    for (int64_t i = 0; i < width; ++i) out[i] += row[i] * w;
  }
}

template <typename scalar_t>
__attribute__((always_inline)) inline void row_dots_impl(const scalar_t* a, int64_t stride_a, const scalar_t* b,
                                                         int64_t stride_b, int64_t count, int64_t width,
                                                         scalar_t* out) {
  for (int64_t k = 0; k < count; ++k) {
    const scalar_t *ra = a + k * stride_a, *rb = b + k * stride_b;
    for (int64_t i = 0; i < width; ++i) out[i] += ra[i] * rb[i];
  }
}

template <typename scalar_t>
__attribute__((always_inline)) inline void scale_rows_impl(const scalar_t* keys, int64_t stride_keys,
                                                           const scalar_t* coef, const scalar_t* q,
                                                           const scalar_t* shift, int64_t count, int64_t width,
                                                           scalar_t* scaled, scalar_t* h, int64_t stride) {
  for (int64_t k = 0; k < count; ++k) {
    const scalar_t* key = keys + k * stride_keys;
    scalar_t *s = scaled + k * stride, *hk = h + k * stride;
    const scalar_t qk = q[k];
    for (int64_t i = 0; i < width; ++i) {
      s[i] = coef[i] * key[i];
      hk[i] = coef[i] * hk[i] + qk * shift[i];
    }
  }
}

#define SGAN_BACKWARD_ROW_LOOPS(scalar_t)                                                                           \
  SGAN_VECTOR_CLONES void weighted_rows(const scalar_t* rows, int64_t stride, const scalar_t* weight, int64_t count, \
                                        int64_t width, scalar_t* out) {                                             \
    weighted_rows_impl(rows, stride, weight, count, width, out);                                                    \
  }                                                                                                                 \
  SGAN_VECTOR_CLONES void row_dots(const scalar_t* a, int64_t stride_a, const scalar_t* b, int64_t stride_b,        \
                                   int64_t count, int64_t width, scalar_t* out) {                                   \
    row_dots_impl(a, stride_a, b, stride_b, count, width, out);                                                     \
  }                                                                                                                 \
  SGAN_VECTOR_CLONES void scale_rows(const scalar_t* keys, int64_t stride_keys, const scalar_t* coef,               \
                                     const scalar_t* q, const scalar_t* shift, int64_t count, int64_t width,        \
                                     scalar_t* scaled, scalar_t* h, int64_t stride) {                               \
    scale_rows_impl(keys, stride_keys, coef, q, shift, count, width, scaled, h, stride);                            \
  }
SGAN_BACKWARD_ROW_LOOPS(float)
SGAN_BACKWARD_ROW_LOOPS(double)
#undef SGAN_BACKWARD_ROW_LOOPS

// A group's packed columns as runs of consecutive original positions: packed columns
// [packed, packed + length) of group `group` are the positions [source, source + length). The loops copy
// run by run, contiguous on both sides (a salient region is a few runs per image row).
struct Run {
  int64_t packed, source, length;
  int group;
};

// The runs of src[0, L) (the original position of each packed column, -1 for none) of group `group`.
std::vector<Run> runs_of(const int64_t* src, int64_t L, int group = 0) {
  std::vector<Run> runs;
  for (int64_t p = 0; p < L;) {
    if (src[p] < 0) {
      ++p;
      continue;
    }
    int64_t q = p + 1;
    while (q < L && src[q] == src[q - 1] + 1) ++q;
    runs.push_back({p, src[p], q - p, group});
    p = q;
  }
  return runs;
}

// The runs of both groups, in the order of their original positions: a loop over them walks an
// original row once, from its start to its end.
std::vector<Run> runs_in_row_order(const at::Tensor& src0, const at::Tensor& src1) {
  std::vector<Run> runs = runs_of(src0.data_ptr<int64_t>(), src0.size(1), 0);
  const std::vector<Run> second = runs_of(src1.data_ptr<int64_t>(), src1.size(1), 1);
  runs.insert(runs.end(), second.begin(), second.end());
  std::sort(runs.begin(), runs.end(), [](const Run& a, const Run& b) { return a.source < b.source; });
  return runs;
}

// The run holding packed column p.
std::vector<Run>::const_iterator run_at(const std::vector<Run>& runs, int64_t p) {
  return std::upper_bound(runs.begin(), runs.end(), p, [](int64_t column, const Run& run) {
           return column < run.packed;
         }) - 1;
}

// to[0, n) = from[0, n), converted from the input dtype to the accumulation dtype (a plain copy when
// they are the same).
template <typename scalar_t, typename acc_t>
inline void convert_copy(const scalar_t* from, int64_t n, acc_t* to) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(to, from, n * sizeof(acc_t));
  } else {
    for (int64_t q = 0; q < n; ++q) to[q] = static_cast<acc_t>(from[q]);
  }
}

// One original row into the packed rows of its groups, walking the row once (runs in row order):
// to[g][packed + q] = row[source + q] - centre[g] converted to the accumulation dtype, for each run
// of group g (to[g] null: the group is not wanted), and with kSums sums[g] = the sum of the group's
// values in float64, kept in kSumLanes lanes per group, so that the additions vectorise.
constexpr int kSumLanes = 16;

template <bool kSums, typename scalar_t, typename acc_t>
__attribute__((always_inline)) inline void pack_row_impl(const scalar_t* row, const Run* runs, int64_t count,
                                                         acc_t* const* to, const acc_t* centre, double* sums) {
  double lanes[2][kSumLanes] = {};
  for (int64_t k = 0; k < count; ++k) {
    const Run& run = runs[k];
    const scalar_t* from = row + run.source;
    acc_t* out = to[run.group] == nullptr ? nullptr : to[run.group] + run.packed;
    if (out == nullptr && !kSums) continue;
    const acc_t c = centre[run.group];
    double* lane = lanes[run.group];
    const int64_t n = run.length;
    int64_t q = 0;
    if (out != nullptr) {
      for (; q + kSumLanes <= n; q += kSumLanes) {
        for (int u = 0; u < kSumLanes; ++u) {
          const acc_t v = static_cast<acc_t>(from[q + u]) - c;
          out[q + u] = v;
          if constexpr (kSums) lane[u] += static_cast<double>(v);
        }
      }
      for (; q < n; ++q) {
        const acc_t v = static_cast<acc_t>(from[q]) - c;
        out[q] = v;
        if constexpr (kSums) lane[q % kSumLanes] += static_cast<double>(v);
      }
    } else {
      for (; q + kSumLanes <= n; q += kSumLanes) {
        for (int u = 0; u < kSumLanes; ++u) lane[u] += static_cast<double>(static_cast<acc_t>(from[q + u]) - c);
      }
      for (; q < n; ++q) lane[q % kSumLanes] += static_cast<double>(static_cast<acc_t>(from[q]) - c);
    }
  }
  if constexpr (kSums) {
    for (int g = 0; g < 2; ++g) {
      double total = 0;
      for (int u = 0; u < kSumLanes; ++u) total += lanes[g][u];
      sums[g] = total;
    }
  }
}

#define SGAN_PACK_ROW(scalar_t, acc_t)                                                                           \
  SGAN_VECTOR_CLONES void pack_row(const scalar_t* row, const Run* runs, int64_t count, acc_t* const* to,       \
                                   const acc_t* centre, double* sums) {                                        \
    if (sums != nullptr) {                                                                                     \
      pack_row_impl<true>(row, runs, count, to, centre, sums);                                                 \
    } else {                                                                                                   \
      pack_row_impl<false>(row, runs, count, to, centre, sums);                                                \
    }                                                                                                          \
  }
SGAN_PACK_ROW(float, float)
SGAN_PACK_ROW(double, double)
SGAN_PACK_ROW(at::BFloat16, float)
SGAN_PACK_ROW(at::Half, float)
#undef SGAN_PACK_ROW

// out[0, width) = packed columns [p0, p0 + width) of an original row, run by run from `run`, the
// run holding p0, converted to the accumulation dtype.
template <typename scalar_t, typename acc_t>
void gather_columns(const scalar_t* row, std::vector<Run>::const_iterator run, int64_t p0, int64_t width,
                    acc_t* out) {
  for (int64_t p = p0; p < p0 + width; ++run) {
    const int64_t take = std::min(run->packed + run->length, p0 + width) - p;
    convert_copy(row + run->source + (p - run->packed), take, out + (p - p0));
    p += take;
  }
}

struct CpuKernels {
  static constexpr bool kOneImagePerChunk = true;
  static constexpr int64_t kChunkBudget = 0;          // unused: one image per chunk
  // Row-minimum tiles of at most 512 rows x 1024 columns (2 MiB float): still in cache when the pass
  // reads them, and a shape MKL computes faster than wider or larger tiles (bench/README.md).
  static constexpr int64_t kTileBudget = 1 << 19;
  static constexpr int64_t kMinTileRows = 32;
  static constexpr int64_t kMaxTileRows = 512;
  static constexpr int64_t kTileColumns = 1024;

  static void build_layout(const at::Tensor& mask, const at::Tensor& cumulative, at::Tensor& pos, at::Tensor& src0,
                           at::Tensor& src1) {
    RECORD_FUNCTION("sgan_attention_build_layout", std::vector<c10::IValue>());
    const int64_t Bc = mask.size(0), N = mask.size(1), L0 = src0.size(1), L1 = src1.size(1);
    const bool* m = mask.data_ptr<bool>();
    const int64_t* cum = cumulative.data_ptr<int64_t>();
    int64_t* p = pos.data_ptr<int64_t>();
    int64_t* s0 = src0.data_ptr<int64_t>();
    int64_t* s1 = src1.data_ptr<int64_t>();
    // one task per image: a few operations per position, too little to share an image's positions
    at::parallel_for(0, Bc, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t j = 0; j < N; ++j) {
          const int64_t idx = b * N + j;
          const int64_t in_group = m[idx] ? cum[idx] - 1 : j - cum[idx];
          p[idx] = in_group;
          if (m[idx]) {
            s1[b * L1 + in_group] = j;
          } else {
            s0[b * L0 + in_group] = j;
          }
        }
      }
    });
  }

  static constexpr bool kHostCounts = true;
  static constexpr bool kOperandsInAccumulationType = true;  // packed buffers and GEMMs in float32 / float64

  // out_g[b, r, p] = input[b, r, src_g[b, p]] (- centre[b, g, r]) for the defined outputs (in the
  // accumulation dtype, converted from the input's), each input row read once, the runs of both
  // groups in the row's order (pack_row), with sums[b, g, r] = sum of the group's values, packed or
  // not (see pack() in the driver), added while copying. A CPU chunk holds one image, so src_g has
  // no padding.
  static void pack(const at::Tensor& input, const at::Tensor& src0, const at::Tensor& src1, const at::Tensor& centre,
                   at::Tensor& out0, at::Tensor& out1, const at::Tensor& sums) {
    RECORD_FUNCTION("sgan_attention_pack", std::vector<c10::IValue>());
    TORCH_INTERNAL_ASSERT(input.size(0) == 1, "CPU chunks hold one image");
    const int64_t R = input.size(1), N = input.size(2);
    const std::vector<Run> runs = runs_in_row_order(src0, src1);
    const int64_t lengths[2] = {src0.size(1), src1.size(1)};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "sgan_attention_pack_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* in = input.data_ptr<scalar_t>();
      acc_t* outputs[2] = {out0.defined() ? out0.data_ptr<acc_t>() : nullptr,
                           out1.defined() ? out1.data_ptr<acc_t>() : nullptr};
      const acc_t* centres = centre.defined() ? centre.data_ptr<acc_t>() : nullptr;
      acc_t* sum_out = sums.defined() ? sums.data_ptr<acc_t>() : nullptr;
      at::parallel_for(0, R, grain(N), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          acc_t* to[2];
          acc_t row_centre[2];
          for (int g = 0; g < 2; ++g) {
            to[g] = outputs[g] == nullptr ? nullptr : outputs[g] + r * lengths[g];
            row_centre[g] = centres == nullptr ? acc_t(0) : centres[g * R + r];
          }
          double row_sums[2];
          pack_row(in + r * N, runs.data(), static_cast<int64_t>(runs.size()), to, row_centre,
                   sum_out == nullptr ? nullptr : row_sums);
          if (sum_out != nullptr) {
            for (int g = 0; g < 2; ++g) sum_out[g * R + r] = static_cast<acc_t>(row_sums[g]);
          }
        }
      });
    });
  }

  // The tile holds the group columns [column, column + P) of rows [first, first + T); one image per
  // chunk, so every tile column is a column of the group (no padding). Each row's minimum of s P_ij
  // over the tile and its column come from one pass (scaled_row_minimum) and are merged with what
  // the row's earlier tiles found, kept in min_packed and (as a packed column) in argmin; the tile
  // that ends the row adds the masked 0 and writes the original indices.
  static void row_min_tile(const at::Tensor& tile, int64_t first, int64_t column, int g, const at::Tensor& counts,
                           const at::Tensor& src, double scale, at::Tensor& row_min, at::Tensor& argmin,
                           at::Tensor& min_packed) {
    RECORD_FUNCTION("sgan_attention_row_min_tile", std::vector<c10::IValue>());
    const int64_t T = tile.size(1), P = tile.size(2), L = counts.data_ptr<int64_t>()[g];
    TORCH_INTERNAL_ASSERT(tile.size(0) == 1 && column + P <= L && tile.is_contiguous());
    TORCH_CHECK(P <= std::numeric_limits<int32_t>::max(), "sgan_ext attention: a row-minimum tile of ", P,
                " columns is beyond its 32-bit column indices");
    const bool continues_a_row = column > 0, ends_the_row = column + P == L;
    const bool other_group_nonempty = counts.data_ptr<int64_t>()[1 - g] > 0;
    const int64_t* s = src.data_ptr<int64_t>();
    int64_t* amin = argmin.data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "sgan_attention_row_min_cpu", [&] {
      const scalar_t* tp = tile.data_ptr<scalar_t>();
      scalar_t* rmin = row_min.data_ptr<scalar_t>();
      scalar_t* mp = min_packed.data_ptr<scalar_t>();
      const scalar_t sc = static_cast<scalar_t>(scale);
      at::parallel_for(0, T, grain(P), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t original = s[first + r];
          scalar_t best;
          int64_t best_index;
          scaled_row_minimum(tp + r * P, P, sc, best, best_index);
          best_index += column;
          if (continues_a_row && !min_candidate_wins(best, best_index, mp[first + r], amin[original])) {
            best = mp[first + r];
            best_index = amin[original];
          }
          if (ends_the_row) {
            apply_masked_zero(other_group_nonempty, best, best_index);
            rmin[original] = best;
            best_index = best_index >= 0 ? s[best_index] : -1;
          }
          amin[original] = best_index;
          mp[first + r] = best;
        }
      });
    });
  }

  // out = x + gamma ctx over the positions of group g, with x read from x_packed (1, C, L), the
  // group's packed columns in the accumulation dtype, and written run by run in out's dtype.
  // Attending rows: x_vec is xbar_g and ctx = mean_coef_i xbar + gemm_coef_i numerator_i
  // (context_coefficients), numerator (1, C, L) with rows numerator.stride(1) apart; mean rows
  // (numerator undefined): x_vec is x_g and ctx = x_g / (n_g + eps).
  static void forward_epilogue(const at::Tensor& x_packed, const at::Tensor& numerator, const at::Tensor& key_dot_qsum,
                               const at::Tensor& min_packed, const at::Tensor& x_vec, const at::Tensor& counts,
                               int g, const at::Tensor& src, const at::Tensor& gamma, double scale, double eps,
                               at::Tensor& out) {
    RECORD_FUNCTION("sgan_attention_forward_epilogue", std::vector<c10::IValue>());
    TORCH_INTERNAL_ASSERT(x_packed.size(0) == 1 && x_packed.size(2) == counts.data_ptr<int64_t>()[g],
                          "CPU chunks hold one image, without padding");
    const int64_t C = x_packed.size(1), N = out.size(2), L = x_packed.size(2);
    const std::vector<Run> runs = runs_of(src.data_ptr<int64_t>(), L);
    const bool mean_rows = !numerator.defined();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, out.scalar_type(), "sgan_attention_forward_epilogue_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const acc_t* xp = x_packed.data_ptr<acc_t>();
      scalar_t* op = out.data_ptr<scalar_t>();
      const acc_t* xv = x_vec.data_ptr<acc_t>();
      const acc_t gam = gamma.item<acc_t>(), sc = static_cast<acc_t>(scale), ep = static_cast<acc_t>(eps);
      const acc_t count = static_cast<acc_t>(L);
      // per row: gamma mean_coef_i and gamma gemm_coef_i
      std::vector<acc_t> mean_coef(L, gam / (count + ep)), gemm_coef(L, acc_t(0));
      if (!mean_rows) {
        const acc_t *kq = key_dot_qsum.data_ptr<acc_t>(), *mp = min_packed.data_ptr<acc_t>();
        for (int64_t p = 0; p < L; ++p) {
          const ContextCoefficients<acc_t> r = context_coefficients(kq[p], mp[p], count, sc, ep);
          mean_coef[p] = gam * r.mean_coef;
          gemm_coef[p] = gam * r.gemm_coef;
        }
      }
      const acc_t* num = mean_rows ? nullptr : numerator.data_ptr<acc_t>();
      const int64_t num_row_stride = mean_rows ? 0 : numerator.stride(1);
      const acc_t *mc = mean_coef.data(), *gc = gemm_coef.data();
      at::parallel_for(0, C, grain(L), [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          const acc_t x_channel = xv[c];
          const acc_t* nrow = num + c * num_row_stride;
          const acc_t* xrow = xp + c * L;
          scalar_t* orow = op + c * N;
          for (const Run& run : runs) {
            const int64_t p0 = run.packed;
            scalar_t* to = orow + run.source;
            if (mean_rows) {
              for (int64_t q = 0; q < run.length; ++q) {
                to[q] = static_cast<scalar_t>(xrow[p0 + q] + mc[p0 + q] * x_channel);
              }
            } else {
              for (int64_t q = 0; q < run.length; ++q) {
                const int64_t p = p0 + q;
                to[q] = static_cast<scalar_t>(xrow[p] + (mc[p] * x_channel + gc[p] * nrow[p]));
              }
            }
          }
        }
      });
    });
  }

  // Per packed row i of the group's src (1, L): the scalars of backward_row, then, over the key
  // channels, scaled_key_i = key_coef_i K_i (rows < Ck of scaled_key (1, Ck + 1, L), mean_coef_i
  // in its row Ck) and, in place in h, dK_i = key_coef_i H_i + s q_g dden_i; grad_g (1, C + 1, L)
  // holds G in its rows < C and gets qsum_coef_i in its row C. K_i is read from key (1, Ck, N),
  // a block of rows at a time, run by run, so the backward never packs the keys.
  static void backward_rows(const at::Tensor& key, const at::Tensor& src, at::Tensor& h, at::Tensor& grad_g,
                            const at::Tensor& q_sum_g, const at::Tensor& x_mean, const at::Tensor& min_packed,
                            const at::Tensor& counts, int g, const at::Tensor& gamma, double scale, double eps,
                            at::Tensor& dot, at::Tensor& dmin, at::Tensor& scaled_key) {
    RECORD_FUNCTION("sgan_attention_backward_rows", std::vector<c10::IValue>());
    TORCH_INTERNAL_ASSERT(key.size(0) == 1 && src.size(1) == counts.data_ptr<int64_t>()[g],
                          "CPU chunks hold one image, without padding");
    const int64_t Ck = key.size(1), N = key.size(2), L = src.size(1), C = grad_g.size(1) - 1;
    const std::vector<Run> runs = runs_of(src.data_ptr<int64_t>(), L);
    constexpr int64_t kBlock = 64;  // rows per task: the channel loops run over contiguous row blocks
    constexpr int64_t kGradDotColumns = 1024;  // the fewest columns of a task of the G . xbar pass
    const int64_t blocks = (L + kBlock - 1) / kBlock;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, key.scalar_type(), "sgan_attention_backward_rows_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;  // everything but the keys
      const scalar_t* kp = key.data_ptr<scalar_t>();
      const acc_t *qs = q_sum_g.data_ptr<acc_t>(),
                     *xs = x_mean.data_ptr<acc_t>(), *mp = min_packed.data_ptr<acc_t>();
      acc_t *hp = h.data_ptr<acc_t>(), *gp = grad_g.data_ptr<acc_t>(), *dot_p = dot.data_ptr<acc_t>(),
               *dmin_p = dmin.data_ptr<acc_t>(), *sk = scaled_key.data_ptr<acc_t>();
      const acc_t gam = gamma.item<acc_t>(), sc = static_cast<acc_t>(scale), ep = static_cast<acc_t>(eps);
      // G_i . xbar_g first, in one pass over G's rows, each task a wide range of columns, so that
      // every row is read as one long contiguous segment (the same sums, channel after channel)
      std::vector<acc_t> grad_dot_xmean(L, acc_t(0));
      at::parallel_for(0, L, kGradDotColumns, [&](int64_t begin, int64_t end) {
        weighted_rows(gp + begin, L, xs, C, end - begin, grad_dot_xmean.data() + begin);
      });
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        acc_t key_h[kBlock], key_q[kBlock], key_coef[kBlock], row_dden[kBlock];
        std::vector<acc_t> block_keys(Ck * kBlock);  // K of the block's rows, (Ck, width)
        for (int64_t task = begin; task < end; ++task) {
          const int64_t p0 = task * kBlock, width = std::min(kBlock, L - p0);
          const auto first_run = run_at(runs, p0);
          std::fill(key_h, key_h + width, acc_t(0));
          std::fill(key_q, key_q + width, acc_t(0));
          for (int64_t k = 0; k < Ck; ++k) {
            gather_columns(kp + k * N, first_run, p0, width, block_keys.data() + k * kBlock);
          }
          row_dots(block_keys.data(), kBlock, hp + p0, L, Ck, width, key_h);
          weighted_rows(block_keys.data(), kBlock, qs, Ck, width, key_q);
          for (int64_t i = 0; i < width; ++i) {
            const int64_t p = p0 + i;
            const BackwardRow<acc_t> r =
                backward_row(key_h[i], key_q[i], grad_dot_xmean[p], mp[p], static_cast<acc_t>(L), gam, sc, ep);
            dot_p[p] = r.dot;
            dmin_p[p] = r.dmin;
            gp[C * L + p] = r.qsum_coef;
            sk[Ck * L + p] = r.mean_coef;
            key_coef[i] = r.key_coef;
            row_dden[i] = sc * r.dden;
          }
          scale_rows(block_keys.data(), kBlock, key_coef, qs, row_dden, Ck, width, sk + p0, hp + p0, L);
        }
      });
    });
  }

  // dK_i += s Q_a(i) dm_i, dQ_a(i) += s K_i dm_i for the rows whose minimum is a real entry, K_i
  // read from key (1, Ck, N) at the row's position; query_g holds Q_j - q_mean (the driver packs Q
  // centred), so q_mean is added back.
  static void argmin_scatter(const at::Tensor& key, const at::Tensor& query_g, const at::Tensor& q_mean,
                             const at::Tensor& dmin, const at::Tensor& argmin, const at::Tensor& pos,
                             const at::Tensor& src, const at::Tensor& counts, int g, double scale,
                             at::Tensor& grad_key_g, at::Tensor& grad_query_g) {
    RECORD_FUNCTION("sgan_attention_argmin_scatter", std::vector<c10::IValue>());
    TORCH_INTERNAL_ASSERT(grad_key_g.is_contiguous() && grad_query_g.is_contiguous());
    TORCH_INTERNAL_ASSERT(key.size(0) == 1 && src.size(1) == counts.data_ptr<int64_t>()[g],
                          "CPU chunks hold one image, without padding");
    const int64_t Ck = key.size(1), N = key.size(2), L = src.size(1);
    const int64_t *am = argmin.data_ptr<int64_t>(), *ps = pos.data_ptr<int64_t>(), *s = src.data_ptr<int64_t>();
    // the rows whose minimum is a real entry: their packed column and the packed argmin column
    std::vector<int64_t> rows, targets;
    for (int64_t p = 0; p < L; ++p) {
      const int64_t a = am[s[p]];
      if (a >= 0) {
        rows.push_back(p);
        targets.push_back(ps[a]);
      }
    }
    const int64_t count = static_cast<int64_t>(rows.size());
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, key.scalar_type(), "sgan_attention_argmin_scatter_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;  // everything but the keys
      const scalar_t* kp = key.data_ptr<scalar_t>();
      const acc_t *qp = query_g.data_ptr<acc_t>(), *qm = q_mean.data_ptr<acc_t>(), *dm = dmin.data_ptr<acc_t>();
      acc_t *dk = grad_key_g.data_ptr<acc_t>(), *dq = grad_query_g.data_ptr<acc_t>();
      const acc_t sc = static_cast<acc_t>(scale);
      // one task per key channel: the columns it updates belong to it alone, so no races
      at::parallel_for(0, Ck, grain(count), [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          const acc_t mean = qm[k];
          const scalar_t* krow = kp + k * N;
          const acc_t* qrow = qp + k * L;
          acc_t *dkrow = dk + k * L, *dqrow = dq + k * L;
          for (int64_t e = 0; e < count; ++e) {
            const int64_t p = rows[e], t = targets[e];
            const acc_t d = sc * dm[p];
            dkrow[p] += d * (qrow[t] + mean);
            dqrow[t] += d * static_cast<acc_t>(krow[s[p]]);
          }
        }
      });
    });
  }

  // out[b, r, src[b, p]] = part[b, r, p] (+ bias[b, r]) (+ addend[b, r, src[b, p]]), run by run;
  // part's rows may be strided (its columns not), or part undefined for zeros.
  static void unpack(const at::Tensor& part, const at::Tensor& src, const at::Tensor& bias, const at::Tensor& addend,
                     at::Tensor& out) {
    RECORD_FUNCTION("sgan_attention_unpack", std::vector<c10::IValue>());
    TORCH_INTERNAL_ASSERT(out.size(0) == 1, "CPU chunks hold one image");
    TORCH_INTERNAL_ASSERT(!bias.defined() || bias.is_contiguous());
    TORCH_INTERNAL_ASSERT(!part.defined() || part.stride(2) == 1);
    const int64_t R = out.size(1), L = src.size(1), N = out.size(2);
    const int64_t sr = part.defined() ? part.stride(1) : 0;
    const std::vector<Run> runs = runs_of(src.data_ptr<int64_t>(), L);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "sgan_attention_unpack_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const acc_t* pp = part.defined() ? part.data_ptr<acc_t>() : nullptr;
      const acc_t* bp = bias.defined() ? bias.data_ptr<acc_t>() : nullptr;
      const scalar_t* ap = addend.defined() ? addend.data_ptr<scalar_t>() : nullptr;
      scalar_t* op = out.data_ptr<scalar_t>();
      at::parallel_for(0, R, grain(L), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const acc_t shift = bp ? bp[r] : acc_t(0);
          scalar_t* orow = op + r * N;
          const scalar_t* arow = ap ? ap + r * N : nullptr;
          for (const Run& run : runs) {
            scalar_t* to = orow + run.source;
            const scalar_t* add = arow ? arow + run.source : nullptr;
            if (pp == nullptr) {
              if (add != nullptr) {
                for (int64_t q = 0; q < run.length; ++q) {
                  to[q] = static_cast<scalar_t>(shift + static_cast<acc_t>(add[q]));
                }
              } else {
                std::fill(to, to + run.length, static_cast<scalar_t>(shift));
              }
              continue;
            }
            const acc_t* from = pp + r * sr + run.packed;
            if (add != nullptr) {
              for (int64_t q = 0; q < run.length; ++q) {
                to[q] = static_cast<scalar_t>(from[q] + shift + static_cast<acc_t>(add[q]));
              }
            } else {
              for (int64_t q = 0; q < run.length; ++q) to[q] = static_cast<scalar_t>(from[q] + shift);
            }
          }
        }
      });
    });
  }
};

const std::vector<at::ScalarType> kCpuDtypes = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf};

void check_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.defined() && x.device().is_cpu(), "sgan_ext attention (CPU kernel): x expected on the CPU, got ",
              x.defined() ? x.device() : at::Device(at::kCPU));
}

ForwardResult forward_cpu(const at::Tensor& x, const at::Tensor& key, const at::Tensor& query,
                          const at::Tensor& saliency_mask, const at::Tensor& gamma, double scale, double eps,
                          bool shift, bool bg_mean) {
  check_cpu(x);
  check_inputs(x, key, query, saliency_mask, gamma, kCpuDtypes, "cpu");
  return forward<CpuKernels>(x, key, query, saliency_mask, gamma, scale, eps, shift, bg_mean);
}

BackwardResult backward_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& key,
                            const at::Tensor& query, const at::Tensor& saliency_mask, const at::Tensor& gamma,
                            const at::Tensor& A, const at::Tensor& q_sum, const at::Tensor& x_sum,
                            const at::Tensor& count, const at::Tensor& row_min, const at::Tensor& argmin,
                            double scale, double eps, bool shift, bool bg_mean) {
  check_cpu(x);
  check_inputs(x, key, query, saliency_mask, gamma, kCpuDtypes, "cpu");
  check_backward_inputs(grad_out, x, key, A, q_sum, x_sum, count, row_min, argmin);
  return backward<CpuKernels>(grad_out, x, key, query, saliency_mask, gamma, A, q_sum, x_sum, count, row_min,
                              argmin, scale, eps, shift, bg_mean);
}

}  // namespace
}  // namespace attention
}  // namespace sgan

TORCH_LIBRARY_FRAGMENT(sgan_ext, m) {
  m.def(
      "saliency_attention_forward(Tensor x, Tensor key, Tensor query, Tensor saliency_mask, Tensor gamma, "
      "float scale, float eps, bool shift, bool bg_mean) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "saliency_attention_backward(Tensor grad_out, Tensor x, Tensor key, Tensor query, Tensor saliency_mask, "
      "Tensor gamma, Tensor A, Tensor q_sum, Tensor x_sum, Tensor count, Tensor row_min, Tensor argmin, "
      "float scale, float eps, bool shift, bool bg_mean) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sgan_ext, CPU, m) {
  m.impl("saliency_attention_forward", &sgan::attention::forward_cpu);
  m.impl("saliency_attention_backward", &sgan::attention::backward_cpu);
}
