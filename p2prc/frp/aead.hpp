// The AEAD record stream of frp's wire protocol v2: what the control connection becomes,
// in each direction, once Login/LoginResp are through (docs: frp-wire-v2.md, section 7).
//
//     stream nonce (N bytes, in clear, once, sent with the first record)
//     record: uint32 L (big-endian) || Seal(nonce_i, plaintext, aad) (L bytes, tag last)
//
//  * L = plaintext + 16; a reader refuses L < 16 or L > 65536 + 16 before buffering it.
//  * nonce_i = stream nonce + i as one N-byte big-endian integer (carry across all bytes);
//    a wrap to zero ends the stream, and AES-256-GCM stops after 2^32 records.
//  * aad = the original stream nonce || the record's 4 length bytes, so a record cannot be
//    moved to another stream, reordered, replayed or cut short without failing its tag.
//  * aes-256-gcm: N = 12. xchacha20-poly1305: N = 24, key K' = HChaCha20(K, n[0..16)) and
//    the IETF ChaCha20-Poly1305 with nonce 00000000 || n[16..24) (OpenSSL has no XChaCha).
//
// Records are not messages: the plaintext is a byte stream that carries v2 frames, and a
// frame may span records (Go frp writes a frame's header and payload as two records).
#pragma once

#include "../error.hpp"
#include "../net.hpp"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace p2prc::frp {

enum class AeadAlgorithm { aes_256_gcm, xchacha20_poly1305 };

inline const char* to_string(AeadAlgorithm a) noexcept {
    return a == AeadAlgorithm::aes_256_gcm ? "aes-256-gcm" : "xchacha20-poly1305";
}
// The algorithm named exactly as frp names it, or nullopt.
inline std::optional<AeadAlgorithm> parse_aead_algorithm(std::string_view s) {
    if (s == "aes-256-gcm") return AeadAlgorithm::aes_256_gcm;
    if (s == "xchacha20-poly1305") return AeadAlgorithm::xchacha20_poly1305;
    return std::nullopt;
}
inline std::size_t aead_nonce_size(AeadAlgorithm a) noexcept {
    return a == AeadAlgorithm::aes_256_gcm ? 12 : 24;
}

inline constexpr std::size_t kAeadTagSize = 16;
inline constexpr std::size_t kAeadKeySize = 32;
// Largest plaintext of one record (golib's aeadStreamMaxPayload).
inline constexpr std::size_t kAeadMaxRecordPlaintext = 64 * 1024;
using AeadKey = std::array<std::uint8_t, kAeadKeySize>;

namespace detail {

inline std::uint32_t load_le32(const std::uint8_t* p) {
    return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
           std::uint32_t(p[3]) << 24;
}
inline std::uint32_t rotl32(std::uint32_t x, int n) {
    return (x << n) | (x >> (32 - n));
}

}  // namespace detail

// HChaCha20 (draft-irtf-cfrg-xchacha): the ChaCha20 block function on (constants, key,
// 16-byte nonce), 20 rounds, without the final addition; out = words 0-3 and 12-15.
inline AeadKey hchacha20(const AeadKey& key, const std::uint8_t* nonce16) {
    std::uint32_t s[16] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
    for (int i = 0; i < 8; ++i) s[4 + i] = detail::load_le32(key.data() + 4 * i);
    for (int i = 0; i < 4; ++i) s[12 + i] = detail::load_le32(nonce16 + 4 * i);
    auto qr = [&](int a, int b, int c, int d) {
        s[a] += s[b], s[d] ^= s[a], s[d] = detail::rotl32(s[d], 16);
        s[c] += s[d], s[b] ^= s[c], s[b] = detail::rotl32(s[b], 12);
        s[a] += s[b], s[d] ^= s[a], s[d] = detail::rotl32(s[d], 8);
        s[c] += s[d], s[b] ^= s[c], s[b] = detail::rotl32(s[b], 7);
    };
    for (int round = 0; round < 10; ++round) {
        qr(0, 4, 8, 12), qr(1, 5, 9, 13), qr(2, 6, 10, 14), qr(3, 7, 11, 15);
        qr(0, 5, 10, 15), qr(1, 6, 11, 12), qr(2, 7, 8, 13), qr(3, 4, 9, 14);
    }
    AeadKey out{};
    const int words[8] = {0, 1, 2, 3, 12, 13, 14, 15};
    for (int i = 0; i < 8; ++i)
        for (int b = 0; b < 4; ++b)
            out[std::size_t(4 * i + b)] = std::uint8_t(s[words[i]] >> (8 * b));
    return out;
}

