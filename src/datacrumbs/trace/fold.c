/* The report's compiled kernels (trace/fastfold.py loads them): first, the per-stream
 * access pattern in one pass.
 *
 * analysis.Detail._streams sorted a chunk's accesses and resets (opens, seeks) by stream
 * and ran some forty numpy passes over them; here one walk in trace order keeps each
 * stream's state in arrays indexed by its stream number (the caller's uniq rank) and
 * produces the same per-stream results. Arithmetic is modulo 2^64 (uint64_t), as numpy's
 * int64 arithmetic wraps, so even hostile offsets give the numpy path's numbers.
 *
 * Then the chunk's other passes that numpy made in several: dc_unique counts distinct
 * int64 keys with a hash table (np.unique sorted all n keys, an argsort too for the
 * inverse: about 90 ns a key on a chunk's (file, size) pairs) and radix-sorts the k
 * distinct ones; dc_sums sums per group; dc_add_streams composes stream states with
 * earlier ones (groupstate.py); dc_ints_as_floats and dc_sane_floats make a scanned
 * block's columns the report's float columns. Each gives the numpy code's arrays exactly.
 *
 * Built by `datacrumbs build-bpf` / `datacrumbs install` beside the BPF object; never at
 * run time. Bump DC_FOLD_ABI whenever a signature or a layout below changes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DC_FOLD_ABI 2
#define ALIGN 4096

int dc_fold_abi(void) { return DC_FOLD_ABI; }

/* Inputs: na accesses (rows ascending: a_row; their stream a_g; kind 0 explicit offset,
 * 1 at the stream's position; a_val the explicit offset; a_sz the size >= 0), nr resets
 * (rows ascending: r_row; new position r_pos; the READ and WRITE streams r_gr, r_gw), ng
 * streams, g_read[g] 1 for a read stream.
 * Per stream out (ng each): pat (3 per stream), n_large, n_mis, has, head_off, head_abs,
 * last_end, last_abs, pos, pos_abs, rel_read (implicit bytes of a relative first segment).
 * pend_g/pend_v (4 per pair), run_g/run_s/run_e: up to na each, in trace order; counts in
 * counts[0] (pairs) and counts[1] (runs).
 * Returns 0, or -1 (unsorted rows or a stream out of range: the caller uses numpy), -2 (no
 * memory). */
