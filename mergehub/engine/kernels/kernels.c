/* The compiled kernels, in sections:
 * - the task-arithmetic family (kernels/family.py, topk.py): the exact top-k / order-statistic
 *   passes behind TIES and breadcrumbs, the exact L1 sums behind the rescale of DARE and DELLA,
 *   DELLA's ranked masks, and one fused combine (prune, rescale, weight, sign consensus or
 *   plain sum, λ, + base);
 * - RAM and nearswap (kernels/elementwise.py): one pass per chunk of entries;
 * - Gram matrices and linear combinations (kernels/span.py): the two passes of slerp, nuslerp,
 *   multislerp, karcher and model_stock (operators/span.py);
 * - SCE (kernels/sce.py): the variances, their top-k histogram, the energies and the erase step.
 *
 * The torch statement (operators/generalized.py with sparsify.py, selection.py, consensus.py)
 * runs ~20 tensor ops per model, each a full pass over memory; these loops read the
 * checkpoints' bf16 directly, keep a chunk's temporaries in L1 and write the output dtype.
 * They compute what the torch statement computes, in the same float32 operation order, so both
 * give the same bits (tests/engine/kernels checks it). Random drops use the same counter-based
 * stream as the torch statement (operators/random_stream.py): an entry's draw is a hash of
 * (key, flat index), so any split of the work gives the same draws.
 *
 * Every exported function and struct is declared in mergehub_kernels.h, included here so that
 * the compiler checks each definition against it.
 *
 * Built with -O3 -ffp-contract=off (no implicit fused multiply-add: it would change roundings).
 * The loops are written branch-free so the compiler vectorises them; on x86-64 each hot
 * function is compiled for AVX-512, AVX2 and baseline, and the loader picks one at run time.
 */
#include "mergehub_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

#ifndef MH_INTERFACE_DIGEST
#error "MH_INTERFACE_DIGEST (the SHA-256 of mergehub_kernels.h) must be defined: build through setup.py"
#endif

const char *mh_interface_digest(void) { return MH_INTERFACE_DIGEST; }

#define KEY_BINS MH_KEY_BINS
#define LOW_BINS MH_LOW_BINS
#define SPARE 16        /* extra counters for entries a histogram skips */
#define CHUNK 1024      /* elements per inner loop: a chunk's temporaries stay in L1 */
#define TALLY MH_TALLY  /* entries per tally of mh_magnitude_count (64 chunks) */
#define FLUSH (1 << 30) /* elements after which uint32 counters are added to the int64 result */

/* 16 lanes as one vector (GCC/clang vector extensions: one zmm on AVX-512, halves or quarters
 * elsewhere), for loops GCC does not vectorise well as written over arrays: row_max (GCC leaves
 * a compare-and-select per lane scalar: it cannot turn `a > b ? a : b` into a max without
 * -ffinite-math-only), consensus_add (an inner loop over the models) and count_batch (several
 * keys' counts a vector). */
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

enum { F32 = MH_F32, BF16 = MH_BF16 };

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

/* A chunk of k inputs from flat `start`: d[i·CHUNK + j] = x_i − b (base gets b's chunk), or
 * x_i itself when b is NULL. */
static void chunk_deltas(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                         int64_t start, int64_t len, float *base, float *d) {
    if (b) widen(b, b_dtype, start, len, base);
    for (int i = 0; i < k; i++) {
        widen(xs[i], x_dtypes[i], start, len, d + (size_t)i * CHUNK);
        if (b) subtract(d + (size_t)i * CHUNK, base, len);
    }
}

/* bits[j]: the float32 bit pattern of |δ|, ordered like |δ| itself. */
MULTIVERSION
static void magnitude_bits(const float *restrict d, int64_t len, uint32_t *restrict bits) {
    for (int64_t j = 0; j < len; j++) bits[j] = f32_bits(d[j]) & 0x7fffffffu;
}

/* bits[j] = magnitude_bits of x − b at flat start + j, for j < len. Both in bfloat16 (the
 * usual checkpoint), in one pass straight from the stored halves; otherwise a chunk at a time
 * through widen. */
MULTIVERSION
static void magnitude_keys(const void *x, int x_dtype, const void *b, int b_dtype, int64_t start,
                           int64_t len, uint32_t *restrict bits) {
    if (x_dtype == BF16 && b_dtype == BF16) {
        const uint16_t *xs = (const uint16_t *)x + start, *bs = (const uint16_t *)b + start;
        for (int64_t j = 0; j < len; j++) {
            uint32_t xb = (uint32_t)xs[j] << 16, bb = (uint32_t)bs[j] << 16;
            float xf, bf;
            memcpy(&xf, &xb, 4), memcpy(&bf, &bb, 4);
            bits[j] = f32_bits(xf - bf) & 0x7fffffffu;
        }
        return;
    }
    float d[CHUNK], base[CHUNK];
    for (int64_t at = 0; at < len; at += CHUNK) {
        int64_t n = len - at < CHUNK ? len - at : CHUNK;
        widen(x, x_dtype, start + at, n, d);
        widen(b, b_dtype, start + at, n, base);
        subtract(d, base, n);
        magnitude_bits(d, n, bits + at);
    }
}

/* A streaming pass over |x − b|: each call of `next` fills `bits` for one chunk. */
typedef struct {
    const void *x, *b;
    int x_dtype, b_dtype;
    int64_t n, start, len;
    uint32_t bits[CHUNK];
} magnitudes;

static int next(magnitudes *m) {
    m->start += m->len;
    if (m->start >= m->n) return 0;
    m->len = m->n - m->start < CHUNK ? m->n - m->start : CHUNK;
    magnitude_keys(m->x, m->x_dtype, m->b, m->b_dtype, m->start, m->len, m->bits);
    return 1;
}

