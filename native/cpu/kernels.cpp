#include "kernels.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define DSG_X86 1
#define DSG_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace dsg {

namespace {

inline float bf16ToF32(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float f16ToF32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      u = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <DType T>
inline float loadScalar(const void* w, int64_t i) {
  if constexpr (T == DType::F32) return static_cast<const float*>(w)[i];
  if constexpr (T == DType::BF16) return bf16ToF32(static_cast<const uint16_t*>(w)[i]);
  return f16ToF32(static_cast<const uint16_t*>(w)[i]);
}

// Portable matmul over output rows [n0, n1).
template <DType T>
void matmulRowsScalar(const float* x, int64_t M, int64_t K, const void* W, int64_t n0, int64_t n1, const float* bias,
                      float* y, int64_t ldy) {
  const size_t es = T == DType::F32 ? 4 : 2;
  for (int64_t n = n0; n < n1; ++n) {
    const void* row = static_cast<const uint8_t*>(W) + (size_t)n * K * es;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * K;
      float acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += loadScalar<T>(row, k) * xm[k];
      y[m * ldy + n] = acc + (bias ? bias[n] : 0.0f);
    }
  }
}

#ifdef DSG_X86
template <DType T>
DSG_AVX2 inline __m256 load8(const void* w, int64_t k) {
  if constexpr (T == DType::F32) return _mm256_loadu_ps(static_cast<const float*>(w) + k);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + k));
  if constexpr (T == DType::BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}

DSG_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Every AVX2 dot product of a weight row and a token sums in one canonical order, whatever the number of tokens
// in the matmul: two 8-lane accumulators over alternate 8-element blocks (a lone last block goes to the first),
// then hsum(a0 + a1), then the scalar tail with FMA. So a token's logits are bitwise the same alone or in a batch.

// One weight row against one token (the decode path; streaming one row at a time is what this machine's memory
// system serves fastest: interleaving rows measured 2x slower).
template <DType T>
DSG_AVX2 float dotRow(const void* row, const float* x, int64_t K) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    a0 = _mm256_fmadd_ps(load8<T>(row, k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(load8<T>(row, k + 8), _mm256_loadu_ps(x + k + 8), a1);
  }
  if (k + 8 <= K) {
    a0 = _mm256_fmadd_ps(load8<T>(row, k), _mm256_loadu_ps(x + k), a0);
    k += 8;
  }
  float acc = hsum(_mm256_add_ps(a0, a1));
  for (; k < K; ++k) acc = __builtin_fmaf(loadScalar<T>(row, k), x[k], acc);
  return acc;
}

// Two f32 weight rows against MT (<= 3) tokens, in the canonical order: 12 accumulators; each weight load feeds
// MT FMAs and each x load two. The prefill micro-kernel, run over a block of rows already widened to f32.
template <int MT>
DSG_AVX2 void dot2xMT(const float* w, int64_t K, const float* x, float out[2][3]) {
  __m256 a[2][MT][2];
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < MT; ++j) a[r][j][0] = a[r][j][1] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    for (int h = 0; h < 2; ++h) {
      __m256 xv[MT];
      for (int j = 0; j < MT; ++j) {
        xv[j] = _mm256_loadu_ps(x + j * K + k + 8 * h);
        asm("" : "+x"(xv[j]));  // keep x in a register: folding it into each FMA would double the loads
      }
      for (int r = 0; r < 2; ++r) {
        const __m256 wv = _mm256_loadu_ps(w + r * K + k + 8 * h);
        for (int j = 0; j < MT; ++j) a[r][j][h] = _mm256_fmadd_ps(wv, xv[j], a[r][j][h]);
      }
    }
  }
  if (k + 8 <= K) {
    for (int r = 0; r < 2; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * K + k);
      for (int j = 0; j < MT; ++j) a[r][j][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j * K + k), a[r][j][0]);
    }
    k += 8;
  }
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < MT; ++j) {
      float acc = hsum(_mm256_add_ps(a[r][j][0], a[r][j][1]));
      for (int64_t kk = k; kk < K; ++kk) acc = __builtin_fmaf(w[r * K + kk], x[j * K + kk], acc);
      out[r][j] = acc;
    }
}

template <DType T>
DSG_AVX2 void widenRows(const void* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8<T>(src, i));
  for (; i < n; ++i) dst[i] = loadScalar<T>(src, i);
}

