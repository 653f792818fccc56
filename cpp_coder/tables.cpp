// Validation of a table set and the lookup structures both coders share.
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <new>

#include "rans.h"

namespace onedc {

namespace {

constexpr uint32_t kTotal = 1u << 16;
constexpr int kMaxBucketBits = 12;      // at most 4096 buckets (40 KiB) per table
constexpr double kMaxSlowMass = 0.04;  // target: probability of the fallback search (cum uniform)

// Probability mass (cum uniform over [0, 2^16), which it is under the table's own distribution) of the
// decoder's fallback: cum in a bucket with two or more bin boundaries, at or past the first of them.
double slow_mass(const int32_t* row, int64_t bins, int bits) {
    const int shift = 16 - bits;
    int64_t v = 0, mass = 0;
    for (int64_t j = 0; j < (int64_t(1) << bits); ++j) {
        const int64_t lo = j << shift, end = (j + 1) << shift;
        while (row[v + 1] <= lo) ++v;
        if (v + 2 <= bins && row[v + 2] < end) mass += end - row[v + 1];
    }
    return static_cast<double>(mass) / kTotal;
}

// -log2(freq / 2^16) in 1/256 bits, from the bit length and a linear mantissa (error < 0.09 bits).
uint32_t bits_q8(uint32_t freq) {
    const uint32_t e = 31u - static_cast<uint32_t>(__builtin_clz(freq));  // floor(log2 freq), freq >= 1
    return 256u * (16u - e) - (((freq - (1u << e)) << 8) >> e);
}

// Bucket j (of 2^bits) of a row with `bins` bins (the last one the escape bin), see BucketEntry; v: its first bin
// (on entry: that of bucket j - 1, or 0).
BucketEntry make_bucket(const int32_t* row, int64_t bins, int bits, int64_t j, int64_t& v) {
    auto packed = [&](int64_t b) -> uint32_t {  // start << 16 | freq; freq 0 for the escape bin
        const uint32_t freq = b + 1 == bins ? 0u : uint32_t(row[b + 1] - row[b]);
        return uint32_t(row[b]) << 16 | freq;
    };
    const int shift = 16 - bits;
    const int64_t lo = j << shift, last = ((j + 1) << shift) - 1;
    while (row[v + 1] <= lo) ++v;
    uint32_t hi;
    if (v + 1 == bins) hi = 0xFFFFu << 16;                                          // last bin
    else if (v + 2 <= bins && row[v + 2] <= last) hi = uint32_t(row[v + 1]) << 16;  // two or more
    else hi = packed(v + 1);                                                         // none or one
    return BucketEntry{packed(v), hi};
}

}  // namespace

Status Tables::build(const int32_t* cdf, int64_t num_tables, int64_t row_width, const int32_t* cdf_length,
                     const int32_t* offset) {
    // A second build starts afresh: the first one's arena is freed, its sizes do not accumulate.
    std::free(arena_);
    arena_ = nullptr;
    arena_size_ = 0;
    num_tables_ = 0;
    dec_ = nullptr;
    enc_ = nullptr;
    bucket_ = nullptr;
    value_ = nullptr;
    sf_ = nullptr;
    sf_pos_ = nullptr;
    bins_ = nullptr;
    simd_entry_ = nullptr;
    simd_value_ = nullptr;
    cost_ = nullptr;
    simd_ok_ = false;
    max_length_ = 0;
    if (num_tables < 1 || num_tables > UINT32_MAX) return Status::error("tables: need between 1 and 2^32 - 1 tables");
    if (row_width < 3) return Status::error("tables: cdf rows must have at least 3 entries");

    // Pass 1: validate, and size the storage.
    size_t total_bins = 0, total_buckets = 0;
    std::vector<int> bucket_bits(static_cast<size_t>(num_tables));
    for (int64_t k = 0; k < num_tables; ++k) {
        const int32_t* row = cdf + k * row_width;
        const int64_t len = cdf_length[k];
        const std::string where = "tables: row " + std::to_string(k) + ": ";
        if (len < 3 || len > row_width)
            return Status::error(where + "cdf_length " + std::to_string(len) + " outside [3, " +
                                 std::to_string(row_width) + "]");
        if (row[0] != 0) return Status::error(where + "cdf must start at 0");
        if (row[len - 1] != static_cast<int32_t>(kTotal)) return Status::error(where + "cdf must end at 65536");
        for (int64_t i = 0; i + 1 < len; ++i)
            if (row[i + 1] <= row[i])
                return Status::error(where + "cdf must be strictly increasing (bin " + std::to_string(i) +
                                     " has frequency " + std::to_string(int64_t(row[i + 1]) - row[i]) + ")");
        if (static_cast<int64_t>(offset[k]) + (len - 3) > INT32_MAX)
            return Status::error(where + "offset + cdf_length - 3 exceeds int32");
        const int64_t bins = len - 1;  // including the escape bin
        int bits = 1;
        while (bits < kMaxBucketBits && slow_mass(row, bins, bits) > kMaxSlowMass) ++bits;
        bucket_bits[k] = bits;
        if (!add_size(total_bins, static_cast<size_t>(bins)) || !add_size(total_buckets, size_t(1) << bits))
            return Status::error("tables: too large");
        max_length_ = std::max(max_length_, len);
    }

    // Pass 2: one arena for everything, hot decoder data first.
    const size_t T = static_cast<size_t>(num_tables);
    size_t size = 0;
    bool fits = true;
    // Offset of a block of count x item (+ extra) bytes, rounded up to 64 bytes; fits turns false on overflow.
    auto reserve = [&size, &fits](size_t count, size_t item, size_t extra = 0) {
        const size_t at = size;
        size_t bytes;
        fits = fits && mul_size(count, item, bytes) && add_size(bytes, extra + 63) && add_size(size, bytes & ~size_t(63));
        return at;
    };
    const size_t at_dec = reserve(T, sizeof(DecView));
    const size_t at_bucket = reserve(total_buckets, sizeof(BucketEntry));
    const size_t at_first = reserve(total_buckets, sizeof(uint32_t));
    const size_t at_enc = reserve(T, sizeof(EncView));
    const size_t at_bins = reserve(total_bins, sizeof(EncBin));
    const size_t at_sf = reserve(total_bins, sizeof(uint32_t));
    const size_t at_sf_pos = reserve(T, sizeof(size_t));
    const size_t at_simd_entry = reserve(T << kSimdBits, sizeof(uint64_t));  // T < 2^32
    const size_t at_simd_value = reserve(T << kSimdBits, sizeof(int16_t), 2);  // + 2: 4-byte reads
    const size_t at_cost = reserve(T, sizeof(uint32_t));
    if (!fits) return Status::error("tables: too large");
    void* p = nullptr;
    if (posix_memalign(&p, 64, std::max<size_t>(size, 64)) != 0) throw std::bad_alloc();
    arena_ = p;
    arena_size_ = size;
    char* const base = static_cast<char*>(arena_);
    dec_ = reinterpret_cast<DecView*>(base + at_dec);
    bucket_ = reinterpret_cast<BucketEntry*>(base + at_bucket);
    value_ = reinterpret_cast<uint32_t*>(base + at_first);
    enc_ = reinterpret_cast<EncView*>(base + at_enc);
    bins_ = reinterpret_cast<EncBin*>(base + at_bins);
    sf_ = reinterpret_cast<uint32_t*>(base + at_sf);
    sf_pos_ = reinterpret_cast<size_t*>(base + at_sf_pos);
    simd_entry_ = reinterpret_cast<uint64_t*>(base + at_simd_entry);
    simd_value_ = reinterpret_cast<int16_t*>(base + at_simd_value);
    cost_ = reinterpret_cast<uint32_t*>(base + at_cost);
    simd_ok_ = T <= (size_t(1) << (31 - kSimdBits));  // the vector decoder's int32 bucket numbers
    num_tables_ = num_tables;
    size_t bin_pos = 0, bucket_pos = 0;
    for (size_t k = 0; k < T; ++k) {
        const int32_t* row = cdf + k * row_width;
        const int64_t bins = cdf_length[k] - 1;
        for (int64_t v = 0; v < bins; ++v) {
            const uint32_t start = static_cast<uint32_t>(row[v]);
            const uint32_t freq = static_cast<uint32_t>(row[v + 1] - row[v]);
            sf_[bin_pos + v] = start | (freq << 16);
            // freq <= 2^16 - 1 (a row has two bins or more), so cmpl = 2^16 - freq fits 16 bits
            bins_[bin_pos + v] = EncBin{((uint64_t(1) << 48) + freq - 1) / freq, freq << 15,
                                        static_cast<uint16_t>(start), static_cast<uint16_t>(kTotal - freq)};
        }
        const int bits = bucket_bits[k];
        const uint32_t shift = static_cast<uint32_t>(16 - bits);
        int64_t v = 0;
        for (int64_t j = 0; j < (int64_t(1) << bits); ++j) {
            bucket_[bucket_pos + j] = make_bucket(row, bins, bits, j, v);
            value_[bucket_pos + j] = static_cast<uint32_t>(v) + static_cast<uint32_t>(offset[k]);
        }
        v = 0;
        for (int64_t j = 0; j < (int64_t(1) << kSimdBits); ++j) {
            const int shift = 16 - kSimdBits;
            const int64_t lo = j << shift, last = ((j + 1) << shift) - 1;
            while (row[v + 1] <= lo) ++v;
            // freq of bin b for the vector lookup: 0 for the escape bin (the last one) and past it
            auto freq = [&](int64_t b) -> uint64_t { return b + 1 < bins ? uint64_t(row[b + 1] - row[b]) : 0; };
            const uint64_t f0 = freq(v);
            uint64_t f1 = v + 1 < bins ? freq(v + 1) : 0, f2 = v + 2 < bins ? freq(v + 2) : 0;
            if (v + 3 <= bins && row[v + 3] <= last) f2 = 0;  // a fourth bin starts in the bucket: the fallback
            if (f1 == 0) f2 = 0;
            simd_entry_[(k << kSimdBits) + j] = uint64_t(row[v]) | f0 << 16 | f1 << 32 | f2 << 48;
            const int64_t value = v + int64_t(offset[k]);
            simd_ok_ = simd_ok_ && value >= INT16_MIN && value <= INT16_MAX;
            simd_value_[(k << kSimdBits) + j] = static_cast<int16_t>(value);
        }
        dec_[k] = DecView{bucket_ + bucket_pos, value_ + bucket_pos, shift,
                          static_cast<uint32_t>(bins - 1), offset[k], static_cast<uint32_t>(k)};
        enc_[k] = EncView{bins_ + bin_pos, static_cast<uint32_t>(bins - 1), offset[k]};
        sf_pos_[k] = bin_pos;
        uint64_t cost = 0;
        for (int64_t b = 0; b < bins; ++b) {
            const uint32_t freq = static_cast<uint32_t>(row[b + 1] - row[b]);
            cost += uint64_t(freq) * bits_q8(freq);
        }
        cost_[k] = static_cast<uint32_t>(cost >> 16);
        bin_pos += static_cast<size_t>(bins);
        bucket_pos += size_t(1) << bits;
    }
    return Status{};
}

Tables::~Tables() { std::free(arena_); }

}  // namespace onedc
