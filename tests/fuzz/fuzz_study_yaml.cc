// Study files: any text must give a spec or a clear error, never a crash.

#include <cstddef>
#include <cstdint>
#include <string>

#include "client/study_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  sslbench::client::StudyFileOptions options;
  options.read_files = false;  // a dry run: no hashing of the paths it names
  (void)sslbench::client::ParseStudyYaml(text, "/nonexistent-sslbench-fuzz", options);
  return 0;
}
