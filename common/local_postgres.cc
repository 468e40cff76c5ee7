#include "common/local_postgres.h"

#include <arpa/inet.h>
#include <signal.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/random.h"
#include "common/status_macros.h"
#include "common/subprocess.h"

namespace sslbench {
namespace {

namespace fs = std::filesystem;

constexpr char kSuperuser[] = "sslbench";
constexpr char kSystemUser[] = "postgres";
// sockaddr_un.sun_path holds 108 bytes including the NUL.
constexpr size_t kMaxSocketPath = 107;

// Leading number of a version folder name ("15", "9.6") for ordering.
double VersionOf(const std::string& name) {
  double v = 0;
  return absl::SimpleAtod(name, &v) ? v : -1;
}

absl::StatusOr<std::string> FindServerBinDir() {
  std::error_code ec;
  std::string best;
  double best_version = -1;
  for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    const fs::path initdb = entry.path() / "bin" / "initdb";
    if (!fs::is_regular_file(initdb, ec)) continue;
    const double v = VersionOf(entry.path().filename().string());
    if (v > best_version) {
      best_version = v;
      best = (entry.path() / "bin").string();
    }
  }
  if (best.empty()) {
    return absl::FailedPreconditionError(
        "PostgreSQL server not installed: apt-get install postgresql");
  }
  return best;
}

// Binds 127.0.0.1:port (0: any) the way the server will (SO_REUSEADDR), and
// returns the port that was bound, or 0 when it is taken.
int ProbeLoopbackPort(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  int bound = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      bound = ntohs(addr.sin_port);
    }
  }
  close(fd);
  return bound;
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& text, int lines) {
  std::vector<absl::string_view> all = absl::StrSplit(text, '\n');
  while (!all.empty() && all.back().empty()) all.pop_back();
  const size_t from = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0;
  return absl::StrJoin(all.begin() + from, all.end(), "\n");
}

// Quotes for the shell that pg_ctl runs the server through.
std::string ShellQuote(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "'\\''"}}), "'");
}

// PostgreSQL runs as `postgres` when we are root: every folder above the
// cluster's must let that user through.
absl::Status CheckTraversable(const fs::path& dir, uid_t uid) {
  for (fs::path p = dir.parent_path(); !p.empty(); p = p.parent_path()) {
    struct stat st;
    if (stat(p.c_str(), &st) != 0) {
      return absl::InternalError(absl::StrCat("cannot stat ", p.string(), ": ",
                                              std::strerror(errno)));
    }
    const bool passes = (st.st_mode & S_IXOTH) != 0 ||
                        (st.st_uid == uid && (st.st_mode & S_IXUSR) != 0);
    if (!passes) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot run PostgreSQL in ", dir.string(), ": the server runs as user '",
          kSystemUser, "', which cannot enter ", p.string(),
          " (not world-executable); choose a folder under /tmp or /var/tmp, "
          "e.g. --state_dir=/tmp/sslbench"));
    }
    if (p == p.root_path()) break;
  }
  return absl::OkStatus();
}

