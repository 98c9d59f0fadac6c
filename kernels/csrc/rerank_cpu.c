/* CPU kernels of the k-reciprocal re-ranking (fastccreid/rerank.py; Python side: kernels/rerank_cpu.py).
 *
 * Plain C over raw pointers, loaded with ctypes (no Python or torch headers: the build needs only a C compiler).
 * ctypes releases the GIL for the call, so the Python side runs one call per thread on disjoint parts.
 * Built with -ffp-contract=off: every float operation is rounded as torch's separate operations round it (no FMA),
 * which is what makes these kernels bit-identical to the torch path (tests/test_rerank_native.py).
 *
 * scan_block: one pass over a block of the N x N distance (rows s..s+R-1 against columns s..s+W-1) that does
 *   what the torch path does in five (row maxima, row top-k, column maxima, column threshold mask, its nonzero).
 * jaccard_rows: the Jaccard sums of a query chunk, row by row into the chunk's [C, G] buffer (a row fits in L2;
 *   torch's index_add_ scatters over the whole chunk), then the re-ranked distance in place.
 */
#include <stdint.h>

/* x86-64: one build carries AVX-512 / AVX2 / baseline versions of the hot loops, picked at load time by the CPU
 * (GCC function multiversioning, an ifunc): the same wheel runs on an AVX2-only EPYC and on an AVX-512 Xeon. The
 * versions compute the same bits (element-wise IEEE ops, no contraction). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSION
#endif

/* v into a list sorted by (value, index) whose entries all have smaller indices than v's: v goes after the
 * entries of equal value. Precondition: v < lv[kq - 1] (it displaces the last entry). */
static inline void insert_after_equal(float *lv, int64_t *li, int64_t kq, float v, int64_t j) {
    int64_t p = kq - 1;
    while (p > 0 && v < lv[p - 1]) {
        lv[p] = lv[p - 1];
        li[p] = li[p - 1];
        p--;
    }
    lv[p] = v;
    li[p] = j;
}

#define LANES 16

/* One thread's share of a block: columns [c0, c1) of d [R, ld] (row-major; column c is global index s + c).
 *
 * Rows: every column c of [c0, c1) is a candidate of row r (global s + r). The thread's own lists rval / ridx
 *   [R, kq] (sorted by (value, index); filled with (inf, -1) by the caller) get the kq smallest of its columns and
 *   rmax [R] (-inf from the caller) the row maximum; the caller merges the threads' lists exactly.
 * Columns c >= R (global j = s + c, beyond the block's rows): the pairs are the transposed candidates of row j.
 *   cval / cidx [N, kq] are j's running list (all its entries come from rows < s + r, so a new pair enters only if
 *   strictly below the list's last value: the (value, index) order), cthr [N] a contiguous copy of that last
 *   value (the hot loop reads it sequentially), cmax [N] j's running maximum. Each column belongs to one thread.
 *
 * The inner loop is branch-free over LANES columns (maxima and "any candidate here" as element-wise selects and
 * an OR, which compilers vectorise); the rare chunk with a candidate is redone scalar. */
