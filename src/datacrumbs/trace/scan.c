/* The report's trace-line scanner: a block of whole trace lines into columns, in one pass.
 *
 * trace/fastscan.py compiles this at install time (`datacrumbs build-bpf`, beside the BPF
 * object, like lines.c) and loads it with ctypes; report/columnar.py turns its columns into
 * the arrays Aggregate.add_columns reads. Without it, the report parses with pyarrow's
 * JSON reader (about four times the CPU) and, for the blocks pyarrow cannot vouch for,
 * with the json module: the same numbers, slower.
 *
 * The contract is all or nothing per block: dc_scan returns -1 ("not mine") as soon as
 * one line is not one it reads exactly as json.loads would, and the Python paths decide
 * the whole block. It reads a line only when it is one JSON object whose keys carry no
 * escape, without duplicate known keys, with "ph" "X" (or "M": metadata lines are only
 * located, Python loads them), whose known fields have the report's types (strings
 * without escapes, integers that fit an int64, numbers, or null for "missing") and whose
 * other values are scalars. Strings must be valid UTF-8 without control characters.
 * Numbers are converted as Python does: integers exactly, fractions correctly rounded.
 */
#define _GNU_SOURCE
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>          /* part of x86-64 itself: every node's CPU has it */
#endif

#define DC_SCAN_ABI 1

/* The columns, in the order trace/fastscan.py names them. */
enum { S_NAME, S_CAT, S_FHASH, S_FNAME, S_HHASH, S_FTYPE, S_FHASH2, S_FTYPE2, NSTR };
enum { I_PID, I_TID, I_SIZE, I_COUNT, I_ERRNO, I_OFFSET, I_RET, I_FLAGS, NINT };
enum { F_TS, F_DUR, NFLT };

/* What a key is: a column, "ph", "args", or something else. */
enum { K_OTHER = 0, K_STR = 0x100, K_INT = 0x200, K_FLT = 0x300, K_PH = 0x400, K_ARGS = 0x500 };

/* Arrays of cap rows given by the caller; every field 8 bytes (ctypes mirrors it). */
struct dc_scan {
    int64_t cap;
    double *flt;            /* [NFLT][cap] ts, dur; NaN where missing or null */
    int64_t *ival;          /* [NINT][cap] */
    uint8_t *iok;           /* [NINT][cap] 1 where an integer was given */
    int32_t *code;          /* [NSTR][cap] the row's string: its code in the column, -1 none */
    int64_t *soff;          /* [NSTR][cap] string k of a column: offset in the block */
    int64_t *slen;          /* [NSTR][cap] and length */
    int32_t *op;            /* [cap] (cat, name) of each row, numbered by first appearance */
    int32_t *opcat;         /* [cap] each pair's cat code (-1 missing) */
    int32_t *opname;        /* [cap] and name code */
    int32_t *fil;           /* [cap] each row's file: fhash, else fname; -1 neither */
    int32_t *fcol;          /* [cap] each file's column (S_FHASH or S_FNAME) */
    int32_t *fcode;         /* [cap] and code in it */
    int64_t *moff;          /* [cap] metadata lines: offset */
    int64_t *mlen;          /* [cap] and length */
    int64_t nstr[NSTR];     /* out: distinct strings of each column */
    int64_t nop, nfil, nmeta, nrec;     /* out */
    int64_t fail_at;        /* out: offset of the line not read (-1) */
};

static locale_t c_locale;

