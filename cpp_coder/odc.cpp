// odc mode (STREAMS.md "odc mode", stream version 3): tiles of W interleaved 32-bit rANS states (W in {1, 2, 4,
// 8, 16}), byte-wise renormalisation.
//
// stream = tile (one tile) or 00 | u8 T | u32 LE length of tiles 0..T-2 | tile 0 | ... (T in [2, 255]);
// tile = u8 W | W states, each as its 3 or 4 significant bytes, most significant first ("drained": the decoder
// reads a state as it renormalises, x = 0 then x = x << 8 | byte while x < L) | bytes. The first byte of a tile is
// W, never 00, which tells the two stream layouts apart. Symbol g of a tile (counted across segments) is coded on
// state g mod W, all its items (the bin, and after an escape bin the raw fields) on that state; items are decoded
// in symbol order, each followed by its renormalisation. Lower bound L = 2^23; every state (initial, between items,
// final) lies in [L, 2^31), and a tile ends with every state at L.
//
// Lanes: the encoder (or the caller) picks W per tile from its estimated size (Tables::cost(): integer arithmetic,
// the same on every machine). A state costs about 3.5 bytes, so W <= estimated bytes / 4096 (at most 16): a small
// stream keeps one state (fixed cost 4 bytes) and W adds at most ~0.1% to any stream. Sixteen states are what the
// vector decoder takes in one step.
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
// symbol they decode are left (a fast symbol reads at most two; the vector step reads 32 bytes and uses at most
// the 32 its 16 symbols may); escapes use checked reads. The last bytes of a tile are decoded from a zero-padded
// copy, and reading into its padding is a truncated stream. Nothing it allocates depends on the stream's content.
//
// Speed (benchmarks/entropy_coder.py, AMD Zen 5): the scalar loop avoids branches on renormalisation (cmov / adc; a
// rare second byte is a predictable branch) and keeps the state in a register for W = 1. With W = 16 and AVX-512
// (checked at run time) sixteen symbols are decoded per step: two gathers of the lookup entries (Tables::
// simd_entries(): the same bucket count for every table, so no per-table load, and three bins per bucket), a
// vector multiply, and the renormalisation bytes handed to the lanes by a prefix count and a byte permute; the
// values are gathered off the states' dependency chain. A fallback search is done lane by lane inside the step; an
// escape or a bad index sends the step to the scalar code, which decodes the same bytes the same way
// (decode(..., simd=False) is the reference the vector decoder is tested against). The step is bound by its
// dependency chain (~60 cycles, a third of it the gather's latency). Before a long segment (or tile, for the
// encoder) the tables are loaded into the caches: a decode usually follows work that evicted them, and a fallback
// search that misses three times costs as much as hundreds of symbols.
// Measured and not kept: 16-bit word renormalisation (L = 2^16: simpler vector code, but +0.13% size), 32 states
// in two vectors (no gain: the gathers' throughput, ~4.8 ns per 16-lane gather here, then limits), 8-byte gathers
// (slower than two 4-byte ones), per-table bucket counts in the vector lookup (a per-table gather, or shifts held
// in registers: faster on random tables, slower on the latent-like case), finer buckets (more cache misses),
// software prefetches instead of loads (a burst of thousands is mostly dropped), streaming stores of the output.

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <thread>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define ONEDC_AVX512 1
#endif

#include "rans.h"

