/* Fused CPU loops for magnitude-pruned TIES (loaded with ctypes by native/__init__.py).
 *
 * The torch path (operators/generalized.py, selection.py, consensus.py) runs ~20 tensor ops
 * per tile and model, each a full pass over memory; these loops make three streaming passes
 * per model to find its top-k rule and one fused pass for the whole sign consensus, reading
 * the checkpoints' bf16 directly and writing the output dtype. They compute exactly what the
 * torch path computes, in the same float32 operation order, so both give the same bits on
 * finite inputs (tests/engine/test_native.py checks it).
 *
 * Built with -O3 -ffp-contract=off (no fused multiply-add: it would change roundings). The
 * loops are written branch-free so the compiler vectorises them; on x86-64 each hot function
 * is compiled for AVX-512, AVX2 and baseline, and the loader picks one at run time.
 *
 * Tensors are passed as (pointer, dtype code): 0 float32, 1 bfloat16. Values are widened to
 * float32 exactly; δ = x − base in float32.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

#define KEY_BINS 32768  /* top 16 bits of a non-negative float32 */
#define LOW_BINS 65536  /* its low 16 bits */
#define SPARE 16        /* extra counters for entries a histogram skips */
#define CHUNK 1024      /* elements per inner loop: a chunk's temporaries stay in L1 */
#define FLUSH (1 << 30) /* elements after which uint32 counters are added to the int64 result */

enum { F32 = 0, BF16 = 1 };

static inline uint32_t f32_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return bits;
}

/* dst[j] = float32(src[start + j]) for j < len. */
MULTIVERSION
static void widen(const void *src, int dtype, int64_t start, int64_t len, float *restrict dst) {
    if (dtype == BF16) {
        const uint16_t *s = (const uint16_t *)src + start;
        for (int64_t j = 0; j < len; j++) {
            uint32_t bits = (uint32_t)s[j] << 16;
            memcpy(&dst[j], &bits, 4);
        }
    } else {
        memcpy(dst, (const float *)src + start, (size_t)len * 4);
    }
}

/* dst[start + j] = src[j] in dtype; bfloat16 rounds to nearest even like torch (NaN → 0x7fc0). */
MULTIVERSION
static void narrow(const float *restrict src, int64_t len, void *dst, int dtype, int64_t start) {
    if (dtype == BF16) {
        uint16_t *d = (uint16_t *)dst + start;
        for (int64_t j = 0; j < len; j++) {
            uint32_t bits = f32_bits(src[j]);
            uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
            d[j] = src[j] != src[j] ? (uint16_t)0x7fc0 : (uint16_t)rounded;
        }
    } else {
        memcpy((float *)dst + start, src, (size_t)len * 4);
    }
}

MULTIVERSION
static void subtract(float *restrict d, const float *restrict b, int64_t len) {
    for (int64_t j = 0; j < len; j++) d[j] = d[j] - b[j];
}

/* bits[j]: the float32 bit pattern of |δ|, ordered like |δ| itself. */
MULTIVERSION
static void magnitude_bits(const float *restrict d, int64_t len, uint32_t *restrict bits) {
    for (int64_t j = 0; j < len; j++) bits[j] = f32_bits(d[j]) & 0x7fffffffu;
}

/* A streaming pass over |x − b|: each call of `next` fills `bits` for one chunk. */
typedef struct {
    const void *x, *b;
    int x_dtype, b_dtype;
    int64_t n, start, len;
    float d[CHUNK], base[CHUNK];
    uint32_t bits[CHUNK];
} magnitudes;

static int next(magnitudes *m) {
    m->start += m->len;
    if (m->start >= m->n) return 0;
    m->len = m->n - m->start < CHUNK ? m->n - m->start : CHUNK;
    widen(m->x, m->x_dtype, m->start, m->len, m->d);
    widen(m->b, m->b_dtype, m->start, m->len, m->base);
    subtract(m->d, m->base, m->len);
    magnitude_bits(m->d, m->len, m->bits);
    return 1;
}

static void begin(magnitudes *m, const void *x, int x_dtype, const void *b, int b_dtype, int64_t n) {
    m->x = x, m->b = b, m->x_dtype = x_dtype, m->b_dtype = b_dtype;
    m->n = n, m->start = 0, m->len = 0;
}