MULTIVERSION void scan_block(const float *d, int64_t R, int64_t ld, int64_t c0, int64_t c1, int64_t s, int64_t kq,
                float *rval, int64_t *ridx, float *rmax, float *cval, int64_t *cidx, float *cthr, float *cmax) {
    for (int64_t r = 0; r < R; r++) {
        const float *x = d + r * ld;
        float *lv = rval + r * kq;
        int64_t *li = ridx + r * kq;
        float rt = lv[kq - 1];
        float mv[LANES];
        for (int k = 0; k < LANES; k++) mv[k] = rmax[r];
        int64_t c = c0;
        /* the diagonal square (c < R): row candidates only */
        int64_t cd = c1 < R ? c1 : R;
        for (; c + LANES <= cd; c += LANES) {
            int hit = 0;
            for (int k = 0; k < LANES; k++) {
                float v = x[c + k];
                mv[k] = v > mv[k] ? v : mv[k];
                hit |= v < rt;
            }
            if (hit) {
                for (int k = 0; k < LANES; k++) {
                    float v = x[c + k];
                    if (v < rt) {
                        insert_after_equal(lv, li, kq, v, s + c + k);
                        rt = lv[kq - 1];
                    }
                }
            }
        }
        for (; c < cd; c++) {
            float v = x[c];
            mv[0] = v > mv[0] ? v : mv[0];
            if (v < rt) {
                insert_after_equal(lv, li, kq, v, s + c);
                rt = lv[kq - 1];
            }
        }
        /* the tail (c >= R): row and column candidates */
        float *ct = cthr + s;
        float *cm = cmax + s;
        for (; c + LANES <= c1; c += LANES) {
            int hit = 0;
            for (int k = 0; k < LANES; k++) {
                float v = x[c + k];
                mv[k] = v > mv[k] ? v : mv[k];
                cm[c + k] = v > cm[c + k] ? v : cm[c + k];
                hit |= (v < rt) | (v < ct[c + k]);
            }
            if (hit) {
                for (int k = 0; k < LANES; k++) {
                    float v = x[c + k];
                    int64_t j = s + c + k;
                    if (v < rt) {
                        insert_after_equal(lv, li, kq, v, j);
                        rt = lv[kq - 1];
                    }
                    if (v < ct[c + k]) {
                        insert_after_equal(cval + j * kq, cidx + j * kq, kq, v, s + r);
                        ct[c + k] = cval[j * kq + kq - 1];
                    }
                }
            }
        }
        for (; c < c1; c++) {
            float v = x[c];
            int64_t j = s + c;
            mv[0] = v > mv[0] ? v : mv[0];
            cm[c] = v > cm[c] ? v : cm[c];
            if (v < rt) {
                insert_after_equal(lv, li, kq, v, j);
                rt = lv[kq - 1];
            }
            if (v < ct[c]) {
                insert_after_equal(cval + j * kq, cidx + j * kq, kq, v, s + r);
                ct[c] = cval[j * kq + kq - 1];
            }
        }
        float m = mv[0];
        for (int k = 1; k < LANES; k++) m = mv[k] > m ? mv[k] : m;
        rmax[r] = m;
    }
}

/* Jaccard sums and re-ranked distances of query rows [r0, r1) of a chunk, in place in out [C, G] (row-major), which
 * holds the original distances d on entry.
 *
 * Row i's V entries are ent_col / ent_val [ent_ptr[i], ent_ptr[i+1]), in the order the torch path adds them (by
 * column bucket, then column); column k's gallery list is g_row / g_val [g_ptr[k], g_ptr[k+1]) (gallery rows
 * ascending). m[j] = sum over the row's entries (k, v) with j in k's list of min(v, V_jk), added in that order, into
 * a zeroed [G] scratch row (one per thread). Then, as the torch path's in-place ops and with their roundings:
 * out = ((-(m / (2 - m))) + 1) * one_minus_lam + (d / scale[i]) * lam. */
MULTIVERSION void jaccard_rows(int64_t r0, int64_t r1, int64_t G, const int64_t *ent_ptr, const int64_t *ent_col,
                  const float *ent_val, const int64_t *g_ptr, const int32_t *g_row, const float *g_val,
                  const float *scale, float lam, float one_minus_lam, float *out, float *m) {
    for (int64_t i = r0; i < r1; i++) {
        for (int64_t j = 0; j < G; j++) m[j] = 0.0f;
        for (int64_t t = ent_ptr[i]; t < ent_ptr[i + 1]; t++) {
            int64_t k = ent_col[t];
            float qv = ent_val[t];
            for (int64_t p = g_ptr[k]; p < g_ptr[k + 1]; p++) {
                float gv = g_val[p];
                m[g_row[p]] += gv < qv ? gv : qv;
            }
        }
        float *o = out + i * G;
        float sc = scale[i];
        for (int64_t j = 0; j < G; j++) {
            float q = m[j] / (2.0f - m[j]);
            float jac = (-q + 1.0f) * one_minus_lam;
            float orig = (o[j] / sc) * lam;
            o[j] = jac + orig;
        }
    }
}
