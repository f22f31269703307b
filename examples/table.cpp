// Reads an IP table (either format), folds duplicates, and prints it fastest first.
//
//   example_table FILE [--p2prc]
#include <p2prc.hpp>

#include <cstring>
#include <iostream>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << "usage: " << argv[0] << " FILE [--p2prc]\n";
        return 2;
    }
    try {
        auto table = p2prc::IpTable::load(argv[1]);
        table.dedupe();
        table.sort_by_latency();
        bool go = argc > 2 && std::strcmp(argv[2], "--p2prc") == 0;
        std::cout << table.dump(go ? p2prc::TableFormat::p2prc : p2prc::TableFormat::seed);
    } catch (const p2prc::error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