int64_t dc_fold_streams(int64_t na, const int64_t *a_row, const int64_t *a_g,
                        const int8_t *a_kind, const int64_t *a_val, const int64_t *a_sz,
                        int64_t nr, const int64_t *r_row, const int64_t *r_pos,
                        const int64_t *r_gr, const int64_t *r_gw,
                        int64_t ng, const uint8_t *g_read,
                        int64_t *pat, int64_t *n_large, int64_t *n_mis, int64_t *has,
                        int64_t *head_off, int64_t *head_abs, int64_t *last_end,
                        int64_t *last_abs, int64_t *pos, int64_t *pos_abs, int64_t *rel_read,
                        int64_t *pend_g, int64_t *pend_v, int64_t *run_g, int64_t *run_s,
                        int64_t *run_e, int64_t *counts)
{
    int64_t i, k;
    if (na < 0 || nr < 0 || ng < 0)
        return -1;
    for (i = 1; i < na; i++)
        if (a_row[i] <= a_row[i - 1])
            return -1;
    for (i = 1; i < nr; i++)
        if (r_row[i] <= r_row[i - 1])
            return -1;
    for (i = 0; i < na; i++)
        if (a_g[i] < 0 || a_g[i] >= ng)
            return -1;
    for (i = 0; i < nr; i++)
        if (r_gr[i] < 0 || r_gr[i] >= ng || r_gw[i] < 0 || r_gw[i] >= ng)
            return -1;
    /* per stream scratch: segment base, implicit bytes in the segment, the current read
     * run (-1 none), whether still in a relative first segment */
    uint64_t *imp = calloc((size_t)ng + 1, sizeof(uint64_t));
    int64_t *run = malloc(((size_t)ng + 1) * sizeof(int64_t));
    uint8_t *first = malloc((size_t)ng + 1);
    if (!imp || !run || !first) {
        free(imp); free(run); free(first);
        return -2;
    }
    memset(pat, 0, (size_t)ng * 3 * sizeof(int64_t));
    memset(n_large, 0, (size_t)ng * sizeof(int64_t));
    memset(n_mis, 0, (size_t)ng * sizeof(int64_t));
    memset(has, 0, (size_t)ng * sizeof(int64_t));
    memset(pos, 0, (size_t)ng * sizeof(int64_t));       /* the segment's base */
    memset(pos_abs, 0, (size_t)ng * sizeof(int64_t));
    memset(rel_read, 0, (size_t)ng * sizeof(int64_t));
    memset(first, 1, (size_t)ng);
    for (k = 0; k < ng; k++) {
        run[k] = -1;
        head_off[k] = head_abs[k] = last_end[k] = last_abs[k] = 0;
    }
    int64_t np_ = 0, nrun = 0, ia = 0, ir = 0;
    while (ia < na || ir < nr) {
        if (ir < nr && (ia >= na || r_row[ir] < a_row[ia])) {
            /* a reset: a new absolute segment on both its streams */
            int64_t gg[2] = {r_gr[ir], r_gw[ir]};
            for (int s = 0; s < 2; s++) {
                int64_t g = gg[s];
                pos[g] = r_pos[ir];
                pos_abs[g] = 1;
                imp[g] = 0;
                first[g] = 0;
            }
            ir++;
            continue;
        }
        int64_t g = a_g[ia];
        uint64_t sz = (uint64_t)a_sz[ia];
        uint64_t off;
        int64_t oabs;
        if (a_kind[ia] == 0) {
            off = (uint64_t)a_val[ia];
            oabs = 1;
            if (a_sz[ia] >= ALIGN) {
                n_large[g]++;
                if (off & (ALIGN - 1))
                    n_mis[g]++;
            }
        } else {
            off = (uint64_t)pos[g] + imp[g];
            oabs = pos_abs[g];
            imp[g] += sz;
            if (first[g])
                rel_read[g] = (int64_t)((uint64_t)rel_read[g] + sz);
        }
        uint64_t end = off + sz;
        if (!has[g]) {
            has[g] = 1;
            head_off[g] = (int64_t)off;
            head_abs[g] = oabs;
        } else if (oabs != last_abs[g]) {
            int64_t *v = pend_v + 4 * np_;
            pend_g[np_++] = g;
            v[0] = (int64_t)off; v[1] = oabs; v[2] = last_end[g]; v[3] = last_abs[g];
        } else {
            int64_t d = (int64_t)(off - (uint64_t)last_end[g]);
            pat[3 * g + (d == 0 ? 0 : d > 0 ? 1 : 2)]++;
        }
        last_end[g] = (int64_t)end;
        last_abs[g] = oabs;
        if (oabs && a_sz[ia] > 0 && g_read[g]) {      /* an absolute read extent */
            int64_t r = run[g];
            if (r >= 0 && run_e[r] == (int64_t)off) {
                run_e[r] = (int64_t)end;
            } else {
                run_g[nrun] = g; run_s[nrun] = (int64_t)off; run_e[nrun] = (int64_t)end;
                run[g] = nrun++;
            }
        }
        ia++;
    }
    for (k = 0; k < ng; k++)
        pos[k] = (int64_t)((uint64_t)pos[k] + imp[k]);
    counts[0] = np_;
    counts[1] = nrun;
    free(imp); free(run); free(first);
    return 0;
}

/* The k first-seen indices of ids sorted by their keys uk[ids] (distinct): an LSD radix
 * sort, a byte a pass, skipping the bytes all keys share (the high ones, mostly). */
static int sort_by_key(int64_t k, const int64_t *uk, int64_t *ids)
{
    static const uint64_t SIGN = (uint64_t)1 << 63;
    int64_t (*hist)[256] = calloc(8, sizeof *hist);
    int64_t *tmp = malloc(((size_t)k + 1) * sizeof(int64_t));
    if (!hist || !tmp) {
        free(hist); free(tmp);
        return 0;
    }
    for (int64_t j = 0; j < k; j++) {
        uint64_t u = (uint64_t)uk[j] ^ SIGN;        /* signed order as unsigned */
        for (int b = 0; b < 8; b++)
            hist[b][(u >> (8 * b)) & 0xff]++;
    }
    for (int64_t j = 0; j < k; j++)
        ids[j] = j;
    for (int b = 0; b < 8; b++) {
        int64_t *h = hist[b], at = 0;
        if (h[((uint64_t)uk[0] ^ SIGN) >> (8 * b) & 0xff] == k)
            continue;                               /* one value: the pass changes nothing */
        for (int v = 0; v < 256; v++) {
            int64_t c = h[v];
            h[v] = at;
            at += c;
        }
        for (int64_t j = 0; j < k; j++) {
            uint64_t u = (uint64_t)uk[ids[j]] ^ SIGN;
            tmp[h[(u >> (8 * b)) & 0xff]++] = ids[j];
        }
        memcpy(ids, tmp, (size_t)k * sizeof(int64_t));
    }
    free(hist);
    free(tmp);
    return 1;
}

