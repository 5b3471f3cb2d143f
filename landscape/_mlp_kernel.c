/* Fused energy + gradient of batched MLP losses (float64), and the L-BFGS two-loop recursion
 * over the same batches (lbfgs_direction and lbfgs_push, at the end).
 *
 * E(w) = mean_n CE(softmax(f(x_n; w)), y_n) + lam * ||w||^2 for K parameter vectors w at once.
 * Built and loaded by landscape/kernel.py (see there for the Python API and the build flags).
 *
 * Parameter layout of one network (GMIN/pele): for each layer l (in = d_l, out = d_{l+1}),
 * W_l as an (in, out) row-major block, then b_l (out) if biases are on.
 *
 * Inner layout: the data are stored feature-major, X^T as (d0, Npad) with Npad = N rounded
 * up to the vector length VL (padding samples are zero and masked out of loss and
 * gradient). Every activation is a (width, NC) block for a chunk of NC samples, so all inner
 * loops run over samples, VL at a time, with FMAs on explicit vectors (GCC vector
 * extensions; VL = 8 doubles, one zmm register, with AVX-512; 4 with AVX/AVX2; 2 otherwise).
 * Matrix products are register-blocked tiles (with AVX-512 up to 6 rows x 4 vectors = 24
 * accumulators). Weight gradients are accumulated per SIMD lane (P x VL doubles per thread)
 * and summed across lanes once per walker, in a fixed order.
 *
 * Determinism: every walker is computed by one thread with the same code and the same
 * summation order, whatever K, the thread count or the alignment of the caller's rows;
 * no -ffast-math, elementary functions (exp, tanh, log1p) are our own vector polynomials, so the
 * results do not depend on the libm/libmvec version either. Log of the softmax
 * normaliser: per lane, a running product of the sums s_n in [1, C], renormalised by its
 * binary exponent at every step (exact), and one libm log per lane at the end.
 *
 * Parallelism: a small pthread pool shared by all kernels in the process; walkers are
 * handed out one at a time through an atomic counter; each thread has its own scratch.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MLPK_ABI 8
#define MAXL 32

/* Vector length VL (doubles) and register-tile sizes follow the target: 32 zmm registers
 * with AVX-512, 16 ymm with AVX/AVX2, 2-wide vectors otherwise (SSE2, NEON). */
#if defined(__AVX512F__)
#define VL 8
#define MO_MAX 6 /* forward/backward tiles: MO_MAX rows x NV_MAX vectors of accumulators */
#define NV_MAX 4
#define GI_MAX 4 /* weight-gradient tiles: GI_MAX x GO_MAX accumulators */
#define GO_MAX 6
#elif defined(__AVX__)
#define VL 4
#define MO_MAX 4
#define NV_MAX 3
#define GI_MAX 3
#define GO_MAX 4
#else
#define VL 2
#define MO_MAX 4
#define NV_MAX 3
#define GI_MAX 3
#define GO_MAX 4
#endif

typedef double vd __attribute__((vector_size(8 * VL)));
typedef double vdu __attribute__((vector_size(8 * VL), aligned(8)));
typedef int64_t vl __attribute__((vector_size(8 * VL)));
typedef uint64_t vu __attribute__((vector_size(8 * VL)));

#define INLINE static inline __attribute__((always_inline))

enum { ACT_TANH = 0, ACT_SIGMOID = 1, ACT_RELU = 2, ACT_SOFTPLUS = 3 };

/* ------------------------------------------------------------------ vector helpers */

/* broadcast (written out: 0.0 + x would turn -0.0 into +0.0) */
#if VL == 8
INLINE vd vset1(double x) { return (vd){x, x, x, x, x, x, x, x}; }
INLINE vl iset1(int64_t x) { return (vl){x, x, x, x, x, x, x, x}; }
#elif VL == 4
INLINE vd vset1(double x) { return (vd){x, x, x, x}; }
INLINE vl iset1(int64_t x) { return (vl){x, x, x, x}; }
#else
INLINE vd vset1(double x) { return (vd){x, x}; }
INLINE vl iset1(int64_t x) { return (vl){x, x}; }
#endif
INLINE vd vload(const double *p) { return *(const vd *)p; }
INLINE void vstore(double *p, vd x) { *(vd *)p = x; }
INLINE vd vloadu(const double *p) { return *(const vdu *)p; }
/* m ? a : b, with m a comparison result (all ones / all zeros per lane) */
INLINE vd vsel(vl m, vd a, vd b) { return (vd)((m & (vl)a) | (~m & (vl)b)); }
INLINE vd vabs(vd x) { return (vd)((vl)x & iset1(INT64_MAX)); }

INLINE double hsum(vd x)
{
    /* fixed pairwise order: fold the upper half onto the lower half */
#if VL == 8
    double a = (x[0] + x[4]) + (x[2] + x[6]);
    double b = (x[1] + x[5]) + (x[3] + x[7]);
    return a + b;
#elif VL == 4
    return (x[0] + x[2]) + (x[1] + x[3]);
#else
    return x[0] + x[1];
#endif
}

/* exp(x) for x <= 0 (clamped below at -708.3 so that the result stays normal; exp(-708.3)
 * ~ 3e-308 instead of an underflowed value, irrelevant next to the terms it is added to).
 * Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, Taylor polynomial of degree 13
 * (truncation error < 5e-18 relative), scaling by 2^k through the exponent bits.
 * NaN propagates. */
INLINE vd vexp_neg(vd x)
{
    const vd lo = vset1(-708.3);
    x = vsel(x < lo, lo, x);
    const vd shifter = vset1(6755399441055744.0); /* 1.5 * 2^52 */
    vd t = x * vset1(1.4426950408889634074) + shifter;
    vd kd = t - shifter;
    vl ki = (vl)t - (vl)shifter;
    vd r = x - kd * vset1(6.93147180369123816490e-01); /* ln2_hi: kd * hi is exact */
    r = r - kd * vset1(1.90821492927058770002e-10);     /* ln2_lo */
    /* p(r) = sum_{k<=13} r^k/k!: the high-order tail by Estrin's scheme (short dependency
     * chains), the last four steps by Horner's (they set the accuracy) */
    vd r2 = r * r, r4 = r2 * r2;
    vd q0 = vset1(1.0 / 24.0) + r * vset1(1.0 / 120.0);
    vd q1 = vset1(1.0 / 720.0) + r * vset1(1.0 / 5040.0);
    vd q2 = vset1(1.0 / 40320.0) + r * vset1(1.0 / 362880.0);
    vd q3 = vset1(1.0 / 3628800.0) + r * vset1(1.0 / 39916800.0);
    vd q4 = vset1(1.0 / 479001600.0) + r * vset1(1.0 / 6227020800.0);
    vd s0 = q0 + q1 * r2, s1 = q2 + q3 * r2;
    vd p = s0 + (s1 + q4 * r4) * r4;
    p = p * r + vset1(1.0 / 6.0);
    p = p * r + vset1(0.5);
    p = p * r + vset1(1.0);
    p = p * r + vset1(1.0);
    vd scale = (vd)((ki + 1023) << 52);
    return p * scale;
}

