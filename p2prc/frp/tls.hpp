// TLS for the relay transport, as frp uses it: frpc writes the byte 0x17 and then starts
// a TLS handshake on the same TCP connection (or, with disable_custom_tls_first_byte,
// starts the handshake at once: the ClientHello's first byte is 0x16). frps accepts both
// and plain TCP on one port. frpc does not verify the server's certificate by default, and
// frps makes itself a self-signed one at start when none is configured.
//
// TlsStream drives an OpenSSL session over a non-blocking TcpConnection. OpenSSL allows
// one call on a session at a time, so each SSL_read/SSL_write runs under a mutex and
// returns at once (non-blocking); the waiting for the socket happens outside the mutex,
// which lets one thread read while another writes, as the relay's pipes do.
#pragma once

#include "../error.hpp"
#include "../net.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

namespace p2prc::frp {

// The first byte frpc sends before its TLS ClientHello (unless told not to).
inline constexpr unsigned char kTlsFirstByte = 0x17;

namespace detail {

inline std::string openssl_error_text() {
    std::string out;
    while (unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        if (!out.empty()) out += "; ";
        out += buf;
    }
    return out.empty() ? "no detail from OpenSSL" : out;
}

struct SslCtxFree {
    void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct SslFree {
    void operator()(SSL* s) const { SSL_free(s); }
};
struct PkeyFree {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Free {
    void operator()(X509* x) const { X509_free(x); }
};

// What our socket BIO knows about its socket.
struct BioSocket {
    int fd = -1;
    bool eof = false;
};

// OpenSSL's own socket BIO writes with write(), which raises SIGPIPE on a socket the peer
// closed and kills the process; this one uses send(MSG_NOSIGNAL), like TcpConnection.
inline int bio_write(BIO* b, const char* data, int len) {
    auto* s = static_cast<BioSocket*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    ssize_t r = ::send(s->fd, data, std::size_t(len), MSG_NOSIGNAL);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_write(b);
    return int(r);
}
inline int bio_read(BIO* b, char* buf, int len) {
    auto* s = static_cast<BioSocket*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    ssize_t r = ::recv(s->fd, buf, std::size_t(len), 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_read(b);
    if (r == 0) s->eof = true;
    return int(r);
}
inline long bio_ctrl(BIO* b, int cmd, long, void*) {
    auto* s = static_cast<BioSocket*>(BIO_get_data(b));
    if (cmd == BIO_CTRL_FLUSH) return 1;
    // Lets OpenSSL tell a peer that closed TCP from a broken read.
    if (cmd == BIO_CTRL_EOF) return s && s->eof ? 1 : 0;
    return 0;
}
inline int bio_create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}
inline int bio_destroy(BIO*) {
    return 1;
}

struct BioMethodFree {
    void operator()(BIO_METHOD* m) const { BIO_meth_free(m); }
};

// Waits for the socket to be readable or writable, in slices so that a closed stream
// notices quickly.
inline void wait_socket(int fd, short events, p2prc::detail::Clock::time_point deadline,
                        const std::atomic<bool>& closed, const std::string& what) {
    for (;;) {
        if (closed.load()) throw error(errc::state_error, what + ": closed");
        int left = p2prc::detail::millis_until(deadline);
        if (left == 0) throw error(errc::timeout, what + ": timed out");
        pollfd p{fd, events, 0};
        int r = ::poll(&p, 1, left < 200 ? left : 200);
        if (r > 0) return;
        if (r < 0 && errno != EINTR)
            throw error(errc::io_error, what + ": poll: " + p2prc::detail::socket_error_text(errno));
    }
}

}  // namespace detail

// An OpenSSL context for one side. Shared by every connection of a server or client.
class TlsContext {
  public:
    // Server side: the certificate and key from PEM files, or, both empty, a fresh
    // self-signed ECDSA P-256 certificate (as frps does with an RSA one).
    static std::shared_ptr<TlsContext> server(const std::string& cert_file = {},
                                              const std::string& key_file = {}) {
        auto ctx = std::shared_ptr<TlsContext>(new TlsContext(TLS_server_method()));
        if (cert_file.empty() != key_file.empty())
            throw error(errc::invalid_argument,
                        "TLS: give both a certificate file and a key file, or neither");
        if (!cert_file.empty()) {
            if (SSL_CTX_use_certificate_chain_file(ctx->ctx_.get(), cert_file.c_str()) != 1)
                throw error(errc::io_error, "TLS: cannot load certificate " + cert_file + ": " +
                                                detail::openssl_error_text());
            if (SSL_CTX_use_PrivateKey_file(ctx->ctx_.get(), key_file.c_str(), SSL_FILETYPE_PEM) !=
                1)
                throw error(errc::io_error, "TLS: cannot load key " + key_file + ": " +
                                                detail::openssl_error_text());
        } else {
            ctx->use_self_signed();
        }
        if (SSL_CTX_check_private_key(ctx->ctx_.get()) != 1)
            throw error(errc::invalid_argument, "TLS: the key does not match the certificate: " +
                                                    detail::openssl_error_text());
        return ctx;
    }

