/* x @ W^T for a weight W held as its ggml blocks, dequantizing while it multiplies.

   gdnc_linear_many(count, qtypes, ws, rows, row_bytes, cols, x, ldx, m, ys, ldys, threads, simd):
     for each of `count` weights W = ws[s] (qtypes[s], rows[s] rows of row_bytes[s] bytes), y = ys[s]:
     y[i * ldy + r] = sum_c x[i * ldx + c] * W[r, c]   for i < m, r < rows
   W: rows of row_bytes bytes, each cols / 32 (or cols / 256) blocks of qtype; x, y: float32.
   Each weight is dequantized to exactly the float32 value ggml's dequantize_row_* gives (every
   product one IEEE fp32 operation in ggml's order; built with -ffp-contract=off), then
   multiplied and summed in float32 (fused multiply-adds on the AVX2 path); only the order of
   the sum differs from dequantize-then-matmul. All weights' rows, taken one weight after another,
   are split evenly over `threads` OpenMP threads in one parallel region (a layer's projections
   of one input in one call); simd = 0 forces the portable path. Returns 0, or -1 for a qtype it
   does not know. Reads nothing outside the W's rows and x's m rows; writes nothing but each y's
   m x rows entries. */

#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { T_F16 = 0, T_BF16 = 1, T_Q8_0 = 2, T_Q4_0 = 3, T_Q4_K = 4, T_Q5_K = 5, T_Q6_K = 6 };