__attribute__((constructor)) static void scan_init(void)
{
    c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

int dc_scan_abi(void)
{
    return DC_SCAN_ABI;
}

/* ---- hashing and interning ------------------------------------------------------ */

static inline uint64_t hash_bytes(const unsigned char *s, int64_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n, w;
    while (n >= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    if (n) {
        w = 0;
        memcpy(&w, s, (size_t)n);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
    }
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

static inline uint64_t hash_u64(uint64_t k)
{
    k *= 0x9E3779B97F4A7C15ull;
    return k ^ (k >> 31);
}

/* Equal bytes (short strings: cheaper than a call to memcmp). */
static inline int same(const unsigned char *a, const unsigned char *b, int64_t n)
{
    uint64_t x, y;
    for (; n >= 8; a += 8, b += 8, n -= 8) {
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y)
            return 0;
    }
    while (n--)
        if (*a++ != *b++)
            return 0;
    return 1;
}

/* A string's first 16 bytes, zero-padded: a table slot keeps them, so that our strings
 * (names, categories, 16-hex-digit hashes) are found without reading the block again.
 * The padding is no text: a string here holds no NUL (control characters are refused). */
struct head {
    uint64_t a, b;
};

static inline struct head head16(const unsigned char *s, int64_t n, const unsigned char *end)
{
    struct head h = {0, 0};
    if (end - s >= 16) {
        memcpy(&h.a, s, 8);
        memcpy(&h.b, s + 8, 8);
    } else
        memcpy(&h, s, (size_t)(n < 16 ? n : 16));  /* the string is in the block */
    if (n < 16) {
        h.b &= n <= 8 ? 0 : ~0ull >> (128 - 8 * n);
        h.a &= n >= 8 ? ~0ull : (1ull << (8 * n)) - 1;
    }
    return h;
}

/* Its hash: the table takes the top bits (both products mix all of a word into them). */
static inline uint64_t hash_str(struct head h, const unsigned char *s, int64_t n)
{
    uint64_t tail = n > 16 ? hash_bytes(s + 16, n - 16) : 0;
    return h.a * 0x9E3779B97F4A7C15ull ^ (h.b ^ tail) * 0xff51afd7ed558ccdull;
}

/* Open addressing; code + 1 (0: empty). */
struct sslot {
    uint64_t a, b;          /* head16 */
    int64_t len;
    int32_t code1, pad;
};

struct strings {            /* one string column of a block */
    struct sslot *slot;
    uint64_t mask;
    int shift;              /* 64 - log2(slots) */
    int64_t n;
    const unsigned char *buf, *end;
    int64_t *off, *len;
    struct head last;       /* the last string looked up, and its code */
    const unsigned char *last_s;
    int64_t last_len;
    int32_t last_code;
};

static int strings_table(struct strings *c, int bits)
{
    c->slot = calloc((size_t)1 << bits, sizeof *c->slot);
    c->mask = ((uint64_t)1 << bits) - 1;
    c->shift = 64 - bits;
    return c->slot != NULL;
}

static int strings_grow(struct strings *c)
{
    struct sslot *old = c->slot;
    uint64_t size = c->mask + 1;
    if (!strings_table(c, 64 - c->shift + 1))
        return 0;
    for (uint64_t i = 0; i < size; i++) {
        if (!old[i].code1)
            continue;
        struct head k = {old[i].a, old[i].b};
        uint64_t h = hash_str(k, c->buf + c->off[old[i].code1 - 1], old[i].len) >> c->shift;
        while (c->slot[h].code1)
            h = (h + 1) & c->mask;
        c->slot[h] = old[i];
    }
    free(old);
    return 1;
}

/* The code of string s in its column (new strings numbered by first appearance); -2: no memory. */
static inline int32_t intern(struct strings *c, const unsigned char *s, int64_t n)
{
    struct head k = head16(s, n, c->end);
    if (k.a == c->last.a && k.b == c->last.b && n == c->last_len &&
        (n <= 16 || same(s + 16, c->last_s + 16, n - 16)))
        return c->last_code;
    uint64_t h = hash_str(k, s, n) >> c->shift;
    struct sslot *e;
    for (; (e = &c->slot[h])->code1; h = (h + 1) & c->mask)
        if (e->a == k.a && e->b == k.b && e->len == n &&
            (n <= 16 || same(c->buf + c->off[e->code1 - 1] + 16, s + 16, n - 16)))
            goto found;
    c->off[c->n] = s - c->buf;
    c->len[c->n] = n;
    e->a = k.a;
    e->b = k.b;
    e->len = n;
    e->code1 = (int32_t)++c->n;
    if ((uint64_t)c->n * 2 > c->mask) {
        int32_t code = e->code1 - 1;
        if (!strings_grow(c))
            return -2;
        c->last_len = -1;          /* e moved */
        return code;
    }
found:
    c->last = k;
    c->last_s = s;
    c->last_len = n;
    c->last_code = e->code1 - 1;
    return e->code1 - 1;
}

/* (a, b) code pairs numbered by first appearance. Codes are small numbers of first
 * appearance too: a pair of small ones (operations: a few categories and tens of names;
 * a block's first files) is found in a direct map, any other in a hash table whose slot
 * keeps its pair. */
enum { PAIR_DIRECT = 4096 };

struct pslot {
    uint64_t key;
    int32_t code1, pad;     /* code + 1 (0: empty) */
};

struct pairs {
    int32_t *direct;        /* [a + 1][b + 1] code + 1, for a + 1 < PAIR_DIRECT >> bbits */
    int bbits;              /* and b + 1 < 2^bbits */
    struct pslot *slot;
    uint64_t mask;
    int64_t used;           /* slots in use */
    int64_t n;
    int32_t *a, *b;
};

static inline uint64_t pair_key(int32_t a, int32_t b)
{
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static int pairs_table(struct pairs *p, uint64_t size)
{
    p->slot = calloc(size, sizeof *p->slot);
    p->mask = size - 1;
    return p->slot != NULL;
}

static int pairs_init(struct pairs *p, int bbits, int32_t *a, int32_t *b)
{
    p->bbits = bbits;
    p->a = a;
    p->b = b;
    p->direct = calloc(PAIR_DIRECT, sizeof *p->direct);
    return p->direct && pairs_table(p, 256);
}

static int pairs_grow(struct pairs *p)
{
    struct pslot *old = p->slot;
    uint64_t size = p->mask + 1;
    if (!pairs_table(p, size * 2))
        return 0;
    for (uint64_t i = 0; i < size; i++) {
        if (!old[i].code1)
            continue;
        uint64_t h = hash_u64(old[i].key) & p->mask;
        while (p->slot[h].code1)
            h = (h + 1) & p->mask;
        p->slot[h] = old[i];
    }
    free(old);
    return 1;
}

static inline int32_t pair(struct pairs *p, int32_t a, int32_t b)
{
    uint32_t ia = (uint32_t)(a + 1), ib = (uint32_t)(b + 1);   /* -1 (none) is 0 */
    int32_t code;
    if (ia < (uint32_t)(PAIR_DIRECT >> p->bbits) && ib < (1u << p->bbits)) {
        int32_t *d = &p->direct[ia << p->bbits | ib];
        if (*d)
            return *d - 1;
        code = (int32_t)p->n++;
        *d = code + 1;
    } else {
        uint64_t key = pair_key(a, b), h = hash_u64(key) & p->mask;
        struct pslot *e;
        for (; (e = &p->slot[h])->code1; h = (h + 1) & p->mask)
            if (e->key == key)
                return e->code1 - 1;
        code = (int32_t)p->n++;
        e->key = key;
        e->code1 = code + 1;
        if ((uint64_t)++p->used * 2 > p->mask && !pairs_grow(p))
            return -2;
    }
    p->a[code] = a;
    p->b[code] = b;
    return code;
}

/* ---- JSON pieces ---------------------------------------------------------------- */

typedef const unsigned char *cp;

static inline cp ws(cp p, cp end)
{
    /* our writer puts no whitespace between tokens: one compare decides that case (the
     * three whitespace bytes are all <= ' ', every token's first byte is above it) */
    if (p < end && *p > ' ')
        return p;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

/* After the lead byte p[0] >= 0x80 of a UTF-8 sequence: its end, or NULL when it is not
 * one Python's strict UTF-8 decoder accepts (overlong forms, surrogates, > U+10FFFF). */
static cp utf8(cp p, cp end)
{
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    int more;
    if (c >= 0xC2 && c <= 0xDF)
        more = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        more = 2;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        more = 3;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return NULL;
    if (end - p <= more || p[1] < lo || p[1] > hi)
        return NULL;
    for (int k = 2; k <= more; k++)
        if (p[k] < 0x80 || p[k] > 0xBF)
            return NULL;
    return p + 1 + more;
}

/* A string without escapes at p (on its quote): its end after the closing quote, its
 * text in [*s, *s + *n); NULL when it has an escape, a control character or bad UTF-8. */
static inline __attribute__((always_inline)) cp string(cp p, cp end, cp *s, int64_t *n)
{
    cp q = ++p;
    for (;;) {
#if defined(__SSE2__)
        /* sixteen plain bytes at a time (a hash is 16): none a quote, a backslash, < 0x20
         * or >= 0x80 (a signed compare with 0x20 finds both) */
        while (end - q >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)q);
            __m128i hit = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')),
                             _mm_cmpeq_epi8(x, _mm_set1_epi8('\\'))),
                _mm_cmplt_epi8(x, _mm_set1_epi8(0x20)));
            unsigned m = (unsigned)_mm_movemask_epi8(hit);
            if (m) {
                q += __builtin_ctz(m);
                goto stop;
            }
            q += 16;
        }
#endif
        /* eight plain bytes at a time: none a quote, a backslash, < 0x20 or >= 0x80
         * (a borrow can mark bytes after a real match, never before it) */
        while (end - q >= 8) {
            uint64_t x, ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
            memcpy(&x, q, 8);
            uint64_t qt = x ^ (ones * '"'), bs = x ^ (ones * '\\');
            uint64_t hit = ((qt - ones) & ~qt) | ((bs - ones) & ~bs) |
                           ((x - ones * 0x20) & ~x) | x;
            hit &= high;
            if (hit) {
                q += __builtin_ctzll(hit) >> 3;
                break;
            }
            q += 8;
        }
#if defined(__SSE2__)
    stop:
#endif
        if (q >= end)
            return NULL;
        unsigned c = *q;
        if (c == '"')
            break;
        if (c < 0x20 || c == '\\')
            return NULL;
        if (c < 0x80)
            q++;
        else if (!(q = utf8(q, end)))
            return NULL;
    }
    *s = p;
    *n = q - p;
    return q + 1;
}

