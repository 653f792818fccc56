// Step-wise release y decoding: the four-step prior needs step k's symbols before step k+1's table indexes
// exist, so the one stream of a release file is decoded in several calls (one per step).
#pragma once

#include <memory>
#include <vector>

#include "rans.h"

namespace onedc {

// decode(indexes) once per step, then finish(), which checks that the stream ended in the coder's final state
// with every byte read (anything else is a corrupt stream or a decoder whose indexes differ from the
// encoder's). After any error it stays failed. Not thread-safe (the bindings serialise calls).
class ReleaseDecoder {
public:
    // Copies the stream (flag byte 0x01 first).
    Status open(std::shared_ptr<const Tables> tables, const uint8_t* data, size_t size);
    Status decode(const int32_t* indexes, size_t n, int32_t* out);
    Status finish();

private:
    Status fail(Status s) {
        failed_ = true;
        return s;
    }
    std::shared_ptr<const Tables> tables_;
    std::vector<uint8_t> data_;
    size_t pos_ = 0;   // next byte to read
    uint32_t x_ = 0;   // the state
    bool failed_ = true;
};

}  // namespace onedc