/* tanh: |x| < 0.625: x + x z P(z)/Q(z), z = x^2 (Cephes rational form);
 * otherwise sign(x) (1 - 2e/(1+e)), e = exp(-2|x|). One division serves both branches. */
INLINE vd vtanh(vd x)
{
    vd ax = vabs(x);
    vd z = x * x;
    vd P = vset1(-9.64399179425052238628E-1);
    P = P * z + vset1(-9.92877231001918586564E1);
    P = P * z + vset1(-1.61468768441708447952E3);
    vd Q = z + vset1(1.12811678491632931402E2);
    Q = Q * z + vset1(2.23548839060100448583E3);
    Q = Q * z + vset1(4.84406305325125486048E3);
    vd e = vexp_neg(vset1(-2.0) * ax);
    vl small = ax < vset1(0.625);
    vd q = vsel(small, z * P, e + e) / vsel(small, Q, vset1(1.0) + e);
    vd ts = x + x * q;
    vd tl = vset1(1.0) - q;
    tl = (vd)((vl)tl | ((vl)x & (vl)vset1(-0.0))); /* copy the sign of x */
    return vsel(small, ts, tl);
}

/* sigmoid(x) = 1/(1+e) for x >= 0, e/(1+e) for x < 0, e = exp(-|x|) */
INLINE vd vsigmoid(vd x)
{
    vd e = vexp_neg(-vabs(x));
    vd s = vset1(1.0) / (vset1(1.0) + e);
    return vsel(x < vset1(0.0), e * s, s);
}

INLINE vd vrelu(vd x) { return vsel(x < vset1(0.0), vset1(0.0), x); } /* keeps NaN */

/* log(1 + t) for t in [0, 1], fdlibm's log kernel: 1 + t = 2^k (1 + f), k = 0 and f = t (exact) below
 * sqrt(2) - 1, else k = 1 and f = (t - 1) / 2; s = f / (2 + f), log(1 + f) = f - (f^2/2 - s (f^2/2 + R(s^2))),
 * R a minimax polynomial (error < 1 ulp). */
INLINE vd vlog1p_unit(vd t)
{
    vl big = t > vset1(0.41421356237309503);
    vd f = vsel(big, (t - vset1(1.0)) * vset1(0.5), t);
    vd k = vsel(big, vset1(1.0), vset1(0.0));
    vd s = f / (vset1(2.0) + f);
    vd z = s * s, w = z * z;
    vd t1 = w * (vset1(3.999999999940941908e-01) +
                 w * (vset1(2.222219843214978396e-01) + w * vset1(1.531383769920937332e-01)));
    vd t2 = z * (vset1(6.666666666666735130e-01) +
                 w * (vset1(2.857142874366239149e-01) +
                      w * (vset1(1.818357216161805012e-01) + w * vset1(1.479819860511658591e-01))));
    vd hfsq = vset1(0.5) * f * f;
    vd r = s * (hfsq + (t2 + t1)) + k * vset1(1.90821492927058770002e-10); /* ln2_lo */
    return k * vset1(6.93147180369123816490e-01) - ((hfsq - r) - f);  /* ln2_hi */
}

/* softplus log(1 + exp(beta x)) / beta = max(x, 0) + log(1 + exp(-beta |x|)) / beta (no overflow) */
INLINE vd vsoftplus(vd x, double beta, double inv_beta)
{
    return vrelu(x) + vlog1p_unit(vexp_neg(vset1(-beta) * vabs(x))) * vset1(inv_beta);
}

/* ------------------------------------------------------------------ context */

typedef struct {
    double *buf;     /* one allocation */
    double *act[MAXL + 1]; /* act[l] for l = 1..L: (d_l, NC); act[L] holds logits */
    double *D[2];    /* deltas, (maxw, NC) each */
    double *G8;      /* lane accumulators (P, VL) */
} scratch_t;

typedef struct {
    int L, act, bias, N, Npad, NC, maxw;
    int d[MAXL + 1];
    long P;
    long woff[MAXL], boff[MAXL];
    double lam, invN;
    double beta;  /* softplus sharpness */
    double *XT;   /* (d0, Npad), 64-byte aligned */
    double *ylab; /* (Npad) class as double, -1 for padding */
    int nscratch;
    scratch_t *scr;
    int last_threads; /* threads used by the last mlpk_eval */
} ctx_t;

/* ------------------------------------------------------------------ tiles */

/* dst[r][v] = bias[r] + sum_c M(r, c) * src[c][v], M(r, c) = Wp[r*wr + c*wc],
 * for MO rows and NV vectors of 8 samples. */
INLINE void mm_tile(const int MO, const int NV, int cin, const double *restrict Wp, long wr, long wc,
                    const double *restrict bias, const double *restrict src, long lds,
                    double *restrict dst, long ldd)
{
    vd acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < MO; r++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) acc[r][j] = bias ? vset1(bias[r]) : vset1(0.0);
    for (int c = 0; c < cin; c++) {
        vd x[4];
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) x[j] = vload(src + c * lds + j * VL);
#pragma GCC unroll 6
        for (int r = 0; r < MO; r++) {
            vd wv = vset1(Wp[r * wr + c * wc]);
#pragma GCC unroll 4
            for (int j = 0; j < NV; j++) acc[r][j] += wv * x[j];
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MO; r++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) vstore(dst + r * ldd + j * VL, acc[r][j]);
}

#define MM_CASE_NV(MO)                                                                          \
    case MO:                                                                                    \
        switch (nv) {                                                                           \
        case 1: mm_tile(MO, 1, cin, Wp, wr, wc, bias, src, lds, dst, ldd); break;               \
        case 2: mm_tile(MO, 2, cin, Wp, wr, wc, bias, src, lds, dst, ldd); break;               \
        case 3: mm_tile(MO, 3, cin, Wp, wr, wc, bias, src, lds, dst, ldd); break;               \
        default: mm_tile(MO, 4, cin, Wp, wr, wc, bias, src, lds, dst, ldd); break;              \
        }                                                                                       \
        break;

static void mm_tile_dispatch(int mo, int nv, int cin, const double *Wp, long wr, long wc,
                             const double *bias, const double *src, long lds, double *dst, long ldd)
{
    switch (mo) {
        MM_CASE_NV(1)
        MM_CASE_NV(2)
        MM_CASE_NV(3)
        MM_CASE_NV(4)
        MM_CASE_NV(5)
        MM_CASE_NV(6)
    }
}