/* np.unique(keys, return_inverse, return_counts) of keys[0..n): the k distinct keys in
 * order into uk, how often each occurs into cnt and, when inv is not NULL, each key's
 * index in uk into inv[0..n). Returns k, or -2 (no memory). The table grows with the
 * distinct keys, not with n: a chunk has far fewer. */
int64_t dc_unique(int64_t n, const int64_t *keys, int64_t *uk, int64_t *cnt, int64_t *inv)
{
    uint64_t size = 4096, mask = size - 1;
    int32_t *slot = malloc(size * sizeof(int32_t));     /* index in uk + 1, 0 empty */
    int64_t *first = malloc(((size_t)n + 1) * sizeof(int64_t));   /* keys, first-seen */
    int64_t *c = calloc((size_t)n + 1, sizeof(int64_t));
    int64_t *ids = NULL, k = 0, last = -1, rc = -2;
    if (!slot || !first || !c || n >= INT32_MAX)
        goto out;
    memset(slot, 0, size * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++) {
        int64_t key = keys[i], j;
        if (last >= 0 && first[last] == key) {          /* runs of one key are common */
            j = last;
        } else {
            uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull;
            h = (h ^ (h >> 29)) & mask;
            while ((j = (int64_t)slot[h] - 1) >= 0 && first[j] != key)
                h = (h + 1) & mask;
            if (j < 0) {
                j = k++;
                first[j] = key;
                slot[h] = (int32_t)(j + 1);
                if ((uint64_t)k * 2 > size) {           /* grow: rehash the k keys */
                    uint64_t nsize = size * 2;
                    int32_t *ns = calloc(nsize, sizeof(int32_t));
                    if (!ns)
                        goto out;
                    for (int64_t t = 0; t < k; t++) {
                        uint64_t g = (uint64_t)first[t] * 0x9E3779B97F4A7C15ull;
                        g = (g ^ (g >> 29)) & (nsize - 1);
                        while (ns[g])
                            g = (g + 1) & (nsize - 1);
                        ns[g] = (int32_t)(t + 1);
                    }
                    free(slot);
                    slot = ns;
                    size = nsize;
                    mask = nsize - 1;
                }
            }
            last = j;
        }
        c[j]++;
        if (inv)
            inv[i] = j;
    }
    ids = malloc(((size_t)k + 1) * sizeof(int64_t));
    if (!ids || (k && !sort_by_key(k, first, ids)))
        goto out;
    for (int64_t r = 0; r < k; r++) {
        uk[r] = first[ids[r]];
        cnt[r] = c[ids[r]];
    }
    if (inv) {
        int64_t *rank = c;                              /* the counts are copied out */
        for (int64_t r = 0; r < k; r++)
            rank[ids[r]] = r;
        for (int64_t i = 0; i < n; i++)
            inv[i] = rank[inv[i]];
    }
    rc = k;
out:
    free(slot);
    free(first);
    free(c);
    free(ids);
    return rc;
}

/* out[g] = the sum of values[i] over groups[i] == g, for g in [0, ng), modulo 2^64: what
 * numpy's int64 adds give (report: analysis.group_sums; its float bincount is exact where
 * it is used). One pass instead of bincount's and the checks around it. Returns 0, or -1
 * (a group outside [0, ng): the caller uses numpy). */
int64_t dc_sums(int64_t n, const int64_t *groups, int64_t ng, const int64_t *values,
                int64_t *out)
{
    uint64_t *acc = (uint64_t *)out;
    memset(out, 0, (size_t)ng * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) {
        int64_t g = groups[i];
        if ((uint64_t)g >= (uint64_t)ng)
            return -1;
        acc[g] += (uint64_t)values[i];
    }
    return 0;
}