    // Client side: like frpc's default, the server's certificate is not verified (the
    // token authenticates the login; TLS only hides the traffic).
    static std::shared_ptr<TlsContext> client() {
        auto ctx = std::shared_ptr<TlsContext>(new TlsContext(TLS_client_method()));
        SSL_CTX_set_verify(ctx->ctx_.get(), SSL_VERIFY_NONE, nullptr);
        return ctx;
    }

    // Server side, bound to a key: a self-signed certificate whose key is `key_pem` (PEM
    // private key; a p2prc node passes its Ed25519 identity key), so a client that knows
    // the server's public key can tell it from anybody else (client_expecting).
    static std::shared_ptr<TlsContext> server_with_key(const std::string& key_pem) {
        auto ctx = std::shared_ptr<TlsContext>(new TlsContext(TLS_server_method()));
        std::unique_ptr<BIO, void (*)(BIO*)> bio(
            BIO_new_mem_buf(key_pem.data(), int(key_pem.size())), [](BIO* b) { BIO_free(b); });
        std::unique_ptr<EVP_PKEY, detail::PkeyFree> key(
            bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
        if (!key)
            throw error(errc::invalid_argument, "TLS: the relay's key is not a PEM private key");
        ctx->use_self_signed(std::move(key));
        if (SSL_CTX_check_private_key(ctx->ctx_.get()) != 1)
            throw error(errc::invalid_argument, "TLS: the key does not match the certificate: " +
                                                    detail::openssl_error_text());
        return ctx;
    }

    // Client side that verifies the server: its certificate's public key must be the raw
    // key `expected` (32 bytes of Ed25519); anything else fails the handshake. No CA is
    // involved: the key is what names the server.
    static std::shared_ptr<TlsContext> client_expecting(const std::string& expected) {
        auto ctx = std::shared_ptr<TlsContext>(new TlsContext(TLS_client_method()));
        ctx->expected_key_ = expected;
        SSL_CTX_set_verify(ctx->ctx_.get(), SSL_VERIFY_PEER, nullptr);
        SSL_CTX_set_cert_verify_callback(ctx->ctx_.get(), &TlsContext::check_expected_key,
                                         ctx.get());
        return ctx;
    }

    SSL_CTX* native() const noexcept { return ctx_.get(); }
    BIO_METHOD* bio_method() const noexcept { return bio_.get(); }

  private:
    explicit TlsContext(const SSL_METHOD* method)
        : ctx_(SSL_CTX_new(method)),
          bio_(BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "p2prc socket")) {
        if (!ctx_ || !bio_ || BIO_meth_set_write(bio_.get(), detail::bio_write) != 1 ||
            BIO_meth_set_read(bio_.get(), detail::bio_read) != 1 ||
            BIO_meth_set_ctrl(bio_.get(), detail::bio_ctrl) != 1 ||
            BIO_meth_set_create(bio_.get(), detail::bio_create) != 1 ||
            BIO_meth_set_destroy(bio_.get(), detail::bio_destroy) != 1)
            throw error(errc::io_error, "TLS: SSL_CTX_new failed: " + detail::openssl_error_text());
        SSL_CTX_set_min_proto_version(ctx_.get(), TLS1_2_VERSION);
        SSL_CTX_set_mode(ctx_.get(),
                         SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        // A peer that closes TCP without close_notify (Go does) is an end of stream.
        SSL_CTX_set_options(ctx_.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
    }

    // The leaf certificate's raw public key against expected_key_ (arg is the context).
    static int check_expected_key(X509_STORE_CTX* store, void* arg) {
        const auto* self = static_cast<const TlsContext*>(arg);
        X509* cert = X509_STORE_CTX_get0_cert(store);
        EVP_PKEY* pk = cert ? X509_get0_pubkey(cert) : nullptr;
        unsigned char raw[64];
        std::size_t len = sizeof raw;
        if (pk && EVP_PKEY_id(pk) == EVP_PKEY_ED25519 &&
            EVP_PKEY_get_raw_public_key(pk, raw, &len) == 1 &&
            std::string(reinterpret_cast<const char*>(raw), len) == self->expected_key_)
            return 1;
        X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
        return 0;
    }

    void use_self_signed() {
        use_self_signed(std::unique_ptr<EVP_PKEY, detail::PkeyFree>(EVP_EC_gen("P-256")));
    }

    void use_self_signed(std::unique_ptr<EVP_PKEY, detail::PkeyFree> key) {
        std::unique_ptr<X509, detail::X509Free> cert(X509_new());
        // Ed25519 signs the whole message itself: no digest is named.
        const EVP_MD* md =
            key && EVP_PKEY_id(key.get()) == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
        if (!key || !cert)
            throw error(errc::io_error,
                        "TLS: cannot make a key pair: " + detail::openssl_error_text());
        X509_set_version(cert.get(), 2);
        ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
        X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
        X509_gmtime_adj(X509_getm_notAfter(cert.get()), 10L * 365 * 24 * 3600);
        X509_NAME* name = X509_get_subject_name(cert.get());
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>("p2prc relay"), -1, -1,
                                   0);
        X509_set_issuer_name(cert.get(), name);
        if (X509_set_pubkey(cert.get(), key.get()) != 1 ||
            X509_sign(cert.get(), key.get(), md) <= 0 ||
            SSL_CTX_use_certificate(ctx_.get(), cert.get()) != 1 ||
            SSL_CTX_use_PrivateKey(ctx_.get(), key.get()) != 1)
            throw error(errc::io_error, "TLS: cannot make a self-signed certificate: " +
                                            detail::openssl_error_text());
    }

    std::unique_ptr<SSL_CTX, detail::SslCtxFree> ctx_;
    std::unique_ptr<BIO_METHOD, detail::BioMethodFree> bio_;
    std::string expected_key_;  // client_expecting: the server's raw public key
};

// A TLS session over a TCP connection (shares it: closing either wakes the other).
class TlsStream final : public p2prc::detail::Stream {
  public:
    using Millis = p2prc::detail::Millis;

