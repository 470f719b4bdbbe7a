// CPU kernels of the prototype min distance (forward and backward), used by the Python op
// patronus::prototype_min_distance on CPU tensors.
//
// Forward, per (batch element, block of 8 prototypes): the cross products with every patch into an
// 8 x N buffer that stays in cache, then a fused pass over it for the min and argmin (ties ->
// smallest index; NaN wins, so it propagates), then the winning distance recomputed exactly as
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

template <typename T>
bool less_nan_first(T a, T b) {
  // NaN compares smaller than everything, so a NaN distance wins (and propagates)
  if (std::isnan(a)) return !std::isnan(b);
  if (std::isnan(b)) return false;
  return a < b;
}

constexpr int64_t kProtoBlock = 8;

template <typename scalar_t>
scalar_t squared_norm(const scalar_t* x, int64_t length, int64_t stride) {
  scalar_t sum = 0;
  for (int64_t i = 0; i < length; ++i) sum += x[i * stride] * x[i * stride];
  return sum;
}

// cross[k][n] = sum_d protos[k][d] * z[d][n] for kProtoBlock prototypes (zero-padded rows past
// the last one), a register tile of kProtoBlock x WIDTH patches at a time. Every patch accumulates
// in the same order with the same fused multiply-adds (explicit std::fma, nothing left to the
// compiler's contraction), so identical patches get bit-identical distances and ties resolve to
// the smallest index. The body
// is a macro so that each target clone (AVX-512, AVX2, baseline x86-64; chosen at load time)
// compiles it for its own instruction set (an inline function would not be inlined across them).
#define PATRONUS_CROSS_PRODUCTS(scalar_t, WIDTH)                                            \
  int64_t n0 = 0;                                                                          \
  for (; n0 + (WIDTH) <= num_patches; n0 += (WIDTH)) {                                     \
    scalar_t acc[kProtoBlock][WIDTH] = {};                                                 \
    for (int64_t d = 0; d < dim; ++d) {                                                    \
      const scalar_t* row = z + d * num_patches + n0;                                      \
      scalar_t centred[WIDTH];                                                             \
      for (int64_t w = 0; w < (WIDTH); ++w) centred[w] = row[w] - center[d];               \
      for (int64_t k = 0; k < kProtoBlock; ++k) {                                          \
        const scalar_t weight = protos[k * dim + d];                                       \
        for (int64_t w = 0; w < (WIDTH); ++w)                                              \
          acc[k][w] = std::fma(weight, centred[w], acc[k][w]);                             \
      }                                                                                    \
    }                                                                                      \
    for (int64_t k = 0; k < kProtoBlock; ++k)                                              \
      for (int64_t w = 0; w < (WIDTH); ++w) cross[k * num_patches + n0 + w] = acc[k][w];   \
  }                                                                                        \
  for (int64_t n = n0; n < num_patches; ++n) {                                             \
    scalar_t acc[kProtoBlock] = {};                                                        \
    for (int64_t d = 0; d < dim; ++d) {                                                    \
      const scalar_t centred = z[d * num_patches + n] - center[d];                         \
      for (int64_t k = 0; k < kProtoBlock; ++k)                                            \
        acc[k] = std::fma(protos[k * dim + d], centred, acc[k]);                           \
    }                                                                                      \
    for (int64_t k = 0; k < kProtoBlock; ++k) cross[k * num_patches + n] = acc[k];         \
  }

// protos: kProtoBlock centred prototypes (p - c); z: raw channel-major patches, centred on load.
PATRONUS_CLONES void cross_products(const float* z, const float* protos, const float* center,
                                    int64_t num_patches, int64_t dim, float* cross) {
  PATRONUS_CROSS_PRODUCTS(float, 32)
}

PATRONUS_CLONES void cross_products(const double* z, const double* protos, const double* center,
                                    int64_t num_patches, int64_t dim, double* cross) {
  PATRONUS_CROSS_PRODUCTS(double, 16)
}

// The expanded distance, with inf - inf (an infinite input) read as +inf; NaN inputs stay NaN.
template <typename scalar_t>
scalar_t expanded_distance(scalar_t patch_norm, scalar_t cross, scalar_t proto_norm) {
  const scalar_t dist = patch_norm - 2 * cross + proto_norm;
  if (std::isnan(dist) && !std::isnan(patch_norm) && !std::isnan(proto_norm)) {
    return std::numeric_limits<scalar_t>::infinity();
  }
  return dist;
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
  const int64_t prototype_blocks = (num_prototypes + kProtoBlock - 1) / kProtoBlock;
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
    std::vector<scalar_t> centred(prototype_blocks * kProtoBlock * dim, scalar_t(0));
    for (int64_t p = 0; p < num_prototypes; ++p)
      for (int64_t d = 0; d < dim; ++d) centred[p * dim + d] = p_ptr[p * dim + d] - center[d];
    const scalar_t* c_ptr = center.data();
    const scalar_t* q_ptr = centred.data();
    std::vector<scalar_t> proto_norms(num_prototypes);
    for (int64_t p = 0; p < num_prototypes; ++p) {
      proto_norms[p] = squared_norm(q_ptr + p * dim, dim, 1);
    }
    std::vector<scalar_t> patch_norms(batch * num_patches, scalar_t(0));
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        scalar_t* norms = patch_norms.data() + b * num_patches;
        for (int64_t d = 0; d < dim; ++d) {
          const scalar_t* row = z_ptr + (b * dim + d) * num_patches;
          for (int64_t n = 0; n < num_patches; ++n) {
            const scalar_t centred_value = row[n] - c_ptr[d];
            norms[n] += centred_value * centred_value;
          }
        }
      }
    });
    scalar_t* out_ptr = min_dist.mutable_data_ptr<scalar_t>();
    int64_t* idx_ptr = index.mutable_data_ptr<int64_t>();
    at::parallel_for(0, batch * prototype_blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> cross(kProtoBlock * num_patches);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t b = job / prototype_blocks;
        const int64_t p0 = (job % prototype_blocks) * kProtoBlock;
        const int64_t count = std::min(kProtoBlock, num_prototypes - p0);
        const scalar_t* zb = z_ptr + b * dim * num_patches;
        cross_products(zb, q_ptr + p0 * dim, c_ptr, num_patches, dim, cross.data());
        for (int64_t k = 0; k < count; ++k) {
          const int64_t p = p0 + k;
          const scalar_t* row = cross.data() + k * num_patches;
          const scalar_t* norms = patch_norms.data() + b * num_patches;
          scalar_t best = std::numeric_limits<scalar_t>::infinity();
          int64_t best_n = 0;
          for (int64_t n = 0; n < num_patches; ++n) {
            const scalar_t dist = expanded_distance(norms[n], row[n], proto_norms[p]);
            if (less_nan_first(dist, best)) {
              best = dist;
              best_n = n;
              if (std::isnan(dist)) break;
            }
          }
          scalar_t exact = 0;
          for (int64_t d = 0; d < dim; ++d) {
            const scalar_t diff = zb[d * num_patches + best_n] - p_ptr[p * dim + d];
            exact += diff * diff;
          }
          out_ptr[b * num_prototypes + p] = exact;
          idx_ptr[b * num_prototypes + p] = best_n;
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