/* G8[i*gsi + o*VL] += sum_v A[i][v] * D[o][v] (lane-wise), MI x MO block, nvec vectors */
INLINE void g_tile(const int MI, const int MO, int nvec, const double *restrict A, long lda,
                   const double *restrict D, long ldd, double *restrict G8, long gsi)
{
    vd acc[4][6];
#pragma GCC unroll 4
    for (int i = 0; i < MI; i++)
#pragma GCC unroll 6
        for (int o = 0; o < MO; o++) acc[i][o] = vset1(0.0);
    for (int v = 0; v < nvec; v++) {
        vd a[4], dd[6];
#pragma GCC unroll 4
        for (int i = 0; i < MI; i++) a[i] = vload(A + i * lda + v * VL);
#pragma GCC unroll 6
        for (int o = 0; o < MO; o++) dd[o] = vload(D + o * ldd + v * VL);
#pragma GCC unroll 4
        for (int i = 0; i < MI; i++)
#pragma GCC unroll 6
            for (int o = 0; o < MO; o++) acc[i][o] += a[i] * dd[o];
    }
#pragma GCC unroll 4
    for (int i = 0; i < MI; i++)
#pragma GCC unroll 6
        for (int o = 0; o < MO; o++) {
            double *g = G8 + i * gsi + o * VL;
            vstore(g, vload(g) + acc[i][o]);
        }
}

#define G_CASE_MO(MI)                                                                           \
    case MI:                                                                                    \
        switch (mo) {                                                                           \
        case 1: g_tile(MI, 1, nvec, A, lda, D, ldd, G8, gsi); break;                            \
        case 2: g_tile(MI, 2, nvec, A, lda, D, ldd, G8, gsi); break;                            \
        case 3: g_tile(MI, 3, nvec, A, lda, D, ldd, G8, gsi); break;                            \
        case 4: g_tile(MI, 4, nvec, A, lda, D, ldd, G8, gsi); break;                            \
        case 5: g_tile(MI, 5, nvec, A, lda, D, ldd, G8, gsi); break;                            \
        default: g_tile(MI, 6, nvec, A, lda, D, ldd, G8, gsi); break;                           \
        }                                                                                       \
        break;

static void g_tile_dispatch(int mi, int mo, int nvec, const double *A, long lda, const double *D,
                            long ldd, double *G8, long gsi)
{
    switch (mi) {
        G_CASE_MO(1)
        G_CASE_MO(2)
        G_CASE_MO(3)
        G_CASE_MO(4)
    }
}

/* split n into ceil(n/maxt) nearly equal tiles; size of tile t starting at *start */
static inline int tile_size(int n, int maxt, int t)
{
    int nt = (n + maxt - 1) / maxt;
    int base = n / nt, rem = n % nt;
    return base + (t < rem ? 1 : 0);
}
static inline int n_tiles(int n, int maxt) { return (n + maxt - 1) / maxt; }

/* out (rows x nc) = M x in (+ bias), M(r, c) = Wp[r*wr + c*wc]; then the activation
 * (act >= 0) or the derivative factor of the activation given its output `aprev`
 * (deriv = 1), applied block by block while the block is in L1. beta: softplus sharpness. */
static void layer_mm(int rows, int cin, int nvec, const double *Wp, long wr, long wc, const double *bias,
                     const double *src, long lds, double *dst, long ldd, int act, double beta, const double *aprev,
                     long lda)
{
    for (int v0 = 0; v0 < nvec; v0 += NV_MAX) {
        int nv = nvec - v0 < NV_MAX ? nvec - v0 : NV_MAX;
        int nt = n_tiles(rows, MO_MAX), r0 = 0;
        for (int t = 0; t < nt; t++) {
            int mo = tile_size(rows, MO_MAX, t);
            mm_tile_dispatch(mo, nv, cin, Wp + r0 * wr, wr, wc, bias ? bias + r0 : NULL, src + v0 * VL, lds,
                             dst + r0 * ldd + v0 * VL, ldd);
            r0 += mo;
        }
        if (act < 0) continue;
        for (int r = 0; r < rows; r++) {
            double *p = dst + r * ldd + v0 * VL;
            if (!aprev) {
                switch (act) {
                case ACT_TANH:
                    for (int j = 0; j < nv; j++) vstore(p + j * VL, vtanh(vload(p + j * VL)));
                    break;
                case ACT_SIGMOID:
                    for (int j = 0; j < nv; j++) vstore(p + j * VL, vsigmoid(vload(p + j * VL)));
                    break;
                case ACT_SOFTPLUS:
                    for (int j = 0; j < nv; j++) vstore(p + j * VL, vsoftplus(vload(p + j * VL), beta, 1.0 / beta));
                    break;
                default:
                    for (int j = 0; j < nv; j++) vstore(p + j * VL, vrelu(vload(p + j * VL)));
                    break;
                }
            } else {
                const double *a = aprev + r * lda + v0 * VL;
                for (int j = 0; j < nv; j++) {
                    vd av = vload(a + j * VL), f;
                    switch (act) {
                    case ACT_TANH: f = vset1(1.0) - av * av; break;
                    case ACT_SIGMOID: f = av * (vset1(1.0) - av); break;
                    /* sigmoid(beta x) = 1 - exp(-beta a) for a = softplus(x) >= 0 */
                    case ACT_SOFTPLUS: f = vset1(1.0) - vexp_neg(vset1(-beta) * av); break;
                    default: f = vsel(av > vset1(0.0), vset1(1.0), vset1(0.0)); break;
                    }
                    vstore(p + j * VL, vload(p + j * VL) * f);
                }
            }
        }
    }
}

/* G8 block of W (din x dout) += A (din x nc) . D (dout x nc)^T, lane-wise */
static void layer_grad(int din, int dout, int nvec, const double *A, long lda, const double *D, long ldd,
                       double *G8W, double *G8b)
{
    int nti = n_tiles(din, GI_MAX), i0 = 0;
    for (int ti = 0; ti < nti; ti++) {
        int mi = tile_size(din, GI_MAX, ti);
        int nto = n_tiles(dout, GO_MAX), o0 = 0;
        for (int to = 0; to < nto; to++) {
            int mo = tile_size(dout, GO_MAX, to);
            g_tile_dispatch(mi, mo, nvec, A + i0 * lda, lda, D + o0 * ldd, ldd, G8W + ((long)i0 * dout + o0) * VL,
                            (long)dout * VL);
            o0 += mo;
        }
        i0 += mi;
    }
    if (G8b) {
        for (int o = 0; o < dout; o++) {
            const double *p = D + o * ldd;
            vd s0 = vset1(0.0), s1 = vset1(0.0);
            int v = 0;
            for (; v + 1 < nvec; v += 2) {
                s0 += vload(p + v * VL);
                s1 += vload(p + (v + 1) * VL);
            }
            if (v < nvec) s0 += vload(p + v * VL);
            vstore(G8b + o * VL, vload(G8b + o * VL) + (s0 + s1));
        }
    }
}

/* ------------------------------------------------------------------ one walker */

