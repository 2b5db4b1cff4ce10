/* The sampler's forward passes of a Llama/Qwen2 model on the CPU, one call from Python each: a decoding
   step (one new token per row) or the prompts' prefill (several). In fp32, or with bf16 matmuls and the
   roundings CPU autocast makes (rollout.dtype=bfloat16: `low_precision` below).

   Why: on a small CPU the hand-written torch step (llama_decode.py) still spends more time between
   its ~30 ops a layer (dispatch, allocation, transposed copies, the SDPA kernel's set-up) than in
   the matmuls, and the HF prefill of a few short prompts costs tens of milliseconds for little work. Here the matmuls go to the same MKL sgemm torch uses (resolved from libtorch_cpu),
   and everything between them is a plain loop: RMSNorm, rotary, the KV-cache write, attention over
   the cache, SwiGLU and the residual adds. OpenMP threads are the ones torch uses (the same libgomp
   is already loaded), so torch's thread count applies.

   Layouts: every matmul runs as W @ x.T with x row-major ([rows, features]), the form MKL is fastest
   in at decoding batch sizes, so its output is feature-major ([features, rows]). The residual stream
   stays feature-major (the adds are contiguous); RMSNorm and SwiGLU write their outputs row-major,
   the next matmul's input, and attention transposes q/k/v into per-row vectors.

   bf16 (`low_precision`): the weights are bf16, each matmul's input is rounded to bf16 and the product
   accumulated in fp32 by MKL's gemm_bf16bf16f32 (several times sgemm's speed where the CPU has bf16
   instructions), and every value autocast would hold in bf16 is rounded to it where autocast rounds:
   projection outputs, SwiGLU's silu and product, the cached keys and values, the query, the attention
   weights and output, the logits. The residual stream and the norms stay fp32, as under autocast.

   The math is that of llama_decode.LlamaDecodeStep (with low_precision: under CPU autocast); tests check
   the two agree. */

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp_approx.h"

/* MKL's Fortran sgemm and its packed-matrix variant (column-major), passed in by the loader. */
typedef void (*sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                         const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
                         const float *beta, float *c, const int *ldc);
typedef size_t (*pack_size_fn)(const char *identifier, const int *m, const int *n, const int *k);
typedef void (*pack_fn)(const char *identifier, const char *trans, const int *m, const int *n, const int *k,
                        const float *alpha, const float *src, const int *ld, float *dest);
typedef void (*gemm_bf16_fn)(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                             const float *alpha, const uint16_t *a, const int *lda, const uint16_t *b,
                             const int *ldb, const float *beta, float *c, const int *ldc);
typedef void (*compute_fn)(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                           const float *a, const int *lda, const float *b, const int *ldb, const float *beta,
                           float *c, const int *ldc);

/* A projection's weight [features, in_features] (nn.Linear's layout; bf16 under low_precision, else
   fp32), and optionally the fp32 weight in MKL's packed format for products with exactly `packed_rows`
   rows (NULL: not packed). */
typedef struct {
    const void *weight;
    const float *packed;
} Weight;

typedef struct {
    const float *input_norm; /* [hidden] */
    Weight qkv;              /* [(heads + 2 kv_heads) * head_dim, hidden] */
    const float *qkv_bias;   /* [(heads + 2 kv_heads) * head_dim] or NULL */
    Weight out;              /* [hidden, heads * head_dim] */
    const float *post_norm;  /* [hidden] */
    Weight gate_up;          /* [2 intermediate, hidden] */
    Weight down;             /* [hidden, intermediate] */
} Layer;

typedef struct {
    int64_t num_layers, hidden, heads, kv_heads, head_dim, intermediate, vocab;
    int64_t packed_rows;   /* the row count the packed weights were packed for (0: none) */
    int64_t low_precision; /* 1: bf16 weights and matmuls, autocast's bf16 roundings; 0: fp32 */
    float eps, scale;
    const float *embed;      /* [vocab, hidden] */
    const float *final_norm; /* [hidden] */
    const void *lm_head;     /* [vocab, hidden], bf16 under low_precision */
    const float *cos, *sin;  /* [positions, head_dim]; sin's first half negated (rotate_half folded in) */
    const Layer *layers;
    sgemm_fn sgemm;
    pack_size_fn pack_size;
    pack_fn pack;
    compute_fn compute;
    gemm_bf16_fn gemm_bf16; /* NULL where MKL has none; then low_precision is never set */
} Model;