static float f16_value(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static float bf16_value(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t u16_at(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static void k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* The 32 values from element 32 * j of a row: v[0..32). */
static void load32(int qtype, const uint8_t *row, long j, float *v) {
    int i;
    switch (qtype) {
    case T_F16:
        for (i = 0; i < 32; i++) v[i] = f16_value(u16_at(row + 64 * j + 2 * i));
        break;
    case T_BF16:
        for (i = 0; i < 32; i++) v[i] = bf16_value(u16_at(row + 64 * j + 2 * i));
        break;
    case T_Q8_0: {
        const uint8_t *b = row + 34 * j;
        float d = f16_value(u16_at(b));
        for (i = 0; i < 32; i++) v[i] = (float)(int8_t)b[2 + i] * d;
        break;
    }
    case T_Q4_0: {
        const uint8_t *b = row + 18 * j;
        float d = f16_value(u16_at(b));
        for (i = 0; i < 16; i++) {
            v[i] = (float)((b[2 + i] & 0xF) - 8) * d;
            v[i + 16] = (float)((b[2 + i] >> 4) - 8) * d;
        }
        break;
    }
    case T_Q4_K:
    case T_Q5_K: {
        const int five = qtype == T_Q5_K, s = (int)(j % 8);
        const uint8_t *b = row + (five ? 176 : 144) * (j / 8);
        const uint8_t *qs = b + (five ? 48 : 16) + 32 * (s / 2), *qh = b + 16;
        uint8_t sc, mn;
        k_scale_min(s, b + 4, &sc, &mn);
        float d1 = f16_value(u16_at(b)) * sc, m1 = f16_value(u16_at(b + 2)) * mn;
        for (i = 0; i < 32; i++) {
            int q = (s & 1) ? qs[i] >> 4 : qs[i] & 0xF;
            if (five) q += ((qh[i] >> s) & 1) << 4;
            v[i] = d1 * (float)q - m1;
        }
        break;
    }
    case T_Q6_K: {
        const int s = (int)(j % 8), half = s / 4, k = s % 4;
        const uint8_t *b = row + 210 * (j / 8);
        const uint8_t *ql = b + 64 * half + 32 * (k & 1), *qh = b + 128 + 32 * half;
        const int8_t *sc = (const int8_t *)(b + 192 + 8 * half + 2 * k);
        float d = f16_value(u16_at(b + 208));
        for (i = 0; i < 32; i++) {
            int low = k < 2 ? ql[i] & 0xF : ql[i] >> 4;
            int q = (int8_t)(low | (((qh[i] >> (2 * k)) & 3) << 4)) - 32;
            v[i] = d * (float)sc[i / 16] * (float)q;
        }
        break;
    }
    }
}

static int known(int qtype) { return qtype >= T_F16 && qtype <= T_Q6_K; }

static long per_row_blocks(long cols) { return cols / 32; }

static void rows_portable(int qtype, const uint8_t *w, long r0, long r1, long rb, long cols,
                          const float *x, long ldx, long m, float *y, long ldy) {
    float v[32];
    for (long r = r0; r < r1; r++) {
        const uint8_t *row = w + r * rb;
        for (long i = 0; i < m; i++) y[i * ldy + r] = 0.0f;
        for (long j = 0; j < per_row_blocks(cols); j++) {
            load32(qtype, row, j, v);
            for (long i = 0; i < m; i++) {
                const float *xi = x + i * ldx + 32 * j;
                float s = 0.0f;
                for (int e = 0; e < 32; e++) s += v[e] * xi[e];
                y[i * ldy + r] += s;
            }
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline __m256 avx2_q_to_ps(__m128i bytes8_in_low, __m256 d) {
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes8_in_low)), d);
}

/* 32 bytes (unsigned, or signed when is_signed) as four vectors of 8 floats. */
AVX2 static inline void avx2_bytes_to_ps(__m256i q, int is_signed, __m256 *w) {
    __m128i halves[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
    for (int h = 0; h < 2; h++) {
        __m128i lo = halves[h], hi = _mm_srli_si128(halves[h], 8);
        w[2 * h] = _mm256_cvtepi32_ps(is_signed ? _mm256_cvtepi8_epi32(lo) : _mm256_cvtepu8_epi32(lo));
        w[2 * h + 1] = _mm256_cvtepi32_ps(is_signed ? _mm256_cvtepi8_epi32(hi) : _mm256_cvtepu8_epi32(hi));
    }
}

/* The 32 values from element 32 * j of a row, as four vectors of 8. */
AVX2 static inline void avx2_load32(int qtype, const uint8_t *row, long j, __m256 *w) {
    switch (qtype) {
    case T_F16:
        for (int k = 0; k < 4; k++)
            w[k] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 64 * j + 16 * k)));
        return;
    case T_BF16:
        for (int k = 0; k < 4; k++)
            w[k] = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(row + 64 * j + 16 * k))), 16));
        return;
    case T_Q8_0: {
        const uint8_t *b = row + 34 * j;
        __m256 d = _mm256_set1_ps(_cvtsh_ss(u16_at(b)));
        for (int k = 0; k < 4; k++)
            w[k] = avx2_q_to_ps(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * k)), d);
        return;
    }
    case T_Q4_0: {
        const uint8_t *b = row + 18 * j;
        __m256 d = _mm256_set1_ps(_cvtsh_ss(u16_at(b)));
        __m128i q = _mm_loadu_si128((const __m128i *)(b + 2)), mask = _mm_set1_epi8(0xF);
        __m128i lo = _mm_sub_epi8(_mm_and_si128(q, mask), _mm_set1_epi8(8));
        __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), mask), _mm_set1_epi8(8));
        w[0] = avx2_q_to_ps(lo, d);
        w[1] = avx2_q_to_ps(_mm_srli_si128(lo, 8), d);
        w[2] = avx2_q_to_ps(hi, d);
        w[3] = avx2_q_to_ps(_mm_srli_si128(hi, 8), d);
        return;
    }
    case T_Q4_K:
    case T_Q5_K: {
        const int five = qtype == T_Q5_K, s = (int)(j % 8);
        const uint8_t *b = row + (five ? 176 : 144) * (j / 8);
        uint8_t sc, mn;
        k_scale_min(s, b + 4, &sc, &mn);
        __m256 d1 = _mm256_set1_ps(_cvtsh_ss(u16_at(b)) * sc), m1 = _mm256_set1_ps(_cvtsh_ss(u16_at(b + 2)) * mn);
        __m256i mask = _mm256_set1_epi8(0xF);
        __m256i q = _mm256_loadu_si256((const __m256i *)(b + (five ? 48 : 16) + 32 * (s / 2)));
        q = _mm256_and_si256((s & 1) ? _mm256_srli_epi16(q, 4) : q, mask);
        if (five) {
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 16));
            qh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s)), _mm256_set1_epi8(1));
            q = _mm256_or_si256(q, _mm256_slli_epi16(qh, 4));
        }
        avx2_bytes_to_ps(q, 0, w);
        for (int k = 0; k < 4; k++) w[k] = _mm256_sub_ps(_mm256_mul_ps(d1, w[k]), m1);
        return;
    }
    case T_Q6_K: {
        const int s = (int)(j % 8), half = s / 4, k = s % 4;
        const uint8_t *b = row + 210 * (j / 8);
        const int8_t *sc = (const int8_t *)(b + 192 + 8 * half + 2 * k);
        float d = _cvtsh_ss(u16_at(b + 208));
        __m256 d0 = _mm256_set1_ps(d * (float)sc[0]), d1 = _mm256_set1_ps(d * (float)sc[1]);
        __m256i mask = _mm256_set1_epi8(0xF);
        __m256i ql = _mm256_loadu_si256((const __m256i *)(b + 64 * half + 32 * (k & 1)));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * half));
        ql = _mm256_and_si256(k < 2 ? ql : _mm256_srli_epi16(ql, 4), mask);
        qh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k)), _mm256_set1_epi8(3));
        __m256i q = _mm256_sub_epi8(_mm256_or_si256(ql, _mm256_slli_epi16(qh, 4)), _mm256_set1_epi8(32));
        avx2_bytes_to_ps(q, 1, w);
        w[0] = _mm256_mul_ps(d0, w[0]);
        w[1] = _mm256_mul_ps(d0, w[1]);
        w[2] = _mm256_mul_ps(d1, w[2]);
        w[3] = _mm256_mul_ps(d1, w[3]);
        return;
    }
    }
}

AVX2 static inline float avx2_sum(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_hadd_ps(a, a);
    a = _mm_hadd_ps(a, a);
    return _mm_cvtss_f32(a);
}