static void run_walker(const ctx_t *c, scratch_t *s, const double *w, double *Eout, double *Gout)
{
    const int L = c->L, NC = c->NC, C = c->d[L];
    double *G8 = s->G8;
    memset(G8, 0, sizeof(double) * (size_t)c->P * VL);
    vd lossacc = vset1(0.0);   /* sum over samples of (max - z_y) ... */
    vd prod = vset1(1.0);      /* running product of the softmax sums, mantissa */
    vl pexp = iset1(0); /* ... and its binary exponent */
    const vl mant_mask = iset1(0x000FFFFFFFFFFFFFLL);
    const vl one_bits = iset1(0x3FF0000000000000LL);

    for (int n0 = 0; n0 < c->Npad; n0 += NC) {
        int nc = c->Npad - n0 < NC ? c->Npad - n0 : NC;
        int nvec = nc / VL;
        /* forward */
        for (int l = 0; l < L; l++) {
            int din = c->d[l], dout = c->d[l + 1];
            const double *src = l == 0 ? c->XT + n0 : s->act[l];
            long lds = l == 0 ? c->Npad : NC;
            const double *W = w + c->woff[l];
            const double *b = c->bias ? w + c->boff[l] : NULL;
            layer_mm(dout, din, nvec, W, 1, dout, b, src, lds, s->act[l + 1], NC, l < L - 1 ? c->act : -1, c->beta,
                     NULL, 0);
        }
        /* softmax cross-entropy; dZ into D[0] */
        double *Z = s->act[L], *D = s->D[0];
        const double *yl = c->ylab + n0;
        for (int v = 0; v < nvec; v++) {
            vd m = vload(Z + v * VL);
            for (int k = 1; k < C; k++) {
                vd z = vload(Z + k * NC + v * VL);
                m = vsel(z > m, z, m);
            }
            vd y = vload(yl + v * VL);
            vl valid = ~((vl)y >> 63); /* y >= 0, by its sign bit (GCC 12 fails on the compare for SSE2) */
            vd ssum = vset1(0.0), dy = vset1(0.0);
            for (int k = 0; k < C; k++) {
                vd dz = vload(Z + k * NC + v * VL) - m;
                vd e = vexp_neg(dz);
                vstore(D + k * NC + v * VL, e);
                ssum += e;
                dy = vsel(y == vset1((double)k), dz, dy);
            }
            vd inv = vset1(1.0) / ssum;
            vd scale = (vd)(valid & (vl)vset1(c->invN));
            for (int k = 0; k < C; k++) {
                vd p = vload(D + k * NC + v * VL) * inv;
                p = vsel(y == vset1((double)k), p - vset1(1.0), p);
                vstore(D + k * NC + v * VL, p * scale);
            }
            lossacc -= (vd)(valid & (vl)dy);
            prod *= vsel(valid, ssum, vset1(1.0));
            vl bits = (vl)prod;
            pexp += (vl)((vu)bits >> 52) - 1023; /* prod > 0: no sign bit */
            prod = (vd)((bits & mant_mask) | one_bits);
        }
        /* backward */
        int cur = 0;
        for (int l = L - 1; l >= 0; l--) {
            int din = c->d[l], dout = c->d[l + 1];
            const double *A = l == 0 ? c->XT + n0 : s->act[l];
            long lda = l == 0 ? c->Npad : NC;
            double *Dc = s->D[cur];
            layer_grad(din, dout, nvec, A, lda, Dc, NC, G8 + c->woff[l] * VL, c->bias ? G8 + c->boff[l] * VL : NULL);
            if (l > 0) {
                /* D_prev[i][n] = sum_o W[i, o] D[o][n] * act'(a[i][n]) */
                const double *W = w + c->woff[l];
                layer_mm(din, dout, nvec, W, dout, 1, NULL, Dc, NC, s->D[1 - cur], NC, c->act, c->beta, s->act[l], NC);
                cur = 1 - cur;
            }
        }
    }

    /* reduce lanes, add the regulariser */
    double logs = 0.0;
    for (int j = 0; j < VL; j++) logs += (double)pexp[j] * 0.69314718055994530942 + log(prod[j]);
    double data = (hsum(lossacc) + logs) * c->invN;
    const long P = c->P;
    vd ww = vset1(0.0);
    long j = 0;
    for (; j + VL <= P; j += VL) {
        vd x = vloadu(w + j);
        ww += x * x;
    }
    double reg = hsum(ww);
    for (; j < P; j++) reg += w[j] * w[j];
    *Eout = data + c->lam * reg;
    const double lam2 = 2.0 * c->lam;
    for (long q = 0; q < P; q++) Gout[q] = hsum(vload(G8 + q * VL)) + lam2 * w[q];
}

/* ------------------------------------------------------------------ thread pool */

/* A job: items 0..K-1, handed out one at a time; item(jb, k, tid) does item k on thread tid. */
typedef struct job {
    void (*item)(const struct job *jb, long k, int tid);
    const void *args;
    long K;
    atomic_long next;
} job_t;

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_go = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pool_done = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t submit_mu = PTHREAD_MUTEX_INITIALIZER;
static int pool_nworkers = 0;   /* started workers */
static long pool_gen = 0;       /* job generation */
static int pool_want = 0;       /* workers taking part in the current job */
static int pool_busy = 0;       /* workers still running the current job */
static job_t *pool_job = NULL;
static int atfork_registered = 0;

static void work(job_t *jb, int tid)
{
    for (;;) {
        long k = atomic_fetch_add_explicit(&jb->next, 1, memory_order_relaxed);
        if (k >= jb->K) break;
        jb->item(jb, k, tid);
    }
}

typedef struct {
    int tid;   /* 1.. */
    long gen;  /* job generation when the worker was created */
} worker_arg_t;

static void *worker_main(void *arg)
{
    worker_arg_t wa = *(worker_arg_t *)arg;
    free(arg);
    int tid = wa.tid;
    long seen = wa.gen; /* jobs submitted after our creation are ours even if we start late */
    pthread_mutex_lock(&pool_mu);
    for (;;) {
        while (pool_gen == seen) pthread_cond_wait(&pool_go, &pool_mu);
        seen = pool_gen;
        if (tid > pool_want) continue;
        job_t *jb = pool_job;
        pthread_mutex_unlock(&pool_mu);
        work(jb, tid);
        pthread_mutex_lock(&pool_mu);
        if (--pool_busy == 0) pthread_cond_signal(&pool_done);
    }
    return NULL;
}

static void pool_after_fork_child(void)
{
    /* the workers do not exist in a forked child: start afresh */
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    pool_mu = m;
    submit_mu = m;
    pool_go = cv;
    pool_done = cv;
    pool_nworkers = 0;
    pool_want = 0;
    pool_busy = 0;
    pool_job = NULL;
}

/* make sure nw workers exist (called with pool_mu held); returns how many exist */
static int pool_grow(int nw)
{
    if (!atfork_registered) {
        pthread_atfork(NULL, NULL, pool_after_fork_child);
        atfork_registered = 1;
    }
    while (pool_nworkers < nw) {
        pthread_t th;
        pthread_attr_t at;
        worker_arg_t *wa = malloc(sizeof(worker_arg_t));
        if (!wa) break;
        wa->tid = pool_nworkers + 1;
        wa->gen = pool_gen;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &at, worker_main, wa);
        pthread_attr_destroy(&at);
        if (rc != 0) {
            free(wa);
            break;
        }
        pool_nworkers++;
    }
    return pool_nworkers;
}

