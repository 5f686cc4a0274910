/* The interface of the compiled kernels (kernels.c), declared once.
 *
 * kernels.c includes this header, so the compiler checks every definition against it; the
 * Python binding (binding.py) hands the same text to cffi's cdef, and refuses a library whose
 * mh_interface_digest() is not the SHA-256 of this file (one built from another version of
 * it). Keep it parseable by cffi: declarations, structs and integer #defines only; other
 * preprocessor lines are dropped before cdef.
 *
 * Tensors are passed as (pointer, dtype code): MH_F32 or MH_BF16. Flat ranges are
 * [first, end) entry indices; functions returning int give a negative value when a working
 * buffer could not be allocated.
 */
#ifndef MERGEHUB_KERNELS_H
#define MERGEHUB_KERNELS_H

#include <stdint.h>

#define MH_F32 0
#define MH_BF16 1
#define MH_KEY_BINS 32768  /* bins of the top 16 bits of a non-negative float32 */
#define MH_LOW_BINS 65536  /* bins of its low 16 bits */
#define MH_TALLY 65536     /* entries per tally of mh_magnitude_count */
#define MH_SLOTS 512       /* exact L1 slots: 256 exponents of kept entries, then 256 of dropped ones */
#define MH_ALL_DRAWS 16777216 /* a draw threshold at or above this drops nothing */
#define MH_RAM_MODELS 8    /* the most models the RAM kernels take */

/* The SHA-256 (hex) of this header as the library was built against (setup.py defines it). */
const char *mh_interface_digest(void);

/* ---- the task-arithmetic family (kernels/family.py) ---------------------------------------- */

/* How one expert is pruned and scaled. An entry is kept when |δ| > keep level, |δ| ≤ drop
 * level (NaN is kept: hardshrink's rule) and its draw is below `threshold`; each level is
 * *_before at flat positions below *_cut and *_after from there on. Kept entries become
 * (δ·factor)·weight. */
typedef struct {
    const void *x;
    int32_t dtype;
    float weight, factor;
    float keep_before, keep_after, drop_before, drop_after;
    int64_t keep_cut, drop_cut;
    int64_t offset;        /* flat index of x[0] (and of the base's first entry) in the full tensor */
    uint32_t key0, key1;   /* the random stream's key (operators/random_stream.py) */
    uint32_t threshold;    /* ≥ MH_ALL_DRAWS: no random drop */
    const uint8_t *mask;   /* or NULL: a bit per entry (DELLA's); entries whose bit is 0 are dropped too */
} mh_model;

/* The entries of |x − b| whose float32 pattern lies in [lo, hi], collected in flat order: keys
 * and positions (n < 2^31) of the first `cap`, `found` of them in all, `above` the number above hi. */
typedef struct {
    uint32_t lo, hi;
    int64_t cap;
    uint32_t *keys, *positions;
    int64_t found, above;
} mh_bracket;

/* hist[MH_KEY_BINS] += counts of the top 16 bits of |x − b| (as float32). */
int mh_magnitude_histogram(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n, int64_t *hist);
/* hist[MH_LOW_BINS] += counts of the low 16 bits of |x − b| among entries whose top 16 are `key`. */
int mh_magnitude_low_histogram(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n, int key,
                               int64_t *hist);
/* For each of k (≤ 2) patterns: counts[2i] = #|δ| above it, counts[2i + 1] = #equal; tallies
 * (k rows of ⌈n / MH_TALLY⌉): the equal ones per run; brackets (k, or NULL): collected entries. */
int mh_magnitude_count(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n,
                       const uint32_t *patterns, int k, int64_t *counts, uint32_t *tallies, mh_bracket *brackets);
/* The flat position of the entry numbered `rank` among those whose |δ| has float32 pattern
 * `pattern`, scanning from `start`; n when there are not that many. */
int64_t mh_magnitude_position(const void *x, int x_dtype, const void *b, int b_dtype, int64_t n,
                              uint32_t pattern, int64_t rank, int64_t start);
/* DELLA's keep mask of rows [r0, r1) of x (rows × width, r0 a multiple of 8), a bit per entry,
 * with probabilities probs[width] by rank in the row; sums (MH_SLOTS, or NULL): exact L1 slots. */
int mh_della_mask(const void *x, int x_dtype, const void *b, int b_dtype, int64_t width, int64_t r0,
                  int64_t r1, int64_t offset, uint32_t key0, uint32_t key1, const float *probs,
                  uint8_t *mask, int64_t *sums);
