/* Fused CPU loops for the task-arithmetic family (loaded with ctypes by native/__init__.py):
 * the exact top-k / order-statistic passes behind TIES and breadcrumbs, the exact L1 sums
 * behind the rescale of DARE and friends, and one fused combine (prune, rescale, weight, sign
 * consensus or plain sum, λ, + base) for ties, dare_ties, dare_linear, breadcrumbs and
 * breadcrumbs_ties.
 *
 * The torch path (operators/generalized.py, sparsify.py, selection.py, consensus.py) runs ~20
 * tensor ops per model, each a full pass over memory; these loops read the checkpoints' bf16
 * directly, keep a chunk's temporaries in L1 and write the output dtype. They compute exactly
 * what the torch path computes, in the same float32 operation order, so both give the same
 * bits on finite inputs (tests/engine/test_native.py checks it). Random drops use the same
 * counter-based stream as the torch path (operators/random_stream.py): an entry's draw is a
 * hash of (key, flat index), so any split of the work gives the same draws.
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

/* ---- the random stream (operators/random_stream.py is the reference) ---------------------- */

/* A bijective 32-bit mixer ("lowbias32", C. Wellons' hash-prospector). */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* u[j]: the 24-bit draw of flat entry start + j under key (key0, key1). */
MULTIVERSION
static void draws(int64_t start, int64_t len, uint32_t key0, uint32_t key1, uint32_t *restrict u) {
    for (int64_t j = 0; j < len; j++) {
        uint64_t i = (uint64_t)(start + j);
        u[j] = mix32(mix32((uint32_t)i ^ key0) + ((uint32_t)(i >> 32) ^ key1)) >> 8;
    }
}

/* u[j] = the 24-bit draw of flat entry start + j (the torch path's random_stream.draws24). */
void mh_draws(int64_t start, int64_t len, uint32_t key0, uint32_t key1, uint32_t *u) {
    draws(start, len, key0, key1, u);
}

/* ---- one expert's pruning --------------------------------------------------------------- */

/* How expert x is pruned and scaled (native/__init__.py's ModelSpec mirrors this layout).
 * An entry is kept when |δ| > keep_level, |δ| ≤ drop_level (NaN is kept: hardshrink's rule)
 * and its draw is below `threshold`; each level is *_before at flat positions below *_cut
 * and *_after from there on. Kept entries become (δ·factor)·weight. */
typedef struct {
    const void *x;
    int32_t dtype;
    float weight, factor;
    float keep_before, keep_after, drop_before, drop_after;
    int64_t keep_cut, drop_cut;
    int64_t offset; /* flat index of x[0] (and of the base's first entry) in the full tensor */
    uint32_t key0, key1;
    uint32_t threshold;   /* ≥ 2^24: no random drop */
    const uint8_t *mask;  /* or NULL: entries whose mask byte is 0 are dropped too (DELLA) */
} mh_model;

#define ALL_DRAWS (1u << 24)

/* kept[j] = δ[j] where the entry is kept, else 0 (u: its draws, or zeros with threshold 1). */
MULTIVERSION
static void prune(const mh_model *m, const float *restrict delta, const uint32_t *restrict u,
                  uint32_t threshold, int64_t start, int64_t len, float *restrict kept) {
    float kb = m->keep_before, ka = m->keep_after, db = m->drop_before, da = m->drop_after;
    int64_t kc = m->keep_cut - start, dc = m->drop_cut - start;
    for (int64_t j = 0; j < len; j++) {
        float x = delta[j];
        float a = x < 0 ? -x : x;
        float keep_level = j < kc ? kb : ka, drop_level = j < dc ? db : da;
        int keep = !(a <= keep_level) & !(a > drop_level) & (u[j] < threshold);
        kept[j] = keep ? x : 0.0f;
    }
}

