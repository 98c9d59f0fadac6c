/* CPU kernel of the exact rank statistics' placement (kernels/rank_stats.py ``place``; Python side:
 * kernels/rank_place_cpu.py), loaded with ctypes like kernels/csrc/rerank_cpu.c (same library).
 *
 * For every non-match of a distance row: p = the number of the row's matches ranked before it (a match ranks
 * first when its distance is smaller, or equal with a smaller gallery index: a stable sort's order; +inf non-matches
 * never tie), counted into hist[p]. The torch path does it in five passes with a lookup table; here one pass:
 *
 * A per-row table over K bins of [first match, last match]: bin(x) = clamp(floor((x - lo) * iw + 1), 0, K + 2) is
 * monotone in x (a subtraction and a multiplication by a positive constant round monotonically), so an element
 * whose bin holds no match distance has exactly the matches of lower bins before it and ties none: table[b] is
 * that count. The few elements in a bin with a match are placed by binary search and the tie rule. Rows whose
 * match range is not finite (inf / -inf distances) are placed by binary search throughout.
 */
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSION
#endif

/* matches before x (gallery index j) among the row's nm sorted match distances ms and their indices mi */
static inline int64_t exact_place(const float *ms, const int64_t *mi, int64_t nm, float x, int64_t j) {
    int64_t lo = 0, n = nm;
    while (n > 0) { /* lower bound: the first match distance >= x */
        int64_t h = n >> 1;
        if (ms[lo + h] < x) {
            lo += h + 1;
            n -= h + 1;
        } else {
            n = h;
        }
    }
    if (x != INFINITY) {
        for (int64_t q = lo; q < nm && ms[q] == x; q++) lo += mi[q] < j; /* ties: smaller gallery index first */
    }
    return lo;
}

static inline float bin_of(float x, float lo, float iw, float top) {
    float t = (x - lo) * iw + 1.0f;
    t = t > 0.0f ? t : 0.0f; /* (x below lo, and -inf) */
    return t < top ? t : top; /* (x above hi, and +inf) */
}

/* Rows [r0, r1) of dist [C, T] (row-major; same-pid entries already +inf): counts into hist [C, H] (H >= rmax + 2).
 * Column j is gallery item cmap[j] (cmap [T]: a tile of a permuted gallery), or col0 + j where cmap is NULL.
 * ms / mi [C, rmax]: each row's match distances ascending (ties by gallery index), padding after nm[i]; table: a
 * scratch of k + 3 int32. A row holding a NaN is left out of hist; returns how many NaN were seen (the caller
 * refuses those: a NaN has no rank). */
MULTIVERSION int64_t place_rows(int64_t r0, int64_t r1, int64_t T, const float *dist, const int64_t *cmap, int64_t col0,
                                const float *ms, const int64_t *mi, const int64_t *nm, int64_t rmax, int64_t *hist,
                                int64_t H, int64_t k, int32_t *table) {
    int64_t nans = 0;
    for (int64_t i = r0; i < r1; i++) {
        const float *x = dist + i * T;
        const float *m = ms + i * rmax;
        const int64_t *mx = mi + i * rmax;
        int64_t n = nm[i];
        int64_t *h = hist + i * H;
        int bad = 0;
        for (int64_t j = 0; j < T; j++) bad |= x[j] != x[j];
        if (bad) {
            for (int64_t j = 0; j < T; j++) nans += x[j] != x[j];
            continue;
        }
        if (n == 0) { /* no match: every element has none before it */
            h[0] += T;
            continue;
        }
        float lo = m[0], hi = m[n - 1];
        float width = hi - lo;
        if (!isfinite(lo) || !isfinite(hi) || !isfinite(width)) {
            for (int64_t j = 0; j < T; j++) h[exact_place(m, mx, n, x[j], cmap ? cmap[j] : col0 + j)]++;
            continue;
        }
        if (!(width > 0.0f)) width = fabsf(lo) > 1e-30f ? fabsf(lo) : 1e-30f;
        float iw = (float)k / width;
        float top = (float)(k + 2);
        /* table[b]: matches in bins < b where bin b holds no match, else -1 (undecided) */
        for (int64_t b = 0; b <= k + 2; b++) table[b] = 0;
        for (int64_t q = 0; q < n; q++) table[(int64_t)bin_of(m[q], lo, iw, top)]++;
        int32_t below = 0;
        for (int64_t b = 0; b <= k + 2; b++) {
            int32_t c = table[b];
            table[b] = c ? -1 : below;
            below += c;
        }
        for (int64_t j = 0; j < T; j++) {
            int32_t p = table[(int64_t)bin_of(x[j], lo, iw, top)];
            if (p >= 0) {
                h[p]++;
            } else {
                h[exact_place(m, mx, n, x[j], cmap ? cmap[j] : col0 + j)]++;
            }
        }
    }
    return nans;
}