absl::Status ChownTree(const fs::path& dir, uid_t uid, gid_t gid) {
  auto chown_one = [&](const fs::path& p) -> absl::Status {
    struct stat st;
    if (lstat(p.c_str(), &st) != 0) return absl::OkStatus();
    if (st.st_uid == uid && st.st_gid == gid) return absl::OkStatus();
    if (lchown(p.c_str(), uid, gid) != 0) {
      return absl::InternalError(absl::StrCat("cannot chown ", p.string(),
                                              " to ", kSystemUser, ": ",
                                              std::strerror(errno)));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(chown_one(dir));
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    RETURN_IF_ERROR(chown_one(it->path()));
  }
  return absl::OkStatus();
}

// argv run as `user` (via runuser) when one is set.
std::vector<std::string> AsUser(const std::string& user,
                                std::vector<std::string> argv) {
  if (user.empty()) return argv;
  std::vector<std::string> wrapped = {"runuser", "-u", user, "--"};
  wrapped.insert(wrapped.end(), argv.begin(), argv.end());
  return wrapped;
}

bool ValidDatabaseName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::Status CheckServerCanReach(const std::string& dir, uid_t uid) {
  return CheckTraversable(fs::path(dir), uid);
}

absl::StatusOr<std::unique_ptr<LocalPostgres>> LocalPostgres::Start(
    const LocalPostgresOptions& options) {
  std::unique_ptr<LocalPostgres> pg(new LocalPostgres());
  ASSIGN_OR_RETURN(pg->bin_dir_, FindServerBinDir());
  if (options.dir.empty()) {
    return absl::InvalidArgumentError("LocalPostgres: no folder given");
  }
  std::error_code ec;
  const fs::path dir = fs::absolute(options.dir, ec).lexically_normal();
  pg->options_ = options;
  pg->options_.dir = dir.string();
  // lexically_normal keeps a trailing separator; drop it.
  if (pg->options_.dir.size() > 1 && pg->options_.dir.back() == '/') {
    pg->options_.dir.pop_back();
  }
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create folder ", dir.string(),
                                            ": ", ec.message()));
  }
  pg->data_dir_ = (dir / "data").string();

  uid_t uid = geteuid();
  gid_t gid = getegid();
  if (geteuid() == 0) {
    const passwd* pw = getpwnam(kSystemUser);
    if (pw == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "PostgreSQL refuses to run as root and there is no '", kSystemUser,
          "' user: apt-get install postgresql, or run as an unprivileged user"));
    }
    uid = pw->pw_uid;
    gid = pw->pw_gid;
    pg->run_as_ = kSystemUser;
    RETURN_IF_ERROR(CheckServerCanReach(dir.string(), uid));
  }

  // The port: the one asked for, else the one remembered from an earlier
  // start (so clients configured against it keep working), else a free one.
  const std::string port_file = (dir / "port").string();
  int port = options.port;
  if (port == 0) {
    int remembered = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFileOrEmpty(port_file)),
                         &remembered) &&
        remembered > 0 && remembered < 65536) {
      port = remembered;
    }
  }
  pg->port_ = port;
  const bool initialised = fs::exists(fs::path(pg->data_dir_) / "PG_VERSION", ec);
  if (pg->port_ == 0) {
    pg->port_ = ProbeLoopbackPort(0);
    if (pg->port_ == 0) {
      return absl::InternalError("cannot find a free loopback port for PostgreSQL");
    }
  }
  {
    std::ofstream out(port_file, std::ios::trunc);
    out << pg->port_ << "\n";
    if (!out) {
      return absl::InternalError(absl::StrCat("cannot write ", port_file));
    }
  }
  if (!pg->run_as_.empty()) RETURN_IF_ERROR(ChownTree(dir, uid, gid));

  const std::string passfile = (dir / "passfile").string();
  if (!initialised) {
    // The superuser has a random password (scram-sha-256), never on a
    // command line: initdb reads it from a file removed at once, clients
    // from a libpq password file only this user can read.
    LogInfo("postgres", "initialising a PostgreSQL cluster in ", pg->data_dir_);
    const std::string password = RandomHex(16);
    const std::string pwfile = (dir / "initdb.pw").string();
    RETURN_IF_ERROR(WriteFileAtomically(pwfile, password + "\n", 0600));
    if (!pg->run_as_.empty() && chown(pwfile.c_str(), uid, gid) != 0) {
      std::remove(pwfile.c_str());
      return absl::InternalError(absl::StrCat("cannot chown ", pwfile, ": ", std::strerror(errno)));
    }
    auto init = RunCommand(AsUser(pg->run_as_, {pg->bin_dir_ + "/initdb", "-D", pg->data_dir_,
                                                "-A", "scram-sha-256", "--pwfile", pwfile, "-U",
                                                kSuperuser, "-E", "UTF8", "--locale=C",
                                                "--no-sync"}));
    std::remove(pwfile.c_str());
    if (!init.ok()) return init.status();
    if (init->exit_code != 0) {
      return absl::InternalError(absl::StrCat("initdb failed (exit ", init->exit_code,
                                              "):\n", Tail(init->output, 20)));
    }
    RETURN_IF_ERROR(WriteFileAtomically(
        passfile, absl::StrCat("*:*:*:", kSuperuser, ":", password, "\n"), 0600));
  }
  // A cluster made before passwords (trust) has none and needs none.
  if (fs::exists(passfile, ec)) pg->passfile_ = passfile;
  RETURN_IF_ERROR(pg->StartServer());
  return pg;
}

