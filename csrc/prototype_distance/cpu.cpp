// CPU kernels of the prototype min distance (forward and backward), used by the Python op
// patronus::prototype_min_distance on CPU tensors.
//
// Forward, per (group of batch elements with about 1024 patches in all, tile of <= 128 prototypes):
// the cross products with every patch, one GEMM of the BLAS torch ships into a buffer that stays
// in cache, then a fused vectorisable pass over each row for the min and argmin (ties -> smallest
// index; NaN wins, so it propagates), then the winning distance recomputed exactly as
// sum((z - p)^2). No (B, P, N) tensor is ever allocated. The search runs on inputs centred on the
// prototypes' mean c (distances do not change), ||z - c||^2 - 2 (z - c).(p - c) + ||p - c||^2,
// so that a large common offset of features and prototypes does not cancel away the differences
// that pick the winner. A distance that is NaN only because an input is infinite (inf - inf) is
// +inf: a patch holding +-inf never wins while a finite one exists.
// Backward: the gradient of a min reaches the winning patch only; both gradients are sums in a
// fixed order (no atomics), so they are bit-for-bit reproducible.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "../common/target_clones.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace patronus {
namespace {

// (B, D, H, W) -> (B, N, D) view; (B, N, D) as is.
at::Tensor as_patches(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 3 || features.dim() == 4,
              "prototype_min_distance: features must be (B, D, H, W) or (B, N, D)");
  return features.dim() == 4 ? features.flatten(2).transpose(1, 2) : features;
}

at::ScalarType opmath_of(const at::Tensor& a, const at::Tensor& b) {
  return (a.scalar_type() == at::kDouble || b.scalar_type() == at::kDouble) ? at::kDouble
                                                                              : at::kFloat;
}

// Prototypes per GEMM tile and patches per GEMM: the (<= kMaxTile, ~kColumns) cross products of
// one tile stay in cache (512 kB in float32 at most).
constexpr int64_t kMaxTile = 128;
constexpr int64_t kMinTile = 32;
constexpr int64_t kFewGroups = 8;
constexpr int64_t kColumns = 1024;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename scalar_t>
scalar_t squared_norm(const scalar_t* x, int64_t length, int64_t stride) {
  scalar_t sum = 0;
  for (int64_t i = 0; i < length; ++i) sum += x[i * stride] * x[i * stride];
  return sum;
}

// The expanded distances of one prototype to a run of patches, written over its cross products,
// and their argmin: dist = ||z - c||^2 - 2 (z - c).q + ||q||^2, with inf - inf (an infinite input)
// read as +inf, NaN inputs staying NaN. The pass over the run is branch-free (vectorisable): the
// minimum is kept in kLanes independent lanes where a NaN sticks, then the first index holding
// the minimum (ties -> the smallest index) or, if any distance is NaN, the first NaN is found.
constexpr int64_t kLanes = 16;
#define PATRONUS_ROW_ARGMIN(scalar_t)                                                         \
  const scalar_t inf = std::numeric_limits<scalar_t>::infinity();                             \
  for (int64_t n = 0; n < length; ++n) {                                                      \
    const scalar_t dist = norms[n] - 2 * row[n] + proto_norm;                                 \
    const bool infinite = dist != dist && norms[n] == norms[n] && proto_norm == proto_norm;   \
    row[n] = infinite ? inf : dist;                                                           \
  }                                                                                           \
  scalar_t lanes[kLanes];                                                                     \
  for (int64_t j = 0; j < kLanes; ++j) lanes[j] = inf;                                        \
  int64_t n0 = 0;                                                                             \
  for (; n0 + kLanes <= length; n0 += kLanes) {                                               \
    for (int64_t j = 0; j < kLanes; ++j) {                                                    \
      const scalar_t value = row[n0 + j];                                                     \
      lanes[j] = (value != value || value < lanes[j]) ? value : lanes[j];                     \
    }                                                                                         \
  }                                                                                           \
  scalar_t best = inf;                                                                        \
  for (int64_t j = 0; j < kLanes; ++j)                                                        \
    best = (lanes[j] != lanes[j] || lanes[j] < best) ? lanes[j] : best;                       \
  for (int64_t n = n0; n < length; ++n)                                                       \
    best = (row[n] != row[n] || row[n] < best) ? row[n] : best;                               \
  const bool nan = best != best;                                                              \
  for (int64_t n = 0; n < length; ++n)                                                        \
    if (nan ? row[n] != row[n] : row[n] == best) return n;                                    \
  return 0;

PATRONUS_CLONES int64_t row_argmin(float* row, const float* norms, float proto_norm,
                                   int64_t length) {
  PATRONUS_ROW_ARGMIN(float)
}

PATRONUS_CLONES int64_t row_argmin(double* row, const double* norms, double proto_norm,
                                   int64_t length) {
  PATRONUS_ROW_ARGMIN(double)
}