MULTIVERSION
static void apply_mask(const uint8_t *restrict mask, int64_t len, float *restrict kept) {
    for (int64_t j = 0; j < len; j++) kept[j] = mask[j] ? kept[j] : 0.0f;
}

/* kept[0..len): expert m's pruned δ over flat [start, start + len), given the base's chunk. */
static void pruned_chunk(const mh_model *m, const float *base, int64_t start, int64_t len,
                         float *delta, uint32_t *u, float *kept) {
    widen(m->x, m->dtype, start, len, delta);
    subtract(delta, base, len);
    uint32_t threshold = 1;
    if (m->threshold < ALL_DRAWS) {
        draws(m->offset + start, len, m->key0, m->key1, u);
        threshold = m->threshold;
    } else {
        memset(u, 0, (size_t)len * sizeof *u);
    }
    prune(m, delta, u, threshold, start, len, kept);
    if (m->mask) apply_mask(m->mask + start, len, kept);
}

/* ---- DELLA's ranked random drop ----------------------------------------------------------- */

#define RANK_BITS 12
#define RANK_BUCKETS ((1 << RANK_BITS) + 1) /* bucket 0 holds the zeros */

/* rank[j]: the position of entry j in the stable ascending order of key[j] (ties by index), a
 * counting sort on a 12-bit digit: the top 12 of the bits in which the non-zero keys differ
 * (bits above are the same in all of them), zeros in a bucket of their own. Deltas of bf16
 * checkpoints have few significant bits, so the digit usually holds every differing bit and
 * equal digits mean equal keys: one counting pass and one numbering pass. Otherwise entries
 * are placed by digit and one insertion sort by key (stable) orders each bucket: buckets are
 * already in order, so it only moves entries within their bucket. `start` (RANK_BUCKETS + 1
 * counters) must be all zero on entry and is left so. */
static void ranks(const uint32_t *key, int64_t w, int64_t *start, uint16_t *digit, uint32_t *order,
                  uint32_t *rank) {
    if (w <= 0) return;
    uint32_t any = 0, all = 0xffffffffu, largest = 0, smallest = 0xffffffffu; /* over non-zero keys */
    for (int64_t j = 0; j < w; j++) {
        uint32_t k = key[j], or_none = k ? k : 0xffffffffu;
        any |= k;
        all &= or_none;
        largest = k > largest ? k : largest;
        smallest = or_none < smallest ? or_none : smallest;
    }
    uint32_t varying = any & ~all;
    int top = varying ? 31 - __builtin_clz(varying) : 0;
    int shift = top + 1 > RANK_BITS ? top + 1 - RANK_BITS : 0;
    uint32_t digit_mask = (1u << (top + 1 - shift)) - 1u;
    /* zeros go to bucket 0, the others to [lowest, highest] */
    int lowest = largest ? (int)(1u + ((smallest >> shift) & digit_mask)) : 1;
    int highest = largest ? (int)(1u + ((largest >> shift) & digit_mask)) : 0;
    for (int64_t j = 0; j < w; j++) {
        int d = key[j] ? (int)(1u + ((key[j] >> shift) & digit_mask)) : 0;
        digit[j] = (uint16_t)d;
        start[d]++;
    }
    int64_t before = start[0]; /* counts → first position of each bucket */
    start[0] = 0;
    for (int d = lowest; d <= highest; d++) {
        int64_t count = start[d];
        start[d] = before;
        before += count;
    }
    if (shift == 0) { /* equal digits, equal keys */
        for (int64_t j = 0; j < w; j++) rank[j] = (uint32_t)start[digit[j]]++;
    } else {
        for (int64_t j = 0; j < w; j++) order[start[digit[j]]++] = (uint32_t)j;
        for (int64_t i = 1; i < w; i++) {
            uint32_t j = order[i], k = key[j];
            int64_t at = i;
            for (; at > 0 && key[order[at - 1]] > k; at--) order[at] = order[at - 1];
            order[at] = j;
        }
        for (int64_t r = 0; r < w; r++) rank[order[r]] = (uint32_t)r;
    }
    start[0] = 0;
    if (highest >= lowest) memset(start + lowest, 0, (size_t)(highest - lowest + 1) * sizeof *start);
}

