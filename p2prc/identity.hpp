// A node's identity: an Ed25519 key pair. A server is named by its public key, not by an
// address: one server is known under many addresses (loopback, LAN, public, IPv4 and IPv6,
// through a relay), but it holds one key.
//
// The printable form of an identity is the 32-byte public key in lower-case base32
// (RFC 4648 alphabet, no padding): 52 characters of a-z and 2-7, which survive copy and
// paste, a double click, a URL and a file name. The short form (tables, logs) is its
// first 12 characters.
//
// The private key lives in a file (PEM, PKCS#8), created with mode 0600 at the first start.
// A key file that exists but cannot be read or parsed is an error naming the file: a new
// identity is never made silently, since peers would then see a different server.
//
// A node signs its own table entry (SignedEntry) and the nonces of GET /whoami; both
// messages start with their own tag, so a signature of one can never pass as the other.
#pragma once

#include "address.hpp"
#include "error.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace p2prc {

using PublicKeyBytes = std::array<std::uint8_t, 32>;

namespace detail {

inline constexpr const char* base32_alphabet = "abcdefghijklmnopqrstuvwxyz234567";

inline std::string base32_encode(const std::uint8_t* data, std::size_t n) {
    std::string out;
    std::uint32_t buffer = 0;
    int bits = 0;
    for (std::size_t i = 0; i < n; ++i) {
        buffer = (buffer << 8) | data[i];
        bits += 8;
        while (bits >= 5) {
            out += base32_alphabet[(buffer >> (bits - 5)) & 31u];
            bits -= 5;
        }
    }
    if (bits > 0) out += base32_alphabet[(buffer << (5 - bits)) & 31u];
    return out;
}

// Decodes exactly `n` bytes; refuses other lengths, other characters and non-zero padding
// bits (so one key has exactly one printable form).
inline bool base32_decode(std::string_view text, std::uint8_t* out, std::size_t n) {
    if (text.size() != (n * 8 + 4) / 5) return false;
    std::uint32_t buffer = 0;
    int bits = 0;
    std::size_t o = 0;
    for (char c : text) {
        int v = -1;
        if (c >= 'a' && c <= 'z')
            v = c - 'a';
        else if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= '2' && c <= '7')
            v = 26 + (c - '2');
        if (v < 0) return false;
        buffer = (buffer << 5) | std::uint32_t(v);
        bits += 5;
        if (bits >= 8) {
            if (o >= n) return false;
            out[o++] = std::uint8_t((buffer >> (bits - 8)) & 0xffu);
            bits -= 8;
        }
    }
    return o == n && (buffer & ((1u << bits) - 1)) == 0;
}

inline std::string to_hex(const std::uint8_t* data, std::size_t n) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(2 * n);
    for (std::size_t i = 0; i < n; ++i) {
        out += digits[data[i] >> 4];
        out += digits[data[i] & 15];
    }
    return out;
}

inline std::optional<std::vector<std::uint8_t>> from_hex(std::string_view text) {
    if (text.size() % 2) return std::nullopt;
    std::vector<std::uint8_t> out;
    out.reserve(text.size() / 2);
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    for (std::size_t i = 0; i < text.size(); i += 2) {
        int hi = nibble(text[i]), lo = nibble(text[i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out.push_back(std::uint8_t(hi * 16 + lo));
    }
    return out;
}

// Random bytes as hex, from OpenSSL's CSPRNG (nonces).
inline std::string random_nonce(std::size_t bytes = 16) {
    std::vector<std::uint8_t> b(bytes);
    if (RAND_bytes(b.data(), int(b.size())) != 1)
        throw error(errc::io_error, "cannot draw random bytes for a nonce");
    return to_hex(b.data(), b.size());
}

struct EvpPkeyFree {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct EvpMdCtxFree {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct BioFree {
    void operator()(BIO* b) const { BIO_free(b); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyFree>;

// Reads a small file whole; nullopt when it does not exist.
inline std::optional<std::string> read_small_file(const std::string& path, std::size_t max_bytes,
                                                  const std::string& what) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return std::nullopt;
        throw error(errc::io_error, what + " " + path + ": cannot open: " + std::strerror(errno));
    }
    std::string out;
    char buf[4096];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            ::close(fd);
            throw error(errc::io_error, what + " " + path + ": cannot read: " + std::strerror(e));
        }
        if (n == 0) break;
        out.append(buf, std::size_t(n));
        if (out.size() > max_bytes) {
            ::close(fd);
            throw error(errc::parse_error, what + " " + path + ": larger than " +
                                               std::to_string(max_bytes) +
                                               " bytes: not a key file");
        }
    }
    ::close(fd);
    return out;
}

// Creates `path` with `data` and mode 0600, only if it does not exist yet: written to a
// temporary file first and linked into place, so two processes starting at once never
// both make a key (the loser reads the winner's) and nobody sees half a key. False when
// the file existed already.
inline bool create_private_file(const std::string& path, const std::string& data) {
    std::string tmpl = path + ".tmp.XXXXXX";
    int fd = ::mkstemp(tmpl.data());  // mode 0600
    if (fd < 0)
        throw error(errc::io_error,
                    "identity key file " + path +
                        ": cannot create a temporary file: " + std::strerror(errno));
    auto fail = [&](const char* what) {
        int e = errno;
        ::close(fd);
        ::unlink(tmpl.c_str());
        throw error(errc::io_error,
                    "identity key file " + path + ": " + what + ": " + std::strerror(e));
    };
    if (::fchmod(fd, 0600) != 0) fail("cannot set mode 0600");
    std::size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("cannot write");
        done += std::size_t(n);
    }
    if (::fsync(fd) != 0) fail("cannot fsync");
    ::close(fd);
    const int linked = ::link(tmpl.c_str(), path.c_str());
    const int e = errno;
    ::unlink(tmpl.c_str());
    if (linked != 0) {
        if (e == EEXIST) return false;
        throw error(errc::io_error,
                    "identity key file " + path + ": cannot create: " + std::strerror(e));
    }
    return true;
}

}  // namespace detail