// One AEAD (key fixed) sealing and opening single records with explicit nonces.
class Aead {
  public:
    Aead(AeadAlgorithm alg, const AeadKey& key)
        : alg_(alg), key_(key), ctx_(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free) {
        if (!ctx_) throw error(errc::io_error, "frp AEAD: no cipher context from OpenSSL");
    }
    AeadAlgorithm algorithm() const noexcept { return alg_; }
    std::size_t nonce_size() const noexcept { return aead_nonce_size(alg_); }

    // ciphertext || tag.
    std::string seal(const std::uint8_t* nonce, std::string_view aad, const void* pt,
                     std::size_t n) {
        std::string out(n + kAeadTagSize, '\0');
        auto* o = reinterpret_cast<unsigned char*>(out.data());
        init(nonce, 1);
        int len = 0;
        bool ok =
            update(nullptr, reinterpret_cast<const unsigned char*>(aad.data()), aad.size()) &&
            update(o, static_cast<const unsigned char*>(pt), n) &&
            EVP_CipherFinal_ex(ctx_.get(), o + n, &len) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_AEAD_GET_TAG, int(kAeadTagSize), o + n) == 1;
        if (!ok)
            throw error(errc::io_error,
                        std::string("frp AEAD: ") + to_string(alg_) + " seal failed in OpenSSL");
        return out;
    }

    // The plaintext, or nullopt when the tag does not authenticate (ct_tag >= 16 bytes).
    std::optional<std::string> open(const std::uint8_t* nonce, std::string_view aad,
                                    std::string_view ct_tag) {
        if (ct_tag.size() < kAeadTagSize) return std::nullopt;
        std::size_t n = ct_tag.size() - kAeadTagSize;
        std::string out(n, '\0');
        auto* o = reinterpret_cast<unsigned char*>(out.data());
        unsigned char tag[kAeadTagSize];
        std::memcpy(tag, ct_tag.data() + n, kAeadTagSize);
        init(nonce, 0);
        int len = 0;
        if (!update(nullptr, reinterpret_cast<const unsigned char*>(aad.data()), aad.size()) ||
            !update(o, reinterpret_cast<const unsigned char*>(ct_tag.data()), n) ||
            EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_AEAD_SET_TAG, int(kAeadTagSize), tag) != 1)
            throw error(errc::io_error,
                        std::string("frp AEAD: ") + to_string(alg_) + " open failed in OpenSSL");
        if (EVP_CipherFinal_ex(ctx_.get(), o + n, &len) != 1) return std::nullopt;
        return out;
    }

  private:
    void init(const std::uint8_t* nonce, int enc) {
        const EVP_CIPHER* cipher = nullptr;
        AeadKey key = key_;
        std::uint8_t iv[12] = {};
        if (alg_ == AeadAlgorithm::aes_256_gcm) {
            cipher = EVP_aes_256_gcm();
            std::memcpy(iv, nonce, 12);
        } else {
            cipher = EVP_chacha20_poly1305();
            key = hchacha20(key_, nonce);
            std::memcpy(iv + 4, nonce + 16, 8);
        }
        if (EVP_CipherInit_ex(ctx_.get(), cipher, nullptr, nullptr, nullptr, enc) != 1 ||
            EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_AEAD_SET_IVLEN, 12, nullptr) != 1 ||
            EVP_CipherInit_ex(ctx_.get(), nullptr, nullptr, key.data(), iv, enc) != 1)
            throw error(errc::io_error,
                        std::string("frp AEAD: ") + to_string(alg_) + " init failed in OpenSSL");
    }
    bool update(unsigned char* out, const unsigned char* in, std::size_t n) {
        while (n > 0) {
            int chunk = n > (1u << 30) ? (1 << 30) : int(n);
            int outl = 0;
            if (EVP_CipherUpdate(ctx_.get(), out, &outl, in, chunk) != 1) return false;
            if (out) out += outl;
            in += chunk, n -= std::size_t(chunk);
        }
        return true;
    }

    AeadAlgorithm alg_;
    AeadKey key_;
    std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx_;
};

