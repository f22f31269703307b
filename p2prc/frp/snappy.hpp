// frp's use_compression: the snappy *framing* format (google/snappy framing_format.txt)
// over a work connection, inside the cipher (write: compress, then encrypt).
//
// A direction is a sequence of chunks, each `type (1 byte) | length (3 bytes, little
// endian) | data`:
//
//   ff  stream identifier, data "sNaPpY"; first chunk of every direction (may repeat)
//   00  compressed: masked CRC-32C of the uncompressed bytes (4, LE) + a snappy block
//   01  uncompressed: masked CRC-32C (4, LE) + the bytes themselves
//   02-7f reserved, unskippable: an error        80-fe  skippable: ignored
//
// A chunk holds at most 65536 uncompressed bytes. The masked CRC is
// ((c >> 15) | (c << 17)) + 0xa282ead8 with c = CRC-32C (Castagnoli). Go's writer is
// unbuffered: each write becomes chunks at once, a block stored uncompressed when
// compression saves less than 1/8. A snappy block is a varint of the uncompressed length,
// then literals and back-references (copies) to earlier output.
#pragma once

#include "../error.hpp"
#include "../net.hpp"

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace p2prc::frp {

namespace snappy {

inline constexpr std::size_t kMaxBlock = 65536;
// Largest compressed form of a 64 KiB block (snappy's MaxEncodedLen(65536)).
inline constexpr std::size_t kMaxEncodedBlock = 32 + kMaxBlock + kMaxBlock / 6;
inline constexpr char kStreamIdentifier[] = "\xff\x06\x00\x00sNaPpY";  // 10 bytes

inline std::uint32_t crc32c(const void* data, std::size_t n) {
    static const auto table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? 0x82f63b78u : 0u);
            t[i] = c;
        }
        return t;
    }();
    std::uint32_t c = 0xffffffffu;
    const auto* p = static_cast<const std::uint8_t*>(data);
    for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