/* Starts the pass at flat `start` (0, or where a tally's run begins). */
static void begin(magnitudes *m, const void *x, int x_dtype, const void *b, int b_dtype, int64_t n,
                  int64_t start) {
    m->x = x, m->b = b, m->x_dtype = x_dtype, m->b_dtype = b_dtype;
    m->n = n, m->start = start, m->len = 0;
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
    begin(m, x, x_dtype, b, b_dtype, n, 0);
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

/* above[i] += entries of bits above patterns[i], equal[i] += those equal to it (i < k ≤ 2: one
 * loop serves two thresholds). */
MULTIVERSION
static void count_against(const uint32_t *restrict bits, int64_t len, const uint32_t *patterns, int k,
                          int64_t *above, int64_t *equal) {
    uint32_t p0 = patterns[0], p1 = patterns[k - 1];
    int64_t a0 = 0, e0 = 0, a1 = 0, e1 = 0;
    if (k == 1) {
        for (int64_t j = 0; j < len; j++) a0 += bits[j] > p0, e0 += bits[j] == p0;
    } else {
        for (int64_t j = 0; j < len; j++) {
            a0 += bits[j] > p0, e0 += bits[j] == p0;
            a1 += bits[j] > p1, e1 += bits[j] == p1;
        }
        above[1] += a1, equal[1] += e1;
    }
    above[0] += a0, equal[0] += e0;
}

/* at[0 … count) = the positions of the non-zero bytes of flags[0, len), ascending; returns count.
 * For flags that are mostly 0: memchr skips the zeros a vector at a time. */
static int64_t set_positions(const uint8_t *flags, int64_t len, uint32_t *at) {
    int64_t count = 0;
    for (const uint8_t *p = memchr(flags, 1, (size_t)len); p; p = memchr(p + 1, 1, (size_t)(flags + len - p - 1)))
        at[count++] = (uint32_t)(p - flags);
    return count;
}

/* Adds the chunk [start, start + len) of bits to the bracket; flags, inside: scratch for len. */
MULTIVERSION
static void collect(const uint32_t *restrict bits, int64_t len, int64_t start, mh_bracket *br,
                    uint8_t *restrict flags, uint32_t *restrict inside) {
    uint32_t lo = br->lo, span = br->hi - br->lo, hi = br->hi;
    int64_t above = 0;
    for (int64_t j = 0; j < len; j++) {
        flags[j] = bits[j] - lo <= span; /* below lo wraps around to above span */
        above += bits[j] > hi;
    }
    br->above += above;
    int64_t count = set_positions(flags, len, inside);
    for (int64_t i = 0; i < count && br->found + i < br->cap; i++)
        br->keys[br->found + i] = bits[inside[i]], br->positions[br->found + i] = (uint32_t)start + inside[i];
    br->found += count;
}

/* For each of the k ≤ 2 float32 bit patterns: counts[2i] = #entries with |x − b| above it,
 * counts[2i + 1] = #equal to it; one vectorised pass that confirms thresholds guessed from a
 * sample. tallies (k rows of ceil(n / TALLY)): the equal ones in each run of TALLY entries, so
 * that mh_magnitude_position can start next to the tie it looks for. brackets (k, each with cap 0
 * for none): for a guess that may well be refuted, the entries in a range around it, among which
 * the exact threshold is then found without another pass. 0, or -1 when out of memory (or k out
 * of range). */
int mh_magnitude_count(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n,
                       const uint32_t *patterns, int k, int64_t *counts, uint32_t *tallies, mh_bracket *brackets) {
    if (k < 1 || k > 2) return -1;
    magnitudes *m = malloc(sizeof *m);
    uint8_t *flags = malloc(CHUNK);
    uint32_t *inside = malloc(CHUNK * sizeof *inside);
    if (!m || !flags || !inside) {
        free(m), free(flags), free(inside);
        return -1;
    }
    int64_t above[2] = {0, 0}, equal[2] = {0, 0}, runs = (n + TALLY - 1) / TALLY;
    begin(m, x, x_dtype, b, b_dtype, n, 0);
    while (next(m)) {
        int64_t before[2] = {equal[0], equal[1]};
        count_against(m->bits, m->len, patterns, k, above, equal);
        for (int i = 0; i < k; i++) {
            tallies[i * runs + m->start / TALLY] += (uint32_t)(equal[i] - before[i]);
            if (brackets[i].cap) collect(m->bits, m->len, m->start, &brackets[i], flags, inside);
        }
    }
    for (int i = 0; i < k; i++) counts[2 * i] = above[i], counts[2 * i + 1] = equal[i];
    free(m), free(flags), free(inside);
    return 0;
}

/* The flat position of the entry numbered `rank` (from 0, in flat order) among the entries from
 * flat `start` on (a multiple of CHUNK) whose |x − b| has float32 bit pattern `pattern`; n when
 * there are not that many; -1 when out of memory. The third pass: where the ties that are kept
 * end (with mh_magnitude_count's tallies, a pass over at most TALLY entries). */
int64_t mh_magnitude_position(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n,
                              uint32_t pattern, int64_t rank, int64_t start) {
    magnitudes *m = malloc(sizeof *m);
    if (!m) return -1;
    int64_t seen = 0, found = n;
    begin(m, x, x_dtype, b, b_dtype, n, start);
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

/* The stream's 32-bit hash of flat index i under key (key0, key1) (random_stream.hash32). */
static inline uint32_t hash32(uint64_t i, uint32_t key0, uint32_t key1) {
    return mix32(mix32((uint32_t)i ^ key0) + ((uint32_t)(i >> 32) ^ key1));
}

/* u[j]: the 24-bit draw of flat entry start + j under key (key0, key1). */
MULTIVERSION
static void draws(int64_t start, int64_t len, uint32_t key0, uint32_t key1, uint32_t *restrict u) {
    for (int64_t j = 0; j < len; j++) u[j] = hash32((uint64_t)(start + j), key0, key1) >> 8;
}

/* ---- one expert's pruning --------------------------------------------------------------- */

#define ALL_DRAWS ((uint32_t)MH_ALL_DRAWS)

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
        /* NaN orders above every |δ| (as sorting puts it last): kept by a keep level, dropped by
         * a finite drop level */
        int dropped = (a > drop_level) | ((a != a) & (drop_level < INFINITY));
        int keep = !(a <= keep_level) & !dropped & (u[j] < threshold);
        kept[j] = keep ? x : 0.0f;
    }
}

/* kept[j] = δ[j] where bit first + j of `bits` (little-endian within a byte) is set, else +0.0:
 * 16 entries a time from the (at most three) bytes that hold their bits, as a 16-lane select.
 * delta may be kept itself (each vector is read before its own positions are written). */
MULTIVERSION
static void masked_copy(const uint8_t *bits, int64_t first, int64_t len, const float *delta, float *kept) {
    const i32x16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
        int64_t at = first + j, shift = at & 7;
        const uint8_t *byte = bits + (at >> 3);
        uint32_t word = byte[0] | (uint32_t)byte[1] << 8 | (shift ? (uint32_t)byte[2] << 16 : 0u);
        i32x16 on = (((i32x16){0} + (int32_t)(word >> shift)) >> lane & 1) != 0; /* −1 where set */
        f32x16 d;
        memcpy(&d, delta + j, sizeof d);
        d = (f32x16)((i32x16)d & on);
        memcpy(kept + j, &d, sizeof d);
    }
    for (; j < len; j++) kept[j] = (bits[(first + j) >> 3] >> ((first + j) & 7)) & 1u ? delta[j] : 0.0f;
}

/* Whether m's levels keep every entry (|δ| > −∞ and ≤ +∞ hold for every |δ|, NaN included). */
static int keeps_all_levels(const mh_model *m) {
    return m->keep_before == -INFINITY && m->keep_after == -INFINITY && m->drop_before == INFINITY &&
           m->drop_after == INFINITY;
}

/* kept[0..len): expert m's pruned δ over flat [start, start + len), given the base's chunk.
 * Returns the draw threshold it applied to u (1, with u all 0, when m draws nothing). */
static uint32_t pruned_chunk(const mh_model *m, const float *base, int64_t start, int64_t len,
                             float *delta, uint32_t *u, float *kept) {
    widen(m->x, m->dtype, start, len, delta);
    subtract(delta, base, len);
    if (m->mask && m->threshold >= ALL_DRAWS && keeps_all_levels(m)) { /* the mask alone decides */
        masked_copy(m->mask, start, len, delta, kept);
        return 1;
    }
    uint32_t threshold = 1;
    if (m->threshold < ALL_DRAWS) {
        draws(m->offset + start, len, m->key0, m->key1, u);
        threshold = m->threshold;
    } else {
        memset(u, 0, (size_t)len * sizeof *u);
    }
    prune(m, delta, u, threshold, start, len, kept);
    if (m->mask) masked_copy(m->mask, start, len, kept, kept);
    return threshold;
}

/* slots[j]: |δ|'s float32 exponent (0-255) from its bit pattern key[j] (magnitude_bits), plus
 * 256 where the entry was dropped (keep[j] 0 and δ not 0); mantissas[j]: its mantissa m, the
 * hidden bit included for e > 0, so |δ| = m·2^(max(e, 1) − 150). */
MULTIVERSION
static void exponent_slots(const uint32_t *restrict key, const uint8_t *restrict keep, int64_t len,
                           uint32_t *restrict slots, uint32_t *restrict mantissas) {
    for (int64_t j = 0; j < len; j++) {
        uint32_t e = key[j] >> 23;
        slots[j] = e + (!keep[j] && key[j] ? 256u : 0u);
        mantissas[j] = (key[j] & 0x7fffffu) | (e ? 0x800000u : 0u);
    }
}

#define SLOTS MH_SLOTS /* 256 exponents of kept entries, then 256 of dropped ones */
#define SLOT_TABLES 4 /* interleaved tables: runs of one exponent do not queue on one counter */

/* tables[t·SLOTS + slot] += mantissa, entry j into table j mod 4 (slots from exponent_slots). */
static void add_slots(const uint32_t *slots, const uint32_t *mantissas, int64_t len, int64_t *tables) {
    int64_t j = 0;
    for (; j + SLOT_TABLES <= len; j += SLOT_TABLES)
        for (int t = 0; t < SLOT_TABLES; t++) tables[t * SLOTS + slots[j + t]] += mantissas[j + t];
    for (; j < len; j++) tables[slots[j]] += mantissas[j];
}

/* sums[slot] += the tables' totals. */
static void fold_slots(const int64_t *tables, int64_t *sums) {
    for (int k = 0; k < SLOTS; k++)
        for (int t = 0; t < SLOT_TABLES; t++) sums[k] += tables[t * SLOTS + k];
}