/* at most n threads (the caller + n - 1 workers, started if need be), fewer if threads fail */
static int pool_threads(int n)
{
    if (n > 256) n = 256;
    pthread_mutex_lock(&pool_mu);
    int have = pool_grow(n - 1);
    pthread_mutex_unlock(&pool_mu);
    return have + 1 < n ? have + 1 : n;
}

/* threads worth using (at most nthreads) for a job of `work` multiply-adds: waking a worker
 * costs some microseconds, so each thread gets at least ~10-20 us (~4e5 multiply-adds); the
 * workers are started if need be. Results never depend on the count. */
static int job_threads(int nthreads, double work)
{
    const double want = work / 4.0e5;
    if (nthreads > want) nthreads = want < 1.0 ? 1 : (int)want;
    return nthreads > 1 ? pool_threads(nthreads) : 1;
}

/* run a job on the caller and nthreads - 1 pool workers; returns when every item is done */
static void run_job(job_t *jb, int nthreads)
{
    atomic_init(&jb->next, 0);
    if (nthreads <= 1) {
        work(jb, 0);
        return;
    }
    pthread_mutex_lock(&submit_mu);
    pthread_mutex_lock(&pool_mu);
    pool_job = jb;
    pool_want = nthreads - 1;
    pool_busy = nthreads - 1;
    pool_gen++;
    pthread_cond_broadcast(&pool_go);
    pthread_mutex_unlock(&pool_mu);
    work(jb, 0);
    pthread_mutex_lock(&pool_mu);
    while (pool_busy > 0) pthread_cond_wait(&pool_done, &pool_mu);
    pool_job = NULL;
    pthread_mutex_unlock(&pool_mu);
    pthread_mutex_unlock(&submit_mu);
}

typedef struct {
    const ctx_t *c;
    const double *w;
    double *E, *G;
} eval_args_t;

static void eval_item(const job_t *jb, long k, int tid)
{
    const eval_args_t *a = jb->args;
    const long P = a->c->P;
    run_walker(a->c, &a->c->scr[tid], a->w + k * P, a->E + k, a->G + k * P);
}

/* ------------------------------------------------------------------ public API */

int mlpk_abi(void) { return MLPK_ABI; }

static void *amalloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) return NULL;
    return p;
}

static void free_scratch(ctx_t *c)
{
    for (int t = 0; t < c->nscratch; t++) free(c->scr[t].buf);
    free(c->scr);
    c->scr = NULL;
    c->nscratch = 0;
}

static int ensure_scratch(ctx_t *c, int nt)
{
    if (nt <= c->nscratch) return 0;
    scratch_t *ns = calloc((size_t)nt, sizeof(scratch_t));
    if (!ns) return -1;
    if (c->scr) memcpy(ns, c->scr, sizeof(scratch_t) * (size_t)c->nscratch);
    size_t per = 0;
    for (int l = 1; l <= c->L; l++) per += (size_t)c->d[l] * c->NC;
    per += 2 * (size_t)c->maxw * c->NC + (size_t)c->P * VL;
    for (int t = c->nscratch; t < nt; t++) {
        double *b = amalloc(per * sizeof(double));
        if (!b) {
            for (int u = c->nscratch; u < t; u++) free(ns[u].buf);
            free(ns);
            return -1;
        }
        memset(b, 0, per * sizeof(double));
        ns[t].buf = b;
        for (int l = 1; l <= c->L; l++) {
            ns[t].act[l] = b;
            b += (size_t)c->d[l] * c->NC;
        }
        ns[t].D[0] = b;
        b += (size_t)c->maxw * c->NC;
        ns[t].D[1] = b;
        b += (size_t)c->maxw * c->NC;
        ns[t].G8 = b;
    }
    free(c->scr);
    c->scr = ns;
    c->nscratch = nt;
    return 0;
}

void mlpk_destroy(void *h)
{
    ctx_t *c = h;
    if (!c) return;
    free_scratch(c);
    free(c->XT);
    free(c->ylab);
    free(c);
}

/* X: (N, d0) row-major, y: (N,) int64 in [0, d_L). nc: samples per chunk (0: automatic). beta: the
 * sharpness of softplus (act 3), finite and > 0; not used by the other activations.
 * Returns NULL on bad arguments or out of memory. */
void *mlpk_create(int L, const int *widths, int act, double beta, int bias, long N, const double *X,
                  const int64_t *y, double lam, int nc)
{
    if (L < 1 || L > MAXL || N < 1 || act < 0 || act > ACT_SOFTPLUS || !(beta > 0 && beta < INFINITY)) return NULL;
    ctx_t *c = calloc(1, sizeof(ctx_t));
    if (!c) return NULL;
    c->L = L;
    c->act = act;
    c->beta = beta;
    c->bias = bias ? 1 : 0;
    c->N = (int)N;
    c->Npad = (int)((N + VL - 1) / VL * VL);
    c->lam = lam;
    c->invN = 1.0 / (double)N;
    long P = 0;
    int maxw = 0;
    for (int l = 0; l <= L; l++) {
        if (widths[l] < 1) {
            free(c);
            return NULL;
        }
        c->d[l] = widths[l];
        if (l >= 1 && widths[l] > maxw) maxw = widths[l];
    }
    for (int l = 0; l < L; l++) {
        c->woff[l] = P;
        P += (long)c->d[l] * c->d[l + 1];
        c->boff[l] = P;
        if (c->bias) P += c->d[l + 1];
    }
    c->P = P;
    c->maxw = maxw;
    if (nc <= 0) {
        /* a chunk's activations and deltas (X is read in place) within ~256 KiB (L2); but at
         * least 256 samples when the lane accumulators (P x VL) are large, since they are
         * read and written once per chunk (measured: 784-128-10 runs 1.4x faster with 256
         * than with 32 samples per chunk; 64-32-10 is flat between 96 and 288) */
        long per_sample = 2L * maxw;
        for (int l = 1; l <= L; l++) per_sample += c->d[l];
        long cap = (256L * 1024 / 8) / per_sample;
        long floor_nc = (long)P * VL * 8 > 256L * 1024 ? 256 : 32;
        if (cap < floor_nc) cap = floor_nc;
        if (cap > 1024) cap = 1024;
        nc = (int)(cap / (NV_MAX * VL) * (NV_MAX * VL));
    }
    nc = (nc + VL - 1) / VL * VL;
    if (nc > c->Npad) nc = c->Npad;
    c->NC = nc;
    const int d0 = c->d[0], C = c->d[L];
    c->XT = amalloc(sizeof(double) * (size_t)d0 * c->Npad);
    c->ylab = amalloc(sizeof(double) * (size_t)c->Npad);
    if (!c->XT || !c->ylab) {
        mlpk_destroy(c);
        return NULL;
    }
    memset(c->XT, 0, sizeof(double) * (size_t)d0 * c->Npad);
    for (long n = 0; n < N; n++)
        for (int i = 0; i < d0; i++) c->XT[(size_t)i * c->Npad + n] = X[n * d0 + i];
    for (long n = 0; n < c->Npad; n++) {
        if (n < N) {
            if (y[n] < 0 || y[n] >= C) {
                mlpk_destroy(c);
                return NULL;
            }
            c->ylab[n] = (double)y[n];
        } else {
            c->ylab[n] = -1.0;
        }
    }
    if (ensure_scratch(c, 1) != 0) {
        mlpk_destroy(c);
        return NULL;
    }
    return c;
}