inline std::uint32_t masked_crc(const void* data, std::size_t n) {
    std::uint32_t c = crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

namespace detail {

inline void put_le(std::string& out, std::uint32_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out += char((v >> (8 * i)) & 0xff);
}

inline void emit_literal(std::string& out, const std::uint8_t* p, std::size_t n) {
    if (n == 0) return;
    std::size_t m = n - 1;
    if (m < 60) {
        out += char(m << 2);
    } else if (m < 0x100) {
        out += char(60 << 2);
        put_le(out, std::uint32_t(m), 1);
    } else if (m < 0x10000) {
        out += char(61 << 2);
        put_le(out, std::uint32_t(m), 2);
    } else {
        out += char(62 << 2);
        put_le(out, std::uint32_t(m), 3);
    }
    out.append(reinterpret_cast<const char*>(p), n);
}

// One copy element: length 1..64 (4..11 with a short offset < 2048).
inline void emit_copy_piece(std::string& out, std::size_t offset, std::size_t len) {
    if (len >= 4 && len <= 11 && offset < 2048) {
        out += char(0x01 | ((len - 4) << 2) | ((offset >> 8) << 5));
        out += char(offset & 0xff);
    } else {
        out += char(0x02 | ((len - 1) << 2));
        put_le(out, std::uint32_t(offset), 2);
    }
}

inline void emit_copy(std::string& out, std::size_t offset, std::size_t len) {
    while (len >= 68) {
        emit_copy_piece(out, offset, 64);
        len -= 64;
    }
    if (len > 64) {  // leave at least 4 for the last piece
        emit_copy_piece(out, offset, 60);
        len -= 60;
    }
    emit_copy_piece(out, offset, len);
}

inline std::uint32_t load32(const std::uint8_t* p) {
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

}  // namespace detail

// Compresses one block (<= 64 KiB) into the snappy block format: greedy matching through
// a hash of the next 4 bytes.
inline std::string compress_block(const void* data, std::size_t n) {
    if (n > kMaxBlock) throw error(errc::invalid_argument, "snappy: block larger than 64 KiB");
    const auto* src = static_cast<const std::uint8_t*>(data);
    std::string out;
    out.reserve(n + n / 6 + 8);
    for (std::uint32_t v = std::uint32_t(n);;) {  // varint preamble
        if (v < 0x80) {
            out += char(v);
            break;
        }
        out += char((v & 0x7f) | 0x80);
        v >>= 7;
    }
    constexpr int kBits = 14;
    std::vector<std::int32_t> table(1u << kBits, -1);
    auto hash = [](std::uint32_t v) { return (v * 0x1e35a7bdu) >> (32 - kBits); };
    std::size_t i = 0, literal_start = 0;
    while (i + 4 <= n) {
        std::uint32_t cur = detail::load32(src + i);
        auto h = hash(cur);
        std::int32_t cand = table[h];
        table[h] = std::int32_t(i);
        if (cand >= 0 && detail::load32(src + cand) == cur) {
            std::size_t len = 4;
            while (i + len < n && src[std::size_t(cand) + len] == src[i + len]) ++len;
            detail::emit_literal(out, src + literal_start, i - literal_start);
            detail::emit_copy(out, i - std::size_t(cand), len);
            i += len;
            literal_start = i;
        } else {
            ++i;
        }
    }
    detail::emit_literal(out, src + literal_start, n - literal_start);
    return out;
}

// Decompresses one snappy block, refusing one that would exceed `max_out` bytes or that
// is malformed in any way (bad varint, truncated element, copy before the start).
inline std::string decompress_block(const void* data, std::size_t n,
                                    std::size_t max_out = kMaxBlock) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    std::size_t pos = 0;
    std::uint64_t expect = 0;
    for (int shift = 0;; shift += 7) {
        if (pos >= n || shift > 28) throw error(errc::parse_error, "snappy: bad length preamble");
        std::uint8_t b = p[pos++];
        expect |= std::uint64_t(b & 0x7f) << shift;
        if (!(b & 0x80)) break;
    }
    if (expect > max_out)
        throw error(errc::limit_exceeded, "snappy: block of " + std::to_string(expect) +
                                              " bytes exceeds " + std::to_string(max_out));
    std::string out;
    out.reserve(std::size_t(expect));
    auto need = [&](std::size_t k) {
        if (n - pos < k) throw error(errc::parse_error, "snappy: truncated block");
    };
    while (pos < n) {
        std::uint8_t tag = p[pos++];
        std::size_t len = 0, offset = 0;
        switch (tag & 3) {
            case 0: {
                len = tag >> 2;
                if (len >= 60) {
                    std::size_t nb = len - 59;
                    need(nb);
                    len = 0;
                    for (std::size_t k = 0; k < nb; ++k) len |= std::size_t(p[pos + k]) << (8 * k);
                    pos += nb;
                }
                len += 1;
                need(len);
                if (out.size() + len > expect)
                    throw error(errc::parse_error, "snappy: literal runs past the block length");
                out.append(reinterpret_cast<const char*>(p + pos), len);
                pos += len;
                continue;
            }
            case 1:
                need(1);
                len = 4 + ((tag >> 2) & 7);
                offset = (std::size_t(tag & 0xe0) << 3) | p[pos];
                pos += 1;
                break;
            case 2:
                need(2);
                len = 1 + (tag >> 2);
                offset = std::size_t(p[pos]) | (std::size_t(p[pos + 1]) << 8);
                pos += 2;
                break;
            default:
                need(4);
                len = 1 + (tag >> 2);
                offset = std::size_t(p[pos]) | (std::size_t(p[pos + 1]) << 8) |
                         (std::size_t(p[pos + 2]) << 16) | (std::size_t(p[pos + 3]) << 24);
                pos += 4;
                break;
        }
        if (offset == 0 || offset > out.size())
            throw error(errc::parse_error, "snappy: copy offset outside the output");
        if (out.size() + len > expect)
            throw error(errc::parse_error, "snappy: copy runs past the block length");
        std::size_t from = out.size() - offset;
        for (std::size_t k = 0; k < len; ++k) out += out[from + k];  // may overlap
    }
    if (out.size() != expect)
        throw error(errc::parse_error, "snappy: block decodes to " + std::to_string(out.size()) +
                                           " bytes, preamble says " + std::to_string(expect));
    return out;
}

// Writer half: the first call emits the stream identifier; every call emits its bytes at
// once as chunks of at most 64 KiB (compressed when that saves at least 1/8, as Go does).
class FrameEncoder {
  public:
    std::string encode(const void* data, std::size_t n) {
        std::string out;
        if (!started_) {
            out.append(kStreamIdentifier, 10);
            started_ = true;
        }
        const auto* p = static_cast<const std::uint8_t*>(data);
        while (n > 0) {
            std::size_t k = std::min(n, kMaxBlock);
            std::uint32_t crc = masked_crc(p, k);
            std::string c = compress_block(p, k);
            bool compressed = c.size() < k - k / 8;
            std::size_t body = 4 + (compressed ? c.size() : k);
            out += char(compressed ? 0x00 : 0x01);
            detail::put_le(out, std::uint32_t(body), 3);
            detail::put_le(out, crc, 4);
            if (compressed)
                out += c;
            else
                out.append(reinterpret_cast<const char*>(p), k);
            p += k, n -= k;
        }
        return out;
    }

  private:
    bool started_ = false;
};

// Reader half, incremental: feed() any slices, read() what they decoded to. Checks a
// chunk's type and length at its header (before buffering it) and every CRC. Errors are
// sticky.
class FrameDecoder {
  public:
    void feed(const void* data, std::size_t n) {
        if (failed_) throw error(errc::state_error, "snappy decoder: failed earlier: " + why_);
        const auto* p = static_cast<const std::uint8_t*>(data);
        try {
            while (n > 0) {
                if (head_fill_ < 4) {
                    std::size_t k = std::min(n, 4 - head_fill_);
                    std::memcpy(head_ + head_fill_, p, k);
                    head_fill_ += k, p += k, n -= k;
                    if (head_fill_ < 4) break;
                    start_chunk();
                    if (want_ == 0) finish_chunk();
                    continue;
                }
                std::size_t k = std::min(n, want_ - got_);
                if (!skip_) body_.append(reinterpret_cast<const char*>(p), k);
                got_ += k, p += k, n -= k;
                if (got_ == want_) finish_chunk();
            }
        } catch (const error& e) {
            failed_ = true;
            why_ = e.what();
            throw;
        }
    }

    // Moves up to n decoded bytes into buf; returns how many.
    std::size_t read(void* buf, std::size_t n) {
        std::size_t k = std::min(n, out_.size() - out_pos_);
        std::memcpy(buf, out_.data() + out_pos_, k);
        out_pos_ += k;
        if (out_pos_ == out_.size()) out_.clear(), out_pos_ = 0;
        return k;
    }
    std::size_t available() const noexcept { return out_.size() - out_pos_; }
    // True between chunks (end of stream here is clean).
    bool at_chunk_boundary() const noexcept { return head_fill_ == 0; }

  private:
    void start_chunk() {
        type_ = head_[0];
        want_ =
            std::size_t(head_[1]) | (std::size_t(head_[2]) << 8) | (std::size_t(head_[3]) << 16);
        got_ = 0;
        skip_ = false;
        body_.clear();
        if (!seen_identifier_ && type_ != 0xff)
            throw error(errc::protocol_error,
                        "snappy stream: expected the stream identifier chunk first");
        if (type_ == 0xff) {
            if (want_ != 6) throw error(errc::protocol_error, "snappy stream: bad identifier");
        } else if (type_ == 0x00) {
            if (want_ < 4 || want_ - 4 > kMaxEncodedBlock)
                throw error(errc::limit_exceeded, "snappy stream: compressed chunk of " +
                                                      std::to_string(want_) + " bytes");
        } else if (type_ == 0x01) {
            if (want_ < 4 || want_ - 4 > kMaxBlock)
                throw error(errc::limit_exceeded, "snappy stream: uncompressed chunk of " +
                                                      std::to_string(want_) + " bytes");
        } else if (type_ < 0x80) {
            throw error(errc::protocol_error,
                        "snappy stream: reserved unskippable chunk type " + std::to_string(type_));
        } else {
            skip_ = true;  // 0x80-0xfe: padding or reserved skippable
        }
    }

    void finish_chunk() {
        head_fill_ = 0;
        if (skip_) return;
        if (type_ == 0xff) {
            if (body_ != "sNaPpY")
                throw error(errc::protocol_error, "snappy stream: bad identifier");
            seen_identifier_ = true;
            return;
        }
        std::uint32_t crc = std::uint32_t(std::uint8_t(body_[0])) |
                            (std::uint32_t(std::uint8_t(body_[1])) << 8) |
                            (std::uint32_t(std::uint8_t(body_[2])) << 16) |
                            (std::uint32_t(std::uint8_t(body_[3])) << 24);
        std::string plain = type_ == 0x00
                                ? decompress_block(body_.data() + 4, body_.size() - 4, kMaxBlock)
                                : body_.substr(4);
        if (masked_crc(plain.data(), plain.size()) != crc)
            throw error(errc::protocol_error, "snappy stream: CRC mismatch");
        out_ += plain;
    }

    std::uint8_t head_[4] = {};
    std::size_t head_fill_ = 0;
    std::uint8_t type_ = 0;
    std::size_t want_ = 0, got_ = 0;
    bool skip_ = false;
    bool seen_identifier_ = false;
    std::string body_;
    std::string out_;
    std::size_t out_pos_ = 0;
    bool failed_ = false;
    std::string why_;
};

}  // namespace snappy