/* ---- DELLA's ranked random drop ----------------------------------------------------------- */

#define DIGIT_BITS 10
#define BUCKETS ((1 << DIGIT_BITS) + 1) /* bucket 0 holds the zeros */

/* One row's bucket geometry: entries are bucketed by a 10-bit digit of |δ|'s bit pattern (the
 * top 10 of the bits in which the row's non-zero keys differ; bits above are the same in all of
 * them), zeros in bucket 0. The digit is monotone in the key, so an entry's rank in the row
 * lies between its bucket's first and last position. */
typedef struct {
    int shift, lowest, highest;
    uint32_t digit_mask, smallest, largest; /* the row's non-zero keys' range (largest 0: none) */
    uint32_t count[BUCKETS];     /* rows are shorter than 2^32 */
    uint32_t odd_count[BUCKETS]; /* entries at odd j: two counters a bucket, so runs of one digit do not queue */
    /* the draws that decide at once, per bucket: u24 >> COARSE below the low 16 bits keeps (u
     * is below the probability at the bucket's first rank), at or above the high 16 bits drops */
    uint32_t bounds[BUCKETS];
} row_buckets;

#define COARSE 9 /* u24 >> 9 and the bounds (≤ 2^15 + 1) fit 16 bits: one table load an entry */

/* ⌈p·2^24⌉ clamped to [0, 2^24]: u24 below it ⇔ u24·2^-24 < p (both sides exact in float32). */
static uint32_t draw_threshold(float p) {
    float scaled = p * 0x1p24f;
    if (!(scaled > 0.0f)) return 0;
    if (scaled >= 0x1p24f) return 1u << 24;
    uint32_t t = (uint32_t)scaled; /* < 2^24: (float)t is exact */
    return t + ((float)t < scaled);
}

/* A bucket's bounds from the draw thresholds at its first and last rank: the coarse draws
 * surely below the first and those surely at or above the last, each with a margin of at least
 * one draw, so that the bounds stay on the safe side even were a threshold one off. The draws
 * between (~4·2^-15 more than exact bounds would leave) are compared with their exact rank's
 * probability, as the torch path does. */
static uint32_t bucket_bounds(uint32_t at_first, uint32_t at_last) {
    uint32_t keep = at_first ? (at_first - 1) >> COARSE : 0, drop = (at_last >> COARSE) + 1;
    return keep | drop << 16;
}

MULTIVERSION
static void key_range(const uint32_t *restrict key, int64_t w, uint32_t *any, uint32_t *all,
                      uint32_t *smallest, uint32_t *largest) {
    uint32_t a = 0, l = 0xffffffffu, lo = 0xffffffffu, hi = 0; /* over non-zero keys */
    for (int64_t j = 0; j < w; j++) {
        uint32_t k = key[j], or_none = k | (0u - (uint32_t)(k == 0)); /* 0 → all ones, branch-free */
        a |= k;
        l &= or_none;
        lo = or_none < lo ? or_none : lo;
        hi = k > hi ? k : hi;
    }
    *any = a, *all = l, *smallest = lo, *largest = hi;
}

MULTIVERSION
static void digits_of(const uint32_t *restrict key, int64_t w, int shift, uint32_t digit_mask,
                      uint16_t *restrict digit) {
    for (int64_t j = 0; j < w; j++)
        digit[j] = key[j] ? (uint16_t)(1u + ((key[j] >> shift) & digit_mask)) : (uint16_t)0;
}

/* Fills rb for a row of keys; its bounds from limit (draw_threshold of the probability at each
 * rank) at each bucket's first and last rank. */
static void bucket_row(const uint32_t *key, int64_t w, const uint32_t *limit, uint16_t *digit, row_buckets *rb) {
    uint32_t any, all, smallest, largest;
    key_range(key, w, &any, &all, &smallest, &largest);
    rb->smallest = smallest, rb->largest = largest;
    uint32_t varying = any & ~all;
    int top = varying ? 31 - __builtin_clz(varying) : 0;
    rb->shift = top + 1 > DIGIT_BITS ? top + 1 - DIGIT_BITS : 0;
    rb->digit_mask = (1u << (top + 1 - rb->shift)) - 1u;
    rb->lowest = largest ? (int)(1u + ((smallest >> rb->shift) & rb->digit_mask)) : 1;
    rb->highest = largest ? (int)(1u + ((largest >> rb->shift) & rb->digit_mask)) : 0;
    digits_of(key, w, rb->shift, rb->digit_mask, digit);
    rb->count[0] = rb->odd_count[0] = 0;
    for (int d = rb->lowest; d <= rb->highest; d++) rb->count[d] = rb->odd_count[d] = 0;
    int64_t j = 0;
    for (; j + 1 < w; j += 2) rb->count[digit[j]]++, rb->odd_count[digit[j + 1]]++;
    if (j < w) rb->count[digit[j]]++;
    /* bucket 0, then lowest … highest; branch-free (whether a bucket is empty is as good as
     * random): an empty bucket gets bounds too, which no entry reads */
    int64_t before = 0;
    for (int d = 0; d <= rb->highest; d = d ? d + 1 : rb->lowest) {
        int64_t c = (int64_t)rb->count[d] + rb->odd_count[d];
        int64_t first = before < w ? before : w - 1, last = before + c - (c > 0);
        rb->bounds[d] = bucket_bounds(limit[first], limit[last < w ? last : w - 1]);
        before += c;
        if (!d && rb->lowest > rb->highest) break;
    }
}

/* *below += the entries of key[start, end) below k, *equal += those equal to k. */
static inline void count_below_equal(const uint32_t *restrict key, int64_t start, int64_t end, uint32_t k,
                                     int64_t *below, int64_t *equal) {
    uint32_t lt = 0, eq = 0; /* 32-bit counts (rows are shorter than 2^32) vectorise twice as wide */
    for (int64_t i = start; i < end; i++) lt += key[i] < k, eq += key[i] == k;
    *below += lt, *equal += eq;
}

typedef struct {
    uint32_t key;
    uint32_t at;
} keyed_entry;

/* qsort's order: by key, then by position. */
static int keyed_compare(const void *a, const void *b) {
    const keyed_entry *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->at < y->at ? -1 : x->at > y->at;
}

#define MAX_GROUPS 64 /* distinct keys rank_batched finds by scanning; past that rank_entries sorts */

/* order[0 … n) = the entries (key[at[i]], i), by key and then by i. */
static void sort_by_key(const uint32_t *key, const uint32_t *at, int64_t n, keyed_entry *order) {
    for (int64_t i = 0; i < n; i++) order[i] = (keyed_entry){key[at[i]], (uint32_t)i};
    qsort(order, (size_t)n, sizeof *order, keyed_compare);
}

/* The sum of v's 16 lanes, by halving (three vector adds, then four lanes), not lane by lane. */
static inline uint32_t lane_sum(const u32x16 *v) { /* by address: no 64-byte vector argument ABI */
    typedef uint32_t u32x8 __attribute__((vector_size(32)));
    typedef uint32_t u32x4 __attribute__((vector_size(16)));
    u32x8 a, b;
    memcpy(&a, v, sizeof a), memcpy(&b, (const char *)v + sizeof a, sizeof b);
    a += b;
    u32x4 c, d;
    memcpy(&c, &a, sizeof c), memcpy(&d, (const char *)&a + sizeof c, sizeof d);
    c += d;
    return c[0] + c[1] + c[2] + c[3];
}

/* One pass over a row for B distinct keys k[0 … B) at once (B a constant where inlined: the
 * sums stay in registers), in segments that end at the positions of entries with those keys:
 * rank[i] ← the keys equal to its own before it, for each entry i (at ascending) with
 * group[i] − g0 in [0, B); below[b] ← the row's keys smaller than k[b]. A segment's last, partial
 * vector is read whole and its lanes past the segment masked off: key[] must be readable 15
 * entries past w. */
