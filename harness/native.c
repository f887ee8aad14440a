/* Fused elementwise kernels of harness.optics (input display, PhaseField, CroppedIntensity) and
 * harness.sensor (Clip) on CPU.
 *
 * complex64 tensors are passed as interleaved (re, im) float pairs, all C-contiguous.  Built on
 * first use by harness/native.py with the system C compiler and called through ctypes, which
 * checks every argument; the torch ops they replace stay in harness/optics.py and
 * harness/sensor.py as the fallback and as the reference of the tests.
 */
#include <math.h>
#include <stdint.h>

/* For planes m < M of N x N complex fields w, on the n x n window starting at row and column s:
 *     conj_out[m, y, x] = conj(w[m, s + y, s + x]),  intensity[m, y, x] = |w[m, s + y, s + x]|².
 * One pass over the window (torch needs a conj copy, a square and an add). */
void simgap_crop_intensity(const float *restrict w, float *restrict conj_out,
                           float *restrict intensity, int64_t planes, int64_t N, int64_t n,
                           int64_t s)
{
    for (int64_t m = 0; m < planes; m++) {
        for (int64_t y = 0; y < n; y++) {
            const float *src = w + 2 * ((m * N + s + y) * N + s);
            float *dst = conj_out + 2 * (m * n + y) * n;
            float *out = intensity + (m * n + y) * n;
            for (int64_t x = 0; x < n; x++) {
                float re = src[2 * x], im = src[2 * x + 1];
                dst[2 * x] = re;
                dst[2 * x + 1] = -im;
                out[x] = re * re + im * im;
            }
        }
    }
}

/* out[c, p] (+)= Σ_b h[b, c, p] · s[b, p]  for complex h (B, K, P), s (B, P), out (K, P);
 * accumulate = 0 overwrites out; finish != 0 then replaces out by 2 conj(out) (the last chunk
 * of CroppedIntensity's backward).  One read of h and no (B, K, P) temporary (torch needs a
 * multiply pass and a sum pass).  Pixel blocks are outermost, so a block of out stays in L1
 * while b runs; the sum over b is sequential (deterministic). */
#define SIMGAP_BLOCK 512

void simgap_multiply_accumulate(const float *restrict h, const float *restrict s,
                                float *restrict out, int64_t B, int64_t K, int64_t P,
                                int accumulate, int finish)
{
    for (int64_t p0 = 0; p0 < P; p0 += SIMGAP_BLOCK) {
        int64_t len = P - p0 < SIMGAP_BLOCK ? P - p0 : SIMGAP_BLOCK;
        for (int64_t c = 0; c < K; c++) {
            float *o = out + 2 * (c * P + p0);
            if (!accumulate) {
                for (int64_t i = 0; i < 2 * len; i++)
                    o[i] = 0.0f;
            }
            for (int64_t b = 0; b < B; b++) {
                const float *hb = h + 2 * ((b * K + c) * P + p0);
                const float *sb = s + 2 * (b * P + p0);
                for (int64_t i = 0; i < len; i++) {
                    float hr = hb[2 * i], hi = hb[2 * i + 1];
                    float sr = sb[2 * i], si = sb[2 * i + 1];
                    o[2 * i] += hr * sr - hi * si;
                    o[2 * i + 1] += hr * si + hi * sr;
                }
            }
            if (finish) {
                for (int64_t i = 0; i < len; i++) {
                    o[2 * i] *= 2.0f;
                    o[2 * i + 1] *= -2.0f;
                }
            }
        }
    }
}

/* grad_phase[i] = Re f · Im g − Im f · Re g = Im(conj(f) g): PhaseField's backward. */
void simgap_phase_gradient(const float *restrict f, const float *restrict g,
                           float *restrict grad_phase, int64_t count)
{
    for (int64_t i = 0; i < count; i++)
        grad_phase[i] = f[2 * i] * g[2 * i + 1] - f[2 * i + 1] * g[2 * i];
}

/* out[m, p] = a[p] · table[j],  j = rint(phase[m, p] · L / 2π) mod L,  table[j] = e^{2πi j / L}:
 * the field of a phase quantized to L levels, one table read per pixel instead of a cos and a
 * sin (rint rounds half to even, as torch.round).  planes m < M of P pixels; a has P pixels.
 * A non-finite (or absurdly large) phase gives NaN, as cos and sin would. */
void simgap_quantized_phase_field(const float *restrict phase, const float *restrict a,
                                  const float *restrict table, float *restrict out,
                                  int64_t planes, int64_t P, int64_t L)
{
    const float per_radian = (float)((double)L / 6.283185307179586);
    for (int64_t m = 0; m < planes; m++) {
        const float *ph = phase + m * P;
        float *o = out + 2 * m * P;
        for (int64_t p = 0; p < P; p++) {
            float steps = ph[p] * per_radian;
            int finite = fabsf(steps) < 1.0e18f; /* false for NaN too; keeps the cast defined */
            int64_t j = (int64_t)rintf(finite ? steps : 0.0f) % L;
            j += j < 0 ? L : 0;
            float scale = finite ? a[p] : NAN;
            o[2 * p] = scale * table[2 * j];
            o[2 * p + 1] = scale * table[2 * j + 1];
        }
    }
}

/* The window of zero-padded N x N planes m < M (start s, size n), written in place (the rest of
 * out is left as it is, zero):
 *     display: out[m, s+y, s+x] = (−1)^(y+x) · sqrt(max(I[m, y, x], 0)) + 0i   (real I)
 *     product: out[m, s+y, s+x] = a[m, y, x] · g[m, y, x]             (complex a, real g)
 * (−1)^(y+x) is the checkerboard of harness.optics that centres the spectrum (s + s is even). */
void simgap_display_window(const float *restrict intensity, float *restrict out, int64_t planes,
                           int64_t N, int64_t n, int64_t s)
{
    for (int64_t m = 0; m < planes; m++) {
        for (int64_t y = 0; y < n; y++) {
            const float *src = intensity + (m * n + y) * n;
            float *dst = out + 2 * ((m * N + s + y) * N + s);
            for (int64_t x = 0; x < n; x++) {
                float v = src[x] > 0.0f ? sqrtf(src[x]) : 0.0f;
                dst[2 * x] = ((x + y) & 1) ? -v : v;
                dst[2 * x + 1] = 0.0f;
            }
        }
    }
}

void simgap_window_product(const float *restrict a, const float *restrict g,
                           float *restrict out, int64_t planes, int64_t N, int64_t n, int64_t s)
{
    for (int64_t m = 0; m < planes; m++) {
        for (int64_t y = 0; y < n; y++) {
            const float *av = a + 2 * (m * n + y) * n;
            const float *gv = g + (m * n + y) * n;
            float *dst = out + 2 * ((m * N + s + y) * N + s);
            for (int64_t x = 0; x < n; x++) {
                dst[2 * x] = av[2 * x] * gv[x];
                dst[2 * x + 1] = av[2 * x + 1] * gv[x];
            }
        }
    }
}

/* out[i] = lo < y[i] < hi ? grad[i] : 0, the backward of clamp(y, lo, hi) as torch computes it
 * (no gradient at the bounds).  torch's comparison and where kernels cost ~2 ns an element on
 * CPU, this one pass well under 0.1 ns. */
void simgap_clip_backward(const float *restrict y, const float *restrict grad,
                          float *restrict out, int64_t count, float lo, float hi)
{
    for (int64_t i = 0; i < count; i++)
        out[i] = (y[i] > lo && y[i] < hi) ? grad[i] : 0.0f;
}
