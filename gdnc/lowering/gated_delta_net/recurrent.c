/* The GatedDeltaNet recurrence, token by token, one (sequence, value head) pair per work item:
   the launch contract of launch.py for fp32 contiguous tensors (native_cpu.py checks that).

   Per token, with a = exp(g) (a scalar, or one per key dimension for KDA), k and q
   l2-normalised when asked and q scaled:
     u = S^T (a k), o0 = S^T (a q), delta = beta v - beta u, o = o0 + (q . k) delta,
     S = a S + k delta^T
   (the order of the torch kernel's operations). A state is read from the pool once into a
   thread's buffer (zeros for a negative in slot), updated there, written to the pool once (a
   negative out slot: not at all), and after every token to token_states when asked. The "kv"
   layout S[K][V] takes two passes over the state per token, "vk" S[V][K] one.
   Returns 0, or -1 when a thread's state buffer cannot be allocated. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    const float *q, *k, *v, *g, *beta;
    float *o;
    const float *src;
    float *dst, *token_states;
    const int64_t *starts, *lengths, *in_index, *out_index;
    long n, h, hv, kd, vd;
    int kda, vk, interleave, l2norm;
    float scale, eps;
} Launch;

static inline __attribute__((always_inline)) void step(const Launch *L, float *S, float *w, long tok,
                                                       long head) {
    const long K = L->kd, V = L->vd, group = L->hv / L->h;
    const long kh = L->interleave ? head / group : head % L->h;
    const float *kp = L->k + (tok * L->h + kh) * K, *qp = L->q + (tok * L->h + kh) * K;
    float *kn = w, *ak = w + K, *aq = w + 2 * K, *av = w + 3 * K, *u = w + 4 * K, *o0 = w + 4 * K + V;
    float fk = 1.0f, fq = L->scale;
    if (L->l2norm) {
        float sk = 0.0f, sq = 0.0f;
        for (long d = 0; d < K; d++) {
            sk += kp[d] * kp[d];
            sq += qp[d] * qp[d];
        }
        fk = 1.0f / sqrtf(sk + L->eps);
        fq = L->scale / sqrtf(sq + L->eps);
    }
    const long row = tok * L->hv + head;
    const float b = L->beta[row];
    const float *gp = L->g + (L->kda ? row * K : row), *vp = L->v + row * V;
    float qk = 0.0f;
    for (long d = 0; d < K; d++) {
        const float a = expf(gp[L->kda ? d : 0]), kd = kp[d] * fk, qd = qp[d] * fq;
        av[d] = a;
        kn[d] = kd;
        ak[d] = a * kd;
        aq[d] = a * qd;
        qk += kd * qd;
    }
    float *op = L->o + row * V;
    if (L->vk) {  /* S[V][K]: row j of the state holds its own u_j, o0_j */
        for (long j = 0; j < V; j++) {
            float *Sj = S + j * K, uj = 0.0f, oj = 0.0f;
            for (long d = 0; d < K; d++) {
                uj += Sj[d] * ak[d];
                oj += Sj[d] * aq[d];
            }
            const float delta = b * vp[j] - b * uj;
            op[j] = oj + qk * delta;
            for (long d = 0; d < K; d++) Sj[d] = Sj[d] * av[d] + delta * kn[d];
        }
        return;
    }
    for (long j = 0; j < V; j++) u[j] = o0[j] = 0.0f;  /* S[K][V]: sums over rows, then update */
    for (long d = 0; d < K; d++) {
        const float *Sd = S + d * V, akd = ak[d], aqd = aq[d];
        for (long j = 0; j < V; j++) {
            u[j] += akd * Sd[j];
            o0[j] += aqd * Sd[j];
        }
    }
    for (long j = 0; j < V; j++) {
        u[j] = b * vp[j] - b * u[j];  /* delta */
        op[j] = o0[j] + qk * u[j];
    }
    for (long d = 0; d < K; d++) {
        float *Sd = S + d * V;
        const float a = av[d], kd = kn[d];
        for (long j = 0; j < V; j++) Sd[j] = Sd[j] * a + kd * u[j];
    }
}

static inline __attribute__((always_inline)) void run_pair(const Launch *L, float *S, float *w, long item) {
    const long n = item / L->hv, head = item % L->hv, size = L->kd * L->vd;
    const int64_t in = L->in_index[n], out = L->out_index[n], start = L->starts[n], len = L->lengths[n];
    if (in >= 0)
        memcpy(S, L->src + (in * L->hv + head) * size, size * sizeof(float));
    else
        memset(S, 0, size * sizeof(float));
    for (int64_t t = 0; t < len; t++) {
        step(L, S, w, start + t, head);
        if (L->token_states)
            memcpy(L->token_states + ((start + t) * L->hv + head) * size, S, size * sizeof(float));
    }
    if (out >= 0) memcpy(L->dst + (out * L->hv + head) * size, S, size * sizeof(float));
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static void run_avx2(const Launch *L, float *S, float *w, long item) {
    run_pair(L, S, w, item);
}
static int has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static void run_avx2(const Launch *L, float *S, float *w, long item) { run_pair(L, S, w, item); }
static int has_avx2(void) { return 0; }
#endif

static void run_portable(const Launch *L, float *S, float *w, long item) { run_pair(L, S, w, item); }

int gdnc_gdn_recurrent(const float *q, const float *k, const float *v, const float *g, const float *beta,
                       float *o, const float *src, float *dst, float *token_states, const int64_t *starts,
                       const int64_t *lengths, const int64_t *in_index, const int64_t *out_index,
                       long n, long h, long hv, long kd, long vd, int kda, int vk, int interleave,
                       int l2norm, float scale, float eps, int threads, int simd) {
    Launch L = {q, k, v, g, beta, o, src, dst, token_states, starts, lengths, in_index, out_index,
                n, h, hv, kd, vd, kda, vk, interleave, l2norm, scale, eps};
    void (*run)(const Launch *, float *, float *, long) = simd && has_avx2() ? run_avx2 : run_portable;
    int failed = 0;
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *S = malloc((size_t)(kd * vd + 4 * kd + 2 * vd) * sizeof(float));
        failed = S == NULL;
#pragma omp for schedule(static)
        for (long item = 0; item < n * hv; item++)
            if (S) run(&L, S, S + kd * vd, item);
        free(S);
    }
    return failed ? -1 : 0;
}