static inline __attribute__((always_inline)) void count_batch(const uint32_t *key, int64_t w, const uint32_t *at,
                                                              int64_t n, const int *group, int g0, const uint32_t *k,
                                                              const int B, int64_t *rank, int64_t *below) {
    const i32x16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    u32x16 kv[B], lt[B], eq[B];
    for (int b = 0; b < B; b++) kv[b] = (u32x16){0} + k[b], lt[b] = eq[b] = (u32x16){0};
    int64_t pos = 0;
    for (int64_t i = 0; i <= n; i++) {
        int b = i < n ? group[i] - g0 : 0;
        if (i < n && (b < 0 || b >= B)) continue;
        int64_t end = i < n ? at[i] : w;
        for (; pos + 16 <= end; pos += 16) {
            u32x16 v;
            memcpy(&v, key + pos, sizeof v);
            for (int c = 0; c < B; c++) lt[c] -= (u32x16)(v < kv[c]), eq[c] -= (u32x16)(v == kv[c]);
        }
        if (pos < end) {
            u32x16 v, valid = (u32x16)(lane < (int32_t)(end - pos));
            memcpy(&v, key + pos, sizeof v);
            for (int c = 0; c < B; c++)
                lt[c] -= (u32x16)(v < kv[c]) & valid, eq[c] -= (u32x16)(v == kv[c]) & valid;
            pos = end;
        }
        if (i < n) rank[i] = lane_sum(&eq[b]);
    }
    for (int c = 0; c < B; c++) below[c] = lane_sum(&lt[c]);
}

/* rank[i] as rank_entries below, for rows whose unsure entries hold at most MAX_GROUPS distinct
 * keys (the usual case: they are mostly ties of quantised deltas, ~41 entries holding ~9 keys a
 * row on the benchmark): the distinct keys, found by scanning the few seen so far, are counted
 * eight (then four, two, one) at a time in one pass over the row, instead of a pass a key.
 * Returns 0, or -1 (ranks not written) past MAX_GROUPS keys. group: scratch for n. */
MULTIVERSION
static int rank_batched(const uint32_t *key, int64_t w, const uint32_t *at, int64_t n, int *group,
                        int64_t *rank) {
    uint32_t distinct[MAX_GROUPS];
    int groups = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t k = key[at[i]];
        int g = 0;
        while (g < groups && distinct[g] != k) g++;
        if (g == groups) {
            if (groups == MAX_GROUPS) return -1;
            distinct[groups++] = k;
        }
        group[i] = g;
    }
    int64_t below[8];
    for (int g0 = 0; g0 < groups;) {
        int left = groups - g0, B = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
        if (B == 8) count_batch(key, w, at, n, group, g0, distinct + g0, 8, rank, below);
        else if (B == 4) count_batch(key, w, at, n, group, g0, distinct + g0, 4, rank, below);
        else if (B == 2) count_batch(key, w, at, n, group, g0, distinct + g0, 2, rank, below);
        else count_batch(key, w, at, n, group, g0, distinct + g0, 1, rank, below);
        for (int64_t i = 0; i < n; i++)
            if (group[i] >= g0 && group[i] < g0 + B) rank[i] += below[group[i] - g0];
        g0 += B;
    }
    return 0;
}

/* rank[i] = the exact rank in its row (stable ascending: the keys smaller than its own, plus the
 * equal ones before it) of entry at[i], for n entries of the row (at ascending), for rows whose
 * unsure entries hold more than MAX_GROUPS distinct keys (rank_batched takes the others). The
 * entries are ranked a key at a time, in one pass over the row per key: its smaller keys, and
 * running counts of its equal ones between consecutive entries with that key. order: scratch
 * for n entries. */
MULTIVERSION
static void rank_entries(const uint32_t *key, int64_t w, const uint32_t *at, int64_t n,
                         keyed_entry *order, int64_t *rank) {
    sort_by_key(key, at, n, order);
    for (int64_t g = 0; g < n;) {
        uint32_t k = order[g].key;
        int64_t below = 0, equal = 0, scanned = 0, first = g;
        for (; g < n && order[g].key == k; g++) {
            int64_t j = at[order[g].at];
            count_below_equal(key, scanned, j, k, &below, &equal);
            scanned = j;
            rank[order[g].at] = equal; /* the row's smaller keys are added once all are counted */
        }
        int64_t ignored = 0;
        count_below_equal(key, scanned, w, k, &below, &ignored);
        for (int64_t i = first; i < g; i++) rank[order[i].at] += below;
    }
}

/* keep[j] = u[j] surely below the probability at its bucket's first rank; unsure[j] = u[j] not
 * surely at or above the one at its last rank either (the entry's exact rank decides). One
 * table load an entry (GCC builds each as scalar loads and inserts: gathers are slow). */
MULTIVERSION
static void bucket_decisions(const uint32_t *restrict u, const uint16_t *restrict digit, int64_t w,
                             const uint32_t *restrict bounds, uint8_t *restrict keep, uint8_t *restrict unsure) {
    for (int64_t j = 0; j < w; j++) {
        uint32_t b = bounds[digit[j]], coarse = u[j] >> COARSE;
        int sure_keep = coarse < (b & 0xffffu), may_keep = coarse < (b >> 16);
        keep[j] = (uint8_t)sure_keep;
        unsure[j] = (uint8_t)(may_keep & !sure_keep);
    }
}

/* A row's (or a chunk's: mh_prune_sums) exact L1 sums in one pass, without a table update per
 * entry: every |δ| of the row is m·2^(E − 150) (E = max(e, 1), exponent_slots' m) with E in
 * [lo, hi], so m·2^(E − lo) summed as integers is exact while w·2^(24 + hi − lo) fits in 64
 * bits (row_sums_fit). The totals go into two slots: total = q·2^(hi − lo) + r is r at
 * exponent lo plus q at hi, the same value the per-exponent slots would describe (exact_sum.py
 * adds slots as one integer). */
static int row_sums_fit(int64_t w, uint32_t lo, uint32_t hi) {
    return hi < 255 && (int)(hi - lo) + 24 + (64 - __builtin_clzll((uint64_t)w)) <= 64;
}

MULTIVERSION
static void row_sums(const uint32_t *restrict key, const uint8_t *restrict keep, int64_t w, uint32_t lo,
                     uint64_t *all, uint64_t *kept) {
    uint64_t a = 0, k = 0;
    for (int64_t j = 0; j < w; j++) {
        uint32_t e = key[j] >> 23;
        uint64_t v = (uint64_t)((key[j] & 0x7fffffu) | (e ? 0x800000u : 0u)) << (e > lo ? e - lo : 0);
        a += v;
        k += keep[j] ? v : 0;
    }
    *all = a, *kept = k;
}

/* keep[j] = 1 where kept[j] is not 0 (a pruned chunk's survivors, for row_sums). */
MULTIVERSION
static void kept_flags(const float *restrict kept, int64_t len, uint8_t *restrict keep) {
    for (int64_t j = 0; j < len; j++) keep[j] = kept[j] != 0.0f;
}

static void add_row_total(uint64_t total, uint32_t lo, uint32_t hi, int64_t *slots) {
    slots[lo] += (int64_t)(total & ((UINT64_C(1) << (hi - lo)) - 1u));
    slots[hi] += (int64_t)(total >> (hi - lo));
}

/* tables (add_slots' layout) += the exact L1 sums of the |δ| whose bit patterns are key[0 … len),
 * kept where keep[j] is 1 and dropped elsewhere; smallest, largest: the range of the non-zero
 * keys (largest 0: none). As one integer in two slots when the exponents allow (row_sums), else
 * a slot an entry. slots, mantissas: scratch for len, apart from key. */
static void add_exact_sums(const uint32_t *key, const uint8_t *keep, int64_t len, uint32_t smallest,
                           uint32_t largest, uint32_t *slots, uint32_t *mantissas, int64_t *tables) {
    if (!largest) return; /* all zero: nothing to add */
    uint32_t lo = smallest >> 23 ? smallest >> 23 : 1, hi = largest >> 23 ? largest >> 23 : 1;
    if (row_sums_fit(len, lo, hi)) {
        uint64_t all, kept;
        row_sums(key, keep, len, lo, &all, &kept);
        add_row_total(kept, lo, hi, tables);
        add_row_total(all - kept, lo, hi, tables + 256);
    } else {
        exponent_slots(key, keep, len, slots, mantissas);
        add_slots(slots, mantissas, len, tables);
    }
}

