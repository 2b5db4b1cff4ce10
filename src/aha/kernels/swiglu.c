/* silu(gate) * up and its backward in one pass each, for the lean SwiGLU MLP's training passes
   (aha.models.lean_activations). Torch runs the backward as five elementwise passes over tensors of
   the MLP's intermediate size (silu, three products, silu_backward); here it is one that reads
   grad_hidden, gate and up and writes the two input gradients and the product the down projection's
   weight gradient needs. float32, contiguous, n elements. */
#include <stdint.h>

#include "exp_approx.h"

/* Loops over this many elements or more are split across torch's OpenMP threads. */
#define PARALLEL_MIN 32768

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
