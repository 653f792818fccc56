// odc mode (STREAMS.md "odc mode", stream version 2): tiles of two interleaved 32-bit rANS states, byte-wise
// renormalisation.
//
// stream = tile (one tile) or 00 | u8 T | u32 LE length of tiles 0..T-2 | tile 0 | ... (T in [2, 255]);
// tile = x0 | x1 | bytes, each state as its 3 or 4 significant bytes, most significant first ("drained": the
// decoder reads a state as it renormalises, x = 0 then x = x << 8 | byte while x < L). The first byte of a tile
// is never 00 (a state has 3 significant bytes or more), which tells the two stream layouts apart.
// Item j of a tile (escape bins and raw fields included) uses state j & 1. Lower bound L = 2^23; every state
// (initial, between items, final) lies in [L, 2^31).
//
// Output bound (encoder): every item emits at most two bytes. Before an item the state is in [L, 2^31), and
// bytes go out while x >= freq << 15 >= 2^15; after two of them x < 2^31 >> 16 = 2^15, so a third is never
// needed. A normal symbol is one item; an escape of an int32 symbol is at most 5 items (bin, 6-bit field, and
// at most three 16-bit fields for the at most 33 low bits of q = r + 1 < 2^34), so at most 10 bytes. The encoder
// keeps the invariant "free bytes >= 2 x symbols still to encode" and, before an escape, grows its buffer
// (moving the bytes already written) when fewer than `2 x symbols still to encode + 16` bytes are free. Every
// item starts with at least two free bytes (its speculative store needs them). So it never writes out of bounds.
//
// Decoder: the initial states are read by renormalisation from 0, so they lie in [L, 2^31); then x >> 16 is in
// [2^7, 2^15), so after an item x = freq (x >> 16) + cum - start lies in [2^7, 2^31) and at most two bytes bring
// it back to [L, 2^31), for any stream. All reads are bounds-checked: the fast loops run while two bytes per
// symbol they decode are left (a normal item reads at most two); escapes use checked reads. The last few bytes
// of a tile are decoded from a zero-padded copy, and reading into its padding is a truncated stream. Nothing
// it allocates depends on the stream's content.
//
// The hot loops avoid branches on renormalisation (cmov / adc; a rare second byte is a predictable branch),
// swaps (2x unrolled: the two states alternate by position) and reloads through pointers that may alias the
// output, and keep the states in registers (the rare paths work on copies). Measured (benchmarks/entropy_coder.py
// and a C++ harness, AMD Zen 5): a fast symbol is about 42 instructions; with one table the loop is close to
// both its issue limit and the two states' dependency chains, with a random table per symbol the bucket loads
// miss L1 (the buckets of all 256 tables take ~600 KB). Tried and not kept: 4 or 8 interleaved states (+5-15%
// with a random table per symbol, nothing with few; they would need a larger fixed cost), buckets sized for a
// 0.5-2% or 6-8% fallback instead of 4% (slower: more memory, or more fallbacks; the fallback takes 1.4-3.3% of
// the benchmark's symbols), 16-byte buckets holding the value, hoisting the index check out of the loop,
// reading the bytes as a 32-bit word.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <exception>
#include <thread>

#include "rans.h"

