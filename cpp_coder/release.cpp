// Release mode (STREAMS.md "Release mode", compat README 2.2): byte for byte the released y stream.
//
// flag 0x01 | final state (u32 LE) | bytes in decoding order. One 32-bit state, lower bound 2^23, byte-wise
// renormalisation, 16-bit probabilities. An escape is followed by 2-bit bypass items: the chunk count n in
// digits (one 3 per three chunks, then n mod 3), then the n chunks of r, least significant first.
#include <cstring>

#include "release.h"

namespace onedc {

namespace {

constexpr int kMaxChunks = 16;       // r < 2^32

// Number of 2-bit chunks of r (0 for r = 0).
inline int chunk_count(uint64_t r) {
    int n = 0;
    while (r) {
        ++n;
        r >>= 2;
    }
    return n;
}

// Bytes an item may emit: a normal item at most 2 (the state is < 2^31 and the loop stops once it is below
// freq << 15 >= 2^15), a bypass item at most 1 (the state is < 2^31 and must fall below 2^29).
constexpr size_t kNormalBytes = 2;
constexpr size_t kBypassBytes = 1;

// Raw value of an out-of-range bin v (escape), or -1 when it does not fit the 16 chunks of the format.
inline int64_t escape_raw(int64_t v, int64_t m) {
    const int64_t r = v < 0 ? -2 * v - 1 : 2 * (v - m);
    return r < (int64_t(1) << 32) ? r : -1;
}

inline size_t escape_bytes(int64_t r) {
    const int n = chunk_count(static_cast<uint64_t>(r));
    return kNormalBytes + kBypassBytes * static_cast<size_t>(n / 3 + 1 + n);
}

// Encoder steps; `wp` moves backwards, the caller guarantees room (see the bounds above).
inline void put_normal(uint32_t& x, uint8_t*& wp, const EncBin& b) {
    while (x >= b.lim) {
        *--wp = uint8_t(x);
        x >>= 8;
    }
    // x < freq << 15 < 2^31, so q = floor(x / freq) exactly (see odc.cpp for the reciprocal bound).
    const uint32_t q = static_cast<uint32_t>((uint64_t(x) * b.rcp) >> 48);
    x = x + q * b.cmpl + b.start;
}

inline void put_bypass(uint32_t& x, uint8_t*& wp, uint32_t bits) {
    if (x >= (1u << 29)) {
        *--wp = uint8_t(x);
        x >>= 8;
    }
    x = (x << 2) | bits;
}

}  // namespace

Status release_encode(const Tables& t, const int32_t* symbols, const int32_t* indexes, size_t n, OutBuf& out) {
    if (n > kMaxSymbols) return Status::error("release encode: too many symbols");
    const EncView* tabs = t.enc();
    const int64_t T = t.size();
    // Pass 1: validate and bound the output.
    size_t cap = 0;
    for (size_t i = 0; i < n; ++i) {
        const int32_t k = indexes[i];
        if (k == -1) continue;
        if (k < -1 || k >= T)
            return Status::error("index " + std::to_string(k) + " at position " + std::to_string(i) +
                                 " outside [-1, " + std::to_string(T) + ")");
        const EncView& tv = tabs[k];
        const int64_t v = int64_t(symbols[i]) - tv.offset;
        size_t bytes = kNormalBytes;
        if (static_cast<uint64_t>(v) >= tv.esc) {
            const int64_t r = escape_raw(v, tv.esc);
            if (r < 0)
                return Status::error("symbol " + std::to_string(symbols[i]) + " at position " + std::to_string(i) +
                                     " is too large for a release stream");
            bytes = escape_bytes(r);
        }
        if (!add_size(cap, bytes)) return Status::error("release encode: stream size overflows");
    }
    // Layout: [flag][state][cap bytes, filled from the end].
    size_t total = cap;
    if (!add_size(total, 5)) return Status::error("release encode: stream size overflows");
    out.mem.reset(new uint8_t[total]);
    uint8_t* const lo = out.mem.get() + 5;
    uint8_t* wp = out.mem.get() + total;
    uint32_t x = kStateLow;
    const char* const modified = "symbols or indexes were modified during the call";
    for (size_t i = n; i-- > 0;) {
        const int32_t k = indexes[i];
        if (k == -1) continue;
        if (k < -1 || k >= T) return Status::error(modified);
        const EncView& tv = tabs[k];
        const int64_t v = int64_t(symbols[i]) - tv.offset;
        if (static_cast<uint64_t>(v) < tv.esc) {
            if (static_cast<size_t>(wp - lo) < kNormalBytes) return Status::error(modified);
            put_normal(x, wp, tv.bins[v]);
            continue;
        }
        const int64_t r = escape_raw(v, tv.esc);
        if (r < 0 || static_cast<size_t>(wp - lo) < escape_bytes(r)) return Status::error(modified);
        const int nc = chunk_count(static_cast<uint64_t>(r));
        for (int c = nc - 1; c >= 0; --c) put_bypass(x, wp, static_cast<uint32_t>(r >> (2 * c)) & 3u);
        put_bypass(x, wp, static_cast<uint32_t>(nc % 3));
        for (int d = 0; d < nc / 3; ++d) put_bypass(x, wp, 3u);
        put_normal(x, wp, tv.bins[tv.esc]);
    }
    store_u32le(wp - 4, x);
    wp[-5] = 0x01;
    out.begin = wp - 5;
    out.size = static_cast<size_t>(out.mem.get() + total - out.begin);
    return Status{};
}

namespace {

// x = x << 8 | next byte while x < 2^23; false when the stream ends first.
inline bool renorm(uint32_t& x, const uint8_t* data, size_t size, size_t& pos) {
    while (x < kStateLow) {
        if (pos == size) return false;
        x = (x << 8) | data[pos++];
    }
    return true;
}

}  // namespace

Status ReleaseDecoder::open(std::shared_ptr<const Tables> tables, const uint8_t* data, size_t size) {
    failed_ = true;
    if (!tables) return Status::error("release stream: no tables");
    if (size == 0) return Status::error("release stream: empty");
    if (data[0] != 0x01)
        return Status::error("release stream: unsupported flag byte " + std::to_string(data[0]) +
                             " (only 0x01, one sub-stream, is supported)");
    if (size < 5) return Status::error("release stream: truncated state");
    tables_ = std::move(tables);
    data_.assign(data, data + size);
    x_ = load_u32le(data + 1);
    pos_ = 5;
    failed_ = false;
    return Status{};
}

Status ReleaseDecoder::decode(const int32_t* indexes, size_t n, int32_t* out) {
    if (failed_) return Status::error("release stream: the decoder failed earlier or was not opened");
    if (n > kMaxSymbols) return fail(Status::error("release decode: too many symbols"));
    const Tables& t = *tables_;
    const DecView* tabs = t.dec();
    const int64_t T = t.size();
    const uint8_t* const data = data_.data();
    const size_t size = data_.size();
    uint32_t x = x_;
    size_t pos = pos_;
    const char* const past_end = "release stream: truncated (reads past the end)";
    for (size_t i = 0; i < n; ++i) {
        const int32_t k = indexes[i];
        if (k == -1) {
            out[i] = 0;
            continue;
        }
        if (k < -1 || k >= T)
            return fail(Status::error("index " + std::to_string(k) + " at position " + std::to_string(i) +
                                      " outside [-1, " + std::to_string(T) + ")"));
        const DecView& tv = tabs[k];
        uint32_t v;
        x = advance(x, lookup(t, tv, x, v));
        if (!renorm(x, data, size, pos)) return fail(Status::error(past_end));
        if (v != tv.esc) {
            out[i] = static_cast<int32_t>(v) + tv.offset;  // in int32 by table validation
            continue;
        }
        auto bypass = [&](uint32_t& bits) {
            bits = x & 3u;
            x >>= 2;
            return renorm(x, data, size, pos);
        };
        int nc = 0;
        uint32_t d;
        do {
            if (!bypass(d)) return fail(Status::error(past_end));
            nc += static_cast<int>(d);
            if (nc > kMaxChunks) return fail(Status::error("release stream: escape chunk count above 16"));
        } while (d == 3);
        uint64_t r = 0;
        for (int c = 0; c < nc; ++c) {
            if (!bypass(d)) return fail(Status::error(past_end));
            r |= uint64_t(d) << (2 * c);
        }
        const int64_t value = ((r & 1) ? -static_cast<int64_t>((r + 1) >> 1) : static_cast<int64_t>(r >> 1) + tv.esc) +
                              tv.offset;
        if (value < INT32_MIN || value > INT32_MAX)
            return fail(Status::error("release stream: escaped value outside int32"));
        out[i] = static_cast<int32_t>(value);
    }
    x_ = x;
    pos_ = pos;
    return Status{};
}

Status ReleaseDecoder::finish() {
    if (failed_) return Status::error("release stream: the decoder failed earlier or was not opened");
    failed_ = true;  // finish ends the stream
    if (x_ != kStateLow)
        return Status::error("release stream: corrupt, or decoded with other table indexes than it was written "
                             "with (it does not end in the coder's final state 2^23)");
    if (pos_ != data_.size())
        return Status::error("release stream: " + std::to_string(data_.size() - pos_) + " unread trailing bytes");
    return Status{};
}

Status release_decode(const Tables& t, const uint8_t* data, size_t size, const int32_t* indexes, size_t n,
                      int32_t* out) {
    // A non-owning handle on the caller's tables: the decoder lives only for this call.
    ReleaseDecoder dec;
    Status s = dec.open(std::shared_ptr<const Tables>(&t, [](const Tables*) {}), data, size);
    if (s.ok()) s = dec.decode(indexes, n, out);
    if (s.ok()) s = dec.finish();
    return s;
}

}  // namespace onedc