std::tuple<at::Tensor, at::Tensor> min_distance_forward_cpu(const at::Tensor& features,
                                                             const at::Tensor& prototypes) {
  const at::Tensor patches = as_patches(features);
  const int64_t batch = patches.size(0), num_patches = patches.size(1), dim = patches.size(2);
  const int64_t num_prototypes = prototypes.size(0);
  TORCH_CHECK(prototypes.dim() == 2 && prototypes.size(1) == dim,
              "prototype_min_distance: prototypes must be (P, D) with D of the features");
  TORCH_CHECK(num_patches > 0, "prototype_min_distance: features have no patches");
  const at::ScalarType opmath = opmath_of(patches, prototypes);
  at::Tensor min_dist = at::empty({batch, num_prototypes}, patches.options().dtype(opmath));
  at::Tensor index = at::empty({batch, num_prototypes}, patches.options().dtype(at::kLong));
  if (batch == 0 || num_prototypes == 0) {
    return {min_dist, index};
  }
  const at::Tensor protos = prototypes.to(opmath).contiguous();
  // batch elements per GEMM: about kColumns patches, so small feature maps still make one
  // GEMM large enough for the BLAS to run at speed
  const int64_t group = std::max<int64_t>(1, std::min(batch, kColumns / num_patches));
  const int64_t groups = ceil_div(batch, group);
  // prototypes per GEMM, balanced: up to kMaxTile, or up to kMinTile when there are few groups,
  // so that the threads have work (a rule of the shapes alone: results never depend on threads)
  const int64_t widest = groups >= kFewGroups ? kMaxTile : kMinTile;
  const int64_t tile = ceil_div(num_prototypes, ceil_div(num_prototypes, widest));
  const int64_t prototype_blocks = ceil_div(num_prototypes, tile);
  // channel-major patches (B, D, N): free for NCHW features, one copy for other layouts
  const at::Tensor z = patches.transpose(1, 2).to(opmath).contiguous();
  AT_DISPATCH_FLOATING_TYPES(opmath, "prototype_min_distance_cpu", [&] {
    const scalar_t* p_ptr = protos.const_data_ptr<scalar_t>();
    const scalar_t* z_ptr = z.const_data_ptr<scalar_t>();
    // c = the prototypes' mean; q = p - c, zero-padded to whole blocks of prototypes
    std::vector<scalar_t> center(dim, scalar_t(0));
    for (int64_t p = 0; p < num_prototypes; ++p)
      for (int64_t d = 0; d < dim; ++d) center[d] += p_ptr[p * dim + d];
    for (int64_t d = 0; d < dim; ++d) center[d] /= static_cast<scalar_t>(num_prototypes);
    std::vector<scalar_t> centred(num_prototypes * dim);
    for (int64_t p = 0; p < num_prototypes; ++p)
      for (int64_t d = 0; d < dim; ++d) centred[p * dim + d] = p_ptr[p * dim + d] - center[d];
    const scalar_t* c_ptr = center.data();
    const at::Tensor q = at::from_blob(centred.data(), {num_prototypes, dim}, protos.options());
    std::vector<scalar_t> proto_norms(num_prototypes);
    for (int64_t p = 0; p < num_prototypes; ++p) {
      proto_norms[p] = squared_norm(centred.data() + p * dim, dim, 1);
    }
    scalar_t* out_ptr = min_dist.mutable_data_ptr<scalar_t>();
    int64_t* idx_ptr = index.mutable_data_ptr<int64_t>();
    at::parallel_for(0, groups * prototype_blocks, 1, [&](int64_t begin, int64_t end) {
      // the task's buffers: one group's centred patches (D, G N) and their squared norms, and the
      // cross products of one tile of prototypes with them (tile, G N)
      const int64_t columns = group * num_patches;
      std::vector<scalar_t> centred_patches(dim * columns), norms(columns), cross(tile * columns);
      scalar_t* zc = centred_patches.data();
      int64_t centred_group = -1;  // a task's jobs are consecutive: each group is centred once
      for (int64_t job = begin; job < end; ++job) {
        const int64_t g = job / prototype_blocks;
        const int64_t b0 = g * group, members = std::min(group, batch - b0);
        const int64_t width = members * num_patches;
        const int64_t p0 = (job % prototype_blocks) * tile;
        const int64_t count = std::min(tile, num_prototypes - p0);
        if (g != centred_group) {
          std::fill(norms.begin(), norms.end(), scalar_t(0));
          for (int64_t d = 0; d < dim; ++d) {
            for (int64_t m = 0; m < members; ++m) {
              const scalar_t* source = z_ptr + ((b0 + m) * dim + d) * num_patches;
              scalar_t* target = zc + d * width + m * num_patches;
              scalar_t* norm = norms.data() + m * num_patches;
              for (int64_t n = 0; n < num_patches; ++n) {
                const scalar_t value = source[n] - c_ptr[d];
                target[n] = value;
                norm[n] += value * value;
              }
            }
          }
          centred_group = g;
        }
        // (count, D) x (D, members N) with the BLAS torch ships, single-threaded in this task
        at::Tensor centred_view = at::from_blob(zc, {dim, width}, protos.options());
        at::Tensor tile_out = at::from_blob(cross.data(), {count, width}, protos.options());
        at::mm_out(tile_out, q.narrow(0, p0, count), centred_view);
        for (int64_t k = 0; k < count; ++k) {
          const int64_t p = p0 + k;
          for (int64_t m = 0; m < members; ++m) {
            const int64_t b = b0 + m;
            scalar_t* row = cross.data() + k * width + m * num_patches;
            const int64_t best_n =
                row_argmin(row, norms.data() + m * num_patches, proto_norms[p], num_patches);
            const scalar_t* zb = z_ptr + b * dim * num_patches;
            scalar_t exact = 0;
            for (int64_t d = 0; d < dim; ++d) {
              const scalar_t diff = zb[d * num_patches + best_n] - p_ptr[p * dim + d];
              exact += diff * diff;
            }
            out_ptr[b * num_prototypes + p] = exact;
            idx_ptr[b * num_prototypes + p] = best_n;
          }
        }
      }
    });
  });
  return {min_dist, index};
}

