// rANS coders of onedc: the release y-stream format and our "odc" format (see STREAMS.md).
//
// Everything here is plain C++17 without Python: the bindings (bindings.cpp) convert arrays and release the
// GIL around these calls. Errors are reported through `Status` (never exceptions across threads); a failing
// call never writes outside its buffers and never reads outside its inputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace onedc {

// An owned output buffer; the stream is [begin, begin + size) inside mem.
struct OutBuf {
    std::unique_ptr<uint8_t[]> mem;
    const uint8_t* begin = nullptr;
    size_t size = 0;
};

// An error message, empty when fine. Only built on the error path.
struct Status {
    std::string message;
    bool ok() const { return message.empty(); }
    static Status error(std::string m) { return Status{std::move(m)}; }
};

// Sizes. Every size the coders compute from their inputs (symbol counts, segment sums, buffer capacities, stream
// offsets, table storage) goes through add_size / mul_size, which report a result that does not fit in size_t
// instead of wrapping it: a wrapped sum once passed a bounds check (65536 segments of 2^48 added up to 0). Symbol
// counts are at most kMaxSymbols at every entry point, so the byte counts derived from them stay far below 2^64.
constexpr size_t kMaxSymbols = size_t(1) << 48;

// sum += a; false (sum unchanged) when the result does not fit.
inline bool add_size(size_t& sum, size_t a) {
    size_t r;
    if (__builtin_add_overflow(sum, a, &r)) return false;
    sum = r;
    return true;
}

// out = a * b; false when the result does not fit.
inline bool mul_size(size_t a, size_t b, size_t& out) { return !__builtin_mul_overflow(a, b, &out); }

// Both coders: 32-bit states renormalised byte-wise into [kStateLow, 2^31); a stream ends with its states at
// kStateLow.
constexpr uint32_t kStateLow = 1u << 23;