namespace detail {

// nonce += 1 as a big-endian integer; false when it wrapped to all zeros.
inline bool increment_nonce(std::uint8_t* n, std::size_t size) {
    for (std::size_t i = size; i-- > 0;)
        if (++n[i] != 0) return true;
    return false;
}

inline std::string aead_aad(const std::string& stream_nonce, std::uint32_t len) {
    std::string aad = stream_nonce;
    for (int shift = 24; shift >= 0; shift -= 8) aad += char((len >> shift) & 0xff);
    return aad;
}

}  // namespace detail

// The writing half of one direction. seal() returns the bytes to send for a plaintext
// (the stream nonce first, the first time), split into records of at most 64 KiB.
class AeadSealer {
  public:
    // `stream_nonce` fixes the nonce (tests); by default it is random.
    AeadSealer(AeadAlgorithm alg, const AeadKey& key,
               std::optional<std::string> stream_nonce = std::nullopt)
        : aead_(alg, key) {
        std::size_t n = aead_.nonce_size();
        if (stream_nonce) {
            if (stream_nonce->size() != n)
                throw error(errc::invalid_argument, "frp AEAD: the stream nonce of " +
                                                        std::string(to_string(alg)) + " has " +
                                                        std::to_string(n) + " bytes");
            base_ = *stream_nonce;
        } else {
            base_.assign(n, '\0');
            if (RAND_bytes(reinterpret_cast<unsigned char*>(base_.data()), int(n)) != 1)
                throw error(errc::io_error, "frp AEAD: no random bytes for a nonce from OpenSSL");
        }
        next_.assign(base_.begin(), base_.end());
    }

    std::string seal(const void* data, std::size_t n) {
        std::string out;
        if (!sent_nonce_) {
            out = base_;
            sent_nonce_ = true;
        }
        const auto* p = static_cast<const char*>(data);
        do {
            std::size_t k = std::min(n, kAeadMaxRecordPlaintext);
            if (exhausted_ ||
                (aead_.algorithm() == AeadAlgorithm::aes_256_gcm && records_ >= (1ULL << 32)))
                throw error(errc::limit_exceeded, "frp AEAD stream: record counter exhausted");
            auto len = std::uint32_t(k + kAeadTagSize);
            for (int shift = 24; shift >= 0; shift -= 8) out += char((len >> shift) & 0xff);
            out += aead_.seal(next_.data(), detail::aead_aad(base_, len), p, k);
            ++records_;
            exhausted_ = !detail::increment_nonce(next_.data(), next_.size());
            p += k, n -= k;
        } while (n > 0);
        return out;
    }

  private:
    Aead aead_;
    std::string base_;
    std::vector<std::uint8_t> next_;
    std::uint64_t records_ = 0;
    bool sent_nonce_ = false, exhausted_ = false;
};

// The reading half: feed() the received bytes, read() the authenticated plaintext. It
// holds at most one record (4 + 65552 bytes) and refuses a bad length as soon as its 4
// bytes arrive. After an error it stays failed.
class AeadOpener {
  public:
    AeadOpener(AeadAlgorithm alg, const AeadKey& key) : aead_(alg, key) {}

