/* The trace's event lines, formatted in C: the daemon's per-event cost (and the
 * conversion of ring-buffer records to trace rows that comes before, dc_convert).
 *
 * trace/fastlines.py compiles this at install time (`datacrumbs build-bpf`, like the BPF
 * object) and loads it with ctypes; without it, trace/writer.py formats the same bytes
 * with Python f-strings (about ten times the CPU). The Python side decides the layout of
 * a batch once (which columns, which values repeat) and hands over a short program of
 * operations; this file only runs it row by row. Numbers are written exactly as Python's
 * str(int) writes them, and nanoseconds as microseconds with three decimals by floor
 * division, as writer.us_text does, so both paths give identical bytes.
 */
#include <stdint.h>
#include <string.h>

#define DC_LINES_ABI 3

enum {
    OP_CONST = 0,   /* str[len] */
    OP_ID = 1,      /* first_id + row */
    OP_INT = 2,     /* str[len] then vals[row] (skipped with its prefix when mask[row]==0,
                       or when skip_neg and vals[row] < 0) */
    OP_US = 3,      /* vals[row] ns as microseconds "q.rrr" (negative: 0 when skip_neg) */
    OP_TABLE = 4,   /* entry idx[row] of the len entries of tbl (entry k: tbl[off[k]..
                       off[k+1]]); nothing for an index out of range */
    OP_RET = 5,     /* ,"ret":R  or  ,"ret":-1,"errno":E when idx[row] (errno) != 0;
                       nothing when mask[row]==0 */
};

/* One operation; every field 8 bytes (ctypes mirrors it in trace/fastlines.py). */
struct dc_op {
    int64_t kind;
    const char *str;
    int64_t len;
    const int64_t *vals;
    const int32_t *idx;
    const char *tbl;
    const int64_t *off;
    const uint8_t *mask;
    int64_t skip_neg;
};