/* mask[j] = 1 where DELLA keeps entry j, for rows [r0, r1) of a rows × width tensor (mask is
 * indexed like x): u < probs[rank of |δ| in its row], u = u24·2^-24 the entry's draw (flat
 * index offset + j). probs[r] = density − ε + 2ε·r/(width − 1), computed by the caller with the
 * torch path's own float32 ops. Returns 0, or -1 when out of memory. */
int mh_della_mask(const void *x, int x_dtype, const void *b, int b_dtype, int64_t width, int64_t r0,
                  int64_t r1, int64_t offset, uint32_t key0, uint32_t key1, const float *probs,
                  uint8_t *mask) {
    float *delta = malloc(2 * (size_t)width * sizeof *delta);
    uint32_t *ints = malloc(4 * (size_t)width * sizeof *ints);
    uint16_t *digit = malloc((size_t)width * sizeof *digit);
    int64_t *buckets = calloc(RANK_BUCKETS + 1, sizeof *buckets);
    if (!delta || !ints || !digit || !buckets) {
        free(delta), free(ints), free(digit), free(buckets);
        return -1;
    }
    float *base = delta + width;
    uint32_t *bits = ints, *rank = ints + width, *u = ints + 2 * width, *order = ints + 3 * width;
    for (int64_t r = r0; r < r1; r++) {
        int64_t start = r * width;
        widen(x, x_dtype, start, width, delta);
        widen(b, b_dtype, start, width, base);
        subtract(delta, base, width);
        magnitude_bits(delta, width, bits);
        ranks(bits, width, buckets, digit, order, rank);
        draws(offset + start, width, key0, key1, u);
        for (int64_t j = 0; j < width; j++) mask[start + j] = (float)u[j] * 0x1p-24f < probs[rank[j]];
    }
    free(delta), free(ints), free(digit), free(buckets);
    return 0;
}

/* slots[j]: |v[j]|'s float32 exponent (0-255), plus 256 when the entry was dropped. */
MULTIVERSION
static void exponent_slots(const float *restrict delta, const float *restrict kept, int64_t len,
                           uint32_t *restrict slots, uint32_t *restrict mantissas) {
    for (int64_t j = 0; j < len; j++) {
        uint32_t bits = f32_bits(delta[j]) & 0x7fffffffu, e = bits >> 23;
        int dropped = kept[j] == 0.0f && delta[j] != 0.0f;
        slots[j] = e + (dropped ? 256u : 0u);
        mantissas[j] = (bits & 0x7fffffu) | (e ? 0x800000u : 0u);
    }
}

/* The exact L1 norms behind the rescale, as integers: sums[e] += mantissa of every kept |δ|
 * with float32 exponent e, sums[256 + e] the same for dropped ones (|δ| = mantissa·2^(max(e,1)
 * − 150)); int64 holds 2^39 entries per slot. operators/exact_sum.py turns them into floats.
 * Returns 0, or -1 when out of memory. */
int mh_prune_sums(const void *b, int b_dtype, int64_t first, int64_t end, const mh_model *m,
                  int64_t *sums) {
    float *buf = malloc(4 * CHUNK * sizeof *buf);
    uint32_t *ints = malloc(3 * CHUNK * sizeof *ints);
    int64_t *tables = calloc(2 * 512, sizeof *tables);
    if (!buf || !ints || !tables) {
        free(buf), free(ints), free(tables);
        return -1;
    }
    float *base = buf, *delta = buf + CHUNK, *kept = buf + 2 * CHUNK;
    uint32_t *u = ints, *slots = ints + CHUNK, *mantissas = ints + 2 * CHUNK;
    int64_t *even = tables, *odd = tables + 512;
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        widen(b, b_dtype, start, len, base);
        pruned_chunk(m, base, start, len, delta, u, kept);
        exponent_slots(delta, kept, len, slots, mantissas);
        int64_t j = 0;
        for (; j + 1 < len; j += 2) {
            even[slots[j]] += mantissas[j];
            odd[slots[j + 1]] += mantissas[j + 1];
        }
        if (j < len) even[slots[j]] += mantissas[j];
    }
    for (int k = 0; k < 512; k++) sums[k] += even[k] + odd[k];
    free(buf), free(ints), free(tables);
    return 0;
}

