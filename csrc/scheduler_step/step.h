// The fused scheduler step: the math shared by the CPU and CUDA kernels. Torch-free, so that
// `nvcc -c` can check it (and the CUDA kernel built on it) on any machine.
//
// One step moves every element of a sample from its current noise level c to a target level p
// (abar_c, abar_p from the schedule table; index -1 means clean data, abar = 1):
//   x0  = prediction of the clean sample from x and the model output (epsilon, sample or v)
//   x0  = clamp(x0, -k, k) (static clipping), or clamp(x0, -k_b, k_b) / k_b (dynamic
//         thresholding with a per-sample k_b), optionally re-deriving eps from the clipped x0
//   DDIM (Song et al. 2021, eq. 12), also the inversion when p > c:
//     x_p = sqrt(abar_p) x0 + sqrt(1 - abar_p - sigma^2) eps + sigma z,
//     sigma = eta sqrt((1 - abar_p) / (1 - abar_c)) sqrt(1 - abar_c / abar_p) when denoising
//     (abar_p > abar_c), 0 otherwise (the inversion is deterministic)
//   DDPM ancestral (Ho et al. 2020, eq. 7, on any pair of levels):
//     x_p = sqrt(abar_p) beta / (1 - abar_c) x0 + sqrt(alpha) (1 - abar_p) / (1 - abar_c) x + sigma z,
//     alpha = abar_c / abar_p, beta = 1 - alpha,
//     sigma^2 = beta (1 - abar_p) / (1 - abar_c) ("posterior") or beta ("beta"); 0 when p = -1
//   DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", data prediction; the update diffusers'
//   DPMSolverMultistepScheduler runs with algorithm_type "dpmsolver++", solver_type "midpoint"),
//   with alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma), the model's
//   x0 predictions m0 (this step, level c), m1 and m2 (the previous steps, levels s1 > c and
//   s2 > s1, passed in), h = lambda_p - lambda_c, r0 = (lambda_c - lambda_s1) / h,
//   r1 = (lambda_s1 - lambda_s2) / h, D0 = m0, D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1:
//     order 1: x_p = sigma_p / sigma_c x - alpha_p (e^-h - 1) D0   (DDIM in other words)
//     order 2: x_p = sigma_p / sigma_c x - alpha_p (e^-h - 1) (D0 + D1_0 / 2)
//     order 3: x_p = sigma_p / sigma_c x - alpha_p (e^-h - 1) D0 + alpha_p ((e^-h - 1) / h + 1) D1
//              - alpha_p ((e^-h - 1 + h) / h^2 - 1/2) D2,
//              D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1)
//   A step to clean data (sigma_p = 0) is first order, x_p = x0 (diffusers' final step with
//   final_sigmas_type "zero"). The coefficients of x, m0, m1, m2 are expanded per sample in double.
// Guidance: with the model's output without conditioning (null_output) and a scale w, the model
// output used above is null_output + w (model_output - null_output) (classifier-free guidance,
// Ho & Salimans 2022, eq. 6, in the epsilon form), combined in the same pass.
// Coefficients are computed per sample in double; elements in float (double for double data).
// z is either given or drawn in the kernel: Philox4x32-10 keyed by the seed, counter (element
// group, offset), Box-Muller in double, so CPU and CUDA draw the same numbers.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PATRONUS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PATRONUS_HOST_DEVICE inline
#endif