/* Whether the 8 bytes at p are all digits, and their value (SWAR: little-endian, the
 * first digit in the lowest byte). */
static inline int eight_digits(cp p, uint64_t *out)
{
    uint64_t x;
    memcpy(&x, p, 8);
    if (((x & 0xF0F0F0F0F0F0F0F0ull) | (((x + 0x0606060606060606ull) & 0xF0F0F0F0F0F0F0F0ull) >> 4))
        != 0x3333333333333333ull)
        return 0;
    x = (x & 0x0F0F0F0F0F0F0F0Full) * 2561 >> 8;
    x = (x & 0x00FF00FF00FF00FFull) * 6553601 >> 16;
    *out = (x & 0x0000FFFF0000FFFFull) * 42949672960001ull >> 32;
    return 1;
}

/* A JSON number at p: its end, or NULL when the grammar is not JSON's. Its digits are
 * gathered on the way (v: the integer of all its digits without the point, exact while
 * sig, the digits from the first non-zero one, is at most 19; k: digits after the point). */
struct num {
    cp start, end;
    uint64_t v;
    int neg, plain, sig, k;     /* plain: no fraction, no exponent */
    int expo;                   /* an exponent was given */
};

static inline cp number(cp p, cp end, struct num *m)
{
    uint64_t v = 0;
    int sig = 0;
    m->start = p;
    m->neg = 0;
    if (__builtin_expect(p < end && *p == '-', 0)) {   /* a branch: see small_int */
        m->neg = 1;
        p++;
    }
    if (p >= end)
        return NULL;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9') {
        uint64_t d;
        /* a timestamp has 16 digits before its point: eight at a time (v wraps as the
         * digit loop's does when there are more than 19) */
        for (; end - p >= 8 && eight_digits(p, &d); p += 8, sig += 8)
            v = v * 100000000 + d;
        for (; p < end && (unsigned)(*p - '0') <= 9; p++) {
            v = v * 10 + (uint64_t)(*p - '0');
            sig++;
        }
    } else
        return NULL;
    m->plain = 1;
    m->k = 0;
    m->expo = 0;
    if (p < end && *p == '.') {
        cp f = ++p, nz;
        for (; p < end && (unsigned)(*p - '0') <= 9; p++)
            v = v * 10 + (uint64_t)(*p - '0');
        if (p == f)
            return NULL;
        if (sig)                                /* every digit after the point counts */
            sig += (int)(p - f);
        else {                                  /* 0.00ddd: from the first non-zero one */
            for (nz = f; nz < p && *nz == '0'; nz++)
                ;
            sig = (int)(p - nz);
        }
        m->k = (int)(p - f);
        m->plain = 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        cp e = p;
        while (p < end && (unsigned)(*p - '0') <= 9)
            p++;
        if (p == e)
            return NULL;
        m->plain = 0;
        m->expo = 1;
    }
    m->v = v;
    m->sig = sig;
    m->end = p;
    return p;
}