/* Bits first, first + 1, … of `bits` |= bytes[0], bytes[1], … (0 or 1; little-endian bits);
 * whole bytes of the mask are assembled eight entries at a time. */
static void pack_bits(const uint8_t *bytes, int64_t first, int64_t len, uint8_t *bits) {
    int64_t j = 0;
    for (; j < len && ((first + j) & 7); j++) bits[(first + j) >> 3] |= (uint8_t)(bytes[j] << ((first + j) & 7));
    for (; j + 8 <= len; j += 8) {
        /* the eight 0/1 bytes as one little-endian word: byte i (bit 8i) times 2^(56 − 7i) lands
         * on bit 56 + i; all 64 partial products fall on distinct bits, so nothing carries */
        uint64_t word;
        memcpy(&word, bytes + j, sizeof word);
        bits[(first + j) >> 3] = (uint8_t)((word * UINT64_C(0x0102040810204080)) >> 56);
    }
    for (; j < len; j++) bits[(first + j) >> 3] |= (uint8_t)(bytes[j] << ((first + j) & 7));
}

/* Bit j of mask (little-endian within a byte) = 1 where DELLA keeps entry j, for rows [r0, r1)
 * of a rows × width tensor (r0·width a multiple of 8; entries indexed like x): u < probs[rank
 * of |δ| in its row (stable ascending)], u = u24·2^-24 the entry's draw (flat index offset + j).
 * probs[r] = density − ε + 2ε·r/(width − 1), computed by the caller with the torch path's own
 * float32 ops, is non-decreasing in r, so u below the probability at the first rank of the
 * entry's bucket keeps it and u at or above the one at the last rank drops it: only the few
 * entries in between (about 1%) need their exact rank (rank_entries). No row is sorted.
 * sums (SLOTS, or NULL): the exact L1 slots of mh_prune_sums for these rows, added to. Returns 0,
 * or -1 when out of memory. */
int mh_della_mask(const void *x, int x_dtype, const void *b, int b_dtype, int64_t width, int64_t r0,
                  int64_t r1, int64_t offset, uint32_t key0, uint32_t key1, const float *probs,
                  uint8_t *mask, int64_t *sums) {
    uint32_t *ints = malloc((5 * (size_t)width + 16) * sizeof *ints); /* + 16: see count_batch */
    uint16_t *digit = malloc((size_t)width * sizeof *digit);
    uint8_t *unsure = malloc((size_t)width), *row_mask = malloc((size_t)width);
    row_buckets *rb = malloc(sizeof *rb);
    int64_t *tables = calloc(SLOT_TABLES * SLOTS, sizeof *tables), *ranks = malloc((size_t)width * sizeof *ranks);
    uint32_t *positions = malloc((size_t)width * sizeof *positions);
    keyed_entry *order = malloc((size_t)width * sizeof *order);
    if (!ints || !digit || !unsure || !row_mask || !rb || !tables || !ranks || !positions || !order) {
        free(ints), free(digit), free(unsure), free(row_mask), free(rb), free(tables);
        free(ranks), free(positions), free(order);
        return -1;
    }
    uint32_t *bits = ints, *u = ints + width, *slots = ints + 2 * width, *mantissas = ints + 3 * width;
    uint32_t *limit = ints + 4 * width; /* the draws below which rank r keeps an entry (bucket_bounds') */
    for (int64_t r = 0; r < width; r++) limit[r] = draw_threshold(probs[r]);
    /* this call's bits start on a byte boundary (r0·width is a multiple of 8) and so do the next
     * call's: it owns its bytes, the last one partly used only at the very end of the mask */
    int64_t first_byte = r0 * width / 8, end_bit = r1 * width;
    memset(mask + first_byte, 0, (size_t)(end_bit / 8 - first_byte));
    if (end_bit & 7) mask[end_bit / 8] &= (uint8_t)~((1u << (end_bit & 7)) - 1u);
    for (int64_t r = r0; r < r1; r++) {
        int64_t start = r * width;
        magnitude_keys(x, x_dtype, b, b_dtype, start, width, bits);
        bucket_row(bits, width, limit, digit, rb);
        draws(offset + start, width, key0, key1, u);
        bucket_decisions(u, digit, width, rb->bounds, row_mask, unsure);
        int64_t n = set_positions(unsure, width, positions);
        if (rank_batched(bits, width, positions, n, (int *)order, ranks) < 0)
            rank_entries(bits, width, positions, n, order, ranks);
        for (int64_t i = 0; i < n; i++)
            row_mask[positions[i]] = (float)u[positions[i]] * 0x1p-24f < probs[ranks[i]];
        pack_bits(row_mask, start, width, mask);
        if (sums) add_exact_sums(bits, row_mask, width, rb->smallest, rb->largest, slots, mantissas, tables);
    }
    if (sums) fold_slots(tables, sums);
    free(ints), free(digit), free(unsure), free(row_mask), free(rb), free(tables);
    free(ranks), free(positions), free(order);
    return 0;
}

/* Bits first, first + 1, … of `bits` (first a multiple of 8; bytes zeroed beforehand) ← 1 where
 * u[j] < threshold: 16 entries a time, their bits summed into one little-endian 16-bit word. */
MULTIVERSION
static void pack_below(const uint32_t *restrict u, int64_t first, int64_t len, uint32_t threshold,
                       uint8_t *restrict bits) {
    const u32x16 bit = {1u << 0, 1u << 1, 1u << 2, 1u << 3, 1u << 4, 1u << 5, 1u << 6, 1u << 7,
                        1u << 8, 1u << 9, 1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15};
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
        u32x16 v;
        memcpy(&v, u + j, sizeof v);
        u32x16 set = (u32x16)(v < threshold) & bit;
        uint32_t word = lane_sum(&set); /* distinct bits: the sum is their union */
        bits[(first + j) >> 3] = (uint8_t)word, bits[((first + j) >> 3) + 1] = (uint8_t)(word >> 8);
    }
    for (; j < len; j++) bits[(first + j) >> 3] |= (uint8_t)((u[j] < threshold) << ((first + j) & 7));
}

/* The exact L1 norms behind the rescale, as integers: sums[e] += mantissa of every kept |δ|
 * with float32 exponent e, sums[256 + e] the same for dropped ones (|δ| = mantissa·2^(max(e,1)
 * − 150)); int64 holds 2^39 entries per slot. operators/exact_sum.py turns them into floats.
 * drawn (or NULL; first a multiple of 8): bit j (as mh_della_mask's) ← whether entry j's draw
 * keeps it, so that the combine can take these bits instead of drawing again (the draws were a
 * fifth of dare_ties' CPU samples, half of them in the second pass). Returns 0, or -1 when out
 * of memory. */
int mh_prune_sums(const void *b, int b_dtype, int64_t first, int64_t end, const mh_model *m,
                  int64_t *sums, uint8_t *drawn) {
    float *buf = malloc(4 * CHUNK * sizeof *buf);
    uint32_t *ints = malloc(3 * CHUNK * sizeof *ints);
    int64_t *tables = calloc(SLOT_TABLES * SLOTS, sizeof *tables);
    if (!buf || !ints || !tables) {
        free(buf), free(ints), free(tables);
        return -1;
    }
    float *base = buf, *delta = buf + CHUNK, *kept = buf + 2 * CHUNK;
    uint32_t *u = ints, *slots = ints + CHUNK, *mantissas = ints + 2 * CHUNK;
    uint8_t keep[CHUNK];
    if (drawn) /* pack_below ors the bits of a partial last word into zeroed bytes */
        memset(drawn + first / 8, 0, (size_t)((end + 7) / 8 - first / 8));
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        widen(b, b_dtype, start, len, base);
        uint32_t threshold = pruned_chunk(m, base, start, len, delta, u, kept);
        if (drawn) pack_below(u, start, len, threshold, drawn);
        uint32_t *key = u, any, all, smallest, largest; /* the draws are used up: u holds |δ|'s keys */
        magnitude_bits(delta, len, key);
        key_range(key, len, &any, &all, &smallest, &largest);
        kept_flags(kept, len, keep);
        add_exact_sums(key, keep, len, smallest, largest, slots, mantissas, tables);
    }
    fold_slots(tables, sums);
    free(buf), free(ints), free(tables);
    return 0;
}