namespace patronus {
namespace step {

enum Mode : int64_t { kDDIM = 0, kDDPM = 1, kDPMSolverPP = 2 };
enum Prediction : int64_t { kEpsilon = 0, kSample = 1, kVelocity = 2 };
enum Variance : int64_t { kPosterior = 0, kBeta = 1 };

struct Options {
  int64_t mode;
  int64_t prediction;
  int64_t variance;
  double eta;
  double clip;          // > 0: static clipping of x0 to [-clip, clip]
  bool recompute_eps;   // re-derive eps from the clipped x0 (DDIM)
  int64_t order;        // DPM-Solver++: 1 + the number of previous x0 predictions given (1-3)
};

// Per-sample coefficients: x0 = x0_x x + x0_out out; eps = eps_x x + eps_out out;
// after clipping, eps = eps_x0_x x + eps_x0_x0 x0 (when recomputed);
// x_p = prev_x0 x0 + prev_eps eps + prev_x x + sigma z + history1 m1 + history2 m2.
struct Coefficients {
  double x0_x, x0_out, eps_x, eps_out;
  double eps_x0_x, eps_x0_x0;
  double prev_x0, prev_eps, prev_x, sigma;
  double history1, history2;
};

PATRONUS_HOST_DEVICE double half_log_snr(double abar) { return 0.5 * (log(abar) - log1p(-abar)); }

// DPM-Solver++ of order o.order from level c to p, the previous predictions at s1 and s2.
PATRONUS_HOST_DEVICE void dpm_solver_pp(double abar_c, double abar_p, double abar_s1,
                                        double abar_s2, int64_t order, Coefficients* k) {
  const double alpha_p = sqrt(abar_p), sigma_p = sqrt(1.0 - abar_p);
  k->prev_eps = 0.0;
  k->sigma = 0.0;
  k->history1 = 0.0;
  k->history2 = 0.0;
  if (sigma_p == 0.0) {  // to clean data: first order, x_p = x0
    k->prev_x = 0.0;
    k->prev_x0 = alpha_p;
    return;
  }
  const double lambda_c = half_log_snr(abar_c);
  const double h = half_log_snr(abar_p) - lambda_c;
  const double a = -alpha_p * expm1(-h);  // -alpha_p (e^-h - 1), the weight of D0
  k->prev_x = sigma_p / sqrt(1.0 - abar_c);
  k->prev_x0 = a;
  if (order < 2) return;
  const double lambda_s1 = half_log_snr(abar_s1);
  const double r0 = (lambda_c - lambda_s1) / h;
  if (order == 2) {  // a (D0 + D1_0 / 2)
    k->prev_x0 = a + 0.5 * a / r0;
    k->history1 = -0.5 * a / r0;
    return;
  }
  const double r1 = (lambda_s1 - half_log_snr(abar_s2)) / h;
  const double c = alpha_p * (expm1(-h) / h + 1.0);                // the weight of D1
  const double e = -alpha_p * ((expm1(-h) + h) / (h * h) - 0.5);   // the weight of D2
  // D1_0 - D1_1 = u0 m0 + u1 m1 + u2 m2; D1 = D1_0 + q (D1_0 - D1_1); D2 = (D1_0 - D1_1) / (r0 + r1)
  const double u0 = 1.0 / r0, u1 = -(1.0 / r0 + 1.0 / r1), u2 = 1.0 / r1;
  const double q = r0 / (r0 + r1), d = e / (r0 + r1);
  k->prev_x0 = a + c * (1.0 / r0 + q * u0) + d * u0;
  k->history1 = c * (-1.0 / r0 + q * u1) + d * u1;
  k->history2 = c * (q * u2) + d * u2;
}

// abar_s1, abar_s2: the levels of the previous predictions (DPM-Solver++ of order 2 and 3 only).
PATRONUS_HOST_DEVICE Coefficients coefficients(double abar_c, double abar_p, const Options& o,
                                               double abar_s1 = 0.0, double abar_s2 = 0.0) {
  Coefficients k{};
  const double sc = sqrt(abar_c), nc = sqrt(1.0 - abar_c);
  if (o.prediction == kEpsilon) {
    k.x0_x = 1.0 / sc;
    k.x0_out = -nc / sc;
    k.eps_x = 0.0;
    k.eps_out = 1.0;
  } else if (o.prediction == kSample) {
    k.x0_x = 0.0;
    k.x0_out = 1.0;
    k.eps_x = 1.0 / nc;
    k.eps_out = -sc / nc;
  } else {  // v = sqrt(abar) eps - sqrt(1 - abar) x0
    k.x0_x = sc;
    k.x0_out = -nc;
    k.eps_x = nc;
    k.eps_out = sc;
  }
  const bool can_recompute = o.recompute_eps && nc > 0.0;
  k.eps_x0_x = can_recompute ? 1.0 / nc : 0.0;
  k.eps_x0_x0 = can_recompute ? -sc / nc : 0.0;
  if (o.mode == kDDIM) {
    double sigma = 0.0;
    if (o.eta > 0.0 && abar_p < 1.0 && abar_p > abar_c) {  // denoising steps only
      sigma = o.eta * sqrt((1.0 - abar_p) / (1.0 - abar_c) * (1.0 - abar_c / abar_p));
    }
    const double direction = 1.0 - abar_p - sigma * sigma;
    k.prev_x0 = sqrt(abar_p);
    k.prev_eps = direction > 0.0 ? sqrt(direction) : 0.0;
    k.prev_x = 0.0;
    k.sigma = sigma;
  } else if (o.mode == kDPMSolverPP) {
    dpm_solver_pp(abar_c, abar_p, abar_s1, abar_s2, o.order, &k);
  } else {
    const double alpha = abar_c / abar_p, beta = 1.0 - alpha;
    k.prev_x0 = sqrt(abar_p) * beta / (1.0 - abar_c);
    k.prev_eps = 0.0;
    k.prev_x = sqrt(alpha) * (1.0 - abar_p) / (1.0 - abar_c);
    const double var = o.variance == kPosterior ? beta * (1.0 - abar_p) / (1.0 - abar_c) : beta;
    k.sigma = abar_p < 1.0 ? sqrt(var) : 0.0;
  }
  return k;
}

template <typename opmath_t>
PATRONUS_HOST_DEVICE opmath_t clamp(opmath_t v, opmath_t lo, opmath_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// The guided model output of one element: null + w (out - null).
template <typename opmath_t>
PATRONUS_HOST_DEVICE opmath_t guided(opmath_t out, opmath_t null_out, opmath_t w) {
  return null_out + w * (out - null_out);
}

// One element: returns x_p and writes x0 (after clipping). `threshold` > 0 clips; `rescale`
// divides by it (dynamic thresholding); `history` of the previous predictions m1, m2 are added
// (in that order) where given.
template <typename opmath_t>
PATRONUS_HOST_DEVICE opmath_t update(opmath_t x, opmath_t out, opmath_t z, const Coefficients& k,
                                     opmath_t threshold, bool rescale, int history, opmath_t m1,
                                     opmath_t m2, opmath_t* x0_result) {
  opmath_t x0 = static_cast<opmath_t>(k.x0_x) * x + static_cast<opmath_t>(k.x0_out) * out;
  opmath_t eps = static_cast<opmath_t>(k.eps_x) * x + static_cast<opmath_t>(k.eps_out) * out;
  if (threshold > opmath_t(0)) {
    x0 = clamp(x0, -threshold, threshold);
    if (rescale) x0 = x0 / threshold;
    if (k.eps_x0_x != 0.0) {
      eps = static_cast<opmath_t>(k.eps_x0_x) * x + static_cast<opmath_t>(k.eps_x0_x0) * x0;
    }
  }
  *x0_result = x0;
  opmath_t next = static_cast<opmath_t>(k.prev_x0) * x0 + static_cast<opmath_t>(k.prev_eps) * eps +
                  static_cast<opmath_t>(k.prev_x) * x + static_cast<opmath_t>(k.sigma) * z;
  if (history > 0) next = next + static_cast<opmath_t>(k.history1) * m1;
  if (history > 1) next = next + static_cast<opmath_t>(k.history2) * m2;
  return next;
}

// ------------------------------------------------------------------------------ Philox4x32-10
struct Philox4 {
  uint32_t v[4];
};

PATRONUS_HOST_DEVICE void mul_hi_lo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  *lo = static_cast<uint32_t>(product);
}

// Random123's philox4x32 with 10 rounds: counter (c0..c3), key (k0, k1).
PATRONUS_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                           uint32_t k0, uint32_t k1) {
  uint32_t ctr[4] = {c0, c1, c2, c3};
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mul_hi_lo(0xD2511F53u, ctr[0], &hi0, &lo0);
    mul_hi_lo(0xCD9E8D57u, ctr[2], &hi1, &lo1);
    const uint32_t next[4] = {hi1 ^ ctr[1] ^ k0, lo1, hi0 ^ ctr[3] ^ k1, lo0};
    for (int i = 0; i < 4; ++i) ctr[i] = next[i];
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{ctr[0], ctr[1], ctr[2], ctr[3]}};
}

// Four standard normals for element group `group` (elements 4 group .. 4 group + 3).
PATRONUS_HOST_DEVICE void normal4(uint64_t seed, uint64_t offset, uint64_t group, double out[4]) {
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                                  static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                  static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const double two_pi = 6.283185307179586476925286766559;
  const double scale = 2.3283064365386963e-10;  // 2^-32
  for (int pair = 0; pair < 2; ++pair) {
    const double u1 = (static_cast<double>(r.v[2 * pair]) + 0.5) * scale;  // (0, 1)
    const double u2 = (static_cast<double>(r.v[2 * pair + 1]) + 0.5) * scale;
    const double radius = sqrt(-2.0 * log(u1));
    out[2 * pair] = radius * cos(two_pi * u2);
    out[2 * pair + 1] = radius * sin(two_pi * u2);
  }
}

}  // namespace step
}  // namespace patronus