    // Server handshake on `tcp` (whose next byte is the ClientHello).
    static std::shared_ptr<TlsStream> accept(std::shared_ptr<p2prc::detail::TcpConnection> tcp,
                                             const std::shared_ptr<TlsContext>& ctx,
                                             Millis timeout) {
        auto s = std::shared_ptr<TlsStream>(new TlsStream(std::move(tcp), ctx));
        SSL_set_accept_state(s->ssl_.get());
        s->handshake(timeout);
        return s;
    }

    // Client handshake (the caller wrote 0x17 first if the server expects it).
    static std::shared_ptr<TlsStream> connect(std::shared_ptr<p2prc::detail::TcpConnection> tcp,
                                              const std::shared_ptr<TlsContext>& ctx,
                                              Millis timeout) {
        auto s = std::shared_ptr<TlsStream>(new TlsStream(std::move(tcp), ctx));
        SSL_set_connect_state(s->ssl_.get());
        s->handshake(timeout);
        return s;
    }

    std::size_t read_some(void* buf, std::size_t n, Millis timeout) override {
        if (n == 0) return 0;
        int want = n > (1u << 30) ? (1 << 30) : int(n);
        return io([&](SSL* ssl) { return SSL_read(ssl, buf, want); },
                  p2prc::detail::deadline_after(timeout), "read");
    }