/* ---- combining the experts -------------------------------------------------------------- */

#define GROUP 8 /* models whose deltas consensus_add sums in registers, in one pass */

/* For the n ≤ GROUP models of a group: d = (kept[m]·factor[m])·w[m], added to the consensus sums
 * in model order: the same float additions in the same order as one model at a time, but the
 * five sums are loaded and stored once per group, not once per model (a model at a time they
 * were a fifth of TIES's CPU samples: five loads and five stores of the sums per model). */
MULTIVERSION
static void consensus_add(const float *const *kept, const float *factor, const float *w, int n,
                          int64_t len, float *restrict total, float *restrict positive,
                          float *restrict negative, float *restrict w_positive,
                          float *restrict w_negative) {
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
        f32x16 t, p, q, wp, wq; /* q, wq: the negative side */
        memcpy(&t, total + j, sizeof t), memcpy(&p, positive + j, sizeof p);
        memcpy(&q, negative + j, sizeof q), memcpy(&wp, w_positive + j, sizeof wp);
        memcpy(&wq, w_negative + j, sizeof wq);
        for (int m = 0; m < n; m++) {
            f32x16 d, weight = {0};
            memcpy(&d, kept[m] + j, sizeof d);
            d = (d * factor[m]) * w[m];
            weight += w[m];
            /* −1 where true: x & up is x there, +0.0 elsewhere. A NaN counts on both sides, as
             * the torch statement's clamp(d, min=0) and clamp(d, max=0) keep it: it propagates. */
            i32x16 up = ~(d <= 0), down = ~(d >= 0);
            t += d;
            p += (f32x16)((i32x16)d & up), q += (f32x16)((i32x16)d & down);
            wp += (f32x16)((i32x16)weight & up), wq += (f32x16)((i32x16)weight & down);
        }
        memcpy(total + j, &t, sizeof t), memcpy(positive + j, &p, sizeof p);
        memcpy(negative + j, &q, sizeof q), memcpy(w_positive + j, &wp, sizeof wp);
        memcpy(w_negative + j, &wq, sizeof wq);
    }
    for (; j < len; j++)
        for (int m = 0; m < n; m++) {
            float d = (kept[m][j] * factor[m]) * w[m];
            int up = !(d <= 0), down = !(d >= 0);
            total[j] += d;
            positive[j] += up ? d : 0.0f;
            negative[j] += down ? d : 0.0f;
            w_positive[j] += up ? w[m] : 0.0f;
            w_negative[j] += down ? w[m] : 0.0f;
        }
}

/* d = (kept·factor)·w, added to the plain sum. */
MULTIVERSION
static void sum_add(const float *restrict kept, int64_t len, float factor, float w, float *restrict total) {
    for (int64_t j = 0; j < len; j++) total[j] += (kept[j] * factor) * w;
}

/* Consensus: out = b + λ·mixed[/divisor], mixed summing the deltas that agree with the elected
 * sign (+ where Σd ≥ 0), divisor their weights (1 where 0; only when `normalize`).
 * Plain sum: out = b + λ·total[/sum_divisor] (Σ w, worked out by the caller). */
MULTIVERSION
static void finish(const float *restrict b, int64_t len, int consensus, const float *restrict total,
                   const float *restrict positive, const float *restrict negative,
                   const float *restrict w_positive, const float *restrict w_negative,
                   int normalize, float sum_divisor, int scale, float lambda, float *restrict out) {
    if (!consensus && normalize) {
        for (int64_t j = 0; j < len; j++) out[j] = total[j] / sum_divisor;
    } else if (!consensus) {
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
 * the sign consensus (`consensus`) or a plain sum (divided by `sum_divisor` when `normalize`),
 * scaled by λ and added to the base. Base, experts and out are indexed alike. */
void mh_family_combine(const void *b, int b_dtype, int64_t first, int64_t end, int models,
                       const mh_model *ms, int consensus, int normalize, float sum_divisor, float lambda,
                       void *out, int out_dtype) {
    float base[CHUNK], delta[CHUNK], kept[GROUP][CHUNK], total[CHUNK], positive[CHUNK], negative[CHUNK];
    float w_positive[CHUNK], w_negative[CHUNK], merged[CHUNK], factor[GROUP], weight[GROUP];
    const float *group[GROUP];
    uint32_t u[CHUNK];
    for (int g = 0; g < GROUP; g++) group[g] = kept[g];
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
        for (int m0 = 0; m0 < models; m0 += GROUP) {
            int n = models - m0 < GROUP ? models - m0 : GROUP;
            for (int g = 0; g < n; g++) {
                const mh_model *m = &ms[m0 + g];
                pruned_chunk(m, base, start, len, delta, u, kept[g]);
                factor[g] = m->factor, weight[g] = m->weight;
                if (!consensus) sum_add(kept[g], len, m->factor, m->weight, total);
            }
            if (consensus)
                consensus_add(group, factor, weight, n, len, total, positive, negative, w_positive,
                              w_negative);
        }
        finish(base, len, consensus, total, positive, negative, w_positive, w_negative, normalize,
               sum_divisor, lambda != 1.0f, lambda, merged);
        narrow(merged, len, out, out_dtype, start);
    }
}

/* ---- RAM helpers ---- */

MULTIVERSION
static void ram_active(const float *restrict delta, int64_t len, float eps, uint8_t *restrict active,
                       uint8_t *restrict counts) {
    for (int64_t j = 0; j < len; j++) {
        float a = delta[j] < 0 ? -delta[j] : delta[j];
        active[j] = (uint8_t)(a > eps);
        counts[j] += active[j];
    }
}

MULTIVERSION
static void ram_tally(const uint8_t *restrict active, const uint8_t *restrict counts, int64_t len,
                      int64_t *n_unique, int64_t *n_active) {
    int64_t u = 0, a = 0;
    for (int64_t j = 0; j < len; j++) {
        u += active[j] & (counts[j] == 1);
        a += active[j];
    }
    *n_unique += u, *n_active += a;
}

MULTIVERSION
static void ram_divisor(const uint8_t *restrict counts, int64_t len, float *restrict divisor) {
    for (int64_t j = 0; j < len; j++) divisor[j] = counts[j] > 1 ? (float)counts[j] : 1.0f;
}

MULTIVERSION
static void ram_add(const float *restrict delta, const float *restrict divisor, const uint8_t *restrict counts,
                    int64_t len, float eps, float boost, float *restrict merged) {
    for (int64_t j = 0; j < len; j++) {
        float a = delta[j] < 0 ? -delta[j] : delta[j];
        float q = (a <= eps ? 0.0f : delta[j]) / divisor[j];
        merged[j] += counts[j] == 1 ? q * boost : q;
    }
}

/* counts[j] = how many of the k deltas (rows of d, CHUNK apart) are active at j (|d_i| > eps).
 * Row i's activity goes to active + i·stride (stride 0: one scratch row, reused). */
static void ram_chunk_counts(const float *d, int k, int64_t len, float eps, uint8_t *active, int64_t stride,
                             uint8_t *counts) {
    memset(counts, 0, (size_t)len);
    for (int i = 0; i < k; i++) ram_active(d + (size_t)i * CHUNK, len, eps, active + i * stride, counts);
}

/* ---- RAM (operators/ram.py is the torch statement; kernels/elementwise.py) ---------------------------------------------- */

#define RAM_MODELS MH_RAM_MODELS /* a chunk of each model's deltas and activity lives on the stack */

/* n_unique[i] += #entries active in x_i and no other model, n_active[i] += #active in x_i, over
 * [first, end): active means |x_i − b| > eps (eps as float32, torch's comparison). */
void mh_ram_counts(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                   float eps, int64_t first, int64_t end, int64_t *n_unique, int64_t *n_active) {
    float base[CHUNK], d[RAM_MODELS * CHUNK];
    uint8_t counts[CHUNK], active[RAM_MODELS][CHUNK];
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        chunk_deltas(xs, x_dtypes, k, b, b_dtype, start, len, base, d);
        ram_chunk_counts(d, k, len, eps, active[0], CHUNK, counts);
        for (int i = 0; i < k; i++) ram_tally(active[i], counts, len, &n_unique[i], &n_active[i]);
    }
}