namespace onedc {

namespace {

constexpr int kMaxTiles = 255;
constexpr uint32_t kMaxLanes = 16;
constexpr size_t kItemBytes = 2;     // bytes an item emits (encoder) or reads (decoder) at most
constexpr size_t kEscapeSlack = 16;  // bytes kept free before an escape (it needs at most 5 x 2)
constexpr size_t kSimdSymbols = 16;  // symbols of a vector step (one per state)
constexpr size_t kSimdReadBytes = 32;  // bytes a vector step reads

bool valid_lanes(uint32_t w) { return w >= 1 && w <= kMaxLanes && (w & (w - 1)) == 0; }  // 1, 2, 4, 8, 16

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

constexpr size_t kHeadMax = 1 + 4 * kMaxLanes;  // W byte + drained states

// One tile's buffer: [kHeadMax bytes for the head][cap bytes, written downwards from the end].
struct TileBuf {
    std::unique_ptr<uint8_t[]> mem;
    size_t cap = 0;
    uint8_t* begin = nullptr;  // after encoding: W | states | bytes
    size_t size = 0;
    Status status;
    uint8_t* body() const { return mem.get() + kHeadMax; }
};

// Escaped bin v of a symbol on state x (i symbols are still to encode after it). Grows the buffer first when
// fewer than 2 i + kEscapeSlack bytes are free (w counts the free bytes), moving the bytes written so far.
// Returns the new w (passed by value so that the caller's w can stay in a register).
__attribute__((noinline)) size_t encode_escape(const EncView& ev, int64_t v, size_t i, TileBuf& o, size_t w,
                                               uint32_t& x) {
    if (w < kItemBytes * i + kEscapeSlack) {  // i < kMaxSymbols: no wrap
        const size_t used = o.cap - w;
        size_t doubled, needed = used, alloc;
        if (!mul_size(2, o.cap, doubled) || !add_size(needed, kItemBytes * i + 4 * kEscapeSlack))
            throw std::length_error("tile buffer size overflows");
        const size_t cap = std::max(doubled, needed);
        if (!add_size(alloc = cap, kHeadMax)) throw std::length_error("tile buffer size overflows");
        std::unique_ptr<uint8_t[]> mem(new uint8_t[alloc]);
        std::memcpy(mem.get() + kHeadMax + (cap - used), o.body() + w, used);
        o.mem = std::move(mem);
        o.cap = cap;
        w = cap - used;
    }
    EncBin items[8];
    const int cnt = escape_items(ev, v, items);
    uint8_t* const base = o.body();
    for (int j = cnt - 1; j >= 0; --j) put(x, base, w, items[j]);
    return w;
}

// Drained state x in [L, 2^31): its 3 (x < 2^24) or 4 significant bytes, most significant first; returns the count.
inline size_t drain(uint32_t x, uint8_t* p) {
    const size_t n = x < (1u << 24) ? 3 : 4;
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(x >> (8 * (n - 1 - i)));
    return n;
}

// Symbols of one tile: its part of each segment, in order.
struct Range {
    const int32_t* sym;
    const int32_t* idx;
    size_t n;
};

// W for a tile: the largest power of two <= min(16, estimated bytes / 4096), at least 1 (a state costs about 3.5
// bytes: at most ~0.1% of the stream). Indexes out of range count nothing (the encoder reports them).
uint32_t choose_lanes(const Tables& t, const std::vector<Range>& ranges) {
    const uint32_t* const cost = t.cost();
    const uint32_t T = static_cast<uint32_t>(t.size());
    uint64_t q8 = 0;  // 1/256 bits
    for (const Range& r : ranges)
        for (size_t i = 0; i < r.n; ++i) {
            const uint32_t k = static_cast<uint32_t>(r.idx[i]);
            q8 += k < T ? cost[k] : 0;
        }
    const uint64_t units = q8 / (256 * 8 * 4096);
    uint32_t w = 1;
    while (w < kMaxLanes && 2 * w <= units) w *= 2;
    return w;
}

// Tables are loaded into the caches before a tile (encoder) or segment (decoder) of at least this many symbols:
// coding usually runs right after work that evicted them (the vector decoder's fallback search missing the caches
// three times costs as much as hundreds of symbols). Loads, not prefetches: a burst of thousands of prefetches is
// mostly dropped.
constexpr size_t kWarmSymbols = 4096;

// Loads one byte of every cache line of [p, p + bytes) into `sum` (which the caller keeps alive).
inline void load_lines(const void* p, size_t bytes, uint32_t& sum) {
    const uint8_t* const b = static_cast<const uint8_t*>(p);
    for (size_t at = 0; at < bytes; at += 64) sum += b[at];
}

void warm_encoder_tables(const Tables& t) {
    uint32_t sum = 0;
    for (uint32_t k = 0; k < static_cast<uint32_t>(t.size()); ++k)
        load_lines(t.enc()[k].bins, (t.enc()[k].esc + 1) * sizeof(EncBin), sum);
    __asm__ volatile("" : : "r"(sum));
}

// Codes the ranges' symbols in reverse on the W states st (symbol g of the tile on st[g mod W]); w: free bytes.
// W is a template parameter so that g mod W is a mask known to the compiler (and W = 1 keeps its state in a
// register).
template <uint32_t W>
Status encode_symbols(const Tables& t, const std::vector<Range>& ranges, size_t total, TileBuf& o, size_t& w,
                      uint32_t* st) {
    const EncView* const enc = t.enc();
    const uint32_t T = static_cast<uint32_t>(t.size());
    uint8_t* base = o.body();
    uint32_t local[W];
    std::memcpy(local, st, sizeof(local));
    size_t g = total;  // tile position of the symbol after the current one
    for (size_t ri = ranges.size(); ri-- > 0;) {
        const int32_t* const sym = ranges[ri].sym;
        const int32_t* const idx = ranges[ri].idx;
        for (size_t i = ranges[ri].n; i-- > 0;) {
            --g;
            const uint32_t k = static_cast<uint32_t>(idx[i]);
            if (k >= T)
                return Status::error("index " + std::to_string(idx[i]) + " outside [0, " + std::to_string(T) + ")");
            const EncView& ev = enc[k];
            const int64_t v = int64_t(sym[i]) - ev.offset;
            uint32_t& x = local[g % W];
            if (__builtin_expect(static_cast<uint64_t>(v) < ev.esc, 1)) {
                put(x, base, w, ev.bins[v]);
            } else {
                w = encode_escape(ev, v, g, o, w, x);
                base = o.body();
            }
        }
    }
    std::memcpy(st, local, sizeof(local));
    return Status{};
}

// Encodes the ranges (in order) into one tile of `lanes` states (0: choose_lanes).
Status encode_tile(const Tables& t, const std::vector<Range>& ranges, uint32_t lanes, TileBuf& o) {
    const uint32_t W = lanes ? lanes : choose_lanes(t, ranges);
    size_t total = 0;
    for (const Range& r : ranges)
        if (!add_size(total, r.n) || total > kMaxSymbols) return Status::error("odc encode: too many symbols");
    if (total >= kWarmSymbols) warm_encoder_tables(t);
    o.cap = kItemBytes * total + total / 32 + 128;  // >= 2 x symbols + 2; escapes grow it (total <= 2^48: no wrap)
    o.mem.reset(new uint8_t[kHeadMax + o.cap]);
    size_t w = o.cap;  // free bytes; the bytes written are [w, cap)
    uint32_t st[kMaxLanes];
    for (uint32_t l = 0; l < kMaxLanes; ++l) st[l] = kStateLow;
    Status s;
    switch (W) {
        case 1: s = encode_symbols<1>(t, ranges, total, o, w, st); break;
        case 2: s = encode_symbols<2>(t, ranges, total, o, w, st); break;
        case 4: s = encode_symbols<4>(t, ranges, total, o, w, st); break;
        case 8: s = encode_symbols<8>(t, ranges, total, o, w, st); break;
        default: s = encode_symbols<16>(t, ranges, total, o, w, st); break;
    }
    if (!s.ok()) return s;
    uint8_t head[kHeadMax];
    size_t h = 0;
    head[h++] = static_cast<uint8_t>(W);
    for (uint32_t l = 0; l < W; ++l) h += drain(st[l], head + h);
    uint8_t* const begin = o.body() + w - h;  // the kHeadMax bytes in front of the body hold the head
    std::memcpy(begin, head, h);
    o.begin = begin;
    o.size = h + (o.cap - w);
    return Status{};
}

// ---------------------------------------------------------------------------------------------------------
// Decoder

// Bytes of a tile after its head: base[q], q < nb.
struct Bytes {
    const uint8_t* base;
    size_t q, nb;
    // Checked renormalisation: while x < L, take the next byte (at most two for x >= 2^7); false when there is
    // none.
    bool renorm(uint32_t& x) {
        while (x < kStateLow) {
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

// After an escape bin decoded on x: the Exp-Golomb code of r, each field on the same state.
__attribute__((noinline)) Status decode_escape(const DecView& dv, uint32_t& x, Bytes& in, int32_t& out) {
    uint32_t e, w;
    if (!in.raw(x, 6, e)) return Status::error(kTruncated);
    if (e > 33) return Status::error("odc stream: escape code over 33 bits (value outside int32)");
    uint64_t q = 0;
    for (uint32_t pos = 0; pos < e; pos += 16) {
        const uint32_t bits = std::min<uint32_t>(16, e - pos);
        if (!in.raw(x, bits, w)) return Status::error(kTruncated);
        q |= uint64_t(w) << pos;
    }
    q |= uint64_t(1) << e;
    const uint64_t r = q - 1;
    const bool negative = r & 1;
    const uint64_t h = negative ? (r >> 1) + 1 : (r >> 1);  // <= 2^33 since q < 2^34
    const int64_t value = (negative ? -static_cast<int64_t>(h) : static_cast<int64_t>(h) + dv.esc) + dv.offset;
    if (value < INT32_MIN || value > INT32_MAX) return Status::error("odc stream: escaped value outside int32");
    out = static_cast<int32_t>(value);
    return Status{};
}

// The rare path of a symbol on state x: the bucket's fallback search, the escape bin and its Exp-Golomb code, all
// with checked reads.
__attribute__((noinline)) Status slow_symbol(const Tables& t, const DecView& dv, uint32_t& x, Bytes& in,
                                             int32_t& out) {
    const uint32_t cum = x & 0xFFFFu;
    uint32_t v;
    x = advance(x, lookup_search(t, dv, cum >> dv.shift, cum, v));
    if (!in.renorm(x)) return Status::error(kTruncated);
    if (v == dv.esc) return decode_escape(dv, x, in, out);
    out = static_cast<int32_t>(v) + dv.offset;
    return Status{};
}

enum class Step { kOk, kSlow, kStop, kError };

// One symbol on state x. The caller guarantees q + 2 <= nb, so the (at most two) bytes of a fast symbol are there. kOk: done.
// kSlow: decoded by slow_symbol, which may have read more (re-check the bounds). kStop: index out of range,
// nothing consumed. kError: corrupt stream, `status` set.
inline Step fast_symbol(const Tables& t, uint32_t T, uint32_t& x, Bytes& in, int32_t index, int32_t& out,
                        Status& status) {
    const uint32_t k = static_cast<uint32_t>(index);
    if (__builtin_expect(k >= T, 0)) return Step::kStop;
    const DecView& dv = t.dec()[k];
    const uint32_t cum = x & 0xFFFFu;
    const uint32_t j = cum >> dv.shift;
    const BucketEntry entry = dv.bucket[j];
    const uint32_t sel = ((x << 16) | 0xFFFFu) >= entry.hi;  // cum >= start of hi, see lookup() in rans.h
    const uint32_t e = sel ? entry.hi : entry.lo;
    if (__builtin_expect((e & 0xFFFFu) == 0, 0)) {  // copies, so that x and in can stay in registers
        uint32_t y = x;
        Bytes w = in;
        status = slow_symbol(t, dv, y, w, out);
        if (!status.ok()) return Step::kError;
        x = y;
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
            : [n] "r"(next), [one] "r"(one), [L] "i"(kStateLow)
            : "cc");
#else
    in.q += next < kStateLow;
    uint32_t xn = next < kStateLow ? one : next;
#endif
    if (__builtin_expect(xn < kStateLow, 0)) {
        xn = (xn << 8) | in.base[in.q];
        ++in.q;
    }
    x = xn;
    out = static_cast<int32_t>(dv.value[j] + sel);  // in int32 (Tables::build checks the offset)
    return Step::kOk;
}

// A tile being decoded: its states, the state of its next symbol and its read position. Resumable: segments are
// decoded one call at a time.
struct Lane {
    alignas(64) uint32_t x[kMaxLanes];
    uint32_t width = 1;
    uint32_t phase = 0;  // the next symbol's state
    Bytes in;
};

#ifdef ONEDC_AVX512
#if !defined(__clang__)
// GCC 12 warns inside its own AVX-512 headers (their pass-through operands are left undefined on purpose).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define ONEDC_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vpopcntdq,popcnt")))

bool cpu_has_avx512() {
    static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                            __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vpopcntdq");
    return yes;
}

// Sixteen symbols on sixteen states (one vector) in one step, with the vector lookup of Tables::simd_entries().
struct Simd16 {
    const Tables& t;
    const long long* entries;
    const int* values;
    __m512i lo16, tables, lower, two15, one, below;

    ONEDC_TARGET_AVX512 explicit Simd16(const Tables& tab)
        : t(tab),
          entries(reinterpret_cast<const long long*>(tab.simd_entries())),
          values(reinterpret_cast<const int*>(tab.simd_values())) {
        lo16 = _mm512_set1_epi32(0xFFFF);
        tables = _mm512_set1_epi32(static_cast<int>(std::min<int64_t>(tab.size(), INT32_MAX)));
        lower = _mm512_set1_epi32(static_cast<int>(kStateLow));
        two15 = _mm512_set1_epi32(1 << 15);
        one = _mm512_set1_epi32(1);
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i bits = _mm512_sub_epi32(_mm512_sllv_epi32(one, lane), one);
        below = _mm512_or_si512(bits, _mm512_slli_epi32(bits, 16));  // in lane l: the bits of lanes < l, twice
    }

    // 8-byte items of 16 lanes, as their low and high halves (two 4-byte gathers: faster than two 8-byte gathers
    // and the permutes that split them, measured on Zen 5).
    ONEDC_TARGET_AVX512 inline void gather64(__m512i at, const long long* base, __m512i& low, __m512i& high) const {
        const int* const half = reinterpret_cast<const int*>(base);
        low = _mm512_i32gather_epi32(at, half, 8);
        high = _mm512_i32gather_epi32(at, half + 1, 8);
    }

    // Symbols idx[0..15] on the states x (x <- the new states), their bytes read at base + q (q advanced). Reads 32
    // bytes at base + q. False, with nothing changed, if a symbol needs the scalar code (a bad index, an escape).
    ONEDC_TARGET_AVX512 inline bool step(__m512i& x, const int32_t* idx, int32_t* out, const uint8_t* base,
                                         size_t& q) const {
        const __m512i k = _mm512_loadu_si512(idx);
        if (_mm512_cmplt_epu32_mask(k, tables) != 0xFFFF) return false;
        const __m512i cum = _mm512_and_si512(x, lo16);
        const __m512i j = _mm512_or_si512(_mm512_slli_epi32(k, Tables::kSimdBits),
                                          _mm512_srli_epi32(cum, 16 - Tables::kSimdBits));
        __m512i a, b;
        gather64(j, entries, a, b);  // a = start | f0 << 16, b = f1 | f2 << 16 (Tables::simd_entries)
        const __m512i s0 = _mm512_and_si512(a, lo16);
        const __m512i f1 = _mm512_and_si512(b, lo16);
        const __m512i s1 = _mm512_add_epi32(s0, _mm512_srli_epi32(a, 16));
        const __m512i s2 = _mm512_add_epi32(s1, f1);
        const __mmask16 sel1 = _mm512_cmpge_epu32_mask(cum, s1);
        const __mmask16 sel2 = _mm512_cmpge_epu32_mask(cum, s2);
        __m512i freq = _mm512_mask_blend_epi32(sel2, _mm512_mask_blend_epi32(sel1, _mm512_srli_epi32(a, 16), f1),
                                               _mm512_srli_epi32(b, 16));
        __m512i start = _mm512_mask_blend_epi32(sel2, _mm512_mask_blend_epi32(sel1, s0, s1), s2);
        // value: int16 at byte 2j (a 4-byte read; the arena has 2 bytes to spare), sign-extended
        const __m512i first = _mm512_srai_epi32(_mm512_slli_epi32(_mm512_i32gather_epi32(j, values, 2), 16), 16);
        __m512i v = _mm512_mask_add_epi32(first, sel1, first, one);
        v = _mm512_mask_add_epi32(v, sel2, v, one);
        const __mmask16 slow = _mm512_testn_epi32_mask(freq, freq);
        if (slow) {  // a forward search from the bucket's first bin, lane by lane; an escape: the scalar code
            alignas(64) uint32_t ka[16], ca[16], fa[16];
            _mm512_store_si512(ka, k);
            _mm512_store_si512(ca, cum);
            _mm512_store_si512(fa, first);
            for (uint32_t m = slow; m; m &= m - 1) {
                const int l = __builtin_ctz(m);
                const DecView& dv = t.dec()[ka[l]];
                uint32_t bin = fa[l] - static_cast<uint32_t>(dv.offset);
                const uint32_t e = search_bins(t.sf(dv.table), ca[l], bin);
                if (bin == dv.esc) return false;
                const __mmask16 at = static_cast<__mmask16>(1u << l);  // into the lane without a store and reload
                freq = _mm512_mask_set1_epi32(freq, at, static_cast<int>(e & 0xFFFFu));
                start = _mm512_mask_set1_epi32(start, at, static_cast<int>(e >> 16));
                v = _mm512_mask_set1_epi32(v, at, static_cast<int>(bin + static_cast<uint32_t>(dv.offset)));
            }
        }
        _mm512_storeu_si512(out, v);
        const __m512i next = _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srli_epi32(x, 16)),
                                              _mm512_sub_epi32(cum, start));
        // Renormalisation: lane l takes c = 0, 1 or 2 bytes (next < L, next < 2^15) at o = the count its lower
        // lanes take, i.e. exactly where the scalar decoder, lane after lane, reads them.
        const __mmask16 n1 = _mm512_cmplt_epu32_mask(next, lower);
        const __mmask16 n2 = _mm512_cmplt_epu32_mask(next, two15);
        const uint32_t both = uint32_t(n1) | uint32_t(n2) << 16;
        const __m512i o = _mm512_popcnt_epi32(_mm512_and_si512(_mm512_set1_epi32(static_cast<int>(both)), below));
        // byte 0 of lane l's bits: the byte at o + 1 if c = 2 (the second byte read is the low one), else at o;
        // byte 1: the byte at o (kept only if c = 2); the mask (1 << 8c) - 1 keeps the c bytes.
        const __m512i pick = _mm512_or_si512(_mm512_mask_add_epi32(o, n2, o, one), _mm512_slli_epi32(o, 8));
        const __m512i data = _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + q)));
        const __m512i c8 = _mm512_slli_epi32(_mm512_add_epi32(_mm512_maskz_mov_epi32(n1, one),
                                                              _mm512_maskz_mov_epi32(n2, one)), 3);
        const __m512i bytes = _mm512_and_si512(_mm512_permutexvar_epi8(pick, data),
                                               _mm512_sub_epi32(_mm512_sllv_epi32(one, c8), one));
        x = _mm512_or_si512(_mm512_sllv_epi32(next, c8), bytes);
        q += static_cast<size_t>(__builtin_popcount(both));
        return true;
    }
};