/* An integer token as Python's int, when it fits an int64. */
static inline int int64_of(const struct num *m, int64_t *out)
{
    if (!m->plain || m->sig > 19)
        return 0;
    uint64_t v = m->v;                          /* 19 digits cannot wrap a uint64 */
    if (m->neg) {
        if (v > (uint64_t)1 << 63)
            return 0;
        *out = (int64_t)(0 - v);
    } else {
        if (v > (uint64_t)INT64_MAX)
            return 0;
        *out = (int64_t)v;
    }
    return 1;
}

static const double POW10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
static const uint64_t POW10U[20] = {
    1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull, 100000000ull,
    1000000000ull, 10000000000ull, 100000000000ull, 1000000000000ull, 10000000000000ull,
    100000000000000ull, 1000000000000000ull, 10000000000000000ull, 100000000000000000ull,
    1000000000000000000ull, 10000000000000000000ull};

/* m / 10^k correctly rounded (to nearest, ties to even), for m < 2^64, 10^k < 2^64:
 * a quotient of at least 55 bits from 128-bit integer division, then rounded to 53
 * with the remainder as the sticky bit. */
static double div_pow10(uint64_t m, int k)
{
    uint64_t p = POW10U[k];
    int bm = 64 - __builtin_clzll(m), bp = 64 - __builtin_clzll(p);
    int s = 55 + bp - bm;
    if (s < 0)
        s = 0;
    unsigned __int128 n = (unsigned __int128)m << s;
    uint64_t q, rem;
#if defined(__x86_64__)
    /* one divq: the quotient (< 2^56) fits its 64 bits */
    uint64_t hi = (uint64_t)(n >> 64), lo = (uint64_t)n;
    __asm__("divq %4" : "=a"(q), "=d"(rem) : "a"(lo), "d"(hi), "rm"(p));
#else
    q = (uint64_t)(n / p);
    rem = (uint64_t)(n - (unsigned __int128)q * p);
#endif
    int sticky = rem != 0;
    int drop = 64 - __builtin_clzll(q) - 53;
    uint64_t mant = q >> drop, rest = q & (((uint64_t)1 << drop) - 1);
    uint64_t half = (uint64_t)1 << (drop - 1);
    if (rest > half || (rest == half && (sticky || (mant & 1))))
        mant++;
    /* mant * 2^(drop - s), a normal double: its bits directly (no call to ldexp); a mant
     * rounded up to 2^53 carries into the exponent, as it should */
    uint64_t bits = ((uint64_t)(drop - s + 1074) << 52) + mant;
    double x;
    memcpy(&x, &bits, 8);
    return x;
}

/* A number token as Python's json gives it, as a float: 1 done; 0 not one this reads
 * exactly (out of range: the caller gives the block back). */
static int double_of(const struct num *m, double *out)
{
    if (!m->expo) {                             /* no exponent: the exact paths */
        uint64_t v = m->v;
        int k = m->k;
        if (m->sig <= 19) {
            double x;
            if (v == 0) {                       /* an int -0 is 0; a float -0.0 keeps its sign */
                *out = m->neg && !m->plain ? -0.0 : 0.0;
                return 1;
            }
            if (k == 0)
                x = (double)v;
            else if (v < (uint64_t)1 << 53 && k <= 22)
                x = (double)v / POW10[k];       /* both exact: one correctly rounded division */
            else if (k <= 19)
                x = div_pow10(v, k);
            else
                goto slow;
            *out = m->neg ? -x : x;
            return 1;
        }
        if (m->plain)
            return 0;                           /* a huge integer: Python's int, not ours */
    }
slow:;
    char tmp[128];
    int64_t len = m->end - m->start;
    if (len >= (int64_t)sizeof tmp || c_locale == (locale_t)0)
        return 0;
    memcpy(tmp, m->start, (size_t)len);
    tmp[len] = 0;
    double x = strtod_l(tmp, NULL, c_locale);   /* glibc's: correctly rounded */
    if (isinf(x) || (x == 0 && !m->plain && strpbrk(tmp, "123456789") != NULL))
        return 0;                               /* overflow or underflow: leave it to Python */
    *out = x;
    return 1;
}

/* Test hook: the float of one JSON number token (1), or 0 when dc_scan would decline it. */
int dc_scan_double(const char *s, int64_t len, double *out)
{
    struct num m;
    cp end = (cp)s + len;
    if (number((cp)s, end, &m) != end)
        return 0;
    return double_of(&m, out);
}

/* ---- a line ----------------------------------------------------------------------- */

static inline int key_top(cp s, int64_t n)
{
    switch (n) {
    case 2:
        if (!memcmp(s, "ts", 2)) return K_FLT | F_TS;
        if (!memcmp(s, "ph", 2)) return K_PH;
        break;
    case 3:
        if (!memcmp(s, "cat", 3)) return K_STR | S_CAT;
        if (!memcmp(s, "pid", 3)) return K_INT | I_PID;
        if (!memcmp(s, "tid", 3)) return K_INT | I_TID;
        if (!memcmp(s, "dur", 3)) return K_FLT | F_DUR;
        break;
    case 4:
        if (!memcmp(s, "name", 4)) return K_STR | S_NAME;
        if (!memcmp(s, "args", 4)) return K_ARGS;
        break;
    }
    return K_OTHER;
}