/* Loops over this many elements or more are split across the OpenMP threads (fewer do not pay for
   waking them). */
#define PARALLEL_MIN 32768

static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* x's nearest bf16 (ties to even, as torch's float -> bfloat16 conversion; NaN stays NaN), as its bits. */
static inline uint16_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* x rounded to bf16 and held in a float. */
static inline float round_bf16(float x) {
    const uint32_t u = (uint32_t)bf16_bits(x) << 16;
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

/* Under low_precision, round `count` floats to bf16 in place (autocast's bf16 outputs); else nothing. */
static void round_if_low(const Model *m, float *x, int64_t count) {
    if (!m->low_precision) return;
#pragma omp parallel for if (count >= PARALLEL_MIN)
    for (int64_t i = 0; i < count; i++) x[i] = round_bf16(x[i]);
}

/* out [features, rows] = W @ x.T in bf16 (weight's bits; x rounded into `scratch`), fp32 accumulation,
   the output rounded to bf16 as autocast's linear returns it. */
static void project_bf16(const Model *m, const float *x, const uint16_t *weight, int64_t rows, int64_t in_features,
                         int64_t features, uint16_t *scratch, float *out) {
    const float one = 1.0f, zero = 0.0f;
    const int r = (int)rows, k = (int)in_features, f = (int)features;
#pragma omp parallel for if (rows * in_features >= PARALLEL_MIN)
    for (int64_t i = 0; i < rows * in_features; i++) scratch[i] = bf16_bits(x[i]);
    m->gemm_bf16("T", "N", &r, &f, &k, &one, scratch, &k, weight, &k, &zero, out, &r);
    round_if_low(m, out, rows * features);
}

/* out [features, rows] = W @ x.T for x [rows, in_features] and a weight W [features, in_features].
   Row-major x matters: with weights streaming from memory, MKL runs this form ~30% faster than the same
   product with x feature-major (25M decoding matmuls at 32 rows: 149 vs 110 GFLOP/s). A weight packed
   for this row count runs another ~10% faster (MKL's packed API; packing costs about one copy).
   Under low_precision the product is project_bf16's (`scratch`: rows * in_features bf16 values). */
static void project(const Model *m, const float *x, Weight w, int64_t rows, int64_t in_features,
                    int64_t features, uint16_t *scratch, float *out) {
    if (m->low_precision) {
        project_bf16(m, x, (const uint16_t *)w.weight, rows, in_features, features, scratch, out);
        return;
    }
    const float one = 1.0f, zero = 0.0f;
    const int r = (int)rows, k = (int)in_features, f = (int)features;
    /* column-major out [rows, features] = x [rows, k] @ W^T [k, features] */
    if (w.packed && rows == m->packed_rows)
        m->compute("T", "P", &r, &f, &k, x, &k, w.packed, &k, &zero, out, &r);
    else
        m->sgemm("T", "N", &r, &f, &k, &one, x, &k, (const float *)w.weight, &k, &zero, out, &r);
}

/* Floats MKL needs to pack a weight [features, in_features] for products with `rows` rows. */
int64_t packed_floats(const Model *m, int64_t rows, int64_t features, int64_t in_features) {
    const int r = (int)rows, f = (int)features, k = (int)in_features;
    return (int64_t)((m->pack_size("B", &r, &f, &k) + sizeof(float) - 1) / sizeof(float));
}

/* Pack `weight` [features, in_features] into `dest` (packed_floats of it) for products with `rows` rows. */
void pack_weight(const Model *m, int64_t rows, const float *weight, int64_t features, int64_t in_features,
                 float *dest) {
    const float one = 1.0f;
    const int r = (int)rows, f = (int)features, k = (int)in_features;
    m->pack("B", "N", &r, &f, &k, &one, weight, &k, dest);
}

/* out [rows, features] = in [features, rows] transposed, plus bias [features] if given. */
static void transpose_rows(const float *in, const float *bias, float *out, int64_t rows, int64_t features) {
    enum { BLOCK = 16 };
#pragma omp parallel for if (rows * features >= PARALLEL_MIN)
    for (int64_t f0 = 0; f0 < features; f0 += BLOCK) {
        const int64_t f1 = f0 + BLOCK < features ? f0 + BLOCK : features;
        for (int64_t r0 = 0; r0 < rows; r0 += BLOCK) {
            const int64_t r1 = r0 + BLOCK < rows ? r0 + BLOCK : rows;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t f = f0; f < f1; f++) out[r * features + f] = in[f * rows + r];
        }
        if (bias)
            for (int64_t r = 0; r < rows; r++)
                for (int64_t f = f0; f < f1; f++) out[r * features + f] += bias[f];
    }
}