/* groupstate.Groups.add_streams' arithmetic (Stream.absorb for many streams at once), in
 * place on the state matrix s (rows of ncol int64; the column numbers below are
 * groupstate's): b (ng rows, same layout) are later stream states of the distinct rows
 * ids. A row not yet a stream takes b's stream columns. For one that is, b's relative
 * positions are moved onto its base: pairs on different bases (pend_v: offset, is_abs,
 * previous end, is_abs, of b row pend_j) are classed once on one base, read extents
 * (ext_se of b row ext_j) moved, b's head classed against the row's last end, and the
 * counts, last end and position composed.
 * Out, for Python's side tables (in the order numpy's code appends to them):
 *   ext_kind per extent: 0 the row was new (kept as is), 1 now absolute, 2 still relative;
 *     ext_out the extent moved;
 *   pend_kind per pair: 0 the row was new (kept as is), 1 classed here, 2 still on two
 *     bases; pend_out the pair moved;
 *   mixed_j / mixed_v: b rows whose head is on another base than the row's last end, in
 *     row order, with (head, is_abs, last end, is_abs); their number is returned.
 * Returns -1 (a row or b row out of range: the caller uses numpy), -2 (no memory). */
enum { G_CONSEC = 4, G_SEQ, G_RAND, G_MIS, G_LARGE, G_POS, G_POS_ABS, G_HAS, G_HEAD,
       G_HEAD_ABS, G_LAST, G_LAST_ABS, G_IN_TABLE, G_IS_STREAM, G_NCOL };

/* A position of b on the row's base: as it is when absolute, else moved by the row's
 * position (modulo 2^64, as numpy's adds). */
static inline int64_t on_base(int64_t v, int64_t is_abs, uint64_t shift)
{
    return is_abs == 1 ? v : (int64_t)((uint64_t)v + shift);
}

int64_t dc_add_streams(int64_t nrows, int64_t ncol, int64_t *s, int64_t ng,
                       const int64_t *ids, const int64_t *b,
                       int64_t ne, const int64_t *ext_j, const int64_t *ext_se,
                       int64_t np_, const int64_t *pend_j, const int64_t *pend_v,
                       int8_t *ext_kind, int64_t *ext_out, int8_t *pend_kind,
                       int64_t *pend_out, int64_t *mixed_j, int64_t *mixed_v)
{
    if (ncol != G_NCOL)
        return -1;
    for (int64_t j = 0; j < ng; j++)
        if (ids[j] < 0 || ids[j] >= nrows)
            return -1;
    for (int64_t e = 0; e < ne; e++)
        if (ext_j[e] < 0 || ext_j[e] >= ng)
            return -1;
    for (int64_t p = 0; p < np_; p++)
        if (pend_j[p] < 0 || pend_j[p] >= ng)
            return -1;
    uint8_t *old = malloc((size_t)ng + 1);
    if (!old)
        return -2;
    for (int64_t j = 0; j < ng; j++) {
        int64_t *a = s + ids[j] * ncol;
        const int64_t *bj = b + j * ncol;
        old[j] = a[G_IS_STREAM] == 1;
        if (!old[j]) {
            memcpy(a + G_CONSEC, bj + G_CONSEC, (G_LAST_ABS - G_CONSEC + 1) * sizeof(int64_t));
            a[G_IS_STREAM] = 1;
        }
    }
    /* positions of b are relative to the row's position before this fold */
    for (int64_t p = 0; p < np_; p++) {
        int64_t j = pend_j[p];
        const int64_t *v = pend_v + 4 * p;
        int64_t *o = pend_out + 4 * p;
        if (!old[j]) {
            pend_kind[p] = 0;
            memcpy(o, v, 4 * sizeof(int64_t));
            continue;
        }
        int64_t *a = s + ids[j] * ncol;
        uint64_t shift = (uint64_t)a[G_POS];
        int64_t sabs = a[G_POS_ABS];
        int64_t off = on_base(v[0], v[1], shift);
        int64_t oab = v[1] == 1 ? 1 : sabs;
        int64_t prv = on_base(v[2], v[3], shift);
        int64_t pab = v[3] == 1 ? 1 : sabs;
        o[0] = off; o[1] = oab; o[2] = prv; o[3] = pab;
        if (oab == pab) {
            int64_t d = (int64_t)((uint64_t)off - (uint64_t)prv);
            a[d == 0 ? G_CONSEC : d > 0 ? G_SEQ : G_RAND]++;
            pend_kind[p] = 1;
        } else
            pend_kind[p] = 2;
    }
    for (int64_t e = 0; e < ne; e++) {
        int64_t j = ext_j[e];
        const int64_t *v = ext_se + 2 * e;
        int64_t *o = ext_out + 2 * e;
        if (!old[j]) {
            ext_kind[e] = 0;
            o[0] = v[0]; o[1] = v[1];
            continue;
        }
        const int64_t *a = s + ids[j] * ncol;
        uint64_t shift = (uint64_t)a[G_POS];
        o[0] = (int64_t)((uint64_t)v[0] + shift);
        o[1] = (int64_t)((uint64_t)v[1] + shift);
        ext_kind[e] = a[G_POS_ABS] == 1 ? 1 : 2;
    }
    int64_t nm = 0;
    for (int64_t j = 0; j < ng; j++) {
        if (!old[j])
            continue;
        int64_t *a = s + ids[j] * ncol;
        const int64_t *bj = b + j * ncol;
        uint64_t shift = (uint64_t)a[G_POS];
        int64_t sabs = a[G_POS_ABS];
        for (int c = G_CONSEC; c <= G_LARGE; c++)
            a[c] = (int64_t)((uint64_t)a[c] + (uint64_t)bj[c]);
        if (bj[G_HAS] == 1) {
            int64_t h_off = on_base(bj[G_HEAD], bj[G_HEAD_ABS], shift);
            int64_t h_abs = bj[G_HEAD_ABS] == 1 ? 1 : sabs;
            if (a[G_HAS] != 1) {
                a[G_HEAD] = h_off;
                a[G_HEAD_ABS] = h_abs;
            } else if (h_abs != a[G_LAST_ABS]) {
                int64_t *m = mixed_v + 4 * nm;
                mixed_j[nm++] = j;
                m[0] = h_off; m[1] = h_abs; m[2] = a[G_LAST]; m[3] = a[G_LAST_ABS];
            } else {
                int64_t d = (int64_t)((uint64_t)h_off - (uint64_t)a[G_LAST]);
                a[d == 0 ? G_CONSEC : d > 0 ? G_SEQ : G_RAND]++;
            }
            a[G_LAST] = on_base(bj[G_LAST], bj[G_LAST_ABS], shift);
            a[G_LAST_ABS] = bj[G_LAST_ABS] == 1 ? 1 : sabs;
            a[G_HAS] = 1;
        }
        a[G_POS] = on_base(bj[G_POS], bj[G_POS_ABS], shift);
        a[G_POS_ABS] = bj[G_POS_ABS] == 1 ? 1 : sabs;
    }
    free(old);
    return nm;
}