absl::Status LocalPostgres::StartServer() {
  const std::string pg_ctl = bin_dir_ + "/pg_ctl";
  // A server still running on this folder (its parent was killed): stop it,
  // so that the options below (port, durability) apply.
  ASSIGN_OR_RETURN(CommandResult status,
                   RunCommand(AsUser(run_as_, {pg_ctl, "status", "-D", data_dir_})));
  if (status.exit_code == 0) {
    LogWarning("postgres", "stopping a PostgreSQL server left running in ", data_dir_);
    ASSIGN_OR_RETURN(CommandResult stop,
                     RunCommand(AsUser(run_as_, {pg_ctl, "stop", "-D", data_dir_, "-m",
                                         "fast", "-w"})));
    if (stop.exit_code != 0) {
      return absl::InternalError(absl::StrCat(
          "cannot stop the PostgreSQL server left running in ", data_dir_, ":\n",
          Tail(stop.output, 10)));
    }
  }
  if (ProbeLoopbackPort(port_) == 0) {
    // Someone else took the remembered port meanwhile: take another one.
    if (options_.port != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot start PostgreSQL: port 127.0.0.1:", port_,
          " is in use; choose another port"));
    }
    const int fresh = ProbeLoopbackPort(0);
    if (fresh == 0) return absl::InternalError("cannot find a free loopback port");
    LogWarning("postgres", "port ", port_, " is taken; using ", fresh);
    port_ = fresh;
    std::ofstream out(options_.dir + "/port", std::ios::trunc);
    out << port_ << "\n";
  }

  std::string server_options =
      absl::StrCat("-p ", port_, " -c listen_addresses=127.0.0.1");
  if (options_.dir.size() + std::strlen("/.s.PGSQL.65535.lock") <= kMaxSocketPath) {
    absl::StrAppend(&server_options, " -k ", ShellQuote(options_.dir));
  } else {
    // Too long for a Unix socket path; clients use TCP anyway.
    absl::StrAppend(&server_options, " -c unix_socket_directories=''");
  }
  if (!options_.durable) {
    absl::StrAppend(&server_options,
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
  }
  if (!options_.extra_options.empty()) absl::StrAppend(&server_options, " ", options_.extra_options);
  const std::string log_path = options_.dir + "/postgres.log";
  ASSIGN_OR_RETURN(CommandResult start,
                   RunCommand(AsUser(run_as_, {pg_ctl, "-D", data_dir_, "-l", log_path, "-w",
                                       "-t", "60", "-o", server_options, "start"})));
  if (start.exit_code != 0) {
    return absl::InternalError(absl::StrCat(
        "PostgreSQL failed to start in ", options_.dir, " (pg_ctl exit ",
        start.exit_code, "):\n", Tail(start.output, 10), "\nserver log ", log_path,
        ":\n", Tail(ReadFileOrEmpty(log_path), 20)));
  }
  running_ = true;
  LogInfo("postgres", "PostgreSQL listening on 127.0.0.1:", port_, " (", options_.dir,
          ")");
  return absl::OkStatus();
}

