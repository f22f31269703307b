// libFuzzer: the opening of a frp wire v2 connection, both sides.
//
// Mode 0 (first byte even): the server's side. The rest is what a client sends after the
// preface: accept_v2_opening() reads an optional ClientHello, answers it and reads the
// first message; whatever follows is opened as the client's AEAD stream (token "") and
// parsed as frames. Mode 1: the client's side, the rest is a ServerHello payload checked
// against a fixed ClientHello.
//
// Any input may be rejected with p2prc::error; nothing else may happen, and what the
// server answers must be a ServerHello that agrees with what it negotiated.
#include "p2prc/frp/wire_v2.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

class MemStream final : public p2prc::detail::Stream {
  public:
    MemStream(const std::uint8_t* p, std::size_t n) : in_(reinterpret_cast<const char*>(p), n) {}
    std::size_t read_some(void* buf, std::size_t n, p2prc::detail::Millis) override {
        std::size_t k = std::min(n, in_.size() - pos_);
        std::memcpy(buf, in_.data() + pos_, k);
        pos_ += k;
        return k;
    }
    void write_all(const void* buf, std::size_t n, p2prc::detail::Millis) override {
        out.append(static_cast<const char*>(buf), n);
    }
    void shutdown_write() override {}
    void close() noexcept override {}
    std::string describe() const override { return "fuzz input"; }
    std::string rest() const { return in_.substr(pos_); }
    std::string out;

  private:
    std::string in_;
    std::size_t pos_ = 0;
};

void server_side(const std::uint8_t* p, std::size_t n) {
    using namespace p2prc::frp;
    MemStream s(p, n);
    V2Opening o;
    try {
        o = accept_v2_opening(s, p2prc::detail::Millis(1000));
    } catch (const p2prc::error&) {
        return;
    }
    if (!o.refused.empty() || o.crypto) {
        // Exactly one ServerHello frame was written, and it says what was decided.
        V2FrameDecoder d;
        d.feed(s.out.data(), s.out.size());
        auto f = d.take();
        if (!f || f->type != kV2ServerHello || d.pending() != 0 || d.take()) std::abort();
        ServerHello sh = decode_server_hello(f->payload);
        if (sh.error != o.refused) std::abort();
        if (o.crypto) {
            if (sh.algorithm != to_string(o.crypto->algorithm)) std::abort();
            if (sh.server_random.size() != kV2RandomSize) std::abort();
        }
    } else if (!s.out.empty()) {
        std::abort();  // nothing is answered without a ClientHello
    }
    if (!o.refused.empty() || !o.crypto) return;
    AeadOpener op(o.crypto->algorithm, o.crypto->key("", AeadDirection::client_to_server));
    std::string rest = s.rest();
    try {
        op.feed(rest.data(), rest.size());
    } catch (const p2prc::error&) {
    }
    std::string plain(op.available(), '\0');
    op.read(plain.data(), plain.size());
    MessageDecoder md(Codec{WireProtocol::v2});
    try {
        md.feed(plain.data(), plain.size());
    } catch (const p2prc::error&) {
    }
}

void client_side(const std::uint8_t* p, std::size_t n) {
    using namespace p2prc::frp;
    ClientHello ch;
    ch.transport = "tcp";
    ch.codecs = {"json"};
    ch.algorithms = {"aes-256-gcm", "xchacha20-poly1305"};
    ch.client_random = std::string(kV2RandomSize, 'r');
    ServerHello sh;
    try {
        sh = decode_server_hello(std::string_view(reinterpret_cast<const char*>(p), n));
    } catch (const p2prc::error&) {
        return;
    }
    auto r = check_server_hello(ch, sh);
    if (auto* alg = std::get_if<AeadAlgorithm>(&r)) {
        if (!sh.error.empty() || sh.server_random.size() != kV2RandomSize) std::abort();
        if (sh.algorithm != to_string(*alg)) std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    if (data[0] % 2 == 0)
        server_side(data + 1, size - 1);
    else
        client_side(data + 1, size - 1);
    return 0;
}