    void feed(const void* data, std::size_t n) {
        if (!why_.empty())
            throw error(errc::state_error, "frp AEAD stream: failed earlier: " + why_);
        const auto* p = static_cast<const char*>(data);
        try {
            while (n > 0) {
                std::size_t ns = aead_.nonce_size();
                if (base_.size() < ns) {
                    std::size_t k = std::min(n, ns - base_.size());
                    base_.append(p, k);
                    p += k, n -= k;
                    if (base_.size() == ns) next_.assign(base_.begin(), base_.end());
                    continue;
                }
                if (head_.size() < 4) {
                    std::size_t k = std::min(n, 4 - head_.size());
                    head_.append(p, k);
                    p += k, n -= k;
                    if (head_.size() < 4) continue;
                    auto* h = reinterpret_cast<const unsigned char*>(head_.data());
                    want_ = std::uint32_t(h[0]) << 24 | std::uint32_t(h[1]) << 16 |
                            std::uint32_t(h[2]) << 8 | h[3];
                    if (want_ < kAeadTagSize || want_ > kAeadMaxRecordPlaintext + kAeadTagSize)
                        throw error(errc::protocol_error, "frp AEAD stream: record length " +
                                                              std::to_string(want_) +
                                                              " outside 16-65552");
                    body_.clear();
                    body_.reserve(want_);
                }
                std::size_t k = std::min(n, std::size_t(want_) - body_.size());
                body_.append(p, k);
                p += k, n -= k;
                if (body_.size() < want_) continue;
                if (exhausted_ ||
                    (aead_.algorithm() == AeadAlgorithm::aes_256_gcm && records_ >= (1ULL << 32)))
                    throw error(errc::protocol_error, "frp AEAD stream: record counter exhausted");
                auto pt = aead_.open(next_.data(), detail::aead_aad(base_, want_), body_);
                if (!pt)
                    throw error(errc::protocol_error,
                                "frp AEAD stream: record " + std::to_string(records_) +
                                    " failed authentication (bad tag, wrong key, or a "
                                    "replayed, reordered or altered record)");
                ++records_;
                exhausted_ = !detail::increment_nonce(next_.data(), next_.size());
                plain_ += *pt;
                head_.clear();
                body_.clear();
            }
        } catch (const error& e) {
            why_ = e.what();
            throw;
        }
    }

    // Takes up to n bytes of plaintext; returns how many.
    std::size_t read(void* out, std::size_t n) {
        std::size_t k = std::min(n, plain_.size() - pos_);
        std::memcpy(out, plain_.data() + pos_, k);
        pos_ += k;
        if (pos_ == plain_.size()) plain_.clear(), pos_ = 0;
        return k;
    }
    std::size_t available() const noexcept { return plain_.size() - pos_; }
    // True between records (a clean place for the stream to end).
    bool at_boundary() const noexcept {
        return (base_.empty() || base_.size() == aead_.nonce_size()) && head_.empty();
    }
    std::size_t records() const noexcept { return records_; }

  private:
    Aead aead_;
    std::string base_, head_, body_, plain_;
    std::vector<std::uint8_t> next_;
    std::uint32_t want_ = 0;
    std::size_t pos_ = 0;
    std::uint64_t records_ = 0;
    bool exhausted_ = false;
    std::string why_;
};

// A stream that seals what it writes and opens what it reads, over another stream: the
// v2 control connection after login. Each write_all becomes whole records. A read that
// times out mid-record loses nothing (the partial record stays in the opener).
class AeadStream final : public p2prc::detail::Stream {
  public:
    AeadStream(std::shared_ptr<p2prc::detail::Stream> inner, AeadAlgorithm alg,
               const AeadKey& write_key, const AeadKey& read_key,
               std::optional<std::string> write_nonce = std::nullopt)
        : inner_(std::move(inner)),
          sealer_(alg, write_key, std::move(write_nonce)),
          opener_(alg, read_key) {
        if (!inner_) throw error(errc::invalid_argument, "AeadStream: no inner stream");
    }

    std::size_t read_some(void* buf, std::size_t n, p2prc::detail::Millis timeout) override {
        if (n == 0) return 0;
        auto deadline = p2prc::detail::deadline_after(timeout);
        while (opener_.available() == 0) {
            auto left = std::chrono::duration_cast<p2prc::detail::Millis>(
                deadline - p2prc::detail::Clock::now());
            if (left.count() < 0) left = p2prc::detail::Millis(0);
            std::size_t k = inner_->read_some(buf_, sizeof buf_, left);
            if (k == 0) {
                if (opener_.at_boundary()) return 0;
                throw error(errc::io_error, describe() + ": end of stream inside a record");
            }
            opener_.feed(buf_, k);
        }
        return opener_.read(buf, n);
    }

    void write_all(const void* buf, std::size_t n, p2prc::detail::Millis timeout) override {
        std::string out = sealer_.seal(buf, n);
        inner_->write_all(out.data(), out.size(), timeout);
    }

    void shutdown_write() override { inner_->shutdown_write(); }
    void close() noexcept override { inner_->close(); }
    std::string describe() const override { return "AEAD " + inner_->describe(); }

  private:
    std::shared_ptr<p2prc::detail::Stream> inner_;
    AeadSealer sealer_;
    AeadOpener opener_;
    char buf_[4096];
};

}  // namespace p2prc::frp