/* out [rows, n] = weight * rms_norm over features of hidden [n, rows] (LlamaRMSNorm in fp32). */
static void rms_norm(const float *hidden, const float *weight, float *out, float *inv, int64_t rows, int64_t n,
                     float eps) {
    enum { BLOCK = 16 };
    for (int64_t r = 0; r < rows; r++) inv[r] = 0.0f;
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = 0; r < rows; r++) inv[r] += hidden[i * rows + r] * hidden[i * rows + r];
    for (int64_t r = 0; r < rows; r++) inv[r] = 1.0f / sqrtf(inv[r] / (float)n + eps);
#pragma omp parallel for if (rows * n >= PARALLEL_MIN)
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        const int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = i0; i < i1; i++) out[r * n + i] = weight[i] * (hidden[i * rows + r] * inv[r]);
    }
}

/* act [rows, intermediate] = silu(gate) * up for gate_up [2 intermediate, rows]. The gate half is
   overwritten: computed feature-major so that the exponentials vectorize, then transposed. Under
   low_precision silu's output and the product are each rounded to bf16 (autocast runs both in bf16). */
static void swiglu(const Model *m, float *gate_up, float *act, int64_t rows, int64_t intermediate) {
    float *gate = gate_up;
    const float *up = gate_up + intermediate * rows;
    if (m->low_precision) {
#pragma omp parallel for if (rows * intermediate >= PARALLEL_MIN)
        for (int64_t i = 0; i < intermediate; i++)
            for (int64_t r = 0; r < rows; r++) {
                const float g = gate[i * rows + r];
                gate[i * rows + r] = round_bf16(round_bf16(g / (1.0f + exp_approx(-g))) * up[i * rows + r]);
            }
    } else {
#pragma omp parallel for if (rows * intermediate >= PARALLEL_MIN)
        for (int64_t i = 0; i < intermediate; i++)
            for (int64_t r = 0; r < rows; r++) {
                const float g = gate[i * rows + r];
                gate[i * rows + r] = g / (1.0f + exp_approx(-g)) * up[i * rows + r];
            }
    }
    transpose_rows(gate, NULL, act, rows, intermediate);
}

/* scores[t] = scale * (query . keys[t]) for t in [0, count); four keys at a time for independent sums. */
static void dot_keys(const float *query, const float *keys, int64_t count, int64_t hd, float scale,
                     float *scores) {
    int64_t t = 0;
    for (; t + 4 <= count; t += 4) {
        const float *k0 = keys + t * hd, *k1 = k0 + hd, *k2 = k1 + hd, *k3 = k2 + hd;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        for (int64_t d = 0; d < hd; d++) {
            a0 += query[d] * k0[d];
            a1 += query[d] * k1[d];
            a2 += query[d] * k2[d];
            a3 += query[d] * k3[d];
        }
        scores[t] = a0 * scale;
        scores[t + 1] = a1 * scale;
        scores[t + 2] = a2 * scale;
        scores[t + 3] = a3 * scale;
    }
    for (; t < count; t++) {
        const float *key = keys + t * hd;
        float a = 0.0f;
        for (int64_t d = 0; d < hd; d++) a += query[d] * key[d];
        scores[t] = a * scale;
    }
}

/* Rotary embedding of one head: out = x * cos + cat(x2, x1) * sin. */
static inline void rotate(const float *x, int64_t head_dim, const float *cos, const float *sin, float *out) {
    const int64_t half = head_dim / 2;
    for (int64_t d = 0; d < half; d++) {
        out[d] = x[d] * cos[d] + x[d + half] * sin[d];
        out[d + half] = x[d + half] * cos[d + half] + x[d] * sin[d + half];
    }
}