template <DType T>
DSG_AVX2 void matmulRowsAvx2(const float* x, int64_t M, int64_t K, const void* W, int64_t n0, int64_t n1,
                             const float* bias, float* y, int64_t ldy) {
  const size_t rowBytes = (size_t)K * (T == DType::F32 ? 4 : 2);
  const uint8_t* Wb = static_cast<const uint8_t*>(W);
  if (M == 1) {
    for (int64_t n = n0; n < n1; ++n) y[n] = dotRow<T>(Wb + n * rowBytes, x, K) + (bias ? bias[n] : 0.0f);
    return;
  }
  // Prefill: widen a block of 16 weight rows to f32 once (it stays in L2), then run every 3-token tile of x over
  // it two rows at a time.
  constexpr int64_t RB = 16;
  thread_local std::vector<float> block;  // [RB rows widened][2 rows of tail padding]
  if ((int64_t)block.size() < (RB + 2) * K) block.resize((RB + 2) * K);
  float* pad = block.data() + RB * K;
  float out[2][3];
  for (int64_t nb = n0; nb < n1; nb += RB) {
    const int64_t rows = nb + RB < n1 ? RB : n1 - nb;
    const float* wf;
    if constexpr (T == DType::F32) {
      wf = reinterpret_cast<const float*>(Wb + nb * rowBytes);
    } else {
      widenRows<T>(Wb + nb * rowBytes, rows * K, block.data());
      wf = block.data();
    }
    for (int64_t m = 0; m < M; m += 3) {
      const int mt = (int)(M - m < 3 ? M - m : 3);
      const float* xm = x + m * K;
      for (int64_t r = 0; r < rows; r += 2) {
        const int rt = rows - r < 2 ? 1 : 2;
        const float* w2 = wf + r * K;
        if (rt < 2) {  // odd row count: pad with a copy; the extra result is dropped
          std::memcpy(pad, w2, sizeof(float) * K);
          std::memcpy(pad + K, w2, sizeof(float) * K);
          w2 = pad;
        }
        switch (mt) {
          case 3: dot2xMT<3>(w2, K, xm, out); break;
          case 2: dot2xMT<2>(w2, K, xm, out); break;
          default: dot2xMT<1>(w2, K, xm, out); break;
        }
        for (int i = 0; i < rt; ++i)
          for (int j = 0; j < mt; ++j) y[(m + j) * ldy + nb + r + i] = out[i][j] + (bias ? bias[nb + r + i] : 0.0f);
      }
    }
  }
}
#endif

constexpr int kKeyBlock = 64;  // keys per online-softmax block

// The attention inner loop, written once and compiled twice (portable and AVX2): the dot and axpy helpers are
// passed as templates so they inline.
template <class Dot, class Axpy, class ExpBlock>
__attribute__((always_inline)) inline void attendPagedImpl(const float* q, int group, int64_t D, const float* K, const float* V, int64_t rowStride,
                            const int32_t* pages, int P, int32_t numKeys, float scale, float* out, float* scratch,
                            Dot dot, Axpy axpy, ExpBlock expBlock) {
  float* m = scratch;                   // [group] running max
  float* l = m + group;                 // [group] running denominator
  float* s = l + group;                 // [group, kKeyBlock] scores
  int64_t* offs = reinterpret_cast<int64_t*>(s + (int64_t)group * kKeyBlock);  // [kKeyBlock] row offsets
  for (int g = 0; g < group; ++g) {
    m[g] = -INFINITY;
    l[g] = 0;
  }
  std::memset(out, 0, sizeof(float) * group * D);
  for (int32_t kb = 0; kb < numKeys; kb += kKeyBlock) {
    const int32_t n = numKeys - kb < kKeyBlock ? numKeys - kb : kKeyBlock;
    // Walk the page table incrementally: no division per key.
    int32_t page = kb / P, slot = kb % P;
    for (int32_t j = 0; j < n; ++j) {
      const int64_t off = ((int64_t)pages[page] * P + slot) * rowStride;
      if (++slot == P) {
        slot = 0;
        ++page;
      }
      offs[j] = off;
      const float* kr = K + off;
      for (int g = 0; g < group; ++g) s[g * kKeyBlock + j] = dot(q + g * D, kr, D) * scale;
    }
    for (int g = 0; g < group; ++g) {
      float* sg = s + g * kKeyBlock;
      float bm = m[g];
      for (int32_t j = 0; j < n; ++j) bm = sg[j] > bm ? sg[j] : bm;
      const float corr = std::exp(m[g] - bm);
      float* og = out + g * D;
      if (corr != 1.0f) {
        for (int64_t i = 0; i < D; ++i) og[i] *= corr;
        l[g] *= corr;
      }
      l[g] += expBlock(sg, n, bm);
      m[g] = bm;
      for (int32_t j = 0; j < n; ++j) axpy(sg[j], V + offs[j], og, D);
    }
  }
  for (int g = 0; g < group; ++g) {
    const float inv = 1.0f / l[g];
    for (int64_t i = 0; i < D; ++i) out[g * D + i] *= inv;
  }
}

void attendPagedScalar(const float* q, int group, int64_t D, const float* K, const float* V, int64_t rowStride,
                       const int32_t* pages, int P, int32_t numKeys, float scale, float* out, float* scratch) {
  attendPagedImpl(
      q, group, D, K, V, rowStride, pages, P, numKeys, scale, out, scratch,
      [](const float* a, const float* b, int64_t n) {
        float acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
        return acc;
      },
      [](float a, const float* x, float* y, int64_t n) {
        for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
      },
      [](float* v, int32_t n, float shift) {
        float sum = 0;
        for (int32_t j = 0; j < n; ++j) sum += (v[j] = std::exp(v[j] - shift));
        return sum;
      });
}