long mlpk_nparams(void *h) { return ((ctx_t *)h)->P; }
int mlpk_chunk(void *h) { return ((ctx_t *)h)->NC; }
int mlpk_last_threads(void *h) { return ((ctx_t *)h)->last_threads; }

/* E (K), G (K, P) for w (K, P); rows contiguous. Returns 0, or -1 when out of memory. */
int mlpk_eval(void *h, long K, const double *w, double *E, double *G, int nthreads)
{
    ctx_t *c = h;
    if (K <= 0) return 0;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > K) nthreads = (int)K;
    double fma = 0.0; /* per sample, counting a tanh/exp as 12 multiply-adds */
    for (int l = 0; l < c->L; l++) fma += 3.0 * c->d[l] * c->d[l + 1] + 12.0 * c->d[l + 1];
    nthreads = job_threads(nthreads, (double)K * fma * c->Npad);
    if (ensure_scratch(c, nthreads) != 0) return -1;
    c->last_threads = nthreads;
    eval_args_t a = {c, w, E, G};
    job_t jb = {eval_item, &a, K};
    run_job(&jb, nthreads);
    return 0;
}

/* ------------------------------------------------------------------ L-BFGS two-loop */

/* The (s, y) pairs are stored as 8-bit integers, each pair row as round(127 v / max|v|) with its
 * scale max|v| / 127 kept in double: the two-loop recursion reads every pair twice an
 * iteration and waits on memory. Loads widen with the x86 instructions where the target has
 * them (GCC 12 turns a generic int8 -> double vector conversion into scalar code). */