static inline int key_args(cp s, int64_t n)
{
    switch (n) {
    case 3:
        if (!memcmp(s, "ret", 3)) return K_INT | I_RET;
        break;
    case 4:
        if (!memcmp(s, "size", 4)) return K_INT | I_SIZE;
        break;
    case 5:
        if (!memcmp(s, "fhash", 5)) return K_STR | S_FHASH;
        if (!memcmp(s, "hhash", 5)) return K_STR | S_HHASH;
        if (!memcmp(s, "fname", 5)) return K_STR | S_FNAME;
        if (!memcmp(s, "count", 5)) return K_INT | I_COUNT;
        if (!memcmp(s, "errno", 5)) return K_INT | I_ERRNO;
        if (!memcmp(s, "flags", 5)) return K_INT | I_FLAGS;
        if (!memcmp(s, "ftype", 5)) return K_STR | S_FTYPE;
        break;
    case 6:
        if (!memcmp(s, "offset", 6)) return K_INT | I_OFFSET;
        if (!memcmp(s, "fhash2", 6)) return K_STR | S_FHASH2;
        if (!memcmp(s, "ftype2", 6)) return K_STR | S_FTYPE2;
        break;
    }
    return K_OTHER;
}

struct line {
    cp s[NSTR];
    int64_t n[NSTR];        /* -1: missing or null */
    int64_t iv[NINT];
    uint8_t ok[NINT];
    double f[NFLT];
    int ph;                 /* 'X', 'M', 0 missing, -1 another */
};

static inline void line_init(struct line *ln)
{
    for (int c = 0; c < NSTR; c++)
        ln->n[c] = -1;
    memset(ln->ok, 0, sizeof ln->ok);
    ln->f[F_TS] = ln->f[F_DUR] = NAN;
    ln->ph = 0;
}

/* The common integer (-?(0|[1-9][0-9]{0,17}) followed by neither a digit, a point nor an
 * exponent) into *out: its end, or NULL for anything else, which number() then reads
 * as before (so both accept and refuse exactly the same tokens). */
static inline cp small_int(cp p, cp end, int64_t *out)
{
    cp q = p;
    uint64_t v;
    /* a (predicted) branch: as a sum, p + (*p == '-'), the digits' loads would wait for
     * the sign's, on the chain from one field to the next */
    if (__builtin_expect(q < end && *q == '-', 0))
        q++;
    if (q >= end || (unsigned)(*q - '0') > 9)
        return NULL;
    v = (uint64_t)(*q++ - '0');
    if (v) {
        cp first = q - 1;
        for (; q < end && (unsigned)(*q - '0') <= 9; q++)
            v = v * 10 + (uint64_t)(*q - '0');  /* (wraps past 19 digits: refused below) */
        if (q - first > 18)
            return NULL;
    } else if (q < end && (unsigned)(*q - '0') <= 9)
        return NULL;                            /* a leading zero */
    if (q < end && (*q == '.' || (*q | 0x20) == 'e'))      /* 'e' or 'E' */
        return NULL;
    *out = *p == '-' ? -(int64_t)v : (int64_t)v;
    return q;
}

/* A scalar that is not one of ours (true, false, null, a string, a number): its end. */
static inline cp other_scalar(cp p, cp end)
{
    cp s;
    int64_t n;
    struct num m;
    switch (*p) {
    case '"':
        return string(p, end, &s, &n);
    case 't':
        return end - p >= 4 && !memcmp(p, "true", 4) ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && !memcmp(p, "false", 5) ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && !memcmp(p, "null", 4) ? p + 4 : NULL;
    default: {
        cp q = small_int(p, end, &n);    /* "id", "fd": most often small integers */
        return q ? q : number(p, end, &m);
    }
    }
}

static inline int is_null(cp p, cp end)
{
    return end - p >= 4 && *p == 'n' && !memcmp(p, "null", 4);
}


/* The value at p of field `kind` (a K_ class | column) into ln: its end, or NULL. */
static inline cp value(cp p, cp end, int kind, struct line *ln)
{
    int col = kind & 0xff;
    struct num m;
    switch (kind & 0xf00) {
    case K_STR:
        if (*p == '"')
            return string(p, end, &ln->s[col], &ln->n[col]);
        if (col != S_FHASH2 && is_null(p, end))  /* the dict path counts a null fhash2 */
            return p + 4;
        return NULL;
    case K_INT: {
        cp q = small_int(p, end, &ln->iv[col]);
        if (q) {
            ln->ok[col] = 1;
            return q;
        }
        if (is_null(p, end))
            return p + 4;
        if (!(p = number(p, end, &m)) || !int64_of(&m, &ln->iv[col]))
            return NULL;
        ln->ok[col] = 1;
        return p;
    }
    case K_FLT:
        if (is_null(p, end))
            return p + 4;
        if (!(p = number(p, end, &m)) || !double_of(&m, &ln->f[col]))
            return NULL;
        return p;
    }
    return other_scalar(p, end);
}

/* The keys our writer emits, in its order (trace/writer.py): a key is first compared
 * with the next ones expected, as `"key":` literals (8 bytes at a time), and read as a
 * JSON string only when none matches (another producer, another order, whitespace).
 * Either way the key and its field are the same: a literal holds no escape. */
struct lit {
    uint64_t w, mask;       /* the literal's first 8 bytes, and which of them count */
    uint64_t w2, mask2;     /* its bytes 8..15 (none: mask2 0) */
    const char *text;
    int len, kind;
    uint64_t bit;           /* its field's bit in object()'s `seen` (0: K_OTHER) */
};

static struct lit TOP_LIT[] = {
    {0, 0, 0, 0, "\"id\":", 0, K_OTHER}, {0, 0, 0, 0, "\"name\":", 0, K_STR | S_NAME},
    {0, 0, 0, 0, "\"cat\":", 0, K_STR | S_CAT}, {0, 0, 0, 0, "\"pid\":", 0, K_INT | I_PID},
    {0, 0, 0, 0, "\"tid\":", 0, K_INT | I_TID}, {0, 0, 0, 0, "\"ts\":", 0, K_FLT | F_TS},
    {0, 0, 0, 0, "\"dur\":", 0, K_FLT | F_DUR}, {0, 0, 0, 0, "\"ph\":", 0, K_PH},
    {0, 0, 0, 0, "\"args\":", 0, K_ARGS}};