/* A scanned block's columns as the report's float64 columns (report/columnar.py): an int
 * column with its "given" flags, or a float column (NaN where missing), each value kept
 * when it is a finite number in [0, 2^53] after the conversion to double, else dflt: what
 * numpy's astype and the checks of columnar._sane give, in one pass into out. */
void dc_ints_as_floats(int64_t n, const int64_t *v, const uint8_t *ok, double dflt, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        double d = (double)v[i];
        out[i] = ok[i] && d >= 0 && d <= 0x1p53 ? d : dflt;
    }
}

void dc_sane_floats(int64_t n, const double *v, double dflt, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        double d = v[i];
        out[i] = isfinite(d) && !(d < 0) && !(d > 0x1p53) ? d : dflt;
    }
}

/* uniq's dense case (report/analysis.py): keys[0..n) all in [lo, lo + span), span small
 * beside n: counted in an array instead of hashed. The same outputs as dc_unique (the k
 * distinct keys in order, their counts, each key's index when inv is not NULL), as
 * numpy's bincount, flatnonzero and cumsum give them. Returns k, -1 (a key outside the
 * span: the caller uses numpy) or -2 (no memory). */
int64_t dc_dense_unique(int64_t n, const int64_t *keys, int64_t lo, int64_t span,
                        int64_t *uk, int64_t *cnt, int64_t *inv)
{
    if (span <= 0)
        return n ? -1 : 0;
    int64_t *c = calloc((size_t)span, sizeof(int64_t));
    if (!c)
        return -2;
    for (int64_t i = 0; i < n; i++) {
        uint64_t j = (uint64_t)keys[i] - (uint64_t)lo;
        if (j >= (uint64_t)span) {
            free(c);
            return -1;
        }
        c[j]++;
    }
    int64_t k = 0;
    for (int64_t j = 0; j < span; j++) {
        if (!c[j])
            continue;
        uk[k] = lo + j;
        cnt[k] = c[j];
        c[j] = k++;                         /* now the key's rank */
    }
    if (inv)
        for (int64_t i = 0; i < n; i++)
            inv[i] = c[(uint64_t)keys[i] - (uint64_t)lo];
    free(c);
    return k;
}