/* ---- combining the experts -------------------------------------------------------------- */

/* d = (kept·factor)·w, added to the consensus sums. */
MULTIVERSION
static void consensus_add(const float *restrict kept, int64_t len, float factor, float w,
                          float *restrict total, float *restrict positive, float *restrict negative,
                          float *restrict w_positive, float *restrict w_negative) {
    for (int64_t j = 0; j < len; j++) {
        float d = (kept[j] * factor) * w;
        int up = d > 0, down = d < 0;
        total[j] += d;
        positive[j] += up ? d : 0.0f;
        negative[j] += down ? d : 0.0f;
        w_positive[j] += up ? w : 0.0f;
        w_negative[j] += down ? w : 0.0f;
    }
}

/* d = (kept·factor)·w, added to the plain sum. */
MULTIVERSION
static void sum_add(const float *restrict kept, int64_t len, float factor, float w, float *restrict total) {
    for (int64_t j = 0; j < len; j++) total[j] += (kept[j] * factor) * w;
}

/* Consensus: out = b + λ·mixed[/divisor], mixed summing the deltas that agree with the elected
 * sign (+ where Σd ≥ 0), divisor their weights (1 where 0; only when `normalize`).
 * Plain sum: out = b + λ·total. */
MULTIVERSION
static void finish(const float *restrict b, int64_t len, int consensus, const float *restrict total,
                   const float *restrict positive, const float *restrict negative,
                   const float *restrict w_positive, const float *restrict w_negative,
                   int normalize, int scale, float lambda, float *restrict out) {
    if (!consensus) {
        memcpy(out, total, (size_t)len * sizeof *out);
    } else if (normalize) {
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

/* The merge over flat [first, end): every expert pruned by its mh_model, then combined with
 * the sign consensus (`consensus`) or a plain sum (then `normalize` must be 0), scaled by λ
 * and added to the base. Base, experts and out are indexed alike. */
void mh_family_combine(const void *b, int b_dtype, int64_t first, int64_t end, int models,
                       const mh_model *ms, int consensus, int normalize, float lambda, void *out,
                       int out_dtype) {
    float base[CHUNK], delta[CHUNK], kept[CHUNK], total[CHUNK], positive[CHUNK], negative[CHUNK];
    float w_positive[CHUNK], w_negative[CHUNK], merged[CHUNK];
    uint32_t u[CHUNK];
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        widen(b, b_dtype, start, len, base);
        memset(total, 0, sizeof total);
        if (consensus) {
            memset(positive, 0, sizeof positive);
            memset(negative, 0, sizeof negative);
            memset(w_positive, 0, sizeof w_positive);
            memset(w_negative, 0, sizeof w_negative);
        }
        for (int m = 0; m < models; m++) {
            pruned_chunk(&ms[m], base, start, len, delta, u, kept);
            if (consensus)
                consensus_add(kept, len, ms[m].factor, ms[m].weight, total, positive, negative,
                              w_positive, w_negative);
            else
                sum_add(kept, len, ms[m].factor, ms[m].weight, total);
        }
        finish(base, len, consensus, total, positive, negative, w_positive, w_negative, normalize,
               lambda != 1.0f, lambda, merged);
        narrow(merged, len, out, out_dtype, start);
    }
}