static struct lit ARGS_LIT[] = {
    {0, 0, 0, 0, "\"hhash\":", 0, K_STR | S_HHASH}, {0, 0, 0, 0, "\"fhash\":", 0, K_STR | S_FHASH},
    {0, 0, 0, 0, "\"fname\":", 0, K_STR | S_FNAME}, {0, 0, 0, 0, "\"fd\":", 0, K_OTHER},
    {0, 0, 0, 0, "\"fd2\":", 0, K_OTHER}, {0, 0, 0, 0, "\"fhash2\":", 0, K_STR | S_FHASH2},
    {0, 0, 0, 0, "\"ftype2\":", 0, K_STR | S_FTYPE2}, {0, 0, 0, 0, "\"count\":", 0, K_INT | I_COUNT},
    {0, 0, 0, 0, "\"offset\":", 0, K_INT | I_OFFSET}, {0, 0, 0, 0, "\"size\":", 0, K_INT | I_SIZE},
    {0, 0, 0, 0, "\"ret\":", 0, K_INT | I_RET}, {0, 0, 0, 0, "\"errno\":", 0, K_INT | I_ERRNO},
    {0, 0, 0, 0, "\"flags\":", 0, K_INT | I_FLAGS}, {0, 0, 0, 0, "\"ftype\":", 0, K_STR | S_FTYPE}};
#define NTOP_LIT (int)(sizeof TOP_LIT / sizeof TOP_LIT[0])
#define NARGS_LIT (int)(sizeof ARGS_LIT / sizeof ARGS_LIT[0])

/* A field's bit in object()'s `seen` (duplicates), 0 for K_OTHER: 8 bits a class. */
static inline uint64_t field_bit(int kind)
{
    return kind == K_OTHER ? 0 : 1ull << ((kind >> 8) * 8 + (kind & 0xff));
}

static void lit_init(struct lit *l, int n)
{
    for (int i = 0; i < n; i++) {
        int len = (int)strlen(l[i].text), k = len < 8 ? len : 8, k2 = len - k;
        l[i].len = len;
        l[i].w = l[i].w2 = 0;
        memcpy(&l[i].w, l[i].text, (size_t)k);
        l[i].mask = k == 8 ? ~0ull : ((1ull << (8 * k)) - 1);
        memcpy(&l[i].w2, l[i].text + k, (size_t)k2);       /* literals are at most 16 */
        l[i].mask2 = k2 == 8 ? ~0ull : ((1ull << (8 * k2)) - 1);
        l[i].bit = field_bit(l[i].kind);
    }
}

__attribute__((constructor)) static void lits_init(void)
{
    lit_init(TOP_LIT, NTOP_LIT);
    lit_init(ARGS_LIT, NARGS_LIT);
}

/* The literal of the key at p when it is one of lits[*cur..] verbatim (*cur moved past
 * it), else NULL. The caller leaves 16 bytes after p. */
static inline const struct lit *key_lit(cp p, const struct lit *lits, int n, int *cur)
{
    uint64_t w, w2;
    memcpy(&w, p, 8);
    memcpy(&w2, p + 8, 8);
    for (int k = *cur; k < n; k++) {
        const struct lit *l = &lits[k];
        if ((w & l->mask) == l->w && (w2 & l->mask2) == l->w2) {
            *cur = k + 1;
            return l;
        }
    }
    return NULL;
}

/* An object's members: each key's field from its literal, else key_top/key_args (the
 * same field either way); `seen` catches duplicate fields. Whitespace is looked for
 * only where the writer's byte is not found (it writes none). */
static cp object(cp p, cp end, struct line *ln, int top)
{
    uint64_t seen = 0, bit;
    cp s;
    int64_t n;
    const struct lit *lits = top ? TOP_LIT : ARGS_LIT, *l;
    int nlits = top ? NTOP_LIT : NARGS_LIT, cur = 0, kind;
    p = ws(p + 1, end);
    if (p < end && *p == '}')
        return p + 1;
    for (;;) {
        if (end - p >= 16 && (l = key_lit(p, lits, nlits, &cur))) {
            p += l->len;                /* literals are at most 9 bytes: p < end */
            kind = l->kind;
            bit = l->bit;
            if (*p <= ' ')
                p = ws(p, end);
        } else {
            p = ws(p, end);
            if (p >= end || *p != '"' || !(p = string(p, end, &s, &n)))
                return NULL;
            kind = top ? key_top(s, n) : key_args(s, n);
            bit = field_bit(kind);
            p = ws(p, end);
            if (p >= end || *p != ':')
                return NULL;
            p = ws(p + 1, end);
        }
        if (p >= end)
            return NULL;
        if (bit) {
            if (seen & bit)
                return NULL;
            seen |= bit;
        }
        if (kind == K_PH) {
            if (end - p >= 3 && p[0] == '"' && (p[1] == 'X' || p[1] == 'M') && p[2] == '"') {
                ln->ph = p[1];          /* the writer's own: "X" or "M" */
                p += 3;
            } else {
                if (*p != '"' || !(p = string(p, end, &s, &n)))
                    return NULL;
                ln->ph = n == 1 && (*s == 'X' || *s == 'M') ? *s : -1;
            }
        } else if (kind == K_ARGS) {
            if (*p == '{')
                p = object(p, end, ln, 0);
            else if (is_null(p, end))
                p += 4;
            else
                return NULL;
        } else
            p = value(p, end, kind, ln);
        if (!p || p >= end)
            return NULL;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == '}')
            return p + 1;
        p = ws(p, end);
        if (p >= end)
            return NULL;
        if (*p == '}')
            return p + 1;
        if (*p != ',')
            return NULL;
        p++;
    }
}