    void write_all(const void* buf, std::size_t n, Millis timeout) override {
        auto deadline = p2prc::detail::deadline_after(timeout);
        const auto* p = static_cast<const char*>(buf);
        while (n > 0) {
            int chunk = n > (1u << 30) ? (1 << 30) : int(n);
            std::size_t k = io([&](SSL* ssl) { return SSL_write(ssl, p, chunk); }, deadline,
                               "write");
            if (k == 0) throw error(errc::io_error, describe() + ": write: the session ended");
            p += k;
            n -= k;
        }
    }

    // Sends close_notify: the peer reads end of stream; we can still read.
    void shutdown_write() override {
        std::lock_guard<std::mutex> lk(mu_);
        if (closed_.load() || shut_) return;
        shut_ = true;
        ERR_clear_error();
        SSL_shutdown(ssl_.get());  // best effort; a full socket buffer loses the alert
    }

    void close() noexcept override {
        closed_.store(true);
        tcp_->close();
    }

    std::string describe() const override { return "tls " + tcp_->describe(); }

  private:
    TlsStream(std::shared_ptr<p2prc::detail::TcpConnection> tcp,
              const std::shared_ptr<TlsContext>& ctx)
        : tcp_(std::move(tcp)), ctx_(ctx), ssl_(SSL_new(ctx->native())) {
        sock_.fd = tcp_->native_handle();
        BIO* bio = ssl_ ? BIO_new(ctx_->bio_method()) : nullptr;
        if (!bio)
            throw error(errc::io_error, "TLS: SSL_new failed: " + detail::openssl_error_text());
        BIO_set_data(bio, &sock_);
        SSL_set_bio(ssl_.get(), bio, bio);  // the session owns the BIO now
    }

    void handshake(Millis timeout) {
        if (io([](SSL* ssl) { return SSL_do_handshake(ssl); },
               p2prc::detail::deadline_after(timeout), "handshake") == 0)
            throw error(errc::io_error, describe() + ": the peer closed during the TLS handshake");
    }

    // Runs one non-blocking OpenSSL call until it succeeds; waits for the socket outside
    // the lock. Returns the call's positive result, or 0 at a clean end of stream.
    template <class Op>
    std::size_t io(Op op, p2prc::detail::Clock::time_point deadline, const char* what) {
        for (;;) {
            int r = 0, err = 0;
            {
                std::lock_guard<std::mutex> lk(mu_);
                if (closed_.load()) throw error(errc::state_error, describe() + ": closed");
                ERR_clear_error();
                r = op(ssl_.get());
                if (r > 0) return std::size_t(r);
                err = SSL_get_error(ssl_.get(), r);
            }
            if (err == SSL_ERROR_WANT_READ) {
                detail::wait_socket(tcp_->native_handle(), POLLIN, deadline, closed_,
                                    describe() + ": " + what);
            } else if (err == SSL_ERROR_WANT_WRITE) {
                detail::wait_socket(tcp_->native_handle(), POLLOUT, deadline, closed_,
                                    describe() + ": " + what);
            } else if (err == SSL_ERROR_ZERO_RETURN) {
                return 0;
            } else {
                throw error(errc::io_error, describe() + ": TLS " + what + " failed: " +
                                                detail::openssl_error_text());
            }
        }
    }

    std::shared_ptr<p2prc::detail::TcpConnection> tcp_;
    std::shared_ptr<TlsContext> ctx_;
    detail::BioSocket sock_;  // outlives ssl_ (declared before it)
    std::unique_ptr<SSL, detail::SslFree> ssl_;
    std::mutex mu_;
    std::atomic<bool> closed_{false};
    bool shut_ = false;
};

}  // namespace p2prc::frp
