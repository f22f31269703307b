// frp's cipher: the control connection after Login/LoginResp, and work connections with
// use_encryption, are an AES-128-CFB byte stream per direction.
//
//  * key  K = PBKDF2-HMAC-SHA1(password = token, salt = "frp", 64 iterations, 16 bytes).
//    (golib's own default salt is "crypto"; frp overrides it. Using "crypto" is the
//    classic interop bug.) The same K serves both directions.
//  * each direction's writer picks a random 16-byte IV and sends it in clear right before
//    its first ciphertext byte; the reader takes the first 16 bytes it reads as the IV.
//  * CFB-128 (full-block feedback, OpenSSL's aes-128-cfb) as one continuous stream per
//    direction: no padding, no per-message reset, no MAC; ciphertext length = plaintext.
//
// And the login proof: privilege_key = lowercase hex(MD5(token + decimal timestamp)).
#pragma once

#include "../error.hpp"
#include "../net.hpp"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace p2prc::frp {

using CipherKey = std::array<std::uint8_t, 16>;
using CipherIv = std::array<std::uint8_t, 16>;

// K for a token (the empty token is allowed: frp's default).
inline CipherKey derive_key(std::string_view token) {
    static const unsigned char salt[] = {'f', 'r', 'p'};
    CipherKey k{};
    if (PKCS5_PBKDF2_HMAC(token.data(), int(token.size()), salt, sizeof salt, 64, EVP_sha1(),
                          int(k.size()), k.data()) != 1)
        throw error(errc::io_error, "frp key derivation: PBKDF2-HMAC-SHA1 failed in OpenSSL");
    return k;
}

// hex(MD5(token || decimal(timestamp))), lower case, 32 characters.
inline std::string privilege_key(std::string_view token, std::int64_t timestamp) {
    std::string input(token);
    input += std::to_string(timestamp);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(input.data(), input.size(), md, &len, EVP_md5(), nullptr) != 1)
        throw error(errc::io_error, "frp privilege key: MD5 failed in OpenSSL");
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
        out += hex[md[i] >> 4];
        out += hex[md[i] & 15];
    }
    return out;
}

// One direction's AES-128-CFB-128 state. apply() may be called with any lengths; the
// keystream position carries over, partial blocks included.
class CfbCipher {
  public:
    enum class Mode { encrypt, decrypt };

    CfbCipher(const CipherKey& key, const CipherIv& iv, Mode mode)
        : ctx_(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free) {
        if (!ctx_ || EVP_CipherInit_ex(ctx_.get(), EVP_aes_128_cfb128(), nullptr, key.data(),
                                       iv.data(), mode == Mode::encrypt ? 1 : 0) != 1)
            throw error(errc::io_error, "frp cipher: AES-128-CFB init failed in OpenSSL");
    }

    // Transforms n bytes from `in` to `out` (they may be the same buffer).
    void apply(const std::uint8_t* in, std::uint8_t* out, std::size_t n) {
        while (n > 0) {
            int chunk = n > (1u << 30) ? (1 << 30) : int(n);
            int outl = 0;
            if (EVP_CipherUpdate(ctx_.get(), out, &outl, in, chunk) != 1 || outl != chunk)
                throw error(errc::io_error, "frp cipher: AES-128-CFB update failed in OpenSSL");
            in += chunk, out += chunk, n -= std::size_t(chunk);
        }
    }
    void apply(std::uint8_t* data, std::size_t n) { apply(data, data, n); }

  private:
    std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx_;
};

inline CipherIv random_iv() {
    CipherIv iv{};
    if (RAND_bytes(iv.data(), int(iv.size())) != 1)
        throw error(errc::io_error, "frp cipher: no random bytes for an IV from OpenSSL");
    return iv;
}

// A stream that encrypts what it writes and decrypts what it reads, over another stream.
// The write side sends its IV lazily with the first write; the read side takes the first
// 16 bytes as the peer's IV (a timeout while the IV is incomplete loses nothing).
class CryptoStream final : public p2prc::detail::Stream {
  public:
    // `write_iv` fixes the IV (tests); by default it is random.
    CryptoStream(std::shared_ptr<p2prc::detail::Stream> inner, const CipherKey& key,
                 std::optional<CipherIv> write_iv = std::nullopt)
        : inner_(std::move(inner)), key_(key), write_iv_(write_iv) {
        if (!inner_) throw error(errc::invalid_argument, "CryptoStream: no inner stream");
    }

    std::size_t read_some(void* buf, std::size_t n, p2prc::detail::Millis timeout) override {
        if (n == 0) return 0;
        auto deadline = p2prc::detail::deadline_after(timeout);
        while (!reader_) {
            auto left = std::chrono::duration_cast<p2prc::detail::Millis>(
                deadline - p2prc::detail::Clock::now());
            if (left.count() < 0) left = p2prc::detail::Millis(0);
            std::size_t k =
                inner_->read_some(read_iv_.data() + iv_got_, read_iv_.size() - iv_got_, left);
            if (k == 0) {
                if (iv_got_ == 0) return 0;  // closed before anything was encrypted
                throw error(errc::io_error, describe() + ": end of stream inside the IV (" +
                                                std::to_string(iv_got_) + " of 16 bytes)");
            }
            iv_got_ += k;
            if (iv_got_ == read_iv_.size())
                reader_.emplace(key_, read_iv_, CfbCipher::Mode::decrypt);
        }
        auto left = std::chrono::duration_cast<p2prc::detail::Millis>(deadline -
                                                                      p2prc::detail::Clock::now());
        if (left.count() < 0) left = p2prc::detail::Millis(0);
        std::size_t k = inner_->read_some(buf, n, left);
        reader_->apply(static_cast<std::uint8_t*>(buf), k);
        return k;
    }

    void write_all(const void* buf, std::size_t n, p2prc::detail::Millis timeout) override {
        auto deadline = p2prc::detail::deadline_after(timeout);
        const auto* p = static_cast<const std::uint8_t*>(buf);
        scratch_.clear();
        if (!writer_) {
            CipherIv iv = write_iv_ ? *write_iv_ : random_iv();
            writer_.emplace(key_, iv, CfbCipher::Mode::encrypt);
            scratch_.assign(iv.begin(), iv.end());
        }
        // Bounded scratch: encrypt and send at most 64 KiB at a time.
        constexpr std::size_t kChunk = 64 * 1024;
        do {
            std::size_t k = std::min(n, kChunk);
            std::size_t at = scratch_.size();
            scratch_.resize(at + k);
            writer_->apply(p, scratch_.data() + at, k);
            auto left = std::chrono::duration_cast<p2prc::detail::Millis>(
                deadline - p2prc::detail::Clock::now());
            if (left.count() < 0) left = p2prc::detail::Millis(0);
            inner_->write_all(scratch_.data(), scratch_.size(), left);
            scratch_.clear();
            p += k, n -= k;
        } while (n > 0);
    }

    void shutdown_write() override { inner_->shutdown_write(); }
    void close() noexcept override { inner_->close(); }
    std::string describe() const override { return "encrypted " + inner_->describe(); }

    p2prc::detail::Stream& inner() noexcept { return *inner_; }

  private:
    std::shared_ptr<p2prc::detail::Stream> inner_;
    CipherKey key_;
    std::optional<CipherIv> write_iv_;
    std::optional<CfbCipher> writer_, reader_;
    CipherIv read_iv_{};
    std::size_t iv_got_ = 0;
    std::vector<std::uint8_t> scratch_;
};

}  // namespace p2prc::frp