namespace onedc {

namespace {

constexpr uint32_t kL = 1u << 23;         // state lower bound
constexpr int kMaxTiles = 255;
constexpr size_t kItemBytes = 2;     // bytes an item emits (encoder) or reads (decoder) at most
constexpr size_t kEscapeSlack = 16;  // bytes kept free before an escape (it needs at most 5 x 2)

inline uint32_t load_u32le(const uint8_t* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

inline void store_u32le(uint8_t* p, uint32_t x) {
    p[0] = uint8_t(x);
    p[1] = uint8_t(x >> 8);
    p[2] = uint8_t(x >> 16);
    p[3] = uint8_t(x >> 24);
}

// ---------------------------------------------------------------------------------------------------------
// Encoder

// Encodes one item (see EncBin: rcp = ceil(2^48 / freq), lim = freq << 15, start, cmpl = 2^16 - freq) on state x
// in [L, 2^31). Bytes go to base[w - 1] and base[w - 2] (w, a byte index, moving down); the caller guarantees
// w >= 2 (two free bytes) before every item.
//
// Renormalisation: while x >= freq << 15, emit x mod 2^8 and x >>= 8; at most twice (see the top). Both candidate
// bytes are stored unconditionally: the first one emitted (x mod 2^8) at w - 1, the second ((x >> 8) mod 2^8) at
// w - 2, and w moves down by the count, so an unused byte stays in the free space. Two bytes go out iff
// x >> 8 >= freq << 15, which keeps both tests in 32 bits.
//
// Division by the reciprocal: after renormalisation x < freq << 15 with freq < 2^16, so
// x * rcp <= (freq 2^15 - 1)(2^48 / freq + 1) < 2^64 fits in 64 bits, and x * rcp / 2^48 = x / freq + err with
// 0 <= err < x / 2^48 < 2^-17 < 1 / freq, which cannot carry past the next integer: q = floor(x / freq) < 2^15.
// Then (q << 16) + (x mod freq) + start = x + start + q (2^16 - freq) <= (2^15 - 1) 2^16 + freq - 1 + start
// < 2^31, and q >= 2^7 (x >= freq << 7: x was >= L >= freq << 7 or, after a byte went out, >= freq << 15
// before it), so the new state is >= 2^23 = L.
inline void put(uint32_t& x, uint8_t* base, size_t& w, const EncBin& bin) {
    const uint32_t lim = bin.lim;
    const uint32_t x1 = x >> 8, x2 = x >> 16;
    base[w - 1] = static_cast<uint8_t>(x);  // speculative: kept only as far as w moves down
    base[w - 2] = static_cast<uint8_t>(x1);
#if defined(__GNUC__) && defined(__x86_64__)
    // x >= lim: x = x1 and w -= 1; x1 >= lim: x = x2 and w -= 1 (adc adds -1 + CF, CF = below).
    __asm__("cmpl %[lim], %[x]\n\tcmovael %[x1], %[x]\n\tadcq $-1, %[w]\n\t"
            "cmpl %[lim], %[x1]\n\tcmovael %[x2], %[x]\n\tadcq $-1, %[w]"
            : [x] "+&r"(x), [w] "+&r"(w)
            : [lim] "r"(lim), [x1] "r"(x1), [x2] "r"(x2)
            : "cc");
#else
    const uint32_t one = x >= lim, two = x1 >= lim;
    w -= one + two;
    x = two ? x2 : one ? x1 : x;
#endif
    const uint32_t q = static_cast<uint32_t>((uint64_t(x) * bin.rcp) >> 48);
    x = (x + bin.start) + q * bin.cmpl;
}

inline EncBin raw_item(uint32_t bits, uint32_t value) {  // 1 <= bits <= 16, value < 2^bits
    const uint32_t shift = 16 - bits;
    return EncBin{uint64_t(1) << (32 + bits), 1u << (31 - bits), static_cast<uint16_t>(value << shift),
                  static_cast<uint16_t>(65536u - (1u << shift))};
}

inline int bit_length(uint64_t q) {
    int n = 0;
    while (q) {
        ++n;
        q >>= 1;
    }
    return n;
}

// Items of an escaped bin v (v < 0 or v >= m), in decoding order; returns the count (at most 5).
int escape_items(const EncView& ev, int64_t v, EncBin* items) {
    const int64_t m = ev.esc;
    const uint64_t r = v < 0 ? static_cast<uint64_t>(-2 * v - 1) : static_cast<uint64_t>(2 * (v - m));
    const uint64_t q = r + 1;  // r < 2^34 for int32 symbols and int32 offsets
    const int e = bit_length(q) - 1;
    int cnt = 0;
    items[cnt++] = ev.bins[m];
    items[cnt++] = raw_item(6, static_cast<uint32_t>(e));
    for (int pos = 0; pos < e; pos += 16) {
        const int b = std::min(16, e - pos);
        items[cnt++] = raw_item(static_cast<uint32_t>(b), static_cast<uint32_t>(q >> pos) & ((1u << b) - 1));
    }
    return cnt;
}

// One tile's buffer: [8 bytes for the states][cap bytes, written downwards from the end].
struct TileBuf {
    std::unique_ptr<uint8_t[]> mem;
    size_t cap = 0;
    uint8_t* begin = nullptr;  // after encoding: x0 | x1 | bytes
    size_t size = 0;
    Status status;
    uint8_t* body() const { return mem.get() + 8; }
};

// Escaped bin v of symbol i (i symbols are still to encode after it). Grows the buffer first when fewer than
// 2 i + kEscapeSlack bytes are free (w counts the free bytes), moving the bytes written so far.
// st[0]: state of the next item to encode, st[1] the other; on return st[0] is again the next one. Returns the
// new w (passed by value so that the caller's w can stay in a register).
__attribute__((noinline)) size_t encode_escape(const EncView& ev, int64_t v, size_t i, TileBuf& o, size_t w,
                                               uint32_t* st) {
    if (w < kItemBytes * i + kEscapeSlack) {
        const size_t used = o.cap - w;
        const size_t cap = std::max(2 * o.cap, used + kItemBytes * i + 4 * kEscapeSlack);
        std::unique_ptr<uint8_t[]> mem(new uint8_t[8 + cap]);
        std::memcpy(mem.get() + 8 + (cap - used), o.body() + w, used);
        o.mem = std::move(mem);
        o.cap = cap;
        w = cap - used;
    }
    EncBin items[8];
    const int cnt = escape_items(ev, v, items);
    uint32_t a = st[0], b = st[1];
    uint8_t* const base = o.body();
    for (int j = cnt - 1; j >= 0; --j) {
        put(a, base, w, items[j]);
        std::swap(a, b);
    }
    st[0] = a;
    st[1] = b;
    return w;
}

// Symbols of one tile: its part of each segment, in order.
struct Range {
    const int32_t* sym;
    const int32_t* idx;
    size_t n;
};

// Drained state x in [L, 2^31): its 3 (x < 2^24) or 4 significant bytes, most significant first; returns the count.
inline size_t drain(uint32_t x, uint8_t* p) {
    const size_t n = x < (1u << 24) ? 3 : 4;
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(x >> (8 * (n - 1 - i)));
    return n;
}

// Encodes the ranges (in order) into one tile. Items run in reverse;
// `a` always holds the state of the next item to encode at a symbol boundary, and the loop is unrolled by two
// symbols so that the roles of a and b swap by position instead of by moves (an escape hands the states back
// in the same roles).
Status encode_tile(const Tables& t, const std::vector<Range>& ranges, TileBuf& o) {
    const EncView* const enc = t.enc();
    const uint32_t T = static_cast<uint32_t>(t.size());
    size_t total = 0;
    for (const Range& r : ranges) total += r.n;
    o.cap = kItemBytes * total + total / 32 + 128;  // >= 2 x symbols + 2; escapes grow it
    o.mem.reset(new uint8_t[8 + o.cap]);
    uint8_t* base = o.body();
    size_t w = o.cap;         // free bytes; the bytes written are [w, cap)
    uint32_t a = kL, b = kL;
    size_t before = total;    // symbols in the ranges before the current one
    for (size_t ri = ranges.size(); ri-- > 0;) {
        const int32_t* const sym = ranges[ri].sym;
        const int32_t* const idx = ranges[ri].idx;
        size_t i = ranges[ri].n;
        before -= i;
        auto bad_index = [&](size_t at) {
            return Status::error("index " + std::to_string(idx[at]) + " outside [0, " + std::to_string(T) + ")");
        };
        if (i & 1) {
            --i;
            const uint32_t k = static_cast<uint32_t>(idx[i]);
            if (k >= T) return bad_index(i);
            const EncView& ev = enc[k];
            const int64_t v = int64_t(sym[i]) - ev.offset;
            if (static_cast<uint64_t>(v) < ev.esc) {
                put(a, base, w, ev.bins[v]);
                std::swap(a, b);
            } else {
                uint32_t st[2] = {a, b};
                w = encode_escape(ev, v, before + i, o, w, st);
                base = o.body();
                a = st[0];
                b = st[1];
            }
        }
        while (i >= 2) {
            i -= 2;
            // symbol i + 1 on a, then symbol i on b
            uint32_t k = static_cast<uint32_t>(idx[i + 1]);
            if (k >= T) return bad_index(i + 1);
            const EncView* ev = &enc[k];
            int64_t v = int64_t(sym[i + 1]) - ev->offset;
            if (__builtin_expect(static_cast<uint64_t>(v) < ev->esc, 1)) {
                put(a, base, w, ev->bins[v]);
            } else {
                uint32_t st[2] = {a, b};
                w = encode_escape(*ev, v, before + i + 1, o, w, st);
                base = o.body();
                a = st[1];  // st[0] is the next state, which the code below calls b
                b = st[0];
            }
            k = static_cast<uint32_t>(idx[i]);
            if (k >= T) return bad_index(i);
            ev = &enc[k];
            v = int64_t(sym[i]) - ev->offset;
            if (__builtin_expect(static_cast<uint64_t>(v) < ev->esc, 1)) {
                put(b, base, w, ev->bins[v]);
            } else {
                uint32_t st[2] = {b, a};
                w = encode_escape(*ev, v, before + i, o, w, st);
                base = o.body();
                a = st[0];
                b = st[1];
            }
        }
    }
    // After the last (reverse) item the next state is in a, so item 0 used b: x0 = b, x1 = a.
    uint8_t head[8];
    size_t h = drain(b, head);
    h += drain(a, head + h);
    uint8_t* const begin = base + w - h;  // the 8 bytes in front of the body hold them
    std::memcpy(begin, head, h);
    o.begin = begin;
    o.size = h + (o.cap - w);
    return Status{};
}

// ---------------------------------------------------------------------------------------------------------
// Decoder

// Bytes of a tile after the states: base[q], q < nb.
struct Bytes {
    const uint8_t* base;
    size_t q, nb;
    // Checked renormalisation: while x < L, take the next byte (at most two for x >= 2^7); false when there is
    // none.
    bool renorm(uint32_t& x) {
        while (x < kL) {
            if (q >= nb) return false;
            x = (x << 8) | base[q];
            ++q;
        }
        return true;
    }
    // A raw field of `bits` bits (1..16) on state x.
    bool raw(uint32_t& x, uint32_t bits, uint32_t& value) {
        const uint32_t shift = 16u - bits;
        const uint32_t cum = x & 0xFFFFu;
        value = cum >> shift;
        x = ((x >> 16) << shift) + (cum & ((1u << shift) - 1));
        return renorm(x);
    }
};

const char* const kTruncated = "odc stream: truncated tile (reads past its end)";

// After an escape bin decoded on st[0] (st[1] the other state): the Exp-Golomb code of r, each field on the
// next state. On success st[0] is the state of the last item decoded and st[1] the next one.
__attribute__((noinline)) Status decode_escape(const DecView& dv, uint32_t* st, Bytes& in, int32_t& out) {
    uint32_t a = st[0], b = st[1];
    uint32_t e, w;
    std::swap(a, b);
    if (!in.raw(a, 6, e)) return Status::error(kTruncated);
    if (e > 33) return Status::error("odc stream: escape code over 33 bits (value outside int32)");
    uint64_t q = 0;
    for (uint32_t pos = 0; pos < e; pos += 16) {
        const uint32_t bits = std::min<uint32_t>(16, e - pos);
        std::swap(a, b);
        if (!in.raw(a, bits, w)) return Status::error(kTruncated);
        q |= uint64_t(w) << pos;
    }
    st[0] = a;
    st[1] = b;
    q |= uint64_t(1) << e;
    const uint64_t r = q - 1;
    const bool negative = r & 1;
    const uint64_t h = negative ? (r >> 1) + 1 : (r >> 1);  // <= 2^33 since q < 2^34
    const int64_t value = (negative ? -static_cast<int64_t>(h) : static_cast<int64_t>(h) + dv.esc) + dv.offset;
    if (value < INT32_MIN || value > INT32_MAX) return Status::error("odc stream: escaped value outside int32");
    out = static_cast<int32_t>(value);
    return Status{};
}

// The rare path of a symbol (st[0]: its state, st[1]: the other): the bucket's fallback search, the escape bin
// and its Exp-Golomb code, all with checked reads. On success st[0] is the state of the symbol's last item and
// st[1] the next one.
__attribute__((noinline)) Status slow_symbol(const Tables& t, const DecView& dv, uint32_t* st, Bytes& in,
                                             int32_t& out) {
    const uint32_t cum = st[0] & 0xFFFFu;
    uint32_t v;
    st[0] = advance(st[0], lookup_search(t, dv, cum >> dv.shift, cum, v));
    if (!in.renorm(st[0])) return Status::error(kTruncated);
    if (v == dv.esc) return decode_escape(dv, st, in, out);
    out = static_cast<int32_t>(v) + dv.offset;
    return Status{};
}

enum class Step { kOk, kSlow, kStop, kError };

// One symbol on state x (y: the other state). The caller guarantees q + 2 <= nb, so the (at most two) bytes of
// a fast symbol are there. kOk: the next item's state is y. kSlow: decoded by slow_symbol, which may have read
// more bytes (re-check the bounds); the next state is y too. kStop: index out of range, nothing consumed.
// kError: corrupt stream, `status` set.
inline Step fast_symbol(const Tables& t, uint32_t T, uint32_t& x, uint32_t& y, Bytes& in, int32_t index,
                        int32_t& out, Status& status) {
    const uint32_t k = static_cast<uint32_t>(index);
    if (__builtin_expect(k >= T, 0)) return Step::kStop;
    const DecView& dv = t.dec()[k];
    const uint32_t cum = x & 0xFFFFu;
    const uint32_t j = cum >> dv.shift;
    const BucketEntry entry = dv.bucket[j];
    const uint32_t sel = ((x << 16) | 0xFFFFu) >= entry.hi;  // cum >= start of hi, see lookup() in rans.h
    const uint32_t e = sel ? entry.hi : entry.lo;
    if (__builtin_expect((e & 0xFFFFu) == 0, 0)) {  // copies, so that x, y and in can stay in registers
        uint32_t st[2] = {x, y};
        Bytes w = in;
        status = slow_symbol(t, dv, st, w, out);
        if (!status.ok()) return Step::kError;
        x = st[0];
        y = st[1];
        in = w;
        return Step::kSlow;
    }
    // x' = f + d with f = freq (x >> 16), d = cum - start, in [2^7, 2^31): below L one byte comes in (cmov /
    // adc), below 2^15 a second one. The second byte is rare (freq < 2^8 and a small x >> 16: well under 0.1%
    // of the items of our tables), so it takes a branch: one byte without a branch and a predictable test is
    // shorter on the state's dependency chain than building and selecting both candidates (measured: 5-15%
    // faster decoding). The empty asm keeps the compiler from re-associating f + d into (f + cum) - start (one
    // more step on the chain).
    const uint32_t f = (e & 0xFFFFu) * (x >> 16);
    uint32_t d = cum - (e >> 16);
    __asm__("" : "+r"(d));
    const uint32_t next = f + d;
    const uint32_t one = (next << 8) | in.base[in.q];
#if defined(__GNUC__) && defined(__x86_64__)
    uint32_t xn = next;
    __asm__("cmpl %[L], %[n]\n\tcmovbl %[one], %[x]\n\tadcq $0, %[q]"
            : [x] "+&r"(xn), [q] "+r"(in.q)
            : [n] "r"(next), [one] "r"(one), [L] "i"(kL)
            : "cc");
#else
    in.q += next < kL;
    uint32_t xn = next < kL ? one : next;
#endif
    if (__builtin_expect(xn < kL, 0)) {
        xn = (xn << 8) | in.base[in.q];
        ++in.q;
    }
    x = xn;
    out = static_cast<int32_t>(dv.value[j] + sel);  // in int32 (Tables::build checks the offset)
    return Step::kOk;
}

// A tile being decoded: its states and read position. Resumable: segments are decoded one call at a time.
struct Lane {
    uint32_t a, b;  // a: state of the next item, b: the other one
    Bytes in;
};

// Symbols [pos, end) (end - pos even, 2 (end - pos) <= bytes.nb - bytes.q), two per round: symbol i on a, symbol
// i + 1 on b, then a is the next state again. No bounds check, as a fast symbol reads at most two bytes. A slow
// symbol (which may read more) or a bad index ends the block early. states[0] is the state of the next item
// (symbol pos) on entry and on return; pos is advanced. Not inlined, and working on copies of the states and
// the read position, so that they stay in registers.
__attribute__((noinline)) Step fast_block(const Tables& t, uint32_t* states, Bytes& bytes, const int32_t* idx,
                                          int32_t* out, size_t& pos, size_t end, Status& status) {
    const uint32_t T = static_cast<uint32_t>(t.size());
    uint32_t a = states[0], b = states[1];
    Bytes in = bytes;
    size_t i = pos;
    Step r = Step::kOk;
    while (i < end) {
        r = fast_symbol(t, T, a, b, in, idx[i], out[i], status);
        if (r != Step::kOk) break;
        r = fast_symbol(t, T, b, a, in, idx[i + 1], out[i + 1], status);
        if (r != Step::kOk) {
            std::swap(a, b);  // so that a holds the state of symbol i + 1
            ++i;
            break;
        }
        i += 2;
    }
    if (r == Step::kSlow) {
        std::swap(a, b);  // the next state is in b
        ++i;
    }
    states[0] = a;
    states[1] = b;
    bytes = in;
    pos = i;
    return r;
}

constexpr size_t kTailSymbols = 64;  // symbols per block on the zero-padded copy of a tile's last bytes
constexpr size_t kTailBytes = 4;     // tiles with fewer bytes left than this use the copy

// Decodes a lane's part of a segment: n symbols.
Status decode_lane(const Tables& t, Lane& L, const int32_t* idx, int32_t* out, size_t n) {
    const uint32_t T = static_cast<uint32_t>(t.size());
    uint32_t st[2] = {L.a, L.b};
    Bytes in = L.in;
    Status status;
    size_t i = 0;
    while (i < n) {
        const size_t left = in.nb - in.q;
        Step r;
        if (n - i < 2) {
            r = Step::kStop;  // the last symbol: the checked step below
        } else if (left >= kTailBytes) {
            // Blocks on the stream itself while they are at least two symbols long.
            const size_t end = i + (std::min(n - i, left / kItemBytes) & ~size_t(1));
            r = fast_block(t, st, in, idx, out, i, end, status);
        } else {
            // The last bytes: the same loop on a zero-padded copy. Reading into the padding means the stream
            // ends before its last symbol (checked after the block; a slow symbol checks against `left`).
            uint8_t pad[kTailBytes + kItemBytes * kTailSymbols] = {};
            std::memcpy(pad, in.base + in.q, left);
            Bytes tail{pad, 0, left};
            const size_t end = i + (std::min(n - i, kTailSymbols) & ~size_t(1));
            r = fast_block(t, st, tail, idx, out, i, end, status);
            if (tail.q > left) return Status::error(kTruncated);
            in.q += tail.q;
        }
        if (r == Step::kError) return status;
        if (r != Step::kStop) continue;
        // Checked step for one symbol (a bad index, or an odd last symbol).
        const uint32_t k = static_cast<uint32_t>(idx[i]);
        if (k >= T)
            return Status::error("table index " + std::to_string(idx[i]) + " out of range [0, " +
                                 std::to_string(T) + ")");
        status = slow_symbol(t, t.dec()[k], st, in, out[i]);  // checked reads, any bin
        if (!status.ok()) return status;
        std::swap(st[0], st[1]);
        ++i;
    }
    L.a = st[0], L.b = st[1], L.in = in;
    return Status{};
}

Status check_end(const Lane& L) {
    if (L.a != kL || L.b != kL) return Status::error("odc stream: corrupt tile (final states are not 2^23)");
    if (L.in.q != L.in.nb)
        return Status::error("odc stream: " + std::to_string(L.in.nb - L.in.q) + " unread bytes at the end of a tile");
    return Status{};
}

// ---------------------------------------------------------------------------------------------------------
// Tiles and threads

// Runs f(0 .. count-1) on up to `threads` threads (the caller's included). f must not throw.
template <class F>
void parallel_for(size_t count, int threads, F&& f) {
    const size_t workers = std::min<size_t>(count, static_cast<size_t>(std::max(threads, 1)));
    if (workers <= 1) {
        for (size_t i = 0; i < count; ++i) f(i);
        return;
    }
    std::atomic<size_t> next{0};
    auto work = [&] {
        for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < count;) f(i);
    };
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    for (size_t w = 1; w < workers; ++w) {
        try {
            pool.emplace_back(work);
        } catch (...) {  // could not start a thread: the others (and this one) do the work
            break;
        }
    }
    work();
    for (auto& th : pool) th.join();
}

constexpr size_t kMaxSymbols = size_t(1) << 48;

// Segment lengths (none: one segment of n); they must be >= 0 and add up to n.
Status check_segments(const int64_t* segments, size_t count, size_t n, std::vector<size_t>& out) {
    out.clear();
    if (!segments) {
        out.push_back(n);
        return Status{};
    }
    size_t sum = 0;
    for (size_t i = 0; i < count; ++i) {
        if (segments[i] < 0 || static_cast<uint64_t>(segments[i]) > kMaxSymbols)
            return Status::error("segment lengths must be >= 0, got " + std::to_string(segments[i]));
        out.push_back(static_cast<size_t>(segments[i]));
        sum += static_cast<size_t>(segments[i]);
    }
    if (sum != n)
        return Status::error("segments add up to " + std::to_string(sum) + " symbols, not " + std::to_string(n));
    return Status{};
}

// First symbol of tile k of T: k * n // T (n <= 2^48 and k <= 255, so the product fits in 64 bits).
inline size_t tile_begin(size_t n, size_t tiles, size_t k) {
    return static_cast<size_t>(static_cast<uint64_t>(k) * n / tiles);
}

}  // namespace

Status odc_encode(const Tables& t, const int32_t* symbols, const int32_t* indexes, size_t n,
                  const int64_t* segments, size_t num_segments, int tiles, int threads, OutBuf& out) {
    if (tiles < 1 || tiles > kMaxTiles)
        return Status::error("tiles must be in [1, 255], got " + std::to_string(tiles));
    if (n > kMaxSymbols) return Status::error("odc encode: too many symbols");
    std::vector<size_t> seg;
    Status s = check_segments(segments, num_segments, n, seg);
    if (!s.ok()) return s;
    const size_t T = static_cast<size_t>(tiles);
    auto ranges = [&](size_t k) {
        std::vector<Range> r;
        size_t a = 0;
        for (size_t len : seg) {
            const size_t lo = a + tile_begin(len, T, k), hi = a + tile_begin(len, T, k + 1);
            r.push_back(Range{symbols + lo, indexes + lo, hi - lo});
            a += len;
        }
        return r;
    };
    if (T == 1) {  // the stream is the tile, written in place
        TileBuf tb;
        s = encode_tile(t, ranges(0), tb);
        if (!s.ok()) return s;
        out.begin = tb.begin;
        out.size = tb.size;
        out.mem = std::move(tb.mem);
        return Status{};
    }
    std::vector<TileBuf> bufs(T);
    parallel_for(T, threads, [&](size_t k) {
        try {
            bufs[k].status = encode_tile(t, ranges(k), bufs[k]);
        } catch (const std::exception& ex) {
            bufs[k].status = Status::error(std::string("odc encode: ") + ex.what());
        }
    });
    size_t total = 2 + 4 * (T - 1);
    for (size_t k = 0; k < T; ++k) {
        if (!bufs[k].status.ok()) return bufs[k].status;
        if (k + 1 < T && bufs[k].size > 0xFFFFFFFFu)
            return Status::error("odc encode: a tile exceeds 4 GiB; use more tiles");
        total += bufs[k].size;
    }
    out.mem.reset(new uint8_t[total]);
    uint8_t* w = out.mem.get();
    *w++ = 0;
    *w++ = static_cast<uint8_t>(T);
    for (size_t k = 0; k + 1 < T; ++k, w += 4) store_u32le(w, static_cast<uint32_t>(bufs[k].size));
    for (size_t k = 0; k < T; ++k) {
        std::memcpy(w, bufs[k].begin, bufs[k].size);
        w += bufs[k].size;
        bufs[k].mem.reset();
    }
    out.begin = out.mem.get();
    out.size = total;
    return Status{};
}

struct OdcDecoder::Impl {
    std::vector<uint8_t> data;
    std::vector<Lane> lanes;
};

OdcDecoder::OdcDecoder() : impl_(new Impl) {}
OdcDecoder::~OdcDecoder() = default;

Status OdcDecoder::open(std::shared_ptr<const Tables> tables, const uint8_t* data, size_t size, int threads,
                        bool borrow) {
    tables_ = std::move(tables);
    threads_ = std::max(threads, 1);
    failed_ = true;
    if (size == 0) return Status::error("odc stream: empty");
    size_t T = 1, header = 0;  // one tile: the stream is the tile (its first byte is not 00)
    if (data[0] == 0) {
        if (size < 2) return Status::error("odc stream: truncated tile table");
        T = data[1];
        if (T < 2) return Status::error("odc stream: a tiled stream has 2 to 255 tiles, got " + std::to_string(T));
        header = 2 + 4 * (T - 1);
        if (size < header) return Status::error("odc stream: truncated tile table");
    }
    if (!borrow) {
        impl_->data.assign(data, data + size);
        data = impl_->data.data();
    }
    const uint8_t* const d = data;
    impl_->lanes.clear();
    size_t pos = header;
    for (size_t k = 0; k < T; ++k) {
        const size_t len = k + 1 < T ? load_u32le(d + 2 + 4 * k) : size - pos;
        if (len > size - pos)
            return Status::error("odc stream: tile " + std::to_string(k) + " extends past the end");
        // the drained states: read as the decoder renormalises, so they end in [L, 2^31)
        Bytes in{d + pos, 0, len};
        uint32_t x0 = 0, x1 = 0;
        if (!in.renorm(x0) || !in.renorm(x1))
            return Status::error("odc stream: tile " + std::to_string(k) + " ends inside its initial states");
        impl_->lanes.push_back(Lane{x0, x1, Bytes{d + pos + in.q, 0, len - in.q}});
        pos += len;
    }
    failed_ = false;
    return Status{};
}

int OdcDecoder::tiles() const { return static_cast<int>(impl_->lanes.size()); }

Status OdcDecoder::decode(const int32_t* indexes, size_t n, int32_t* out) {
    if (failed_) return Status::error("odc decoder: the stream is corrupt or the decoder failed before");
    if (n > kMaxSymbols) return Status::error("odc decode: too many symbols");
    failed_ = true;  // until this segment is through
    std::vector<Lane>& lanes = impl_->lanes;
    const size_t T = lanes.size();
    std::vector<Status> status(T);
    const Tables& t = *tables_;
    parallel_for(T, threads_, [&](size_t k) {
        try {
            const size_t lo = tile_begin(n, T, k), hi = tile_begin(n, T, k + 1);
            status[k] = decode_lane(t, lanes[k], indexes + lo, out + lo, hi - lo);
        } catch (const std::exception& ex) {
            status[k] = Status::error(std::string("odc decode: ") + ex.what());
        }
    });
    for (const Status& st : status)
        if (!st.ok()) return st;
    failed_ = false;
    return Status{};
}

Status OdcDecoder::finish() {
    if (failed_) return Status::error("odc decoder: the stream is corrupt or the decoder failed before");
    failed_ = true;
    for (const Lane& L : impl_->lanes) {
        Status s = check_end(L);
        if (!s.ok()) return s;
    }
    return Status{};
}

Status odc_decode(const Tables& t, const uint8_t* data, size_t size, const int32_t* indexes, size_t n,
                  const int64_t* segments, size_t num_segments, int threads, int32_t* out) {
    std::vector<size_t> seg;
    Status s = check_segments(segments, num_segments, n, seg);
    if (!s.ok()) return s;
    OdcDecoder dec;
    // The one-shot decoder borrows the caller's table set and stream for the duration of the call.
    s = dec.open(std::shared_ptr<const Tables>(&t, [](const Tables*) {}), data, size, threads, true);
    size_t a = 0;
    for (size_t len : seg) {
        if (!s.ok()) return s;
        s = dec.decode(indexes + a, len, out + a);
        a += len;
    }
    if (!s.ok()) return s;
    return dec.finish();
}

}  // namespace onedc
