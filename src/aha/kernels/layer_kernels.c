/* The elementwise passes of the lean training modules (aha.models.lean_activations), each in one pass
   over memory: SwiGLU's silu(gate) * up, RMSNorm and the rotary embedding, forward and backward. Torch
   runs SwiGLU's backward as five elementwise passes over tensors of the MLP's intermediate size, the
   norm's as about ten over the hidden size, and the rotary embedding as six (two slices, a negation, a
   concatenation, two products and a sum) with as many in backward; at the bench sizes these passes are
   bound by memory traffic, not arithmetic. float32; contiguous except where strides are passed.
   OpenMP threads are torch's (the same libgomp). */
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

/* The rotary embedding of HF's apply_rotary_pos_emb, x * cos + rotate_half(x) * sin with
   rotate_half(x) = cat(-x2, x1) over the halves of the last dimension, for x [B, H, T, D] and cos, sin
   [B or 1, T, D]. Strides are in elements for the first three dimensions (the last is contiguous; a
   batch stride of 0 broadcasts cos and sin). `adjoint` applies the transposed map instead, the
   backward: grad_x = g * cos + (g * sin) pushed back through rotate_half, i.e. first half
   g1 * c1 + g2 * s2 and second half g2 * c2 - g1 * s1. */
void rotary(const float *x, const int64_t *x_strides, const float *cos, const float *sin,
            const int64_t *angle_strides, float *out, const int64_t *out_strides, const int64_t *shape,
            int adjoint) {
    const int64_t batch = shape[0], heads = shape[1], steps = shape[2], half = shape[3] / 2;
    const int64_t rows = batch * heads * steps;
#pragma omp parallel for if (rows * half * 2 >= PARALLEL_MIN)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t b = row / (heads * steps), h = row / steps % heads, t = row % steps;
        const float *xr = x + b * x_strides[0] + h * x_strides[1] + t * x_strides[2];
        float *o = out + b * out_strides[0] + h * out_strides[1] + t * out_strides[2];
        const int64_t angle = b * angle_strides[0] + t * angle_strides[1];
        const float *c = cos + angle, *s = sin + angle;
        if (adjoint) {
#pragma omp simd
            for (int64_t d = 0; d < half; d++) {
                const float g1 = xr[d], g2 = xr[d + half];
                o[d] = g1 * c[d] + g2 * s[d + half];
                o[d + half] = g2 * c[d + half] - g1 * s[d];
            }
        } else {
#pragma omp simd
            for (int64_t d = 0; d < half; d++) {
                const float x1 = xr[d], x2 = xr[d + half];
                o[d] = x1 * c[d] - x2 * s[d];
                o[d + half] = x2 * c[d + half] + x1 * s[d + half];
            }
        }
    }
}
