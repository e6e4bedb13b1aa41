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

// Running max m, S = sum exp(x - m) and A = sum exp(x - m)(x - m) over blocks of one row (online
// softmax: S and A are rescaled when the maximum grows). NaN or +inf inputs make S NaN, and so H.
struct RowStats {
  float m = -std::numeric_limits<float>::infinity();
  float s = 0.0f;
  float a = 0.0f;

  // Adds the values scale * x[i] for `n` floats, n a multiple of vec::kLanes (pad with -inf).
  inline void add_block(const float* x, int64_t n, float scale = 1.0f) {
    using vec::VecF;
    const VecF scale_v = vec::broadcast(scale);
    VecF block_max = vec::broadcast(-std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < n; i += vec::kLanes) block_max = vec::vmax(block_max, vec::load(x + i));
    // scale > 0, so the maximum of the scaled values is the scaled maximum.
    float bm = vec::hmax(block_max) * scale;
    if (bm == -std::numeric_limits<float>::infinity()) {
      // Only -inf here, or NaN (ignored by the max): one NaN must still reach S.
      for (int64_t i = 0; i < n; ++i)
        if (x[i] != x[i]) s = x[i];  // NaN
      return;
    }
    if (bm > m) {
      if (m != -std::numeric_limits<float>::infinity()) {
        const float factor = std::exp(m - bm);
        a = factor * (a + (m - bm) * s);
        s = factor * s;
      }
      m = bm;
    }
    const VecF mv = vec::broadcast(m);
    const VecF zero = vec::broadcast(0.0f);
    VecF sv = zero, av = zero;
    for (int64_t i = 0; i < n; i += vec::kLanes) {
      const VecF d = vec::load(x + i) * scale_v - mv;
      const VecF e = vec::exp_nonpositive(d);
      sv += e;
      av += e > zero ? d * e : zero;  // -inf * 0 would be NaN; a NaN input reaches S through e
    }
    s += vec::hsum(sv);
    a += vec::hsum(av);
  }

  // H = log S - A / S (clamped at 0; NaN stays NaN) and lse = m + log S; an all -inf row: 0, -inf.
  inline void finish(float* entropy, float* lse) const {
    if (m == -std::numeric_limits<float>::infinity() && s == 0.0f) {
      *entropy = 0.0f;
      *lse = -std::numeric_limits<float>::infinity();
      return;
    }
    const float log_s = std::log(s);
    const float h = log_s - a / s;
    *entropy = h < 0.0f ? 0.0f : h;
    *lse = m + log_s;
  }
};

}  // namespace em_hf