/* Rows r0..r1 against x rows i0..i0+mt (mt <= 4, a constant where inlined). */
AVX2 static inline __attribute__((always_inline)) void avx2_tile(
    int qtype, const uint8_t *w, long r0, long r1, long rb, long cols, const float *x, long ldx,
    long i0, int mt, float *y, long ldy) {
    for (long r = r0; r < r1; r++) {
        const uint8_t *row = w + r * rb;
        __m256 acc[4][2];
#pragma GCC unroll 4
        for (int i = 0; i < mt; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (long j = 0; j < per_row_blocks(cols); j++) {
            __m256 v[4];
            avx2_load32(qtype, row, j, v);
#pragma GCC unroll 4
            for (int i = 0; i < mt; i++) {
                const float *xi = x + (i0 + i) * ldx + 32 * j;
                acc[i][0] = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(xi), acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xi + 8), acc[i][1]);
                acc[i][0] = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xi + 16), acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xi + 24), acc[i][1]);
            }
        }
        for (int i = 0; i < mt; i++) y[(i0 + i) * ldy + r] = avx2_sum(_mm256_add_ps(acc[i][0], acc[i][1]));
    }
}

#define AVX2_TYPED(T)                                                                            \
    AVX2 static void avx2_rows_##T(const uint8_t *w, long r0, long r1, long rb, long cols,      \
                                   const float *x, long ldx, long m, float *y, long ldy) {      \
        long i = 0;                                                                              \
        for (; i + 4 <= m; i += 4) avx2_tile(T, w, r0, r1, rb, cols, x, ldx, i, 4, y, ldy);      \
        switch (m - i) {                                                                         \
        case 3: avx2_tile(T, w, r0, r1, rb, cols, x, ldx, i, 3, y, ldy); break;                  \
        case 2: avx2_tile(T, w, r0, r1, rb, cols, x, ldx, i, 2, y, ldy); break;                  \
        case 1: avx2_tile(T, w, r0, r1, rb, cols, x, ldx, i, 1, y, ldy); break;                  \
        }                                                                                        \
    }
AVX2_TYPED(T_F16)
AVX2_TYPED(T_BF16)
AVX2_TYPED(T_Q8_0)
AVX2_TYPED(T_Q4_0)
AVX2_TYPED(T_Q4_K)
AVX2_TYPED(T_Q5_K)
AVX2_TYPED(T_Q6_K)

static void rows_avx2(int qtype, const uint8_t *w, long r0, long r1, long rb, long cols,
                      const float *x, long ldx, long m, float *y, long ldy) {
    switch (qtype) {
    case T_F16: avx2_rows_T_F16(w, r0, r1, rb, cols, x, ldx, m, y, ldy); break;
    case T_BF16: avx2_rows_T_BF16(w, r0, r1, rb, cols, x, ldx, m, y, ldy); break;
    case T_Q8_0: avx2_rows_T_Q8_0(w, r0, r1, rb, cols, x, ldx, m, y, ldy); break;
    case T_Q4_0: avx2_rows_T_Q4_0(w, r0, r1, rb, cols, x, ldx, m, y, ldy); break;
    case T_Q4_K: avx2_rows_T_Q4_K(w, r0, r1, rb, cols, x, ldx, m, y, ldy); break;
    case T_Q5_K: avx2_rows_T_Q5_K(w, r0, r1, rb, cols, x, ldx, m, y, ldy); break;
    case T_Q6_K: avx2_rows_T_Q6_K(w, r0, r1, rb, cols, x, ldx, m, y, ldy); break;
    }
}

int gdnc_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#else
static void rows_avx2(int qtype, const uint8_t *w, long r0, long r1, long rb, long cols,
                      const float *x, long ldx, long m, float *y, long ldy) {
    rows_portable(qtype, w, r0, r1, rb, cols, x, ldx, m, y, ldy);
}

int gdnc_has_avx2(void) { return 0; }
#endif

int gdnc_linear_many(int count, const int *qtypes, const uint8_t *const *ws, const long *rows,
                     const long *rbs, long cols, const float *x, long ldx, long m, float *const *ys,
                     const long *ldys, int threads, int simd) {
    long total = 0;
    for (int s = 0; s < count; s++) {
        if (!known(qtypes[s])) return -1;
        total += rows[s];
    }
    simd = simd && gdnc_has_avx2();
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads)
    {
        int n = 1, t = 0;
#ifdef _OPENMP
        n = omp_get_num_threads();
        t = omp_get_thread_num();
#endif
        long per = (total + n - 1) / n, lo = t * per, hi = lo + per < total ? lo + per : total;
        long first = 0; /* the first row of weight s among all the weights' rows */
        for (int s = 0; s < count && first < hi; first += rows[s], s++) {
            long r0 = lo > first ? lo - first : 0, r1 = hi - first < rows[s] ? hi - first : rows[s];
            if (r0 >= r1) continue;
            if (simd)
                rows_avx2(qtypes[s], ws[s], r0, r1, rbs[s], cols, x, ldx, m, ys[s], ldys[s]);
            else
                rows_portable(qtypes[s], ws[s], r0, r1, rbs[s], cols, x, ldx, m, ys[s], ldys[s]);
        }
    }
    return 0;
}