static const char DIGITS2[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Exactly 8 digits of v (< 10^8), leading zeros kept: independent 32-bit steps. */
static inline void put8(char *p, uint32_t v)
{
    uint32_t a = v / 10000, b = v % 10000;
    memcpy(p, DIGITS2 + 2 * (a / 100), 2);
    memcpy(p + 2, DIGITS2 + 2 * (a % 100), 2);
    memcpy(p + 4, DIGITS2 + 2 * (b / 100), 2);
    memcpy(p + 6, DIGITS2 + 2 * (b % 100), 2);
}

/* Decimal digits of v (< 10^8) at p, no leading zeros; returns the end. */
static inline char *put_small(char *p, uint32_t v)
{
    int n = v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : v < 10000 ? 4 : v < 100000 ? 5
          : v < 1000000 ? 6 : v < 10000000 ? 7 : 8;
    char *e = p + n, *s = e;
    while (v >= 100) {
        s -= 2;
        memcpy(s, DIGITS2 + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10)
        memcpy(s - 2, DIGITS2 + 2 * v, 2);
    else
        s[-1] = (char)('0' + v);
    return e;
}

/* Decimal digits of v at p, as Python's str(int); returns the end. */
static inline char *put_u64(char *p, uint64_t v)
{
    if (v < 100000000)
        return put_small(p, (uint32_t)v);
    uint64_t hi = v / 100000000;
    uint32_t lo = (uint32_t)(v % 100000000);
    if (hi < 100000000) {
        p = put_small(p, (uint32_t)hi);
    } else {
        p = put_small(p, (uint32_t)(hi / 100000000));
        put8(p, (uint32_t)(hi % 100000000));
        p += 8;
    }
    put8(p, lo);
    return p + 8;
}

static inline char *put_i64(char *p, int64_t v)
{
    if (v < 0) {
        *p++ = '-';
        return put_u64(p, (uint64_t)0 - (uint64_t)v);
    }
    return put_u64(p, (uint64_t)v);
}

/* ns as microseconds with three decimals, by floor division (Python's divmod). */
static inline char *put_us(char *p, int64_t ns)
{
    int64_t q = ns / 1000, r = ns % 1000;
    if (r < 0) {
        r += 1000;
        q -= 1;
    }
    p = put_i64(p, q);
    p[0] = '.';
    p[1] = (char)('0' + r / 100);
    p[2] = (char)('0' + r / 10 % 10);
    p[3] = (char)('0' + r % 10);
    return p + 4;
}

int dc_lines_abi(void)
{
    return DC_LINES_ABI;
}

/* Run ``ops`` for rows 0..n-1 into out (cap bytes); the bytes written, or -1 if a
 * row could overflow cap (the caller sized cap from each op's longest output, so this
 * only guards against a wrong size). */
int64_t dc_format(const struct dc_op *ops, int64_t nops, int64_t n, int64_t first_id,
                  char *out, int64_t cap, int64_t row_max)
{
    char *p = out, *end = out + cap;
    for (int64_t i = 0; i < n; i++) {
        if (end - p < row_max)
            return -1;
        for (int64_t k = 0; k < nops; k++) {
            const struct dc_op *op = &ops[k];
            switch (op->kind) {
            case OP_CONST:
                memcpy(p, op->str, (size_t)op->len);
                p += op->len;
                break;
            case OP_ID:
                p = put_i64(p, first_id + i);
                break;
            case OP_INT: {
                int64_t v = op->vals[i];
                if ((op->mask && !op->mask[i]) || (op->skip_neg && v < 0))
                    break;
                memcpy(p, op->str, (size_t)op->len);
                p = put_i64(p + op->len, v);
                break;
            }
            case OP_US: {
                int64_t v = op->vals[i];
                p = put_us(p, (op->skip_neg && v < 0) ? 0 : v);
                break;
            }
            case OP_TABLE: {
                uint32_t e = (uint32_t)op->idx[i];
                if (e >= (uint64_t)op->len)
                    break;
                int64_t a = op->off[e], b = op->off[e + 1];
                memcpy(p, op->tbl + a, (size_t)(b - a));
                p += b - a;
                break;
            }
            case OP_RET: {
                if (op->mask && !op->mask[i])
                    break;
                int32_t e = op->idx[i];
                if (e == 0) {
                    memcpy(p, ",\"ret\":", 7);
                    p = put_i64(p + 7, op->vals[i]);
                } else {
                    memcpy(p, ",\"ret\":-1,\"errno\":", 18);
                    p = put_i64(p + 18, e);
                }
                break;
            }
            default:
                return -1;
            }
        }
    }
    return p - out;
}

/* Byte offsets of the fields dc_convert reads (a ring-buffer record, engine.EVENT_DTYPE)
 * and writes (a trace row, writer.OPS_DTYPE); trace/fastlines.py fills them from the
 * numpy dtypes and checks each field's type before using this. */
struct dc_layout {
    int64_t ev_stride, ev_ts, ev_dur, ev_pid, ev_tid, ev_probe, ev_fd, ev_ret, ev_count,
            ev_offset, ev_bytes, ev_fd2, ev_flags;
    int64_t op_stride, op_ts, op_dur, op_pid, op_tid, op_probe, op_ret, op_errno, op_fd,
            op_count, op_offset, op_size, op_fd2, op_flags, op_kind, op_kind2;
};

#define LD(T, p, off) ({ T v_; memcpy(&v_, (p) + (off), sizeof v_); v_; })
#define ST(T, p, off, v) do { T v_ = (T)(v); memcpy((p) + (off), &v_, sizeof v_); } while (0)

/* Ring-buffer records to trace rows in one pass (EventConverter.convert_rows' columns,
 * as its numpy code computes them): -1 (nothing written that matters) when a row's
 * probe is outside errno_kind, for the caller's numpy path to judge. */
int64_t dc_convert(const char *ev, int64_t n, char *ops, const struct dc_layout *L,
                   const uint8_t *kinds, const uint8_t *kinds2, const uint8_t *errno_kind,
                   int64_t nprobes)
{
    for (int64_t i = 0; i < n; i++) {
        const char *e = ev + i * L->ev_stride;
        char *o = ops + i * L->op_stride;
        uint32_t probe = LD(uint32_t, e, L->ev_probe);
        int64_t ret = LD(int64_t, e, L->ev_ret);
        uint64_t count = LD(uint64_t, e, L->ev_count);
        if ((int64_t)probe >= nprobes)
            return -1;
        ST(int64_t, o, L->op_ts, LD(uint64_t, e, L->ev_ts));
        ST(int64_t, o, L->op_dur, LD(uint64_t, e, L->ev_dur));
        ST(int64_t, o, L->op_pid, LD(uint32_t, e, L->ev_pid));
        ST(int64_t, o, L->op_tid, LD(uint32_t, e, L->ev_tid));
        ST(int32_t, o, L->op_probe, probe);
        if (ret < 0) {
            int64_t neg = (int64_t)((uint64_t)0 - (uint64_t)ret);   /* numpy's -ret */
            int64_t err = errno_kind[probe] ? (neg < 4095 ? neg : 4095) : 0;
            ST(int32_t, o, L->op_errno, err);
            ST(int64_t, o, L->op_ret, -1);
        } else {
            ST(int32_t, o, L->op_errno, 0);
            ST(int64_t, o, L->op_ret, ret);
        }
        ST(int64_t, o, L->op_fd, LD(int32_t, e, L->ev_fd));
        ST(int64_t, o, L->op_count, count > 0 ? (int64_t)count : -1);
        ST(int64_t, o, L->op_offset, LD(int64_t, e, L->ev_offset));
        ST(int64_t, o, L->op_size, LD(int64_t, e, L->ev_bytes));
        ST(int64_t, o, L->op_fd2, LD(int32_t, e, L->ev_fd2));
        ST(int64_t, o, L->op_flags, LD(uint32_t, e, L->ev_flags));
        ST(int8_t, o, L->op_kind, kinds ? kinds[i] : 0);
        ST(int8_t, o, L->op_kind2, kinds2 ? kinds2[i] : 0);
    }
    return 0;
}

/* Which columns of the trace rows ``ops`` hold one value (bit k: column k of
 * fastlines.UNIFORM_COLUMNS equals row 0's in every row), in one pass: the writer
 * turns those into constant text and formats only the others per row. */
uint64_t dc_uniform(const char *ops, int64_t n, const struct dc_layout *L)
{
    const int64_t off8[] = {L->op_pid, L->op_tid, L->op_ret, L->op_fd, L->op_count,
                            L->op_offset, L->op_size, L->op_fd2, L->op_flags};
    enum { N8 = sizeof off8 / sizeof off8[0] };
    int64_t first8[N8];
    uint64_t diff = 0;      /* bit k: column k differs somewhere */
    if (n <= 0)
        return 0;
    for (int k = 0; k < N8; k++)
        first8[k] = LD(int64_t, ops, off8[k]);
    int32_t probe0 = LD(int32_t, ops, L->op_probe), errno0 = LD(int32_t, ops, L->op_errno);
    int8_t kind0 = LD(int8_t, ops, L->op_kind), kind20 = LD(int8_t, ops, L->op_kind2);
    for (int64_t i = 1; i < n; i++) {
        const char *o = ops + i * L->op_stride;
        for (int k = 0; k < N8; k++)
            diff |= (uint64_t)(LD(int64_t, o, off8[k]) != first8[k]) << k;
        diff |= (uint64_t)(LD(int32_t, o, L->op_probe) != probe0) << N8;
        diff |= (uint64_t)(LD(int32_t, o, L->op_errno) != errno0) << (N8 + 1);
        diff |= (uint64_t)(LD(int8_t, o, L->op_kind) != kind0) << (N8 + 2);
        diff |= (uint64_t)(LD(int8_t, o, L->op_kind2) != kind20) << (N8 + 3);
    }
    return ~diff & ((1u << (N8 + 4)) - 1);
}