/* Whether p begins with the literal s of n bytes (at most 16; a constant, so its words
 * and masks fold into the code); never when fewer than 16 bytes are left. */
static inline __attribute__((always_inline)) int has(cp p, cp end, const char *s, int n)
{
    uint64_t w, l = 0, mask = n >= 8 ? ~0ull : (1ull << (8 * n)) - 1;
    if (end - p < 16)
        return 0;
    memcpy(&w, p, 8);
    memcpy(&l, s, (size_t)(n < 8 ? n : 8));
    if ((w & mask) != l)
        return 0;
    if (n <= 8)
        return 1;
    uint64_t w2, l2 = 0, mask2 = n >= 16 ? ~0ull : (1ull << (8 * (n - 8))) - 1;
    memcpy(&w2, p + 8, 8);
    memcpy(&l2, s + 8, (size_t)(n - 8));
    return (w2 & mask2) == l2;
}
#define HAS(p, end, lit) has(p, end, lit, (int)sizeof(char[sizeof lit <= 17 ? 1 : -1]) * 0 + \
                                 (int)sizeof lit - 1)      /* (a longer literal: no build) */

/* Values as value() reads them, of the forms the writer gives (NULL for any other). */
static inline cp str_field(cp p, cp end, struct line *ln, int col)
{
    return *p == '"' ? string(p, end, &ln->s[col], &ln->n[col]) : NULL;
}

static inline cp int_field(cp p, cp end, struct line *ln, int col)
{
    if ((p = small_int(p, end, &ln->iv[col])))
        ln->ok[col] = 1;
    return p;
}

static inline cp flt_field(cp p, cp end, struct line *ln, int col)
{
    struct num m;
    return (p = number(p, end, &m)) && double_of(&m, &ln->f[col]) ? p : NULL;
}

static inline cp other_int(cp p, cp end, struct line *ln, int col)    /* id, fd, fd2 */
{
    int64_t v;
    (void)ln, (void)col;
    return small_int(p, end, &v);
}

/* Our writer's complete event, read straight through: its keys in its order (TOP_LIT's,
 * then some of ARGS_LIT's in theirs), no whitespace, no null, each value of the common
 * form. It fills ln as object() would (the same fields, read by the same functions);
 * NULL for anything else, which object() then reads from the start. Straight code with
 * constant keys: no key loop, no field dispatch, no duplicate bits (keys in a fixed
 * order cannot repeat). */
static cp writer_line(cp p, cp end, struct line *ln)
{
#define TOP(lit, read, col) (HAS(p, end, lit) && (p = read(p + sizeof lit - 1, end, ln, col)))
    if (!TOP("{\"id\":", other_int, 0) || !TOP(",\"name\":", str_field, S_NAME) ||
        !TOP(",\"cat\":", str_field, S_CAT) || !TOP(",\"pid\":", int_field, I_PID) ||
        !TOP(",\"tid\":", int_field, I_TID) || !TOP(",\"ts\":", flt_field, F_TS) ||
        !TOP(",\"dur\":", flt_field, F_DUR) || !HAS(p, end, ",\"ph\":\"X\"") ||
        !HAS(p + 9, end, ",\"args\":{"))
        return NULL;
#undef TOP
    ln->ph = 'X';
    p += 17;                            /* at the '{' */
    /* each argument the writer may give, in its order, after '{' (the first) or ',' */
    char sep = '{';
#define ARG(lit, read, col)                                                               \
    if (end - p > 16 && *p == sep && HAS(p + 1, end, lit)) {                              \
        if (!(p = read(p + sizeof lit, end, ln, col)))                                    \
            return NULL;                                                                  \
        sep = ',';                                                                        \
    }
    ARG("\"hhash\":", str_field, S_HHASH)
    ARG("\"fhash\":", str_field, S_FHASH)
    ARG("\"fname\":", str_field, S_FNAME)
    ARG("\"fd\":", other_int, 0)
    ARG("\"fd2\":", other_int, 0)
    ARG("\"fhash2\":", str_field, S_FHASH2)
    ARG("\"ftype2\":", str_field, S_FTYPE2)
    ARG("\"count\":", int_field, I_COUNT)
    ARG("\"offset\":", int_field, I_OFFSET)
    ARG("\"size\":", int_field, I_SIZE)
    ARG("\"ret\":", int_field, I_RET)
    ARG("\"errno\":", int_field, I_ERRNO)
    ARG("\"flags\":", int_field, I_FLAGS)
    ARG("\"ftype\":", str_field, S_FTYPE)
#undef ARG
    if (end - p < 2 || p[0] != '}' || p[1] != '}')      /* (none read: p is on the '{') */
        return NULL;
    return p + 2;
}

/* Any JSON value, for a line Python will load anyway: its end (or NULL). */
static cp skip_any(cp p, cp end)
{
    int depth = 0;
    do {
        if (p >= end)
            return NULL;
        switch (*p) {
        case '"':
            for (p++; p < end && *p != '"'; p++)
                if (*p == '\\')
                    p++;
            if (p >= end)
                return NULL;
            p++;
            break;
        case '{':
        case '[':
            depth++;
            p++;
            break;
        case '}':
        case ']':
            if (--depth < 0)
                return NULL;
            p++;
            break;
        default:
            if (!depth) {
                while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' &&
                       *p != '\t' && *p != '\r')
                    p++;
                return p;
            }
            p++;
        }
    } while (depth);
    return p;
}

