# Finds what p2prc needs. Used by the build and, installed, by p2prcConfig.cmake, so a
# consumer's find_package(p2prc) finds the same dependencies the same way.
include(CMakeFindDependencyMacro)
find_dependency(Threads)
find_dependency(OpenSSL)
find_dependency(nlohmann_json 3.2)

# cpp-httplib: upstream's CMake package (header-only, target httplib::httplib), else a
# distribution build found through pkg-config (Debian ships a compiled 0.11.4: its Cflags
# carry CPPHTTPLIB_OPENSSL_SUPPORT etc., which must match the library it links).
if(NOT TARGET httplib::httplib)
  find_package(httplib CONFIG QUIET)
  if(NOT TARGET httplib::httplib)
    find_package(PkgConfig QUIET)
    if(PkgConfig_FOUND)
      pkg_check_modules(P2PRC_CPPHTTPLIB QUIET IMPORTED_TARGET cpp-httplib)
    endif()
    if(NOT TARGET PkgConfig::P2PRC_CPPHTTPLIB)
      message(FATAL_ERROR "p2prc needs cpp-httplib: neither its CMake package (httplib::httplib) "
                          "nor pkg-config 'cpp-httplib' was found. On Debian: apt-get install libcpp-httplib-dev")
    endif()
    add_library(httplib::httplib INTERFACE IMPORTED)
    target_link_libraries(httplib::httplib INTERFACE PkgConfig::P2PRC_CPPHTTPLIB)
  endif()
endif()