/* out = b + Σ_i q_i over [first, end) with d_i = x_i − b zeroed where |d_i| ≤ eps, q_i = d_i / max(c, 1)
 * (c: how many models are active there), times boosts[i] where c == 1; in float32 in that
 * order, as operators/ram.py. */
void mh_ram_combine(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                    float eps, const float *boosts, int64_t first, int64_t end, void *out, int out_dtype) {
    float base[CHUNK], d[RAM_MODELS * CHUNK], divisor[CHUNK], merged[CHUNK];
    uint8_t counts[CHUNK], active[CHUNK];
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        chunk_deltas(xs, x_dtypes, k, b, b_dtype, start, len, base, d);
        ram_chunk_counts(d, k, len, eps, active, 0, counts);
        ram_divisor(counts, len, divisor);
        memset(merged, 0, sizeof merged);
        for (int i = 0; i < k; i++) ram_add(d + (size_t)i * CHUNK, divisor, counts, len, eps, boosts[i], merged);
        for (int64_t j = 0; j < len; j++) merged[j] = merged[j] + base[j];
        narrow(merged, len, out, out_dtype, start);
    }
}

/* ---- nearswap (operators/nearswap.py is the torch statement; kernels/elementwise.py)-------------------------------- */

MULTIVERSION
static void nearswap_chunk(const float *restrict x, const float *restrict b, int64_t len, float t,
                           float *restrict out) {
    for (int64_t j = 0; j < len; j++) {
        float distance = b[j] - x[j];
        distance = distance < 0 ? -distance : distance;
        distance = distance < 1e-6f ? 1e-6f : distance;  /* clamp(min=1e-6); NaN stays NaN */
        float w = (1.0f / distance) * t;                  /* torch's t / tensor: reciprocal, then × t */
        w = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w);
        out[j] = w * x[j] + (1.0f - w) * b[j];
    }
}

/* out = w·x + (1 − w)·b over [first, end), w = clamp(t / max(|b − x|, 1e-6), 0, 1), in float32
 * in nearswap.py's order of operations. */
void mh_nearswap(const void *x, int x_dtype, const void *b, int b_dtype, float t, int64_t first, int64_t end,
                 void *out, int out_dtype) {
    float xs[CHUNK], base[CHUNK], merged[CHUNK];
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        widen(x, x_dtype, start, len, xs);
        widen(b, b_dtype, start, len, base);
        nearswap_chunk(xs, base, len, t, merged);
        narrow(merged, len, out, out_dtype, start);
    }
}

/* ---- SCE's order statistics of its variances (kernels/sce.py) ---- */

/* For float32 values v[first, end) that are all non-negative (SCE's variances): hist[KEY_BINS]
 * += the counts of their top 16 bits, *nonzero += the values that are not 0, in one pass (two
 * interleaved uint32 tables, as histogram above). Returns 0; -1 when out of memory; -2 when a
 * value has its sign bit set (−0, a negative NaN): then the caller's torch path decides. */
int mh_value_histogram(const float *v, int64_t first, int64_t end, int64_t *hist, int64_t *nonzero) {
    uint32_t *counts = calloc(2 * (size_t)KEY_BINS, sizeof *counts);
    if (!counts) return -1;
    uint32_t *even = counts, *odd = counts + KEY_BINS, sign = 0;
    int64_t zeros = 0;
    for (int64_t start = first; start < end; start += FLUSH) {
        int64_t stop = end - start < FLUSH ? end : start + FLUSH, j = start;
        for (; j + 1 < stop; j += 2) {
            uint32_t a = f32_bits(v[j]), c = f32_bits(v[j + 1]);
            sign |= a | c;
            zeros += (a == 0) + (c == 0);
            even[(a >> 16) & (KEY_BINS - 1)]++, odd[(c >> 16) & (KEY_BINS - 1)]++;
        }
        if (j < stop) {
            uint32_t a = f32_bits(v[j]);
            sign |= a, zeros += a == 0, even[(a >> 16) & (KEY_BINS - 1)]++;
        }
        for (int k = 0; k < KEY_BINS; k++) hist[k] += (int64_t)even[k] + odd[k];
        memset(counts, 0, 2 * (size_t)KEY_BINS * sizeof *counts);
    }
    free(counts);
    *nonzero += (end - first) - zeros;
    return sign >> 31 ? -2 : 0;
}

/* 1 if any of the 16 values at v has top 16 bits `key`. */
static inline int any_in_bin(const float *v, uint32_t key) {
    u32x16 bits;
    memcpy(&bits, v, sizeof bits);
    u32x16 hit = (u32x16)((bits >> 16) == key);
    uint32_t any = 0;
    for (int l = 0; l < 16; l++) any |= hit[l];
    return any != 0;
}

/* positions[0 … min(count, cap)) = the flat positions, ascending, of the values v[0, n) whose
 * top 16 bits are `key`; returns count. A bin is a small part of the values: a whole group of
 * 16 is tested at once, and only a group holding one is looked at value by value. */
MULTIVERSION
static int64_t positions_in_bin(const float *v, int64_t n, uint32_t key, int64_t *positions, int64_t cap) {
    int64_t count = 0;
    for (int64_t j = 0; j < n; j += 16) {
        int64_t len = n - j < 16 ? n - j : 16;
        if (len == 16 && !any_in_bin(v + j, key)) continue;
        for (int64_t l = 0; l < len; l++)
            if ((f32_bits(v[j + l]) >> 16) == key) {
                if (count < cap) positions[count] = j + l;
                count++;
            }
    }
    return count;
}

int64_t mh_value_positions(const float *v, int64_t n, int key, int64_t *positions, int64_t cap) {
    return positions_in_bin(v, n, (uint32_t)key, positions, cap);
}

/* ---- Gram matrices and linear combinations (operators/span.py; kernels/span.py) ------------ */

#define LANES 8

/* acc[l] += a[e]·b[e] in float64 for e ≡ l (mod 8), e ascending within each lane. */
MULTIVERSION
static void lane_dots(const float *restrict a, const float *restrict b, int64_t len, double *restrict acc) {
    int64_t e = 0;
    for (; e + LANES <= len; e += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += (double)a[e + l] * (double)b[e + l];
    for (int l = 0; e + l < len; l++) acc[l] += (double)a[e + l] * (double)b[e + l];
}

/* The lanes added 0..7: the end of a block's fixed summation order. */
static double lane_total(const double *lane) {
    double s = 0.0;
    for (int l = 0; l < LANES; l++) s += lane[l];
    return s;
}

/* total[j] += c·x[j] in float64. */
MULTIVERSION
static void axpy64(const float *restrict x, int64_t len, double c, double *restrict total) {
    for (int64_t j = 0; j < len; j++) total[j] += c * (double)x[j];
}

MULTIVERSION
static void to_float(const double *restrict total, int64_t len, float *restrict out) {
    for (int64_t j = 0; j < len; j++) out[j] = (float)total[j];
}


/* gram[(b − first_block)·k·k + i·k + j] (i ≤ j) = Σ over block b of v_i·v_j in float64, for the
 * blocks [first_block, end_block) of `block` entries of n: v_i = x_i − base (x_i without a
 * base), widened to float32 exactly, each product exact in float64. Entry e of a block adds to
 * lane e mod 8, in order; the lanes are then added 0..7: a fixed order that the torch path
 * reproduces, vectorised here. Returns 0, or -1 when out of memory. */
int mh_gram_blocks(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                   int64_t n, int64_t block, int64_t first_block, int64_t end_block, double *gram) {
    float *v = malloc((size_t)(k + 1) * CHUNK * sizeof *v);
    double *acc = malloc((size_t)k * k * LANES * sizeof *acc);
    if (!v || !acc) {
        free(v), free(acc);
        return -1;
    }
    float *base = v + (size_t)k * CHUNK;
    for (int64_t blk = first_block; blk < end_block; blk++) {
        memset(acc, 0, (size_t)k * k * LANES * sizeof *acc);
        int64_t end = (blk + 1) * block < n ? (blk + 1) * block : n;
        for (int64_t start = blk * block; start < end; start += CHUNK) {
            int64_t len = end - start < CHUNK ? end - start : CHUNK;
            chunk_deltas(xs, x_dtypes, k, b, b_dtype, start, len, base, v);
            /* CHUNK and block are multiples of LANES, so lane = offset within the chunk mod 8 */
            for (int i = 0; i < k; i++)
                for (int j = i; j < k; j++)
                    lane_dots(v + (size_t)i * CHUNK, v + (size_t)j * CHUNK, len, acc + ((size_t)i * k + j) * LANES);
        }
        double *out = gram + (blk - first_block) * k * k;
        for (int i = 0; i < k; i++)
            for (int j = i; j < k; j++) out[i * k + j] = lane_total(acc + ((size_t)i * k + j) * LANES);
    }
    free(v), free(acc);
    return 0;
}

/* out[start..end) = Σ_i c_i·x_i (+ c_base·base), summed in float64 in that order, rounded to
 * float32 and then to out's dtype. */
void mh_combine(const void *const *xs, const int *x_dtypes, const double *coefs, int k, const void *b,
                int b_dtype, double base_coef, int64_t first, int64_t end, void *out, int out_dtype) {
    float x[CHUNK], merged[CHUNK];
    double total[CHUNK];
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        memset(total, 0, sizeof total);
        for (int i = 0; i < k; i++) {
            widen(xs[i], x_dtypes[i], start, len, x);
            axpy64(x, len, coefs[i], total);
        }
        if (b) {
            widen(b, b_dtype, start, len, x);
            axpy64(x, len, base_coef, total);
        }
        to_float(total, len, merged);
        narrow(merged, len, out, out_dtype, start);
    }
}

