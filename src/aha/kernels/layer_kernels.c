/* The elementwise passes of the lean training modules (aha.models.lean_activations), each in one pass
   over memory: SwiGLU's silu(gate) * up and RMSNorm, forward and backward. Torch runs SwiGLU's backward
   as five elementwise passes over tensors of the MLP's intermediate size and the norm's as about ten
   over the hidden size; at the bench sizes these passes are bound by memory traffic, not arithmetic.
   float32, contiguous. OpenMP threads are torch's (the same libgomp). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "exp_approx.h"

/* Loops over this many elements or more are split across the OpenMP threads. */
#define PARALLEL_MIN 32768

/* SwiGLU, n elements. The backward reads grad_hidden, gate and up and writes the two input gradients
   and the product the down projection's weight gradient needs. */

void swiglu_forward(const float *gate, const float *up, float *hidden, int64_t n) {
#pragma omp parallel for simd if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        hidden[i] = g / (1.0f + exp_approx(-g)) * up[i];
    }
}

/* With s = sigmoid(g): d silu(g) / dg = s * (1 + g * (1 - s)). */
void swiglu_backward(const float *grad_hidden, const float *gate, const float *up, float *grad_gate,
                     float *grad_up, float *hidden, int64_t n) {
#pragma omp parallel for simd if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i], u = up[i], grad = grad_hidden[i];
        const float s = 1.0f / (1.0f + exp_approx(-g));
        const float act = g * s;
        grad_up[i] = grad * act;
        hidden[i] = act * u;
        grad_gate[i] = grad * u * (s * (1.0f + g * (1.0f - s)));
    }
}

/* RMSNorm over rows of n: y = w * (x * s) with s = 1 / sqrt(mean(x^2) + eps), scale[r] = s. */
void rms_norm_forward(const float *x, const float *w, float *y, float *scale, int64_t rows, int64_t n,
                      float eps) {
#pragma omp parallel for if (rows * n >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
        for (int64_t i = 0; i < n; i++) squares += xr[i] * xr[i];
        const float s = 1.0f / sqrtf(squares / (float)n + eps);
        scale[r] = s;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) yr[i] = w[i] * (xr[i] * s);
    }
}

/* grad_x = s * (g - xhat * mean(g * xhat)) with g = grad_y * w and xhat = x * s. The weight's gradient,
   the sum over rows of grad_y * xhat, is accumulated per thread in one row of `partials` [threads, n]
   each (the caller sums them; no atomics). */
void rms_norm_backward(const float *grad_y, const float *x, const float *w, const float *scale,
                       float *grad_x, float *partials, int64_t threads, int64_t rows, int64_t n) {
    memset(partials, 0, sizeof(float) * (size_t)(threads * n));
#pragma omp parallel num_threads(threads) if (rows * n >= PARALLEL_MIN)
    {
        float *grad_w = partials + (int64_t)omp_get_thread_num() * n;
#pragma omp for
        for (int64_t r = 0; r < rows; r++) {
            const float *gy = grad_y + r * n, *xr = x + r * n;
            float *gx = grad_x + r * n;
            const float s = scale[r];
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < n; i++) dot += gy[i] * w[i] * xr[i];
            const float mean = dot * s / (float)n;
#pragma omp simd
            for (int64_t i = 0; i < n; i++) {
                const float xhat = xr[i] * s;
                gx[i] = s * (gy[i] * w[i] - xhat * mean);
                grad_w[i] += gy[i] * xhat;
            }
        }
    }
}
