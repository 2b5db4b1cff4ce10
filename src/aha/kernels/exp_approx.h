/* e^x to ~1 ulp (Cephes' expf: x = n ln2 + r, a degree-7 polynomial in r, times 2^n), written so that
   loops calling it vectorize (libm's expf does not without -ffast-math, which would change the whole
   process's floating-point state by flushing denormals). Inputs are clamped to [-87.3, 88]. */
#ifndef AHA_EXP_APPROX_H
#define AHA_EXP_APPROX_H

#include <math.h>
#include <stdint.h>

static inline float exp_approx(float x) {
    x = x < -87.3365448f ? -87.3365448f : (x > 88.0f ? 88.0f : x);
    const float n = rintf(x * 1.44269504088896341f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
}

#endif