LocalPostgres::~LocalPostgres() {
  if (running_) {
    absl::Status status = Stop();
    if (!status.ok()) LogWarning("postgres", status.message());
  }
}

std::string LocalPostgres::ConnInfo(const std::string& dbname) const {
  std::string conninfo = absl::StrCat("host=127.0.0.1 port=", port_, " user=", kSuperuser,
                                      " dbname=", dbname);
  if (!passfile_.empty()) {
    // Quoted: the folder may hold spaces or quotes.
    absl::StrAppend(&conninfo, " passfile='",
                    absl::StrReplaceAll(passfile_, {{"\\", "\\\\"}, {"'", "\\'"}}), "'");
  }
  return conninfo;
}

absl::Status LocalPostgres::CreateDatabase(const std::string& name) {
  if (!ValidDatabaseName(name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "database name \"", name, "\" must be 1-63 of [A-Za-z0-9_-]"));
  }
  std::string psql = bin_dir_ + "/psql";
  std::error_code ec;
  if (!fs::exists(psql, ec)) psql = "/usr/bin/psql";
  auto run_sql = [&](const std::string& sql) -> absl::StatusOr<std::string> {
    ASSIGN_OR_RETURN(CommandResult r,
                     RunCommand({psql, "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-d",
                                 ConnInfo("postgres"), "-tAc", sql}));
    if (r.exit_code != 0) {
      return absl::InternalError(absl::StrCat("psql failed on \"", sql, "\": ",
                                              Tail(r.output, 10)));
    }
    return std::string(absl::StripAsciiWhitespace(r.output));
  };
  ASSIGN_OR_RETURN(std::string exists,
                   run_sql(absl::StrCat("SELECT 1 FROM pg_database WHERE datname='",
                                        name, "'")));
  if (exists == "1") return absl::OkStatus();
  absl::StatusOr<std::string> created =
      run_sql(absl::StrCat("CREATE DATABASE \"", name, "\""));
  // Another client may have created it between the two statements.
  if (!created.ok() &&
      created.status().message().find("already exists") == absl::string_view::npos) {
    return created.status();
  }
  return absl::OkStatus();
}

pid_t LocalPostgres::ServerPid() const {
  // postmaster.pid's first line is the server's pid; it is removed at a clean
  // stop and left behind by a crash, so the process is checked too.
  std::ifstream in(data_dir_ + "/postmaster.pid");
  long pid = 0;
  if (!(in >> pid) || pid <= 0) return 0;
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return 0;
  // A recycled pid would have another command line.
  std::ifstream cmdline(absl::StrCat("/proc/", pid, "/cmdline"));
  std::string argv0;
  std::getline(cmdline, argv0, '\0');
  if (argv0.find("postgres") == std::string::npos) return 0;
  return static_cast<pid_t>(pid);
}

std::string LocalPostgres::LogTail(int lines) const {
  return Tail(ReadFileOrEmpty(options_.dir + "/postgres.log"), lines);
}

absl::Status LocalPostgres::Stop() {
  const std::string pg_ctl = bin_dir_ + "/pg_ctl";
  ASSIGN_OR_RETURN(CommandResult status,
                   RunCommand(AsUser(run_as_, {pg_ctl, "status", "-D", data_dir_})));
  running_ = false;
  // Exit 3: not running (e.g. a Ctrl-C reached the server first).
  if (status.exit_code != 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(CommandResult stop,
                   RunCommand(AsUser(run_as_, {pg_ctl, "stop", "-D", data_dir_, "-m", "fast",
                                       "-w", "-t", "60"})));
  if (stop.exit_code != 0) {
    return absl::InternalError(absl::StrCat("pg_ctl stop failed in ", options_.dir,
                                            ":\n", Tail(stop.output, 10)));
  }
  return absl::OkStatus();
}

absl::Status LocalPostgres::Restart() {
  if (running_) RETURN_IF_ERROR(Stop());
  return StartServer();
}

}  // namespace sslbench
