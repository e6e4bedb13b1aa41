// Portable SIMD helpers (GCC/Clang vector extensions: AVX-512, AVX2, SSE or NEON, whatever the
// compiler targets) and the online row statistics shared by the CPU kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace em_hf {
namespace vec {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif

typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(float))));

inline VecF broadcast(float x) {
  VecF v;
  for (int i = 0; i < kLanes; ++i) v[i] = x;
  return v;
}
inline VecF load(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, VecF v) { std::memcpy(p, &v, sizeof(v)); }
inline float hsum(VecF v) {
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}
inline float hmax(VecF v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
inline VecF vmax(VecF a, VecF b) { return a > b ? a : b; }

inline VecF vsqrt(VecF v) {
#if defined(__AVX512F__)
  return reinterpret_cast<VecF>(_mm512_sqrt_ps(reinterpret_cast<__m512>(v)));
#elif defined(__AVX__)
  return reinterpret_cast<VecF>(_mm256_sqrt_ps(reinterpret_cast<__m256>(v)));
#else
  for (int i = 0; i < kLanes; ++i) v[i] = std::sqrt(v[i]);
  return v;
#endif
}

// exp(x) for x <= 0 (and NaN), with relative error below 2e-7: x = n ln2 + r, |r| <= ln2/2,
// exp(r) by its degree-6 Taylor polynomial, 2^n built in the exponent bits. x below -87.3 gives 0
// (-inf included); NaN stays NaN.
inline VecF exp_nonpositive(VecF x) {
  const VecF lowest = broadcast(-87.3f);
  const VecI underflow = x < lowest;
  const VecI is_nan = x != x;
  x = x < lowest ? lowest : x;
  const VecF round_magic = broadcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const VecF n = (x * broadcast(1.44269504088896341f) + round_magic) - round_magic;
  VecF r = x - n * broadcast(0.693359375f);  // ln 2 split in two parts for an exact product
  r = r - n * broadcast(-2.12194440e-4f);
  VecF p = broadcast(1.0f / 720.0f);
  p = p * r + broadcast(1.0f / 120.0f);
  p = p * r + broadcast(1.0f / 24.0f);
  p = p * r + broadcast(1.0f / 6.0f);
  p = p * r + broadcast(0.5f);
  p = p * r + broadcast(1.0f);
  p = p * r + broadcast(1.0f);
  const VecI exponent = (__builtin_convertvector(n, VecI) + 127) << 23;
  VecF scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  VecF result = p * scale;
  result = underflow ? broadcast(0.0f) : result;
  return is_nan ? x : result;
}

}  // namespace vec

// Online row statistics over blocks of one row (online softmax). The maximum m is kept in the
// units of the raw values x; the shifted values d = (x - m) * scale are what exp sees, so no value
// is multiplied by 1/T before the maximum is subtracted (z / T may overflow where (z - m) / T does
// not, and lse = m / T + log S would round log S away next to a large m):
//   S = sum exp(d),  A = sum exp(d) d,  and with kExtras  D = sum d, n = count, over the finite x.
// S, A and D are rescaled when the maximum grows. NaN or +inf inputs make S NaN, and so H.
struct RowStats {
  float m = -std::numeric_limits<float>::infinity();
  float s = 0.0f;
  float a = 0.0f;
  float d_sum = 0.0f;
  float n = 0.0f;

  // Adds the values x[i] for `n_values` floats, a multiple of vec::kLanes (pad with -inf), at
  // scale > 0 (1/T).
  template <bool kExtras = false>
  inline void add_block(const float* x, int64_t n_values, float scale = 1.0f) {
    using vec::VecF;
    constexpr float kNegInfinity = -std::numeric_limits<float>::infinity();
    VecF block_max = vec::broadcast(kNegInfinity);
    // kExtras: the minimum too, so that a block without masked (-inf) entries, the usual case, skips
    // the finiteness mask below.
    VecF block_min = vec::broadcast(std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < n_values; i += vec::kLanes) {
      const VecF xi = vec::load(x + i);
      block_max = vec::vmax(block_max, xi);
      if constexpr (kExtras) block_min = xi < block_min ? xi : block_min;
    }
    const float bm = vec::hmax(block_max);
    if (bm == kNegInfinity) {
      // Only -inf here, or NaN (ignored by the max): one NaN must still reach S.
      for (int64_t i = 0; i < n_values; ++i)
        if (x[i] != x[i]) s = x[i];  // NaN
      return;
    }
    if (bm > m) {
      if (m != kNegInfinity) {
        const float shift = (m - bm) * scale;  // < 0; -inf when it overflows (tiny T)
        const float factor = std::exp(shift);
        if (factor > 0.0f) {
          a = factor * (a + shift * s);
          s = factor * s;
        } else {
          a = 0.0f;
          s = 0.0f;
        }
        if (kExtras && n > 0.0f) d_sum += n * shift;
      }
      m = bm;
    }
    const VecF mv = vec::broadcast(m);
    const VecF scale_v = vec::broadcast(scale);
    const VecF zero = vec::broadcast(0.0f);
    const VecF neg_inf = vec::broadcast(kNegInfinity);
    const VecF one = vec::broadcast(1.0f);
    VecF sv = zero, av = zero, dv = zero, nv = zero;
    const bool masked = kExtras && -vec::hmax(-block_min) == kNegInfinity;
    for (int64_t i = 0; i < n_values; i += vec::kLanes) {
      const VecF xi = vec::load(x + i);
      const VecF d = (xi - mv) * scale_v;
      const VecF e = vec::exp_nonpositive(d);
      sv += e;
      av += e > zero ? d * e : zero;  // -inf * 0 would be NaN; a NaN input reaches S through e
      if constexpr (kExtras) {
        if (masked) {
          const auto finite = xi > neg_inf;  // masked entries (-inf) are not part of "uniform"
          dv += finite ? d : zero;
          nv += finite ? one : zero;
        } else {
          dv += d;
        }
      }
    }
    s += vec::hsum(sv);
    a += vec::hsum(av);
    if constexpr (kExtras) {
      d_sum += vec::hsum(dv);
      n += masked ? vec::hsum(nv) : static_cast<float>(n_values);
    }
  }

  // True for a row without mass (all -inf).
  inline bool empty() const { return m == -std::numeric_limits<float>::infinity() && s == 0.0f; }

  // H = log S - A / S (clamped at 0; NaN stays NaN) and lse = m * scale + log S; an all -inf row:
  // 0, -inf.
  inline void finish(float* entropy, float* lse, float scale = 1.0f) const {
    if (empty()) {
      *entropy = 0.0f;
      *lse = -std::numeric_limits<float>::infinity();
      return;
    }
    const float log_s = std::log(s);
    const float h = log_s - a / s;
    *entropy = h < 0.0f ? 0.0f : h;
    *lse = m * scale + log_s;
  }

  // The self-certainty term KL(U || p) = log S - D / n - log n over the n finite entries (needs
  // kExtras); 0 for a row without mass. +inf where D overflows (a tiny T).
  inline float self_certainty() const {
    if (empty() || !(n > 0.0f)) return 0.0f;
    const float value = std::log(s) - d_sum / n - std::log(n);
    return value < 0.0f ? 0.0f : value;  // KL >= 0; rounding may leave -1e-7
  }
};

}  // namespace em_hf