/* ---- SCE helpers ---- */

/* out = base + Σ w_i·keep_i·d_i / max(Σ w_i·keep_i, 1e-6) for a chunk of k deltas (row i at
 * d + i·CHUNK), keep_i: d_i has the sign of Σ d_i (≥ 0: positive); one model at a time so
 * each loop vectorises. */
MULTIVERSION
static void sce_erase(const float *restrict d, int k, const float *restrict weights, const float *restrict base,
                      int64_t len, float *restrict out) {
    float total[CHUNK], merged[CHUNK], divisor[CHUNK];
    memcpy(total, d, (size_t)len * sizeof *total);
    for (int i = 1; i < k; i++)
        for (int64_t j = 0; j < len; j++) total[j] = total[j] + d[(size_t)i * CHUNK + j];
    memset(merged, 0, (size_t)len * sizeof *merged);
    memset(divisor, 0, (size_t)len * sizeof *divisor);
    for (int i = 0; i < k; i++) {
        const float *x = d + (size_t)i * CHUNK;
        float w = weights[i];
        for (int64_t j = 0; j < len; j++) {
            int keep = total[j] >= 0 ? x[j] > 0 : x[j] < 0;
            merged[j] = merged[j] + (keep ? w * x[j] : 0.0f);
            divisor[j] = divisor[j] + (keep ? w : 0.0f);
        }
    }
    for (int64_t j = 0; j < len; j++) {
        float div = divisor[j] < 1e-6f ? 1e-6f : divisor[j];
        out[j] = merged[j] / div + base[j];
    }
}

/* ---- SCE (operators/sce.py is the torch statement; kernels/sce.py) ---------------------------------------------- */

/* variance[j]: the population variance of the k deltas, as sce.py's _variance computes it:
 * mean = ((d_0 + d_1) + …)/k, then Σ (d_i − mean)² in order, / k, all in float32; one model
 * at a time so each loop vectorises. */
MULTIVERSION
static void chunk_variance(const float *restrict d, int k, int64_t len, float *restrict variance) {
    float mean[CHUNK];
    memcpy(mean, d, (size_t)len * sizeof *mean);
    for (int i = 1; i < k; i++)
        for (int64_t j = 0; j < len; j++) mean[j] = mean[j] + d[(size_t)i * CHUNK + j];
    for (int64_t j = 0; j < len; j++) mean[j] = mean[j] / (float)k;
    memset(variance, 0, (size_t)len * sizeof *variance);
    for (int i = 0; i < k; i++)
        for (int64_t j = 0; j < len; j++) {
            float c = d[(size_t)i * CHUNK + j] - mean[j];
            variance[j] = variance[j] + c * c;
        }
    for (int64_t j = 0; j < len; j++) variance[j] = variance[j] / (float)k;
}

/* variance[first..end) of the deltas of xs from b (written at variance + first). Returns 0,
 * or -1 when out of memory. */
int mh_sce_variance(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                    int64_t first, int64_t end, float *variance) {
    float base[CHUNK], *d = malloc((size_t)k * CHUNK * sizeof *d);
    if (!d) return -1;
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        chunk_deltas(xs, x_dtypes, k, b, b_dtype, start, len, base, d);
        chunk_variance(d, k, len, variance + start);
    }
    free(d);
    return 0;
}

/* Zeroes the deltas of the entries SCE drops: variance below the threshold, or equal to it
 * from flat position `cut` on. */
MULTIVERSION
static void sce_select(float *restrict d, int k, const float *restrict variance, int64_t start, int64_t len,
                       float threshold, int64_t cut) {
    uint8_t kept[CHUNK];
    int64_t ties_end = cut - start; /* ties are kept at j < ties_end */
    for (int64_t j = 0; j < len; j++) kept[j] = (variance[j] > threshold) | ((variance[j] == threshold) & (j < ties_end));
    for (int i = 0; i < k; i++)
        for (int64_t j = 0; j < len; j++) d[(size_t)i * CHUNK + j] = kept[j] ? d[(size_t)i * CHUNK + j] : 0.0f;
}

/* energy[(blk − first_block)·k + i] = Σ over block blk of the selected δ_i², in span.py's lane
 * order (as mh_gram_blocks' diagonal). select = 0: every entry is kept. */
int mh_sce_energy(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                  const float *variance, int select, float threshold, int64_t cut, int64_t n, int64_t block,
                  int64_t first_block, int64_t end_block, double *energy) {
    float base[CHUNK], *d = malloc((size_t)k * CHUNK * sizeof *d);
    double *acc = malloc((size_t)k * LANES * sizeof *acc);
    if (!d || !acc) {
        free(d), free(acc);
        return -1;
    }
    for (int64_t blk = first_block; blk < end_block; blk++) {
        memset(acc, 0, (size_t)k * LANES * sizeof *acc);
        int64_t end = (blk + 1) * block < n ? (blk + 1) * block : n;
        for (int64_t start = blk * block; start < end; start += CHUNK) {
            int64_t len = end - start < CHUNK ? end - start : CHUNK;
            chunk_deltas(xs, x_dtypes, k, b, b_dtype, start, len, base, d);
            if (select) sce_select(d, k, variance + start, start, len, threshold, cut);
            for (int i = 0; i < k; i++)
                lane_dots(d + (size_t)i * CHUNK, d + (size_t)i * CHUNK, len, acc + (size_t)i * LANES);
        }
        for (int i = 0; i < k; i++) energy[(blk - first_block) * k + i] = lane_total(acc + (size_t)i * LANES);
    }
    free(d), free(acc);
    return 0;
}

/* out = b + Σ w_i·keep_i·δ_i / max(Σ w_i·keep_i, 1e-6) over [first, end), keep_i: δ_i has the
 * sign of Σ δ_i (≥ 0: positive); the selected deltas, float32 in sce.py's order. Returns 0, or
 * -1 when out of memory. */
int mh_sce_combine(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                   const float *variance, int select, float threshold, int64_t cut, const float *weights,
                   int64_t first, int64_t end, void *out, int out_dtype) {
    float base[CHUNK], merged[CHUNK], *d = malloc((size_t)k * CHUNK * sizeof *d);
    if (!d) return -1;
    for (int64_t start = first; start < end; start += CHUNK) {
        int64_t len = end - start < CHUNK ? end - start : CHUNK;
        chunk_deltas(xs, x_dtypes, k, b, b_dtype, start, len, base, d);
        if (select) sce_select(d, k, variance + start, start, len, threshold, cut);
        sce_erase(d, k, weights, base, len, merged);
        narrow(merged, len, out, out_dtype, start);
    }
    free(d);
    return 0;
}