typedef int8_t vb __attribute__((vector_size(VL)));
typedef int8_t vbu __attribute__((vector_size(VL), aligned(1)));
#if VL == 8
#include <immintrin.h>
INLINE vd vloadb(const int8_t *p)
{
    return (vd)_mm512_cvtepi32_pd(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#elif VL == 4 && defined(__SSE4_1__)
#include <immintrin.h>
INLINE vd vloadb(const int8_t *p)
{
    int32_t w;
    memcpy(&w, p, 4);
    return (vd)_mm256_cvtepi32_pd(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(w)));
}
#else
INLINE vd vloadb(const int8_t *p) { return __builtin_convertvector(*(const vbu *)p, vd); }
#endif
/* v (|v| <= 127.5) rounded to the nearest integer, ties to even (the 1.5 * 2^52 shift), stored */
INLINE void vstoreb(int8_t *p, vd v)
{
    const vd shift = vset1(6755399441055744.0);
    *(vbu *)p = __builtin_convertvector(__builtin_convertvector((v + shift) - shift, vl), vb);
}
INLINE int8_t roundb(double v) { return (int8_t)((v + 6755399441055744.0) - 6755399441055744.0); }

/* Below LB_SMALL_P parameters, LB_G problems' recursions run interleaved (8 with AVX-512, else
 * 4): each is a chain of dependent dot products and updates, too short to keep the vector units
 * busy alone (Iris, P = 43, K = 256, memory 20, every pair usable: 200 -> 131 us a call).
 * Longer rows have enough work per row, and more concurrent streams only crowd the memory
 * system. */
#if VL == 8
#define LB_G 8 /* 16 accumulators of the 32 vector registers */
#else
#define LB_G 4
#endif
#define LB_SMALL_P 256

/* c[r] = a[r] . b[r] for r < G (8-bit rows against double vectors), in double: per row two
 * vector accumulators, one more vector and a scalar tail, a fixed order (the same for any G) */
INLINE void dots(int G, const int8_t *const *a, double *const *b, long P, double *c)
{
    vd s0[LB_G], s1[LB_G];
    for (int r = 0; r < G; r++) s0[r] = s1[r] = vset1(0.0);
    long p = 0;
    for (; p + 2 * VL <= P; p += 2 * VL)
        for (int r = 0; r < G; r++) {
            s0[r] += vloadb(a[r] + p) * vloadu(b[r] + p);
            s1[r] += vloadb(a[r] + p + VL) * vloadu(b[r] + p + VL);
        }
    if (p + VL <= P) {
        for (int r = 0; r < G; r++) s0[r] += vloadb(a[r] + p) * vloadu(b[r] + p);
        p += VL;
    }
    for (int r = 0; r < G; r++) {
        double t = hsum(s0[r] + s1[r]);
        for (long j = p; j < P; j++) t += a[r][j] * b[r][j];
        c[r] = t;
    }
}

/* y[r] += c[r] x[r] for r < G */
INLINE void axpys(int G, double *const *y, const double *c, const int8_t *const *x, long P)
{
    vd vc[LB_G];
    for (int r = 0; r < G; r++) vc[r] = vset1(c[r]);
    long p = 0;
    for (; p + VL <= P; p += VL)
        for (int r = 0; r < G; r++) *(vdu *)(y[r] + p) = vloadu(y[r] + p) + vc[r] * vloadb(x[r] + p);
    for (int r = 0; r < G; r++)
        for (long j = p; j < P; j++) y[r][j] += c[r] * x[r][j];
}

typedef struct {
    long P, ld, n, group;
    int npairs;
    const int *order;
    const long *rows;
    const long *by_pairs;     /* the problems i, most usable pairs first (NULL: 0 .. n-1) */
    const unsigned char *run; /* per problem i: 1 + its oldest usable pair's t (NULL: npairs) */
    const int8_t *S, *Y;
    const double *s_scale, *y_scale, *rho, *gamma, *g;
    double *d;
} lbfgs_args_t;

/* point s[r], y[r] at pair t's rows of problems k[r], r < G; returns the pair's offset in rho */
INLINE long pair_rows(const lbfgs_args_t *a, int t, int G, const long *k, const int8_t **s, const int8_t **y)
{
    const long base = (long)a->order[t] * a->ld;
    for (int r = 0; r < G; r++) {
        s[r] = a->S + (base + k[r]) * a->P;
        y[r] = a->Y + (base + k[r]) * a->P;
    }
    return base;
}

/* the two-loop recursion for the problems at positions j0 .. j0+G-1 of a->by_pairs (G <= LB_G),
 * over the pairs t < a->run of the first (the most of the group); pair t is (s_scale S_t,
 * y_scale Y_t). A skipped pair (rho = 0) adds 0 x its row. */
INLINE void two_loop(const lbfgs_args_t *a, long j0, int G)
{
    const long P = a->P;
    const double *rho = a->rho, *ss = a->s_scale, *ys = a->y_scale;
    long k[LB_G];
    double *q[LB_G], alpha[64][LB_G], c[LB_G], coef[LB_G];
    const int8_t *s[LB_G], *y[LB_G];
    for (int r = 0; r < G; r++) {
        const long i = a->by_pairs ? a->by_pairs[j0 + r] : j0 + r;
        k[r] = a->rows[i];
        q[r] = a->d + i * P;
        memcpy(q[r], a->g + k[r] * P, (size_t)P * sizeof(double));
    }
    const int npairs = a->run ? a->run[a->by_pairs[j0]] : a->npairs;
    for (int t = 0; t < npairs; t++) {
        const long base = pair_rows(a, t, G, k, s, y);
        dots(G, s, q, P, c);
        for (int r = 0; r < G; r++) {
            const long at = base + k[r];
            alpha[t][r] = rho[at] == 0.0 ? 0.0 : rho[at] * ss[at] * c[r];
            coef[r] = rho[at] == 0.0 ? 0.0 : -alpha[t][r] * ys[at]; /* its scales may hold anything */
        }
        axpys(G, q, coef, y, P);
    }
    for (int r = 0; r < G; r++) {
        const double gk = a->gamma[k[r]];
        for (long p = 0; p < P; p++) q[r][p] *= gk;
    }
    for (int t = npairs - 1; t >= 0; t--) {
        const long base = pair_rows(a, t, G, k, s, y);
        dots(G, y, q, P, c);
        for (int r = 0; r < G; r++) {
            const long at = base + k[r];
            coef[r] = rho[at] == 0.0 ? 0.0 : (alpha[t][r] - rho[at] * ys[at] * c[r]) * ss[at];
        }
        axpys(G, q, coef, s, P);
    }
    for (int r = 0; r < G; r++)
        for (long p = 0; p < P; p++) q[r][p] = -q[r][p];
}

/* item j: by_pairs positions LB_G j .. LB_G j + LB_G - 1 while whole groups last (when
 * a->group), then one at a time */
static void lbfgs_item(const job_t *jb, long j, int tid)
{
    (void)tid;
    const lbfgs_args_t *a = jb->args;
    const long groups = a->group ? a->n / LB_G : 0;
    if (j < groups)
        two_loop(a, j * LB_G, LB_G);
    else
        two_loop(a, groups * LB_G + (j - groups), 1);
}

/* d = -H g by the L-BFGS two-loop recursion for n problems, LB_G problems per item at small P
 * and one otherwise, on up to nthreads threads (the result depends on neither). S and Y are
 * int8 rings of shape (M, ld, P): pair j of problem k starts at (j * ld + k) * P and stands for
 * s_scale[j, k] S, y_scale[j, k] Y; rho (M, ld) is 1 / s.y, 0 where a pair is unusable
 * (skipped); gamma (ld) scales the initial inverse Hessian. order (npairs <= 64): the ring
 * indices to use, newest first; rows (n): the problems; g (ld, P); d (n, P). */
void lbfgs_direction(long P, long ld, int npairs, const int *order, long n, const long *rows,
                     const int8_t *S, const int8_t *Y, const double *s_scale, const double *y_scale,
                     const double *rho, const double *gamma, const double *g, double *d, int nthreads)
{
    if (npairs > 64) npairs = 64;
    const long group = P < LB_SMALL_P;
    /* a problem started t iterations ago has no usable pair older than t: run each over its own
     * pairs only, and group problems with as many (a counting sort; without memory for it, every
     * problem runs over all npairs, skipping the unusable ones) */
    long *by_pairs = malloc((size_t)(n > 0 ? n : 1) * sizeof(long));
    unsigned char *run = malloc((size_t)(n > 0 ? n : 1));
    if (!by_pairs || !run) {
        free(by_pairs);
        free(run);
        by_pairs = NULL;
        run = NULL;
    } else {
        long start[66] = {0};
        for (long i = 0; i < n; i++) {
            int t = npairs;
            while (t > 0 && rho[(long)order[t - 1] * ld + rows[i]] == 0.0) t--;
            run[i] = (unsigned char)t;
            start[64 - t + 1]++;
        }
        for (int t = 1; t <= 65; t++) start[t] += start[t - 1]; /* start[64 - t]: first of those with t */
        for (long i = 0; i < n; i++) by_pairs[start[64 - run[i]]++] = i;
    }
    lbfgs_args_t a = {P, ld, n, group, npairs, order, rows, by_pairs, run, S, Y, s_scale, y_scale, rho, gamma, g, d};
    nthreads = job_threads(nthreads, (double)n * 4.0 * npairs * P); /* ~4 M P multiply-adds a problem */
    job_t jb = {lbfgs_item, &a, group ? n / LB_G + n % LB_G : n};
    run_job(&jb, nthreads);
    free(by_pairs);
    free(run);
}

typedef struct {
    long P, ld, slot;
    const long *rows;
    const double *x, *xn, *g, *gn;
    int8_t *S, *Y;
    double *s_scale, *y_scale, *out;
} push_args_t;

/* store s = xn - x and y = gn - g of problem i as ring pair `slot`, each as round(127 v / max|v|)
 * with scale max|v| / 127; out[2i], out[2i+1] = s.y and y.y of the stored (rounded) pair, NaN
 * (and zeros stored) when s or y is not finite */
static void push_item(const job_t *jb, long i, int tid)
{
    (void)tid;
    const push_args_t *a = jb->args;
    const long P = a->P, at = a->slot * a->ld + a->rows[i];
    const double *x = a->x + i * P, *xn = a->xn + i * P, *g = a->g + i * P, *gn = a->gn + i * P;
    /* the largest |s_p|, |y_p|; nonfinite collects s - s + y - y (0, or NaN for inf/NaN) */
    vd vms = vset1(0.0), vmy = vset1(0.0), nonfinite = vset1(0.0);
    long p = 0;
    for (; p + VL <= P; p += VL) {
        const vd s = vloadu(xn + p) - vloadu(x + p), y = vloadu(gn + p) - vloadu(g + p);
        nonfinite += (s - s) + (y - y);
        vms = vsel(vabs(s) > vms, vabs(s), vms);
        vmy = vsel(vabs(y) > vmy, vabs(y), vmy);
    }
    double ms = 0.0, my = 0.0, bad = hsum(nonfinite);
    for (int j = 0; j < VL; j++) {
        ms = vms[j] > ms ? vms[j] : ms;
        my = vmy[j] > my ? vmy[j] : my;
    }
    for (; p < P; p++) {
        const double s = xn[p] - x[p], y = gn[p] - g[p];
        bad += (s - s) + (y - y);
        ms = fabs(s) > ms ? fabs(s) : ms;
        my = fabs(y) > my ? fabs(y) : my;
    }
    int8_t *S = a->S + at * P, *Y = a->Y + at * P;
    if (bad != 0.0) { /* not finite: an empty pair, never used (rho = 0) */
        memset(S, 0, (size_t)P);
        memset(Y, 0, (size_t)P);
        a->s_scale[at] = a->y_scale[at] = 1.0;
        a->out[2 * i] = a->out[2 * i + 1] = NAN;
        return;
    }
    if (!(ms > 1e-300)) ms = 1.0; /* a zero (or vanishing) row is stored as zeros */
    if (!(my > 1e-300)) my = 1.0;
    const double is = 127.0 / ms, iy = 127.0 / my;
    const vd vis = vset1(is), viy = vset1(iy);
    vd vsy = vset1(0.0), vyy = vset1(0.0);
    for (p = 0; p + VL <= P; p += VL) {
        vstoreb(S + p, (vloadu(xn + p) - vloadu(x + p)) * vis);
        vstoreb(Y + p, (vloadu(gn + p) - vloadu(g + p)) * viy);
        const vd qs = vloadb(S + p), qy = vloadb(Y + p);
        vsy += qs * qy;
        vyy += qy * qy;
    }
    double sy = hsum(vsy), yy = hsum(vyy);
    for (; p < P; p++) {
        S[p] = roundb((xn[p] - x[p]) * is);
        Y[p] = roundb((gn[p] - g[p]) * iy);
        sy += (double)S[p] * Y[p];
        yy += (double)Y[p] * Y[p];
    }
    a->s_scale[at] = ms / 127.0;
    a->y_scale[at] = my / 127.0;
    a->out[2 * i] = sy * a->s_scale[at] * a->y_scale[at];
    a->out[2 * i + 1] = yy * a->y_scale[at] * a->y_scale[at];
}

/* push the pairs of n problems (rows, their slots in the ring of leading dimension ld) into ring
 * position slot; x, xn, g, gn (n, P); out (n, 2): s.y and y.y of each stored pair */
void lbfgs_push(long P, long ld, long slot, long n, const long *rows, const double *x, const double *xn,
                const double *g, const double *gn, int8_t *S, int8_t *Y, double *s_scale, double *y_scale,
                double *out, int nthreads)
{
    push_args_t a = {P, ld, slot, rows, x, xn, g, gn, S, Y, s_scale, y_scale, out};
    nthreads = job_threads(nthreads, (double)n * 4.0 * P);
    job_t jb = {push_item, &a, n};
    run_job(&jb, nthreads);
}

/* ------------------------------------------------------------------ assignment bound */

typedef float vf16 __attribute__((vector_size(64)));
typedef float vf16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t vi16 __attribute__((vector_size(64)));
INLINE vf16 vmin16(vf16 a, vf16 b)
{
    const vi16 lt = a < b; /* all ones where a < b */
    return (vf16)((lt & (vi16)a) | (~lt & (vi16)b));
}

/* dot products of rows r0 .. r0+nr-1 (nr <= 4) of R (H, m) with every column block of xt
 * (m, 16 nv; the query's rows transposed, zero-padded), into acc[t][v]; nv is a constant at
 * each call site, so the accumulators stay in registers */
INLINE void ab_tile(const float *R, long m, long r0, int nr, const float *xt, int nv, vf16 acc[4][4])
{
    for (int t = 0; t < 4; t++)
        for (int v = 0; v < 4; v++) acc[t][v] = (vf16){0};
    for (long k = 0; k < m; k++) {
        const float *b = xt + k * 16 * nv;
        vf16 bv[4];
        for (int v = 0; v < nv; v++) bv[v] = *(const vf16u *)(b + 16 * v);
        for (int t = 0; t < nr; t++) {
            const float a = R[(r0 + t) * m + k];
            for (int v = 0; v < nv; v++) acc[t][v] += a * bv[v];
        }
    }
}

typedef struct {
    long H, m;
    int nv, odd;
    const float *rows, *xt;
    const double *rsq;
    const long *ids;
    const vf16 *xv;
    double *out;
} bound_args_t;

/* the bound for candidate i of an assignment_bound call */
static void bound_item(const job_t *jb, long i, int tid)
{
    (void)tid;
    const bound_args_t *a = jb->args;
    const long H = a->H, m = a->m;
    const int nv = a->nv;
    const float *R = a->rows + a->ids[i] * H * m;
    const double *rs = a->rsq + a->ids[i] * H;
    const vi16 absmask = (vi16){0} + 0x7fffffff;
    vf16 acc[4][4], cm[4];
    for (int v = 0; v < nv; v++) cm[v] = (vf16){0} + INFINITY;
    double rowsum = 0.0;
    for (long r0 = 0; r0 < H; r0 += 4) {
        const int nr = H - r0 < 4 ? (int)(H - r0) : 4;
        switch (nv) {
        case 1: ab_tile(R, m, r0, nr, a->xt, 1, acc); break;
        case 2: ab_tile(R, m, r0, nr, a->xt, 2, acc); break;
        case 3: ab_tile(R, m, r0, nr, a->xt, 3, acc); break;
        default: ab_tile(R, m, r0, nr, a->xt, 4, acc); break;
        }
        for (int t = 0; t < nr; t++) {
            const float rq = (float)rs[r0 + t];
            vf16 rm = (vf16){0} + INFINITY;
            for (int v = 0; v < nv; v++) {
                const vf16 d = a->odd ? (vf16)((vi16)acc[t][v] & absmask) : acc[t][v];
                const vf16 cost = (rq - 2.0f * d) + a->xv[v];
                rm = vmin16(rm, cost);
                cm[v] = vmin16(cm[v], cost);
            }
            float rmin = rm[0];
            for (int c = 1; c < 16; c++) rmin = rm[c] < rmin ? rm[c] : rmin;
            rowsum += rmin;
        }
    }
    double colsum = 0.0;
    for (long c = 0; c < H; c++) colsum += cm[c / 16][c % 16];
    a->out[i] = rowsum > colsum ? rowsum : colsum;
}

/* Lower bounds for identification (landscape/identify.py): for each stored minimum ids[i],
 * the cost matrix C[r][c] = |a_r|^2 + |b_c|^2 - 2 a_r.b_c (|a_r.b_c| when odd) between its unit
 * rows a (rows: (N, H, m), squared norms rsq (N, H)) and those of the query b (x: (H, m),
 * squared norms xsq (H)); out[i] = max(sum of row minima, sum of column minima), which no
 * assignment undercuts. In float (the caller subtracts the rounding margin); register tiles
 * of 4 rows x H columns, so H <= 64 (larger H, or no memory: out = -1, which bounds trivially).
 * One candidate per item on up to nthreads threads (the result does not depend on it). */
void assignment_bound(long n, long H, long m, const float *rows, const double *rsq, const long *ids,
                      const float *x, const double *xsq, int odd, double *out, int nthreads)
{
    const int nv = (int)((H + 15) / 16);
    float *xt = nv <= 4 ? calloc((size_t)(m * 16 * nv), sizeof(float)) : NULL;
    if (!xt) {
        for (long i = 0; i < n; i++) out[i] = -1.0;
        return;
    }
    for (long k = 0; k < m; k++)
        for (long c = 0; c < H; c++) xt[k * 16 * nv + c] = x[c * m + k];
    vf16 xv[4]; /* the query's squared norms, +inf in the padding */
    for (long c = 0; c < 16 * nv; c++) xv[c / 16][c % 16] = c < H ? (float)xsq[c] : INFINITY;
    bound_args_t a = {H, m, nv, odd, rows, xt, rsq, ids, xv, out};
    nthreads = job_threads(nthreads, (double)n * H * H * m); /* H^2 m multiply-adds an item */
    job_t jb = {bound_item, &a, n};
    run_job(&jb, nthreads);
    free(xt);
}
