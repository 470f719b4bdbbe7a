// CPU kernel patronus::q_sample_fwd (of the op patronus::q_sample): one parallel pass,
// float32 opmath for half types.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace patronus {
namespace {

at::Tensor q_sample_cpu(const at::Tensor& x0, const at::Tensor& noise,
                        const at::Tensor& signal_scale, const at::Tensor& noise_scale) {
  TORCH_CHECK(x0.sizes() == noise.sizes() && x0.dtype() == noise.dtype(),
              "q_sample: noise must match x0 in shape and dtype");
  TORCH_CHECK(x0.dim() >= 1, "q_sample: x0 must have a batch dimension");
  const int64_t batch = x0.size(0);
  TORCH_CHECK(signal_scale.dim() == 1 && signal_scale.size(0) == batch &&
                  noise_scale.dim() == 1 && noise_scale.size(0) == batch,
              "q_sample: scales must be (B,)");
  const at::Tensor x = x0.contiguous();
  const at::Tensor eps = noise.contiguous();
  const at::Tensor a = signal_scale.to(at::kDouble).contiguous();
  const at::Tensor s = noise_scale.to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t total = x.numel();
  if (total == 0) {
    return out;
  }
  const int64_t per_sample = total / batch;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "q_sample_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    const scalar_t* eps_ptr = eps.const_data_ptr<scalar_t>();
    const double* a_ptr = a.const_data_ptr<double>();
    const double* s_ptr = s.const_data_ptr<double>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, total, 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / per_sample;
        const opmath_t signal = static_cast<opmath_t>(a_ptr[b]);
        const opmath_t sigma = static_cast<opmath_t>(s_ptr[b]);
        out_ptr[i] = static_cast<scalar_t>(signal * static_cast<opmath_t>(x_ptr[i]) +
                                           sigma * static_cast<opmath_t>(eps_ptr[i]));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(patronus, CPU, m) { m.impl("q_sample_fwd", &q_sample_cpu); }

}  // namespace patronus