/* Attention for `count` new tokens per row (token i = row * count + j sits at cache index length + j):
   first every new token's rotated key and its value are written into the cache, then each token's
   query heads attend, softmax over the cache indices [0, length + j] that `attention` (1 = visible;
   NULL: all) allows. qkv [tokens, (heads + 2 kv_heads) * head_dim]; out [tokens, heads * head_dim]. */
static void attend(const Model *m, const float *qkv, const int64_t *positions, float *keys, float *values,
                   int64_t capacity, int64_t length, int64_t count, const int64_t *attention,
                   int64_t attention_stride, float *out, int64_t rows) {
    const int64_t heads = m->heads, kv_heads = m->kv_heads, hd = m->head_dim, group = heads / kv_heads;
    const int64_t width = (heads + 2 * kv_heads) * hd, tasks = rows * count * kv_heads;
    const int parallel = tasks * (length + count) * hd >= PARALLEL_MIN;
#pragma omp parallel for if (parallel)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t i = task / kv_heads, g = task % kv_heads, r = i / count, at = length + i % count;
        const float *row = qkv + i * width;
        const float *cos = m->cos + positions[i] * hd, *sin = m->sin + positions[i] * hd;
        const int64_t cache = (r * kv_heads + g) * capacity * hd;
        rotate(row + (heads + g) * hd, hd, cos, sin, keys + cache + at * hd);
        memcpy(values + cache + at * hd, row + (heads + kv_heads + g) * hd, sizeof(float) * (size_t)hd);
        if (m->low_precision) /* the cache holds bf16 values (the rotated key is fp32 until rounded) */
            for (int64_t d = 0; d < hd; d++) keys[cache + at * hd + d] = round_bf16(keys[cache + at * hd + d]);
    }
#pragma omp parallel if (parallel)
    {
        float *scores = malloc(sizeof(float) * (size_t)(length + count));
        float *query = malloc(sizeof(float) * (size_t)hd);
#pragma omp for schedule(dynamic, 8)
        for (int64_t task = 0; task < tasks; task++) {
            const int64_t i = task / kv_heads, g = task % kv_heads, r = i / count, last = length + i % count;
            const float *row = qkv + i * width;
            const float *cos = m->cos + positions[i] * hd, *sin = m->sin + positions[i] * hd;
            const float *k_cache = keys + (r * kv_heads + g) * capacity * hd;
            const float *v_cache = values + (r * kv_heads + g) * capacity * hd;
            const int64_t *visible = attention ? attention + r * attention_stride : NULL;
            for (int64_t j = 0; j < group; j++) {
                const int64_t h = g * group + j;
                float *o = out + i * heads * hd + h * hd;
                for (int64_t d = 0; d < hd; d++) o[d] = 0.0f;
                rotate(row + h * hd, hd, cos, sin, query);
                if (m->low_precision)
                    for (int64_t d = 0; d < hd; d++) query[d] = round_bf16(query[d]);
                dot_keys(query, k_cache, last + 1, hd, m->scale, scores);
                float best = -FLT_MAX;
                for (int64_t t = 0; t <= last; t++)
                    if (!visible || visible[t]) best = scores[t] > best ? scores[t] : best;
                if (best == -FLT_MAX) continue; /* a padding token that sees nothing: output 0, read by no one */
                float total = 0.0f;
                for (int64_t t = 0; t <= last; t++) {
                    scores[t] = !visible || visible[t] ? exp_approx(scores[t] - best) : 0.0f;
                    total += scores[t];
                }
                for (int64_t t = 0; t <= last; t++) {
                    const float p = m->low_precision ? round_bf16(scores[t] / total) : scores[t] / total;
                    const float *value = v_cache + t * hd;
                    for (int64_t d = 0; d < hd; d++) o[d] += p * value[d];
                }
                if (m->low_precision)
                    for (int64_t d = 0; d < hd; d++) o[d] = round_bf16(o[d]);
            }
        }
        free(query);
        free(scores);
    }
}

/* Workspace floats per token: hidden, normed x, a projection's output, its row-major copy for
   attention, the attention output / SwiGLU activation, the norm's per-token factor, and (as floats,
   twice what it needs) the bf16 copy of a matmul's input. */
static int64_t projected_floats(const Model *m) {
    return max64(max64((m->heads + 2 * m->kv_heads) * m->head_dim, 2 * m->intermediate), m->hidden);
}
static int64_t inner_floats(const Model *m) { return max64(m->heads * m->head_dim, m->intermediate); }