// Little-endian u32 fields of the stream formats.
inline uint32_t load_u32le(const uint8_t* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

inline void store_u32le(uint8_t* p, uint32_t x) {
    p[0] = uint8_t(x);
    p[1] = uint8_t(x >> 8);
    p[2] = uint8_t(x >> 16);
    p[3] = uint8_t(x >> 24);
}

// Encoder data of one bin (freq in [1, 2^16 - 1]), in the form both byte-wise coders use: the reciprocal
// rcp = ceil(2^48 / freq) (see `put` in odc.cpp), lim = freq << 15 (renormalise while x >= lim), start and
// cmpl = 2^16 - freq (the new state is x + start + floor(x / freq) cmpl).
struct EncBin {
    uint64_t rcp;
    uint32_t lim;
    uint16_t start;
    uint16_t cmpl;
};

// Per-table encoder view.
struct EncView {
    const EncBin* bins;  // per bin, the escape bin included
    uint32_t esc;        // escape bin m = cdf_length - 2 (bins 0 .. m-1 code values offset .. offset + m - 1)
    int32_t offset;
};

// Per-table decoder view (32 bytes).
//
// Lookup: the 16-bit cum range is cut into 2^bits buckets, bucket j = cum >> shift. `first` is the bin that
// contains the bucket's first cum (stored as first + offset, the value it decodes to), and bucket[j] two packed
// bins p(v) = start(v) << 16 | freq(v) (with freq 0 for the escape bin, the last one):
//   lo: p(first)
//   hi: p(first + 1)                    if at most one bin boundary lies inside the bucket,
//       start(first + 1) << 16 (freq 0) if two or more do,
//       0xFFFF << 16 (freq 0)           if first is the last bin.
// So sel = (cum >= start of hi) and e = sel ? hi : lo give the bin first + sel, except when e has
// freq 0: then (the escape bin, two or more boundaries, or cum = 65535 in the last bin) a short forward search
// over sf from `first` finds it. Decoding therefore never scans a row linearly, and the fast path has a single
// rare branch. Tables::build sizes each table's buckets so that the fallback has probability <= 4% under the
// table's own distribution (plus the escape bin's own probability).
struct BucketEntry {
    uint32_t lo, hi;  // packed bins, see above
};

struct DecView {
    const BucketEntry* bucket;
    const uint32_t* value;  // per bucket: first bin + offset (mod 2^32)
    uint32_t shift;
    uint32_t esc;
    int32_t offset;  // bin + offset is an int32 for every in-range bin (checked by Tables::build)
    uint32_t table;  // this table's number (for the fallback's sf lookup)
};

// A validated table set with its decoding lookup (bucket index) and encoding data, built once.
// Everything lives in one arena, the decoder's hot data first.
class Tables {
public:
    Tables() = default;
    Tables(const Tables&) = delete;
    Tables& operator=(const Tables&) = delete;
    ~Tables();

    // cdf is row-major [T, L]. Returns an error (and leaves the object unusable) on an invalid table set.
    Status build(const int32_t* cdf, int64_t num_tables, int64_t row_width, const int32_t* cdf_length,
                 const int32_t* offset);

    int64_t size() const { return num_tables_; }
    const DecView* dec() const { return dec_; }
    const EncView* enc() const { return enc_; }
    const uint32_t* sf(uint32_t table) const { return sf_ + sf_pos_[table]; }  // start | freq << 16 per bin
    // The vector decoder's lookup: 2^kSimdBits buckets per table (the same for all, so that bucket j of table k is
    // entry k << kSimdBits | j without a per-table lookup), valid when simd_ok() (at most 2^22 tables, every
    // bucket's first bin + offset in int16). Per bucket, with `first` the bin of its first cum:
    // entry = start(first) | f0 << 16 | f1 << 32 | f2 << 48, the frequencies of first, first + 1, first + 2, so that
    // cum >= start(first) + f0 (+ f1) selects among three bins with no further load; a frequency is 0 for the
    // escape bin, past it, after a 0, and for first + 2 when a fourth bin starts in the bucket (the fallback
    // search then); value = first + offset (int16, read off the dependency chain of the state).
    static constexpr int kSimdBits = 7;
    const uint64_t* simd_entries() const { return simd_entry_; }
    const int16_t* simd_values() const { return simd_value_; }
    bool simd_ok() const { return simd_ok_; }
    // Estimated cost of a symbol coded with table k, in 1/256 bits (see Tables::build): integer arithmetic
    // only, so every platform (and the Python reference) makes the same choices from it.
    const uint32_t* cost() const { return cost_; }
    int64_t max_length() const { return max_length_; }
    size_t memory_bytes() const { return arena_size_; }

private:
    void* arena_ = nullptr;
    size_t arena_size_ = 0;
    int64_t num_tables_ = 0;
    DecView* dec_ = nullptr;
    EncView* enc_ = nullptr;
    BucketEntry* bucket_ = nullptr;
    uint32_t* value_ = nullptr;
    uint32_t* sf_ = nullptr;
    size_t* sf_pos_ = nullptr;
    EncBin* bins_ = nullptr;
    uint64_t* simd_entry_ = nullptr;
    int16_t* simd_value_ = nullptr;
    uint32_t* cost_ = nullptr;
    bool simd_ok_ = false;
    int64_t max_length_ = 0;
};

// x < bound ? alt : x without a branch: renormalisation decisions are unpredictable by nature, and GCC turns
// the plain ternary into a jump.
inline uint32_t select_below(uint32_t x, uint32_t bound, uint32_t alt) {
#if defined(__GNUC__) && defined(__x86_64__)
    __asm__("cmpl %2, %0\n\tcmovbl %1, %0" : "+r"(x) : "r"(alt), "r"(bound) : "cc");
    return x;
#else
    const uint32_t mask = 0u - static_cast<uint32_t>(x < bound);
    return (alt & mask) | (x & ~mask);
#endif
}

// x >= bound ? alt : x without a branch.
inline uint32_t select_at_least(uint32_t x, uint32_t bound, uint32_t alt) {
#if defined(__GNUC__) && defined(__x86_64__)
    __asm__("cmpl %2, %0\n\tcmovael %1, %0" : "+r"(x) : "r"(alt), "r"(bound) : "cc");
    return x;
#else
    const uint32_t mask = 0u - static_cast<uint32_t>(x >= bound);
    return (alt & mask) | (x & ~mask);
#endif
}

// The bin v of cum by a forward search over a table's bins sf (start | freq << 16) from bin v, which starts at or
// before cum; returns its start << 16 | freq.
inline uint32_t search_bins(const uint32_t* sf, uint32_t cum, uint32_t& v) {
    uint32_t f = sf[v];
    while (cum - (f & 0xFFFFu) >= (f >> 16)) f = sf[++v];
    return (f << 16) | (f >> 16);
}

// The fallback of `lookup`: bin of cum by a forward search from the bucket's first bin.
inline uint32_t lookup_search(const Tables& t, const DecView& dv, uint32_t j, uint32_t cum, uint32_t& v) {
    v = dv.value[j] - static_cast<uint32_t>(dv.offset);
    return search_bins(t.sf(dv.table), cum, v);
}

// The bin v of cum = x mod 2^16; returns its start << 16 | freq.
inline uint32_t lookup(const Tables& t, const DecView& dv, uint32_t x, uint32_t& v) {
    const uint32_t cum = x & 0xFFFFu;
    const uint32_t j = cum >> dv.shift;
    const BucketEntry entry = dv.bucket[j];
    // cum >= start(hi) <=> cum << 16 | 0xFFFF >= hi (the low half of hi, a freq, is <= 0xFFFF): one step less
    // after the load, since the left side comes from x alone.
    const uint32_t sel = ((x << 16) | 0xFFFFu) >= entry.hi;
    const uint32_t e = sel ? entry.hi : entry.lo;
    if (__builtin_expect((e & 0xFFFFu) == 0, 0)) return lookup_search(t, dv, j, cum, v);
    v = dv.value[j] - static_cast<uint32_t>(dv.offset) + sel;
    return e;
}

// One decoding step without renormalisation: x = freq (x >> 16) + cum - start.
inline uint32_t advance(uint32_t x, uint32_t e) {
    return (e & 0xFFFFu) * (x >> 16) + ((x & 0xFFFFu) - (e >> 16));
}

// Release mode: flag byte 0x01 + one byte-wise rANS stream (compat README 2.2). Index -1 skips a symbol.
Status release_encode(const Tables& t, const int32_t* symbols, const int32_t* indexes, size_t n, OutBuf& out);
Status release_decode(const Tables& t, const uint8_t* data, size_t size, const int32_t* indexes, size_t n,
                      int32_t* out);

// odc mode: tiles of W interleaved 32-bit states (W in {1, 2, 4, 8, 16}), byte-wise renormalisation (L = 2^23).
// threads >= 1. lanes: W of every tile, or 0 to choose it per tile from the tile's estimated size.
// segments: optional lengths (>= 0, adding up to n) of the segments; tile t codes its part
// [t*n_k//T, (t+1)*n_k//T) of every segment k, in order (STREAMS.md). nullptr: one segment.
// simd: decode 16-state tiles with AVX-512 where the CPU has it (the same result as without).
Status odc_encode(const Tables& t, const int32_t* symbols, const int32_t* indexes, size_t n,
                  const int64_t* segments, size_t num_segments, int tiles, int threads, int lanes, OutBuf& out);
Status odc_decode(const Tables& t, const uint8_t* data, size_t size, const int32_t* indexes, size_t n,
                  const int64_t* segments, size_t num_segments, int threads, bool simd, int32_t* out);

// Whether this CPU runs the vector decoder (x86-64 with AVX-512 F, BW, VL, DQ, VBMI and VPOPCNTDQ).
bool simd_available();

// Incremental odc decoder: one decode() per segment (the indexes of a segment may depend on the symbols of
// the previous ones), then finish(), which checks that every tile ended exactly. After any error it stays
// failed. Not thread-safe (the bindings serialise calls).
class OdcDecoder {
public:
    OdcDecoder();
    ~OdcDecoder();
    OdcDecoder(const OdcDecoder&) = delete;
    OdcDecoder& operator=(const OdcDecoder&) = delete;

    // Copies the stream unless `borrow`, in which case it must outlive the decoder.
    Status open(std::shared_ptr<const Tables> tables, const uint8_t* data, size_t size, int threads,
                bool borrow = false, bool simd = true);
    Status decode(const int32_t* indexes, size_t n, int32_t* out);
    Status finish();
    int tiles() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::shared_ptr<const Tables> tables_;
    int threads_ = 1;
    bool simd_ = false;
    bool failed_ = true;
};

}  // namespace onedc