/* Exact L1 slots (MH_SLOTS) of |δ| over [first, end), kept and dropped by m; drawn (or NULL) ← a
 * bit per entry, 1 where m's draw keeps it. */
int mh_prune_sums(const void *b, int b_dtype, int64_t first, int64_t end, const mh_model *m,
                  int64_t *sums, uint8_t *drawn);
/* out[first, end) ← b + λ·combine(pruned, weighted deltas of the `models` experts), in float32,
 * rounded to out_dtype: the sign consensus (normalize: over the agreeing weights) or a plain sum
 * (normalize: divided by sum_divisor). */
void mh_family_combine(const void *b, int b_dtype, int64_t first, int64_t end, int models,
                       const mh_model *ms, int consensus, int normalize, float sum_divisor, float lambda,
                       void *out, int out_dtype);

/* ---- RAM and nearswap (kernels/elementwise.py) ------------------------------------------ */

/* n_unique[i] += #entries of [first, end) active in x_i and no other model, n_active[i] += #active
 * in x_i; active: |x_i − b| > eps (eps as float32). k ≤ MH_RAM_MODELS. */
void mh_ram_counts(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                   float eps, int64_t first, int64_t end, int64_t *n_unique, int64_t *n_active);
/* out[first, end) ← b + Σ_i q_i, d_i = x_i − b zeroed where |d_i| ≤ eps, q_i = d_i / max(c, 1)
 * (c: the models active there), times boosts[i] where c == 1. k ≤ MH_RAM_MODELS. */
void mh_ram_combine(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                    float eps, const float *boosts, int64_t first, int64_t end, void *out, int out_dtype);
/* out[first, end) ← w·x + (1 − w)·b, w = clamp(t / max(|b − x|, 1e-6), 0, 1). */
void mh_nearswap(const void *x, int x_dtype, const void *b, int b_dtype, float t, int64_t first, int64_t end,
                 void *out, int out_dtype);

/* ---- Gram matrices and linear combinations (kernels/span.py) ------------------------------ */

/* gram[(blk − first_block)·k·k + i·k + j] (i ≤ j) = Σ over block blk (of `block` entries, a
 * multiple of 8) of v_i·v_j in float64, v_i = x_i − b (x_i where b is NULL), in span.py's lane order. */
int mh_gram_blocks(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                   int64_t n, int64_t block, int64_t first_block, int64_t end_block, double *gram);
/* out[first, end) ← Σ coefs[i]·x_i (+ base_coef·b where b is not NULL), summed in float64,
 * rounded to float32, then to out_dtype. */
void mh_combine(const void *const *xs, const int *x_dtypes, const double *coefs, int k, const void *b,
                int b_dtype, double base_coef, int64_t first, int64_t end, void *out, int out_dtype);

/* ---- SCE (kernels/sce.py) ----------------------------------------------------------------- */

/* hist[MH_KEY_BINS] += counts of the top 16 bits of non-negative float32 v[first, end), *nonzero
 * += the values that are not 0; returns -2 when a value has its sign bit set (−0, a negative NaN). */
int mh_value_histogram(const float *v, int64_t first, int64_t end, int64_t *hist, int64_t *nonzero);
/* positions[0 … min(count, cap)) = the flat positions, ascending, of the values v[0, n) whose top
 * 16 bits are `key`; returns count. */
int64_t mh_value_positions(const float *v, int64_t n, int key, int64_t *positions, int64_t cap);
/* variance[first, end) ← the population variance of the k deltas x_i − b, in float32. */
int mh_sce_variance(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                    int64_t first, int64_t end, float *variance);
/* energy[(blk − first_block)·k + i] = Σ over block blk (of `block` entries) of each selected δ_i²,
 * in span.py's lane order; select = 0 keeps every entry, else variance > threshold, or equal to
 * it before flat position cut. */
int mh_sce_energy(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                  const float *variance, int select, float threshold, int64_t cut, int64_t n, int64_t block,
                  int64_t first_block, int64_t end_block, double *energy);
/* out[first, end) ← b + Σ w_i·keep_i·δ_i / max(Σ w_i·keep_i, 1e-6) over the selected deltas,
 * keep_i: δ_i has the sign of Σ δ_i (≥ 0: positive). */
int mh_sce_combine(const void *const *xs, const int *x_dtypes, int k, const void *b, int b_dtype,
                   const float *variance, int select, float threshold, int64_t cut, const float *weights,
                   int64_t first, int64_t end, void *out, int out_dtype);

#endif