// Parses a printable identity; nullopt when it is not one.
inline std::optional<PublicKeyBytes> parse_identity(std::string_view text) {
    PublicKeyBytes k{};
    if (!detail::base32_decode(text, k.data(), k.size())) return std::nullopt;
    return k;
}

inline bool is_identity(std::string_view text) {
    return text.size() == 52 && parse_identity(text).has_value();
}

// The short form shown in tables and logs.
inline std::string short_identity(std::string_view id) {
    return std::string(id.substr(0, 12));
}

// Whether `signature` (64 bytes) signs `message` under the printable identity `id`.
inline bool verify_signature(std::string_view id, std::string_view message,
                             const std::uint8_t* signature, std::size_t signature_size) {
    auto key = parse_identity(id);
    if (!key || signature_size != 64) return false;
    detail::PkeyPtr pk(
        EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, key->data(), key->size()));
    if (!pk) return false;
    std::unique_ptr<EVP_MD_CTX, detail::EvpMdCtxFree> ctx(EVP_MD_CTX_new());
    if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pk.get()) != 1)
        return false;
    return EVP_DigestVerify(ctx.get(), signature, signature_size,
                            reinterpret_cast<const unsigned char*>(message.data()),
                            message.size()) == 1;
}

inline bool verify_signature_hex(std::string_view id, std::string_view message,
                                 std::string_view signature_hex) {
    auto sig = detail::from_hex(signature_hex);
    return sig && verify_signature(id, message, sig->data(), sig->size());
}

class Identity {
  public:
    static constexpr std::size_t max_key_file_bytes = 16384;

