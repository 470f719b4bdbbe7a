// C++ tests of the patronus ops through the dispatcher, against libtorch only.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randn.h>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <tuple>

namespace {

int failures = 0;

void check(bool condition, const char* what) {
  if (!condition) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

at::Tensor q_sample(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& a,
                    const at::Tensor& s) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("patronus::q_sample_fwd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  return op.call(x0, noise, a, s);
}

void test_q_sample_matches_formula() {
  const at::Tensor x0 = at::randn({4, 3, 5, 5});
  const at::Tensor noise = at::randn({4, 3, 5, 5});
  const at::Tensor a = at::rand({4}, at::kDouble);
  const at::Tensor s = at::rand({4}, at::kDouble);
  const at::Tensor expected = a.to(at::kFloat).view({4, 1, 1, 1}) * x0 +
                              s.to(at::kFloat).view({4, 1, 1, 1}) * noise;
  check(at::allclose(q_sample(x0, noise, a, s), expected, 1e-5, 1e-6), "q_sample float32");
  const at::Tensor half = q_sample(x0.to(at::kHalf), noise.to(at::kHalf), a, s);
  check(half.scalar_type() == at::kHalf, "q_sample keeps half");
  check(at::allclose(half.to(at::kFloat), expected, 1e-2, 1e-2), "q_sample half");
}

void test_q_sample_rejects_bad_scales() {
  bool threw = false;
  try {
    q_sample(at::randn({2, 3}), at::randn({2, 3}), at::rand({3}), at::rand({2}));
  } catch (const c10::Error&) {
    threw = true;
  }
  check(threw, "q_sample rejects (B,) mismatch");
}

std::tuple<at::Tensor, at::Tensor> scheduler_step(const at::Tensor& x, const at::Tensor& out,
                                                  const at::Tensor& t, const at::Tensor& prev,
                                                  const at::Tensor& table, int64_t mode,
                                                  double eta, const at::Tensor& rng) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("patronus::scheduler_step_fwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, int64_t, int64_t, int64_t, double, double, bool,
              const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
              const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double,
              at::TensorList, at::TensorList)>();
  return op.call(x, out, t, prev, table, mode, 0, 0, eta, 0.0, true, std::nullopt, std::nullopt,
                 rng, std::nullopt, 1.0, {}, {});
}

void test_scheduler_step_ddim_and_noise() {
  const at::Tensor table = at::linspace(0.99, 0.01, 10, at::kDouble);
  const at::Tensor x = at::randn({2, 3, 4});
  const at::Tensor eps = at::randn({2, 3, 4});
  const at::Tensor t = at::full({2}, 5, at::kLong);
  const at::Tensor prev_t = at::full({2}, 2, at::kLong);
  const at::Tensor rng = at::zeros({2}, at::kLong);
  const auto [prev, x0] = scheduler_step(x, eps, t, prev_t, table, 0, 0.0, rng);
  const double a_t = table[5].item<double>(), a_p = table[2].item<double>();
  const at::Tensor expected_x0 = (x - std::sqrt(1 - a_t) * eps) / std::sqrt(a_t);
  const at::Tensor expected = std::sqrt(a_p) * expected_x0 + std::sqrt(1 - a_p) * eps;
  check(at::allclose(x0, expected_x0, 1e-5, 1e-6), "scheduler_step DDIM x0");
  check(at::allclose(prev, expected, 1e-5, 1e-6), "scheduler_step DDIM x_prev");
  const auto [noisy1, unused1] = scheduler_step(x, eps, t, prev_t, table, 1, 0.0, rng);
  const auto [noisy2, unused2] = scheduler_step(x, eps, t, prev_t, table, 1, 0.0, rng);
  check(at::equal(noisy1, noisy2), "in-kernel noise is reproducible for a seed and offset");
}

}  // namespace

int main() {
  test_q_sample_matches_formula();
  test_q_sample_rejects_bad_scales();
  test_scheduler_step_ddim_and_noise();
  if (failures == 0) {
    std::cout << "all C++ op tests passed\n";
  }
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
