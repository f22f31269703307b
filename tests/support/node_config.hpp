// The configuration of an in-process test node: loopback only, any free port, its table in
// the test's folder, never behind NAT (so it asks nobody to dial back).
#pragma once

#include <p2prc.hpp>

#include "support/tempdir.hpp"

#include <string>

namespace p2prc_test {

inline p2prc::Config loopback_node_config(const TempDir& dir, const std::string& name) {
    p2prc::Config c;
    c.name = name;
    c.bind = "127.0.0.1";
    c.port = 0;
    c.iptable = dir.file(name + ".json");
    c.behind_nat = p2prc::BehindNat::no;
    return c;
}

}  // namespace p2prc_test