/* slots[j]: bits[j]'s low 16 bits where its top 16 are `key`, else one of SPARE counters past
 * LOW_BINS taken in turn, so the skipped entries do not queue on one counter. key < 0: the
 * top 16 bits themselves, for every entry. */
MULTIVERSION
static void slots_of(const uint32_t *restrict bits, int64_t len, int key, uint32_t *restrict slots) {
    if (key < 0) {
        for (int64_t j = 0; j < len; j++) slots[j] = bits[j] >> 16;
        return;
    }
    for (int64_t j = 0; j < len; j++)
        slots[j] = (int)(bits[j] >> 16) == key ? (bits[j] & 0xffffu) : LOW_BINS + ((uint32_t)j & (SPARE - 1));
}

/* Adds to hist[0..bins) the counts of slots_of(|x − b|, key). Two interleaved uint32 tables
 * halve the stalls when many entries share a counter (quantised deltas crowd a few values). */
static int histogram(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n, int key,
                     int64_t *hist, int bins) {
    magnitudes *m = malloc(sizeof *m);
    uint32_t *counts = calloc(2 * (size_t)(LOW_BINS + SPARE), sizeof *counts);
    uint32_t slots[CHUNK];
    if (!m || !counts) {
        free(m), free(counts);
        return -1;
    }
    uint32_t *even = counts, *odd = counts + LOW_BINS + SPARE;
    int64_t since_flush = 0;
    begin(m, x, x_dtype, b, b_dtype, n);
    while (next(m)) {
        slots_of(m->bits, m->len, key, slots);
        int64_t j = 0;
        for (; j + 1 < m->len; j += 2) {
            even[slots[j]]++;
            odd[slots[j + 1]]++;
        }
        if (j < m->len) even[slots[j]]++;
        since_flush += m->len;
        if (since_flush >= FLUSH || m->start + m->len >= n) {
            for (int k = 0; k < bins; k++) hist[k] += (int64_t)even[k] + odd[k];
            memset(counts, 0, 2 * (size_t)(LOW_BINS + SPARE) * sizeof *counts);
            since_flush = 0;
        }
    }
    free(m), free(counts);
    return 0;
}

/* hist[KEY_BINS] += counts of the top 16 bits of |x − b|: the first pass of the exact top-k
 * (selection.rule_from_histogram). Returns 0, or -1 when out of memory. */
int mh_magnitude_histogram(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n,
                           int64_t *hist) {
    return histogram(x, x_dtype, b, b_dtype, n, -1, hist, KEY_BINS);
}

/* hist[LOW_BINS] += counts of the low 16 bits of |x − b| among the entries whose top 16 bits
 * are `key`: the second pass, which pins the exact float32 threshold. */
int mh_magnitude_low_histogram(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n,
                               int key, int64_t *hist) {
    return histogram(x, x_dtype, b, b_dtype, n, key, hist, LOW_BINS);
}

MULTIVERSION
static void count_against(const uint32_t *restrict bits, int64_t len, uint32_t pattern, int64_t *above,
                          int64_t *equal) {
    int64_t a = 0, e = 0;
    for (int64_t j = 0; j < len; j++) {
        a += bits[j] > pattern;
        e += bits[j] == pattern;
    }
    *above += a, *equal += e;
}

/* counts[0] = #entries with |x − b| above the float32 bit pattern `pattern`, counts[1] = #equal
 * to it: one vectorised pass that confirms a threshold guessed from a sample. 0, or -1 when
 * out of memory. */
int mh_magnitude_count(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n,
                       uint32_t pattern, int64_t *counts) {
    magnitudes *m = malloc(sizeof *m);
    if (!m) return -1;
    counts[0] = counts[1] = 0;
    begin(m, x, x_dtype, b, b_dtype, n);
    while (next(m)) count_against(m->bits, m->len, pattern, &counts[0], &counts[1]);
    free(m);
    return 0;
}

/* The flat position of the entry numbered `rank` (from 0, in flat order) among those whose
 * |x − b| has float32 bit pattern `pattern`; n when there are not that many; -1 when out of
 * memory. The third pass: where the ties that are kept end. */
