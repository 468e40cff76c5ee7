#pragma once
// Where a study's model files and dataset folders are. A location is an
// absolute path, or a URI that each reading process (the CLI that hashes the
// files, every worker) resolves to a local path of its own:
//
//   /models/dino.pt             the same path everywhere
//   file:///models/dino.pt      <file root>/models/dino.pt, where each
//                               process has its own file root (worker
//                               --file_root, CLI --file_root or
//                               $SSLBENCH_FILE_ROOT; default /), so the
//                               client and the workers need the same files
//                               under their roots, not the same paths
//
// Other schemes are the extension point for object stores: a resolver
// registered for "s3" (say) fetches s3://bucket/key into a local cache and
// returns that path; hashing, digests, the read roots and the readers then
// work on the local copy unchanged. The coordinator checks that a study's
// schemes are registered, so every process must register the same ones
// (in common/location.cc, where `file` is).

#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace sslbench {

struct LocationRoots {
  std::string file_root = "/";  // what file:///x resolves under
};

// The scheme of a URI location ("file"), or "" for a plain path.
std::string LocationScheme(const std::string& location);

// Whether `location` is acceptable in a study: an absolute path, or a URI
// of a registered scheme with an absolute path part. INVALID_ARGUMENT
// naming the problem otherwise.
absl::Status CheckLocation(const std::string& location);

// The local path of `location` for this process: a plain path as it is, a
// file:// URI under roots.file_root (lexically normalised; it cannot climb
// out of the root). INVALID_ARGUMENT for a malformed location,
// UNIMPLEMENTED for a scheme without a resolver.
absl::StatusOr<std::string> ResolveLocation(const std::string& location,
                                            const LocationRoots& roots);

// Adds a resolver for `scheme` (e.g. an object store). Not thread-safe: call
// at start-up, before any resolution.
using LocationResolver =
    std::function<absl::StatusOr<std::string>(const std::string& location,
                                              const LocationRoots& roots)>;
void RegisterLocationScheme(const std::string& scheme, LocationResolver resolver);

}  // namespace sslbench