    // A fresh key pair (not saved).
    static Identity generate() {
        std::unique_ptr<EVP_PKEY_CTX, void (*)(EVP_PKEY_CTX*)> ctx(
            EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr), EVP_PKEY_CTX_free);
        EVP_PKEY* raw = nullptr;
        if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1)
            throw error(errc::io_error, "cannot generate an Ed25519 key");
        return Identity(detail::PkeyPtr(raw));
    }

    // Reads the key of `path`, or makes one and saves it there (mode 0600) when the file
    // does not exist. A file that exists but is not an Ed25519 private key in PEM is an
    // error naming it (never replaced).
    static Identity load_or_create(const std::string& path) {
        if (path.empty())
            throw error(errc::invalid_argument, "identity key file: the path is empty");
        if (auto text = detail::read_small_file(path, max_key_file_bytes, "identity key file"))
            return parse(*text, path);
        Identity fresh = generate();
        if (detail::create_private_file(path, fresh.private_pem())) return fresh;
        // Another process made it meanwhile: that one is the node's identity.
        auto text = detail::read_small_file(path, max_key_file_bytes, "identity key file");
        if (!text)
            throw error(errc::io_error,
                        "identity key file " + path + ": vanished while it was created");
        return parse(*text, path);
    }

    // Reads a key from PEM text; `origin` names it in errors.
    static Identity parse(const std::string& pem, const std::string& origin = "identity key") {
        const std::string where = "identity key file " + origin;
        if (pem.find_first_not_of(" \t\r\n") == std::string::npos)
            throw error(errc::parse_error, where +
                                               ": empty (expected an Ed25519 private key in PEM; "
                                               "remove the file to make a new identity)");
        std::unique_ptr<BIO, detail::BioFree> bio(BIO_new_mem_buf(pem.data(), int(pem.size())));
        if (!bio) throw error(errc::io_error, where + ": out of memory");
        detail::PkeyPtr k(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
        if (!k)
            throw error(errc::parse_error,
                        where +
                            ": damaged: not a PEM private key (remove the file only if a "
                            "new identity is wanted: peers will see a different server)");
        if (EVP_PKEY_id(k.get()) != EVP_PKEY_ED25519)
            throw error(errc::parse_error, where + ": the key is not an Ed25519 key");
        return Identity(std::move(k));
    }

    // The printable identity (see the file comment).
    const std::string& id() const noexcept { return id_; }
    std::string short_id() const { return short_identity(id_); }
    const PublicKeyBytes& public_key() const noexcept { return public_; }
    EVP_PKEY* key() const noexcept { return key_.get(); }

    std::string private_pem() const {
        std::unique_ptr<BIO, detail::BioFree> bio(BIO_new(BIO_s_mem()));
        if (!bio || PEM_write_bio_PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0, nullptr,
                                             nullptr) != 1)
            throw error(errc::io_error, "cannot encode the identity key as PEM");
        char* data = nullptr;
        long n = BIO_get_mem_data(bio.get(), &data);
        return std::string(data, std::size_t(n));
    }

    // 64 bytes of Ed25519 signature over `message`.
    std::array<std::uint8_t, 64> sign(std::string_view message) const {
        std::array<std::uint8_t, 64> sig{};
        std::size_t len = sig.size();
        std::unique_ptr<EVP_MD_CTX, detail::EvpMdCtxFree> ctx(EVP_MD_CTX_new());
        if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_.get()) != 1 ||
            EVP_DigestSign(ctx.get(), sig.data(), &len,
                           reinterpret_cast<const unsigned char*>(message.data()),
                           message.size()) != 1 ||
            len != sig.size())
            throw error(errc::io_error, "cannot sign with the identity key");
        return sig;
    }
    std::string sign_hex(std::string_view message) const {
        auto s = sign(message);
        return detail::to_hex(s.data(), s.size());
    }

  private:
    explicit Identity(detail::PkeyPtr key) : key_(std::move(key)) {
        std::size_t len = public_.size();
        if (EVP_PKEY_get_raw_public_key(key_.get(), public_.data(), &len) != 1 ||
            len != public_.size())
            throw error(errc::io_error, "cannot read the public half of the identity key");
        id_ = detail::base32_encode(public_.data(), public_.size());
    }

    detail::PkeyPtr key_;
    PublicKeyBytes public_{};
    std::string id_;
};

// ---- GET /whoami: proof of identity -----------------------------------------------------
//
// The caller sends a fresh nonce; the node answers its identity and a signature of
// "p2prc-whoami-v1\n" + nonce. Whoever answers holds the key right now: a copied identity
// string proves nothing, a replayed answer fails on the new nonce.

inline std::string whoami_message(std::string_view nonce) {
    return "p2prc-whoami-v1\n" + std::string(nonce);
}

// A nonce as /whoami accepts it: 16-128 hex digits.
inline bool valid_nonce(std::string_view nonce) {
    if (nonce.size() < 16 || nonce.size() > 128) return false;
    for (char c : nonce)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return false;
    return true;
}

// ---- A node's signed word about itself --------------------------------------------------
//
// Signed fields: the identity, a sequence number (the signer's clock in milliseconds when
// the content last changed: later words have larger numbers), the name, the endpoints it
// is reachable at, and its NAT and relay facts. A receiver keeps the largest sequence
// number per identity: an older word (replayed) is refused, a forged one fails the
// signature.
struct SignedEntry {
    std::string identity;
    std::uint64_t seq = 0;
    std::string name;
    std::vector<Endpoint> endpoints;
    bool nat = false;
    std::string escape_implementation;
    std::optional<Endpoint> relay;  // the relay that carries it, when it is reached that way
    std::string signature;          // 128 hex digits

    static constexpr std::size_t max_endpoints = 16;

    // The bytes signed: a tag, then every field length-prefixed (no separator inside a
    // field can shift another).
    std::string message() const {
        std::string m = "p2prc-entry-v1\n";
        auto field = [&](std::string_view v) {
            m += std::to_string(v.size());
            m += ':';
            m.append(v.data(), v.size());
            m += '\n';
        };
        field(identity);
        field(std::to_string(seq));
        field(name);
        field(std::to_string(endpoints.size()));
        for (const auto& e : endpoints) field(e.to_string());
        field(nat ? "1" : "0");
        field(escape_implementation);
        field(relay ? relay->to_string() : std::string());
        return m;
    }

    void sign(const Identity& key) {
        identity = key.id();
        signature = key.sign_hex(message());
    }

    bool verify() const { return verify_signature_hex(identity, message(), signature); }

    bool same_content(const SignedEntry& o) const {
        return identity == o.identity && name == o.name && endpoints == o.endpoints &&
               nat == o.nat && escape_implementation == o.escape_implementation && relay == o.relay;
    }
};

}  // namespace p2prc