// A stream that compresses what it writes and decompresses what it reads (use_compression),
// over another stream -- for a work connection with both flags, over the CryptoStream.
class SnappyStream final : public p2prc::detail::Stream {
  public:
    explicit SnappyStream(std::shared_ptr<p2prc::detail::Stream> inner) : inner_(std::move(inner)) {
        if (!inner_) throw error(errc::invalid_argument, "SnappyStream: no inner stream");
    }

    std::size_t read_some(void* buf, std::size_t n, p2prc::detail::Millis timeout) override {
        if (n == 0) return 0;
        auto deadline = p2prc::detail::deadline_after(timeout);
        while (decoder_.available() == 0) {
            auto left = std::chrono::duration_cast<p2prc::detail::Millis>(
                deadline - p2prc::detail::Clock::now());
            if (left.count() < 0) left = p2prc::detail::Millis(0);
            std::size_t k = inner_->read_some(in_.data(), in_.size(), left);
            if (k == 0) {
                if (decoder_.at_chunk_boundary()) return 0;
                throw error(errc::io_error, describe() + ": end of stream inside a chunk");
            }
            decoder_.feed(in_.data(), k);
        }
        return decoder_.read(buf, n);
    }

    void write_all(const void* buf, std::size_t n, p2prc::detail::Millis timeout) override {
        std::string out = encoder_.encode(buf, n);
        inner_->write_all(out.data(), out.size(), timeout);
    }

    void shutdown_write() override { inner_->shutdown_write(); }
    void close() noexcept override { inner_->close(); }
    std::string describe() const override { return "compressed " + inner_->describe(); }

  private:
    std::shared_ptr<p2prc::detail::Stream> inner_;
    snappy::FrameEncoder encoder_;
    snappy::FrameDecoder decoder_;
    std::array<std::uint8_t, 16 * 1024> in_{};
};

}  // namespace p2prc::frp