/* Floats of workspace `forward_tokens` needs for `tokens` new tokens in all. */
int64_t workspace_floats(const Model *m, int64_t tokens) {
    const int64_t matmul_input = max64(m->hidden, inner_floats(m));
    return tokens * (2 * m->hidden + 2 * projected_floats(m) + inner_floats(m) + 1 + matmul_input);
}

/* `count` new tokens per row: ids and positions [rows, count]. keys[l], values[l]: layer l's cache
   [rows, kv_heads, capacity, head_dim] holding `length` positions; the new tokens' keys/values are
   written at [length, length + count). `attention` [rows, attention_stride]: 1 where a cache index
   is visible (NULL: all are). Logits [rows, vocab] for each row's last new token. count = 1 is one
   decoding step, more is a prefill. */
void forward_tokens(const Model *m, int64_t rows, int64_t count, const int64_t *ids, const int64_t *positions,
                    float **keys, float **values, int64_t capacity, int64_t length, const int64_t *attention,
                    int64_t attention_stride, float *workspace, float *logits) {
    const int64_t tokens = rows * count, n = m->hidden;
    const int64_t qkv_features = (m->heads + 2 * m->kv_heads) * m->head_dim;
    const int64_t attended = m->heads * m->head_dim, inter = m->intermediate;
    float *hidden = workspace, *x = hidden + tokens * n;
    float *projected = x + tokens * n, *qkv_rows = projected + tokens * projected_floats(m);
    float *inner = qkv_rows + tokens * projected_floats(m), *inv = inner + tokens * inner_floats(m);
    uint16_t *scratch = (uint16_t *)(inv + tokens); /* room for any matmul's input, in bf16 */

    for (int64_t t = 0; t < tokens; t++)
        for (int64_t i = 0; i < n; i++) hidden[i * tokens + t] = m->embed[ids[t] * n + i];
    rms_norm(hidden, m->layers[0].input_norm, x, inv, tokens, n, m->eps);
    for (int64_t l = 0; l < m->num_layers; l++) {
        const Layer *layer = &m->layers[l];
        project(m, x, layer->qkv, tokens, n, qkv_features, scratch, projected);
        transpose_rows(projected, layer->qkv_bias, qkv_rows, tokens, qkv_features);
        if (layer->qkv_bias) round_if_low(m, qkv_rows, tokens * qkv_features); /* autocast's in-place add */
        attend(m, qkv_rows, positions, keys[l], values[l], capacity, length, count, attention, attention_stride,
               inner, rows);
        project(m, inner, layer->out, tokens, attended, n, scratch, projected);
        for (int64_t i = 0; i < tokens * n; i++) hidden[i] += projected[i];
        rms_norm(hidden, layer->post_norm, x, inv, tokens, n, m->eps);
        project(m, x, layer->gate_up, tokens, n, 2 * inter, scratch, projected);
        swiglu(m, projected, inner, tokens, inter);
        project(m, inner, layer->down, tokens, inter, n, scratch, projected);
        for (int64_t i = 0; i < tokens * n; i++) hidden[i] += projected[i];
        rms_norm(hidden, l + 1 < m->num_layers ? m->layers[l + 1].input_norm : m->final_norm, x, inv, tokens,
                 n, m->eps);
    }
    const float *last = x;
    if (count > 1) { /* x is row-major [tokens, n]: gather each row's last token */
        float *gathered = projected;
        for (int64_t r = 0; r < rows; r++)
            memcpy(gathered + r * n, x + (r * count + count - 1) * n, sizeof(float) * (size_t)n);
        last = gathered;
    }
    /* column-major logits [vocab, rows] = row-major [rows, vocab] = lm_head [vocab, n] @ last.T */
    const float one = 1.0f, zero = 0.0f;
    const int s = (int)rows, k = (int)n, v = (int)m->vocab;
    if (m->low_precision) {
        for (int64_t i = 0; i < rows * n; i++) scratch[i] = bf16_bits(last[i]);
        m->gemm_bf16("T", "N", &v, &s, &k, &one, m->lm_head, &k, scratch, &k, &zero, logits, &v);
        round_if_low(m, logits, rows * m->vocab);
    } else {
        m->sgemm("T", "N", &v, &s, &k, &one, m->lm_head, &k, last, &k, &zero, logits, &v);
    }
}