std::tuple<at::Tensor, at::Tensor> min_distance_backward_cpu(const at::Tensor& grad,
                                                             const at::Tensor& features,
                                                             const at::Tensor& prototypes,
                                                             const at::Tensor& index) {
  const at::Tensor patches = as_patches(features);
  const int64_t batch = patches.size(0), num_patches = patches.size(1), dim = patches.size(2);
  const int64_t num_prototypes = prototypes.size(0);
  TORCH_CHECK(grad.sizes() == index.sizes() && grad.size(0) == batch &&
                  grad.size(1) == num_prototypes,
              "prototype_min_distance backward: grad and index must be (B, P)");
  const at::Tensor idx = index.contiguous();
  TORCH_CHECK(idx.scalar_type() == at::kLong,
              "prototype_min_distance backward: index must be int64, got ", idx.scalar_type());
  const int64_t* checked = idx.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < idx.numel(); ++i) {
    TORCH_CHECK(checked[i] >= 0 && checked[i] < num_patches,
                "prototype_min_distance backward: patch index ", checked[i], " at position ", i,
                " is outside [0, ", num_patches, ")");
  }
  const at::ScalarType opmath = opmath_of(patches, prototypes);
  const at::Tensor z = patches.to(opmath);  // keeps the features' layout: no copy for fp32
  const at::Tensor protos = prototypes.to(opmath).contiguous();
  const at::Tensor g = grad.to(opmath).contiguous();
  at::Tensor grad_features = at::zeros_like(features, features.options().dtype(opmath));
  const at::Tensor grad_z = as_patches(grad_features);  // (B, N, D) view, the same strides
  at::Tensor grad_p = at::zeros({num_prototypes, dim}, protos.options());
  AT_DISPATCH_FLOATING_TYPES(opmath, "prototype_min_distance_backward_cpu", [&] {
    const scalar_t* z_ptr = z.const_data_ptr<scalar_t>();
    const scalar_t* p_ptr = protos.const_data_ptr<scalar_t>();
    const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
    const int64_t* i_ptr = idx.const_data_ptr<int64_t>();
    scalar_t* gz_ptr = grad_z.mutable_data_ptr<scalar_t>();
    scalar_t* gp_ptr = grad_p.mutable_data_ptr<scalar_t>();
    const int64_t zs_b = z.stride(0), zs_n = z.stride(1), zs_d = z.stride(2);
    const int64_t gs_b = grad_z.stride(0), gs_n = grad_z.stride(1), gs_d = grad_z.stride(2);
    // d/dz of (z - p)^2 at the winner: 2 (z - p) g; each batch element owns its patches
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t p = 0; p < num_prototypes; ++p) {
          const int64_t n = i_ptr[b * num_prototypes + p];
          const scalar_t scale = 2 * g_ptr[b * num_prototypes + p];
          const scalar_t* zn = z_ptr + b * zs_b + n * zs_n;
          scalar_t* out = gz_ptr + b * gs_b + n * gs_n;
          for (int64_t d = 0; d < dim; ++d)
            out[d * gs_d] += scale * (zn[d * zs_d] - p_ptr[p * dim + d]);
        }
      }
    });
    // d/dp: -2 (z - p) g, summed over the batch in order; each prototype owns its row
    at::parallel_for(0, num_prototypes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        scalar_t* out = gp_ptr + p * dim;
        for (int64_t b = 0; b < batch; ++b) {
          const int64_t n = i_ptr[b * num_prototypes + p];
          const scalar_t scale = 2 * g_ptr[b * num_prototypes + p];
          const scalar_t* zn = z_ptr + b * zs_b + n * zs_n;
          for (int64_t d = 0; d < dim; ++d) out[d] -= scale * (zn[d * zs_d] - p_ptr[p * dim + d]);
        }
      }
    });
  });
  return {grad_features.to(features.scalar_type()), grad_p.to(prototypes.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(patronus, CPU, m) {
  m.impl("prototype_min_distance_fwd", &min_distance_forward_cpu);
  m.impl("prototype_min_distance_bwd", &min_distance_backward_cpu);
}

}  // namespace patronus
