// p2prc: turn a program into a node of a peer-to-peer network of servers.
//
// The umbrella header: includes every part in dependency order. The parts live in
// p2prc/; single_include/p2prc.hpp is the same library as one file to copy.
// SPDX-License-Identifier: MIT
#pragma once

#include "p2prc/version.hpp"
#include "p2prc/error.hpp"
#include "p2prc/address.hpp"
#include "p2prc/identity.hpp"
#include "p2prc/peer.hpp"
#include "p2prc/iptable.hpp"
#include "p2prc/config.hpp"
#include "p2prc/sysinfo.hpp"
#include "p2prc/server.hpp"
#include "p2prc/probe.hpp"
#include "p2prc/discovery.hpp"
#include "p2prc/net.hpp"
#include "p2prc/frp/wire.hpp"
#include "p2prc/frp/crypto.hpp"
#include "p2prc/frp/aead.hpp"
#include "p2prc/frp/wire_v2.hpp"
#include "p2prc/frp/snappy.hpp"
#include "p2prc/frp/mux.hpp"
#include "p2prc/frp/tls.hpp"
#include "p2prc/frp/pipe.hpp"
#include "p2prc/frp/server.hpp"
#include "p2prc/frp/client.hpp"
#include "p2prc/relay.hpp"
#include "p2prc/metrics.hpp"
#include "p2prc/node.hpp"
#include "p2prc/status.hpp"