#ifdef DSG_X86
struct DotAvx2 {
  DSG_AVX2 float operator()(const float* a, const float* b, int64_t n) const {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float r = hsum(acc);
    for (; i < n; ++i) r += a[i] * b[i];
    return r;
  }
};
struct AxpyAvx2 {
  DSG_AVX2 void operator()(float a, const float* x, float* y, int64_t n) const {
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] += a * x[i];
  }
};
// exp on 8 lanes (Cephes expf: range reduction by ln 2, degree-5 polynomial; about 1 ulp on [-87, 88]).
DSG_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
}
struct ExpBlockAvx2 {
  DSG_AVX2 float operator()(float* v, int32_t n, float shift) const {
    const __m256 sh = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    int32_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(v + j), sh));
      _mm256_storeu_ps(v + j, e);
      acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum(acc);
    for (; j < n; ++j) sum += (v[j] = std::exp(v[j] - shift));
    return sum;
  }
};
DSG_AVX2 void attendPagedAvx2(const float* q, int group, int64_t D, const float* K, const float* V, int64_t rowStride,
                              const int32_t* pages, int P, int32_t numKeys, float scale, float* out, float* scratch) {
  attendPagedImpl(q, group, D, K, V, rowStride, pages, P, numKeys, scale, out, scratch, DotAvx2{}, AxpyAvx2{}, ExpBlockAvx2{});
}
#endif

using RowsFn = void (*)(const float*, int64_t, int64_t, const void*, int64_t, int64_t, const float*, float*, int64_t);

RowsFn pickRows(DType t) {
#ifdef DSG_X86
  if (cpuHasAvx2()) {
    switch (t) {
      case DType::F32: return matmulRowsAvx2<DType::F32>;
      case DType::F16: return matmulRowsAvx2<DType::F16>;
      case DType::BF16: return matmulRowsAvx2<DType::BF16>;
    }
  }
#endif
  switch (t) {
    case DType::F32: return matmulRowsScalar<DType::F32>;
    case DType::F16: return matmulRowsScalar<DType::F16>;
    default: return matmulRowsScalar<DType::BF16>;
  }
}

}  // namespace

bool cpuHasAvx2() {
#ifdef DSG_X86
  // DYNAMO_SGLANG_CPU_SCALAR=1 forces the portable kernels (tests check them on AVX2 machines too).
  static const bool has = std::getenv("DYNAMO_SGLANG_CPU_SCALAR") == nullptr && __builtin_cpu_supports("avx2") &&
                          __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

void matmul(ThreadPool& pool, const float* x, int64_t M, int64_t K, const void* W, DType wt, int64_t N,
            const float* bias, float* y, int64_t ldy) {
  const RowsFn rows = pickRows(wt);
  // Below ~256K multiply-adds a job is cheaper on one thread than the hand-off to the pool.
  const int64_t work = M * N * K;
  if (work < (1 << 18) || N < 32) {
    rows(x, M, K, W, 0, N, bias, y, ldy);
    return;
  }
  // Split on 16-row boundaries so every thread streams whole weight blocks.
  const int64_t blocks = (N + 15) / 16;
  pool.parallelFor(blocks, [&](int64_t b, int64_t e, int) { rows(x, M, K, W, b * 16, e * 16 < N ? e * 16 : N, bias, y, ldy); });
}

void toF32(const void* src, DType t, int64_t n, float* dst) {
  switch (t) {
    case DType::F32: std::memcpy(dst, src, (size_t)n * 4); return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = loadScalar<DType::BF16>(src, i);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = loadScalar<DType::F16>(src, i);
      return;
  }
}

int64_t attentionScratchFloats(int group, int64_t D) {
  // m, l, scores, then int64 row offsets; rounded up to 64 bytes so per-thread slices stay aligned.
  const int64_t n = 2 * group + (int64_t)group * kKeyBlock + 2 * kKeyBlock;
  return (n + 15) / 16 * 16;
}

void attendPaged(const float* q, int group, int64_t D, const float* K, const float* V, int64_t rowStride,
                 const int32_t* pages, int P, int32_t numKeys, float scale, float* out, float* scratch) {
#ifdef DSG_X86
  if (cpuHasAvx2()) return attendPagedAvx2(q, group, D, K, V, rowStride, pages, P, numKeys, scale, out, scratch);
#endif
  attendPagedScalar(q, group, D, K, V, rowStride, pages, P, numKeys, scale, out, scratch);
}

void rmsNorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += (double)x[i] * x[i];
  const float inv = (float)(1.0 / std::sqrt(ss / (double)n + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
}

}  // namespace dsg