int64_t mh_magnitude_position(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n,
                              uint32_t pattern, int64_t rank) {
    magnitudes *m = malloc(sizeof *m);
    if (!m) return -1;
    int64_t seen = 0, found = n;
    begin(m, x, x_dtype, b, b_dtype, n);
    while (found == n && next(m)) {
        int64_t here = 0;
        for (int64_t j = 0; j < m->len; j++) here += m->bits[j] == pattern;
        if (seen + here <= rank) {
            seen += here;
            continue;
        }
        for (int64_t j = 0; j < m->len; j++)
            if (m->bits[j] == pattern && seen++ == rank) {
                found = m->start + j;
                break;
            }
    }
    free(m);
    return found;
}

/* One model's contribution to the consensus sums over a chunk: an entry is kept when
 * |δ| > lam (hardshrink semantics: NaN is kept), and d = w·kept δ. */
MULTIVERSION
static void consensus_add(const float *restrict delta, int64_t len, float lam, float w,
                          float *restrict total, float *restrict positive, float *restrict negative,
                          float *restrict w_positive, float *restrict w_negative) {
    for (int64_t j = 0; j < len; j++) {
        float x = delta[j];
        float a = x < 0 ? -x : x;
        float d = (a <= lam ? 0.0f : x) * w;
        int up = d > 0, down = d < 0;
        total[j] += d;
        positive[j] += up ? d : 0.0f;
        negative[j] += down ? d : 0.0f;
        w_positive[j] += up ? w : 0.0f;
        w_negative[j] += down ? w : 0.0f;
    }
}

/* out = b + λ·mixed/divisor: mixed sums the deltas agreeing with the elected sign
 * (+ where Σd ≥ 0), divisor their weights (1 where 0; used only when `normalize`). */
MULTIVERSION
static void consensus_finish(const float *restrict b, int64_t len, const float *restrict total,
                             const float *restrict positive, const float *restrict negative,
                             const float *restrict w_positive, const float *restrict w_negative,
                             int normalize, int scale, float lambda, float *restrict out) {
    if (normalize) {
        for (int64_t j = 0; j < len; j++) {
            int up = total[j] >= 0;
            float divisor = up ? w_positive[j] : w_negative[j];
            out[j] = (up ? positive[j] : negative[j]) / (divisor == 0.0f ? 1.0f : divisor);
        }
    } else {
        for (int64_t j = 0; j < len; j++) out[j] = total[j] >= 0 ? positive[j] : negative[j];
    }
    if (scale)
        for (int64_t j = 0; j < len; j++) out[j] = out[j] * lambda;
    for (int64_t j = 0; j < len; j++) out[j] = out[j] + b[j];
}

/* TIES over flat [begin, end): expert m is (xs[m], x_dtypes[m]) with weight weights[m] and its
 * top-k rule as hardshrink levels: |δ| > lam_before[m] is kept below flat position cuts[m],
 * |δ| > lam_after[m] from there on. Base, experts and out are indexed alike. */
void mh_ties_combine(const void *b, int b_dtype, int64_t first, int64_t end, int models,
                     const void *const *xs, const int *x_dtypes, const float *weights,
                     const float *lam_before, const float *lam_after, const int64_t *cuts,
                     int normalize, float lambda, void *out, int out_dtype) {
    float base[CHUNK], delta[CHUNK], total[CHUNK], positive[CHUNK], negative[CHUNK];
    float w_positive[CHUNK], w_negative[CHUNK], merged[CHUNK];
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        widen(b, b_dtype, start, len, base);
        memset(total, 0, sizeof total);
        memset(positive, 0, sizeof positive);
        memset(negative, 0, sizeof negative);
        memset(w_positive, 0, sizeof w_positive);
        memset(w_negative, 0, sizeof w_negative);
        for (int m = 0; m < models; m++) {
            widen(xs[m], x_dtypes[m], start, len, delta);
            subtract(delta, base, len);
            int64_t split = cuts[m] <= start ? 0 : cuts[m] - start < len ? cuts[m] - start : len;
            consensus_add(delta, split, lam_before[m], weights[m], total, positive, negative,
                          w_positive, w_negative);
            consensus_add(delta + split, len - split, lam_after[m], weights[m], total + split,
                          positive + split, negative + split, w_positive + split, w_negative + split);
        }
        consensus_finish(base, len, total, positive, negative, w_positive, w_negative, normalize,
                         lambda != 1.0f, lambda, merged);
        narrow(merged, len, out, out_dtype, start);
    }
}
