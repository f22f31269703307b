// A program that uses the installed p2prc: prints each server of a table.
#include <p2prc.hpp>

#include <iostream>

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    for (const auto& p : p2prc::IpTable::load(argv[1]).peers())
        std::cout << p.name << " " << p.endpoint()->to_string() << "\n";
}
