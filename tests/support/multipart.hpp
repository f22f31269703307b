// A multipart/form-data body with one file field, written out by hand: cpp-httplib's
// form types are named differently across its versions.
#pragma once

#include <httplib.h>

#include <string>

namespace p2prc_test {

inline const char* multipart_boundary = "p2prc-test-boundary-91c2";

inline std::string multipart_body(const std::string& field, const std::string& filename,
                                  const std::string& content_type, const std::string& content) {
    return std::string("--") + multipart_boundary + "\r\nContent-Disposition: form-data; name=\"" + field +
           "\"; filename=\"" + filename + "\"\r\nContent-Type: " + content_type + "\r\n\r\n" + content +
           "\r\n--" + multipart_boundary + "--\r\n";
}

// POSTs one file field as a multipart form.
inline httplib::Result post_file(httplib::Client& c, const std::string& path, const std::string& field,
                                 const std::string& filename, const std::string& content_type,
                                 const std::string& content) {
    return c.Post(path.c_str(), multipart_body(field, filename, content_type, content),
                  (std::string("multipart/form-data; boundary=") + multipart_boundary).c_str());
}

}  // namespace p2prc_test