/* Whether a line the strict reading declined is a metadata line ("ph":"M" at the top
 * level, once): Python loads it, and checks it. */
static int is_meta(cp p, cp end)
{
    int ph = 0;
    cp s;
    int64_t n;
    p = ws(p, end);
    if (p >= end || *p != '{')
        return 0;
    p = ws(p + 1, end);
    if (p < end && *p == '}')
        return 0;
    for (;;) {
        if (p >= end || *p != '"' || !(p = string(p, end, &s, &n)))
            return 0;
        int is_ph = n == 2 && !memcmp(s, "ph", 2);
        p = ws(p, end);
        if (p >= end || *p != ':')
            return 0;
        p = ws(p + 1, end);
        if (is_ph) {
            cp v;
            if (ph || p >= end || *p != '"' || !(p = string(p, end, &v, &n)))
                return 0;
            ph = n == 1 && *v == 'M' ? 'M' : -1;
        } else if (!(p = skip_any(p, end)))
            return 0;
        p = ws(p, end);
        if (p >= end)
            return 0;
        if (*p == '}')
            break;
        if (*p != ',')
            return 0;
        p = ws(p + 1, end);
    }
    return ws(p + 1, end) == end && ph == 'M';
}

/* ---- a block ---------------------------------------------------------------------- */

struct state {
    struct strings str[NSTR];
    struct pairs ops, files;
};

static void state_free(struct state *st)
{
    for (int c = 0; c < NSTR; c++)
        free(st->str[c].slot);
    free(st->ops.slot);
    free(st->files.slot);
    free(st->ops.direct);
    free(st->files.direct);
}

/* Rows of the complete events of buf[0..len) (whole lines, no [ or ] lines) into out:
 * their count; -1 a line this does not read (out->fail_at: where); -2 more rows or
 * metadata lines than out->cap; -3 no memory. */
int64_t dc_scan(const char *buf, int64_t len, struct dc_scan *out)
{
    cp p = (cp)buf, end = p + len;
    int64_t cap = out->cap, r = 0, rc = -3;
    struct state st;
    memset(&st, 0, sizeof st);
    out->nmeta = out->nrec = out->nop = out->nfil = 0;
    out->fail_at = -1;
    for (int c = 0; c < NSTR; c++) {
        struct strings *s = &st.str[c];
        if (!strings_table(s, 8))
            goto done;
        s->buf = (cp)buf;
        s->end = end;
        s->off = out->soff + c * cap;
        s->len = out->slen + c * cap;
        s->last_len = -1;
    }
    /* direct maps: operations 16 x 256 (category codes below 15, name codes below 255),
     * files 8 x 512 (S_FHASH or S_FNAME, codes below 511) */
    if (!pairs_init(&st.ops, 8, out->opcat, out->opname) ||
        !pairs_init(&st.files, 9, out->fcol, out->fcode))
        goto done;
    if (len && end[-1] == '\n') {      /* a blank last line */
        out->fail_at = len;
        rc = -1;
        goto done;
    }
    while (p < end) {
        struct line ln;
        line_init(&ln);
        /* nothing of JSON's crosses a newline (a string refuses control characters), so
         * the object is read up to the block's end and must end its line */
        cp q = writer_line(p, end, &ln), nl;
        if (!q) {
            line_init(&ln);             /* what the writer's path filled before it gave up */
            q = ws(p, end);
            if (q < end && *q == '{')
                q = object(q, end, &ln, 1);
            else
                q = NULL;
        }
        if (q && (q = ws(q, end)) < end && *q != '\n')
            q = NULL;
        int strict = q != NULL;
        if (strict)
            nl = q;
        else if (!(nl = memchr(p, '\n', (size_t)(end - p))))
            nl = end;
        if (strict && ln.ph == 'X') {
            if (r == cap) {
                rc = -2;
                goto done;
            }
            int32_t code[NSTR];
            for (int c = 0; c < NSTR; c++) {
                code[c] = ln.n[c] < 0 ? -1 : intern(&st.str[c], ln.s[c], ln.n[c]);
                if (code[c] == -2)
                    goto done;
                out->code[c * cap + r] = code[c];
            }
            for (int i = 0; i < NINT; i++) {
                out->ival[i * cap + r] = ln.ok[i] ? ln.iv[i] : 0;
                out->iok[i * cap + r] = ln.ok[i];
            }
            out->flt[F_TS * cap + r] = ln.f[F_TS];
            out->flt[F_DUR * cap + r] = ln.f[F_DUR];
            int32_t op = pair(&st.ops, code[S_CAT], code[S_NAME]), fil = -1;
            if (code[S_FHASH] >= 0)
                fil = pair(&st.files, S_FHASH, code[S_FHASH]);
            else if (code[S_FNAME] >= 0)
                fil = pair(&st.files, S_FNAME, code[S_FNAME]);
            if (op == -2 || fil == -2)
                goto done;
            out->op[r] = op;
            out->fil[r] = fil;
            r++;
        } else if (strict ? ln.ph == 'M' : is_meta(p, nl)) {
            if (out->nmeta == cap) {
                rc = -2;
                goto done;
            }
            out->moff[out->nmeta] = p - (cp)buf;
            out->mlen[out->nmeta] = nl - p;
            out->nmeta++;
        } else {
            out->fail_at = p - (cp)buf;
            rc = -1;
            goto done;
        }
        p = nl + 1;
    }
    for (int c = 0; c < NSTR; c++)
        out->nstr[c] = st.str[c].n;
    out->nop = st.ops.n;
    out->nfil = st.files.n;
    out->nrec = r + out->nmeta;
    rc = r;
done:
    state_free(&st);
    return rc;
}