// Whole groups of 16 symbols, symbol i + l on state l (the caller starts at phase 0), while at least 16 are left.
// Stops at a step the scalar code must do. Reads 32 bytes per step, which the caller's 2-bytes-per-symbol budget
// covers.
ONEDC_TARGET_AVX512 void simd_steps(const Tables& t, uint32_t* states, Bytes& in, const int32_t* idx, int32_t* out,
                                    size_t& pos, size_t end) {
    const Simd16 v(t);
    __m512i x = _mm512_load_si512(states);
    size_t i = pos, q = in.q;
    while (end - i >= kSimdSymbols && v.step(x, idx + i, out + i, in.base, q)) i += kSimdSymbols;
    _mm512_store_si512(states, x);
    in.q = q;
    pos = i;
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// Symbols [pos, end) of a lane (2 (end - pos) <= bytes.nb - bytes.q). A slow symbol (which may read more) or a bad
// index ends the block early; pos is advanced past the symbols decoded.
Step decode_block(const Tables& t, Lane& L, Bytes& bytes, const int32_t* idx, int32_t* out, size_t& pos,
                  size_t end, bool simd, Status& status) {
    const uint32_t T = static_cast<uint32_t>(t.size());
    const uint32_t mask = L.width - 1;
    Bytes in = bytes;
    size_t i = pos;
    Step r = Step::kOk;
    if (L.width == 1) {  // the state in a register
        uint32_t x = L.x[0];
        for (; i < end; ++i)
            if ((r = fast_symbol(t, T, x, in, idx[i], out[i], status)) != Step::kOk) break;
        L.x[0] = x;
    } else {
        uint32_t phase = L.phase;
        while (i < end) {
#ifdef ONEDC_AVX512
            if (simd && phase == 0 && L.width == kSimdSymbols && end - i >= kSimdSymbols) {  // simd: checked by open()
                simd_steps(t, L.x, in, idx, out, i, end);
                if (i == end) break;
            }
#else
            (void)simd;
#endif
            // One symbol at a time to the next step boundary (or the end).
            do {
                r = fast_symbol(t, T, L.x[phase], in, idx[i], out[i], status);
                if (r != Step::kOk) break;
                phase = (phase + 1) & mask;
                ++i;
            } while (i < end && phase != 0);
            if (r != Step::kOk) break;
        }
        if (r == Step::kSlow) phase = (phase + 1) & mask;
        L.phase = phase;
    }
    if (r == Step::kSlow) ++i;
    if (L.width == 1) L.phase = 0;
    bytes = in;
    pos = i;
    return r;
}

// The vector decoder's lookup and what its fallback search reads (DecView, bins), see kWarmSymbols.
void warm_decoder_tables(const Tables& t) {
    uint32_t sum = 0;
    const size_t T = static_cast<size_t>(t.size()), buckets = T << Tables::kSimdBits;
    load_lines(t.simd_entries(), buckets * 8, sum);
    load_lines(t.simd_values(), buckets * 2, sum);
    load_lines(t.dec(), T * sizeof(DecView), sum);
    for (uint32_t k = 0; k < T; ++k) load_lines(t.sf(k), (t.dec()[k].esc + 1) * sizeof(uint32_t), sum);
    __asm__ volatile("" : : "r"(sum));
}

constexpr size_t kTailSymbols = 64;  // symbols per block on the zero-padded copy of a tile's last bytes
constexpr size_t kTailBytes = 64;    // tiles with fewer bytes left than this use the copy
constexpr size_t kTailPad = kTailBytes + kItemBytes * kTailSymbols;  // the copy's size
// The reads on the copy stay inside it: a block starts with at most kTailBytes - 1 bytes left, and every symbol
// decoded before a read moves it at most kItemBytes further. A scalar symbol reads its (at most) kItemBytes bytes;
// the vector step reads kSimdReadBytes bytes and runs only while kSimdSymbols symbols are left.
static_assert(kTailPad >= (kTailBytes - 1) + kItemBytes * kTailSymbols, "scalar reads past the tail copy");
static_assert(kTailPad >= (kTailBytes - 1) + kItemBytes * (kTailSymbols - kSimdSymbols) + kSimdReadBytes,
              "vector reads past the tail copy");

// Decodes a lane's part of a segment: n symbols.
Status decode_lane(const Tables& t, Lane& L, const int32_t* idx, int32_t* out, size_t n, bool simd) {
    const uint32_t T = static_cast<uint32_t>(t.size());
    Status status;
    size_t i = 0;
    if (simd && L.width == 16 && n >= kWarmSymbols) warm_decoder_tables(t);
    while (i < n) {
        const size_t left = L.in.nb - L.in.q;
        Step r;
        if (left >= kTailBytes) {
            const size_t end = i + std::min(n - i, left / kItemBytes);
            r = decode_block(t, L, L.in, idx, out, i, end, simd, status);
        } else {
            // The last bytes: the same loop on a zero-padded copy. Reading into the padding means the stream
            // ends before its last symbol (checked after the block; a slow symbol checks against `left`).
            uint8_t pad[kTailPad] = {};
            std::memcpy(pad, L.in.base + L.in.q, left);
            Bytes tail{pad, 0, left};
            const size_t end = i + std::min(n - i, kTailSymbols);
            r = decode_block(t, L, tail, idx, out, i, end, simd, status);
            if (tail.q > left) return Status::error(kTruncated);
            L.in.q += tail.q;
        }
        if (r == Step::kError) return status;
        if (r != Step::kStop) continue;
        return Status::error("table index " + std::to_string(idx[i]) + " out of range [0, " + std::to_string(T) +
                             ")");
    }
    return Status{};
}

Status check_end(const Lane& L) {
    for (uint32_t l = 0; l < L.width; ++l)
        if (L.x[l] != kStateLow) return Status::error("odc stream: corrupt tile (final states are not 2^23)");
    if (L.in.q != L.in.nb)
        return Status::error("odc stream: " + std::to_string(L.in.nb - L.in.q) + " unread bytes at the end of a tile");
    return Status{};
}

// ---------------------------------------------------------------------------------------------------------
// Tiles and threads

// Runs f(0 .. count-1) on up to `threads` threads (the caller's included). f must not throw (see guarded).
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

// f() for a pool thread: any exception it throws becomes an error status instead of leaving the thread.
template <class F>
Status guarded(const char* what, F&& f) {
    try {
        return f();
    } catch (const std::exception& ex) {
        return Status::error(std::string(what) + ex.what());
    } catch (...) {
        return Status::error(std::string(what) + "unknown exception");
    }
}

// Segment lengths (none: one segment of n); they must be >= 0 and add up to n, the length of the caller's
// arrays. The running sum is checked (add_size) and compared with n at every step, so it can neither wrap around
// nor pass the arrays (65536 lengths of 2^48 once added up to 0 == n).
Status check_segments(const int64_t* segments, size_t count, size_t n, std::vector<size_t>& out) {
    out.clear();
    if (!segments) {
        out.push_back(n);
        return Status{};
    }
    size_t sum = 0;
    for (size_t i = 0; i < count; ++i) {
        if (segments[i] < 0)
            return Status::error("segment lengths must be >= 0, got " + std::to_string(segments[i]));
        if (!add_size(sum, static_cast<size_t>(segments[i])) || sum > n)
            return Status::error("segments add up to more than the " + std::to_string(n) + " symbols");
        out.push_back(static_cast<size_t>(segments[i]));
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

bool simd_available() {
#ifdef ONEDC_AVX512
    return cpu_has_avx512();
#else
    return false;
#endif
}

Status odc_encode(const Tables& t, const int32_t* symbols, const int32_t* indexes, size_t n,
                  const int64_t* segments, size_t num_segments, int tiles, int threads, int lanes, OutBuf& out) {
    if (tiles < 1 || tiles > kMaxTiles)
        return Status::error("tiles must be in [1, 255], got " + std::to_string(tiles));
    if (lanes != 0 && !valid_lanes(static_cast<uint32_t>(lanes)))
        return Status::error("lanes must be 0 (chosen per tile), 1, 2, 4, 8 or 16, got " + std::to_string(lanes));
    const uint32_t W = static_cast<uint32_t>(lanes);
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
        s = encode_tile(t, ranges(0), W, tb);
        if (!s.ok()) return s;
        out.begin = tb.begin;
        out.size = tb.size;
        out.mem = std::move(tb.mem);
        return Status{};
    }
    std::vector<TileBuf> bufs(T);
    parallel_for(T, threads, [&](size_t k) {
        bufs[k].status = guarded("odc encode: ", [&] { return encode_tile(t, ranges(k), W, bufs[k]); });
    });
    size_t total = 2 + 4 * (T - 1);  // T <= 255
    for (size_t k = 0; k < T; ++k) {
        if (!bufs[k].status.ok()) return bufs[k].status;
        if (k + 1 < T && bufs[k].size > 0xFFFFFFFFu)
            return Status::error("odc encode: a tile exceeds 4 GiB; use more tiles");
        if (!add_size(total, bufs[k].size)) return Status::error("odc encode: stream size overflows");
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
                        bool borrow, bool simd) {
    tables_ = std::move(tables);
    threads_ = std::max(threads, 1);
    simd_ = simd && tables_->simd_ok() && simd_available();
    failed_ = true;
    if (size == 0) return Status::error("odc stream: empty");
    size_t T = 1, header = 0;  // one tile: the stream is the tile (its first byte is not 00)
    if (data[0] == 0) {
        if (size < 2) return Status::error("odc stream: truncated tile table");
        T = data[1];
        if (T < 2) return Status::error("odc stream: a tiled stream has 2 to 255 tiles, got " + std::to_string(T));
        header = 2 + 4 * (T - 1);  // T <= 255
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
        size_t end = pos;
        if (!add_size(end, len) || end > size)
            return Status::error("odc stream: tile " + std::to_string(k) + " extends past the end");
        const std::string tile = "odc stream: tile " + std::to_string(k);
        if (len < 1) return Status::error(tile + " ends inside its initial states (it is empty)");
        Lane lane;
        lane.width = d[pos];
        if (!valid_lanes(lane.width))
            return Status::error(tile + ": " + std::to_string(lane.width) + " states (1, 2, 4, 8 or 16 are valid)");
        // the drained states: read as the decoder renormalises, so they end in [L, 2^31)
        Bytes in{d + pos + 1, 0, len - 1};
        for (uint32_t l = 0; l < lane.width; ++l) {
            lane.x[l] = 0;
            if (!in.renorm(lane.x[l])) return Status::error(tile + " ends inside its initial states");
        }
        lane.in = Bytes{in.base + in.q, 0, in.nb - in.q};
        impl_->lanes.push_back(lane);
        pos = end;
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
        status[k] = guarded("odc decode: ", [&] {
            const size_t lo = tile_begin(n, T, k), hi = tile_begin(n, T, k + 1);
            return decode_lane(t, lanes[k], indexes + lo, out + lo, hi - lo, simd_);
        });
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
                  const int64_t* segments, size_t num_segments, int threads, bool simd, int32_t* out) {
    if (n > kMaxSymbols) return Status::error("odc decode: too many symbols");
    std::vector<size_t> seg;
    Status s = check_segments(segments, num_segments, n, seg);
    if (!s.ok()) return s;
    OdcDecoder dec;
    // The one-shot decoder borrows the caller's table set and stream for the duration of the call.
    s = dec.open(std::shared_ptr<const Tables>(&t, [](const Tables*) {}), data, size, threads, true, simd);
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
