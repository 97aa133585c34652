#include "server/service_commands.h"

#include <cctype>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include "common/file_util.h"
#include "common/json_fields.h"
#include "server/api_convert.h"
#include "server/client.h"
#include "server/export_command.h"
#include "server/progress.h"
#include "server/service.h"
#include "server/spec_file.h"

namespace qs::server {
namespace {

namespace v1 = qsearch::v1;

// Everything the service subcommands read, bound to their flags.
struct Settings {
  ServiceConfig service;
  ClientConfig client;
  std::string config_file;
  Status config_error;
  // Client commands.
  std::string spec, name, out, state, page_token, request_id;
  std::string exports;  // fetch: formats to export the fetched recipe in (server/export_command.h)
  int page_size = 0;
  bool wait = false, json_output = false;
};

// The integer settings: one place for each one's flag, help, command and range, so that a value
// from the YAML file is checked exactly as the flag and its environment variable are.
enum class Role { kProcess, kScheduler, kWorker };  // kProcess: scheduler and worker
struct IntSetting {
  const char* key;  // flag name without "--"; the YAML key; QSEARCH_<KEY> in the environment
  int ServiceConfig::*field;
  Role role;
  int min, max;
  const char* help;
};
const IntSetting kIntSettings[] = {
    {"lease-seconds", &ServiceConfig::lease_seconds, Role::kProcess, 1, 86400,
     "a task whose worker is silent this long is taken over"},
    {"max-attempts", &ServiceConfig::max_attempts, Role::kProcess, 1, 100,
     "deliveries before a task is dead"},
    {"max-running", &ServiceConfig::max_running, Role::kScheduler, 1, 1000,
     "jobs running at once"},
    {"dispatch-window", &ServiceConfig::dispatch_window, Role::kScheduler, 1, 100000,
     "evaluation tasks each job keeps queued (fair sharing of workers)"},
    {"job-deadline", &ServiceConfig::job_deadline_seconds, Role::kScheduler, 60, 30 * 24 * 3600,
     "seconds a job may run before it ends DEADLINE_EXCEEDED"},
    {"max-active-jobs", &ServiceConfig::max_active_jobs, Role::kScheduler, 1, 1000000,
     "jobs queued or running at once; CreateJob past it is RESOURCE_EXHAUSTED"},
    {"worker-threads", &ServiceConfig::worker_threads, Role::kWorker, 0, 256,
     "task loops (0: one per usable core, at most 8)"},
    {"drain-seconds", &ServiceConfig::drain_seconds, Role::kWorker, 0, 3600,
     "on SIGTERM, seconds the tasks in hand may run before they are handed back to the queue"},
};

std::string EnvName(const std::string& key) {
  std::string env = "QSEARCH_";
  for (char c : key) env += c == '-' ? '_' : static_cast<char>(std::toupper(c));
  return env;
}

void AddIntSettings(CLI::App* cmd, ServiceConfig* config, Role role) {
  for (const IntSetting& setting : kIntSettings) {
    if (setting.role != role) continue;
    cmd->add_option(std::string("--") + setting.key, config->*setting.field, setting.help)
        ->envname(EnvName(setting.key))
        ->check(CLI::Range(setting.min, setting.max))
        ->capture_default_str();
  }
}

int Fail(const Status& s) {
  std::fprintf(stderr, "qsearch: error: %s\n", s.ToString().c_str());
  return 1;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  return out;
}

// Applies a YAML config file's keys to `s` (they act as defaults: environment and flags win).
Status LoadConfigFile(const std::string& path, Settings* s) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const std::exception& e) {
    return InvalidArgumentError("config file " + path + ": " + e.what());
  }
  if (!root.IsMap()) return InvalidArgumentError("config file " + path + " must be a mapping");
  std::map<std::string, std::string*> strings = {
      {"listen", &s->service.listen},         {"metrics-listen", &s->service.metrics_listen},
      {"redis", &s->service.redis},           {"cache-redis", &s->service.cache_redis},
      {"blob-dir", &s->service.blob_dir},     {"token-file", &s->service.token_file},
      {"tls-cert", &s->service.tls_cert},     {"tls-key", &s->service.tls_key},
      {"tls-ca", &s->service.tls_ca},         {"server", &s->client.server}};
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const IntSetting* int_setting = nullptr;
    for (const IntSetting& setting : kIntSettings) {
      if (key == setting.key) int_setting = &setting;
    }
    try {
      if (auto it = strings.find(key); it != strings.end()) {
        *it->second = kv.second.as<std::string>();
      } else if (int_setting != nullptr) {
        const int value = kv.second.as<int>();
        if (value < int_setting->min || value > int_setting->max) {
          return InvalidArgumentError("config file " + path + ": key '" + key + "' is " +
                                      std::to_string(value) + ", outside " +
                                      std::to_string(int_setting->min) + ".." +
                                      std::to_string(int_setting->max));
        }
        s->service.*int_setting->field = value;
      } else {
        return InvalidArgumentError("config file " + path + ": unknown key '" + key + "'");
      }
    } catch (const YAML::Exception&) {
      return InvalidArgumentError("config file " + path + ": key '" + key + "' has the wrong type");
    }
  }
  // The client side shares the token and TLS files.
  s->client.token_file = s->service.token_file;
  s->client.tls_ca = s->service.tls_ca;
  return OkStatus();
}

void AddConnection(CLI::App* cmd, Settings* s, bool server_side) {
  cmd->add_option("--config", s->config_file, "YAML settings (keys: the flag names)");
  cmd->add_option("--token-file", server_side ? s->service.token_file : s->client.token_file,
                  server_side ? "accepted bearer tokens, one per line" : "bearer token file")
      ->envname("QSEARCH_TOKEN_FILE");
  cmd->add_option("--tls-ca", server_side ? s->service.tls_ca : s->client.tls_ca,
                  server_side ? "CA of client certificates (requires them)"
                              : "CA of the server's certificate (enables TLS)")
      ->envname("QSEARCH_TLS_CA");
  cmd->add_option("--tls-cert", server_side ? s->service.tls_cert : s->client.tls_cert,
                  "certificate (PEM)")
      ->envname("QSEARCH_TLS_CERT");
  cmd->add_option("--tls-key", server_side ? s->service.tls_key : s->client.tls_key,
                  "private key (PEM)")
      ->envname("QSEARCH_TLS_KEY");
  if (!server_side) {
    cmd->add_option("--server", s->client.server, "scheduler address host:port")
        ->envname("QSEARCH_SERVER")
        ->capture_default_str();
  }
}

void AddProcessOptions(CLI::App* cmd, Settings* s) {
  AddConnection(cmd, s, /*server_side=*/true);
  cmd->add_option("--listen", s->service.listen, "gRPC address (workers: health only)")
      ->envname("QSEARCH_LISTEN")
      ->capture_default_str();
  cmd->add_option("--metrics-listen", s->service.metrics_listen, "Prometheus /metrics address")
      ->envname("QSEARCH_METRICS_LISTEN");
  cmd->add_option("--redis", s->service.redis, "Redis for the queue, jobs and evaluations")
      ->envname("QSEARCH_REDIS")
      ->capture_default_str();
  cmd->add_option("--cache-redis", s->service.cache_redis,
                  "Redis for the activation cache (allkeys-lru); default: --redis")
      ->envname("QSEARCH_CACHE_REDIS");
  cmd->add_option("--blob-dir", s->service.blob_dir, "blob directory shared with the workers")
      ->envname("QSEARCH_BLOB_DIR")
      ->capture_default_str();
  AddIntSettings(cmd, &s->service, Role::kProcess);
}

// Writes the job's progress until it ends; the exit code says how it ended.
int Watch(ApiClient& client, const std::string& name, bool json_output) {
  ProgressPrinter printer;
  int64_t after = 0;
  v1::Job last;
  for (int reconnects = 0; reconnects < 100;) {
    v1::WatchJobRequest req;
    req.set_name(name);
    req.set_after_seq(after);
    auto ctx = client.Context(/*stream=*/true);
    auto reader = client.search().WatchJob(ctx.get(), req);
    v1::JobEvent e;
    while (reader->Read(&e)) {
      after = e.seq();
      last = e.job();
      if (json_output) {
        std::printf("%s\n", Json(e).c_str());
        std::fflush(stdout);
      } else if (!e.job().progress().stage().empty()) {
        printer.Update(e.job().progress().stage(), static_cast<size_t>(e.job().progress().done()),
                       static_cast<size_t>(e.job().progress().total()));
      }
    }
    const grpc::Status s = reader->Finish();
    if (s.ok()) break;
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
        s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return Fail(FromGrpc(s));
    }
    // The scheduler restarted or the network blinked: resume after the last event seen.
    ++reconnects;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  if (!json_output) {
    std::fprintf(stderr, "\n");
    std::printf("%s %s%s%s\n", name.c_str(), v1::JobState_Name(last.state()).c_str(),
                last.summary().empty() ? "" : ": ", last.summary().c_str());
    if (last.has_error() && last.error().code() != 0) {
      std::printf("  %s\n", last.error().message().c_str());
    }
  }
  switch (last.state()) {
    case v1::SUCCEEDED: return 0;
    case v1::CANCELLED: return 4;
    default: return 3;
  }
}

int Submit(Settings& s) {
  auto spec = LoadSpecFile(s.spec);
  if (!spec.ok()) return Fail(spec.status());
  auto client = ApiClient::Connect(s.client);
  if (!client.ok()) return Fail(client.status());
  auto typed = (*client)->UploadSpec(*spec);
  if (!typed.ok()) return Fail(typed.status());
  v1::CreateJobRequest req;
  *req.mutable_spec() = *typed;
  if (s.request_id.empty()) {
    // A retried call within this submit is recognized as the same request.
    std::mt19937_64 rng(std::random_device{}());
    char id[40];
    std::snprintf(id, sizeof(id), "submit-%016llx", static_cast<unsigned long long>(rng()));
    s.request_id = id;
  }
  req.set_request_id(s.request_id);
  v1::Job job;
  grpc::Status st;
  for (int attempt = 0; attempt < 5; ++attempt) {
    st = (*client)->search().CreateJob((*client)->Context().get(), req, &job);
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500 << attempt));
  }
  if (!st.ok()) return Fail(FromGrpc(st));
  std::printf("%s\n", job.name().c_str());
  std::fflush(stdout);
  return s.wait ? Watch(**client, job.name(), s.json_output) : 0;
}

int Fetch(Settings& s) {
  std::vector<exports::ExportFormat> formats;
  if (!s.exports.empty()) {
    auto f = exports::ParseExportFormats(s.exports);
    if (!f.ok()) return Fail(f.status().WithContext("--export"));
    if (s.spec.empty()) {
      return Fail(InvalidArgumentError(
          "--export refits the recipe on the job's model and calibration images: name the job "
          "spec that was submitted with --spec"));
    }
    formats = *f;
  }
  auto client = ApiClient::Connect(s.client);
  if (!client.ok()) return Fail(client.status());
  v1::GetResultRequest req;
  req.set_name(s.name);
  v1::JobResult result;
  Status st = FromGrpc((*client)->search().GetResult((*client)->Context().get(), req, &result));
  if (!st.ok()) return Fail(st);
  st = MakeDirectories(s.out);
  if (!st.ok()) return Fail(st);
  // metrics.json, which says the set is complete, last (as `qsearch run` writes them).
  std::vector<const v1::Artifact*> order;
  for (const auto& a : result.artifacts()) {
    if (a.file() != "metrics.json") order.push_back(&a);
  }
  for (const auto& a : result.artifacts()) {
    if (a.file() == "metrics.json") order.push_back(&a);
  }
  for (const v1::Artifact* a : order) {
    if (a->file().find('/') != std::string::npos || a->file().empty() || a->file()[0] == '.') {
      return Fail(DataLossError("the server named an artifact '" + a->file() + "'"));
    }
    st = (*client)->Download(FromProto(a->digest()), s.out + "/" + a->file());
    if (!st.ok()) return Fail(st);
  }
  std::printf("wrote %d files to %s\n", result.artifacts_size(), s.out.c_str());
  if (formats.empty()) return 0;
  auto spec = LoadSpecFile(s.spec);
  if (!spec.ok()) return Fail(spec.status().WithContext("--spec"));
  auto recipe = ReadJsonFile(s.out + "/recipe.json");
  if (!recipe.ok()) return Fail(recipe.status());
  auto written = ExportRecipe(ExportSourceOf(*spec), *recipe, formats, s.out + "/export");
  if (!written.ok()) return Fail(written.status().WithContext("--export"));
  for (const auto& e : (*written)["exports"]) {
    std::printf("exported %s into %s/export\n", e["format"].get<std::string>().c_str(),
                s.out.c_str());
  }
  return 0;
}

int Unary(Settings& s, const std::string& what) {
  auto client = ApiClient::Connect(s.client);
  if (!client.ok()) return Fail(client.status());
  ApiClient& c = **client;
  grpc::Status st;
  if (what == "get" || what == "cancel") {
    v1::Job job;
    if (what == "get") {
      v1::GetJobRequest req;
      req.set_name(s.name);
      st = c.search().GetJob(c.Context().get(), req, &job);
    } else {
      v1::CancelJobRequest req;
      req.set_name(s.name);
      st = c.search().CancelJob(c.Context().get(), req, &job);
    }
    if (!st.ok()) return Fail(FromGrpc(st));
    std::printf("%s\n", Json(job).c_str());
    return 0;
  }
  v1::ListJobsRequest req;
  req.set_page_size(s.page_size);
  req.set_page_token(s.page_token);
  if (!s.state.empty()) {
    v1::JobState state;
    if (!v1::JobState_Parse(s.state, &state)) {
      return Fail(InvalidArgumentError("unknown state '" + s.state + "'"));
    }
    req.set_state(state);
  }
  v1::ListJobsResponse resp;
  st = c.search().ListJobs(c.Context().get(), req, &resp);
  if (!st.ok()) return Fail(FromGrpc(st));
  if (s.json_output) {
    std::printf("%s\n", Json(resp).c_str());
    return 0;
  }
  for (const auto& j : resp.jobs()) {
    std::printf("%-30s %-10s %-9s %lld/%lld %s\n", j.name().c_str(),
                v1::JobState_Name(j.state()).c_str(), j.progress().stage().c_str(),
                static_cast<long long>(j.progress().done()),
                static_cast<long long>(j.progress().total()), j.summary().c_str());
  }
  if (!resp.next_page_token().empty()) {
    std::printf("more: --page-token %s\n", resp.next_page_token().c_str());
  }
  return 0;
}

}  // namespace

std::function<int()> AddServiceCommands(CLI::App& app, int argc, char** argv) {
  auto s = std::make_shared<Settings>();
  // The config file comes first, so that what it sets acts as a default.
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--config") == 0) {
      s->config_error = LoadConfigFile(argv[i + 1], s.get());
      break;
    }
  }
  auto* scheduler = app.add_subcommand("scheduler", "run the service's scheduler (gRPC API)");
  AddProcessOptions(scheduler, s.get());
  AddIntSettings(scheduler, &s->service, Role::kScheduler);
  auto* worker = app.add_subcommand("worker", "run a worker serving the service's task queue");
  AddProcessOptions(worker, s.get());
  AddIntSettings(worker, &s->service, Role::kWorker);

  auto* submit = app.add_subcommand("submit", "submit a job spec to the service; prints its name");
  AddConnection(submit, s.get(), false);
  submit->add_option("--spec", s->spec, "job spec, JSON or YAML (as for run)")
      ->required()
      ->check(CLI::ExistingFile);
  submit->add_option("--request-id", s->request_id, "idempotency key (default: random)");
  submit->add_flag("--wait", s->wait, "watch the job until it ends");
  submit->add_flag("--json", s->json_output, "with --wait: events as JSON lines");
  auto* watch = app.add_subcommand("watch", "follow a job's progress until it ends");
  AddConnection(watch, s.get(), false);
  watch->add_option("name", s->name, "jobs/<id>")->required();
  watch->add_flag("--json", s->json_output, "events as JSON lines on stdout");
  auto* get = app.add_subcommand("get", "print a job (JSON)");
  AddConnection(get, s.get(), false);
  get->add_option("name", s->name, "jobs/<id>")->required();
  auto* list = app.add_subcommand("list", "list jobs, newest first");
  AddConnection(list, s.get(), false);
  list->add_option("--state", s->state, "QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED");
  list->add_option("--page-size", s->page_size, "jobs per page (default 50)")
      ->check(CLI::Range(0, 1000));
  list->add_option("--page-token", s->page_token, "from the previous page");
  list->add_flag("--json", s->json_output, "JSON output");
  auto* cancel = app.add_subcommand("cancel", "cancel a job");
  AddConnection(cancel, s.get(), false);
  cancel->add_option("name", s->name, "jobs/<id>")->required();
  auto* fetch = app.add_subcommand("fetch", "download a finished job's files (as run writes them)");
  AddConnection(fetch, s.get(), false);
  fetch->add_option("name", s->name, "jobs/<id>")->required();
  fetch->add_option("--out", s->out, "output directory")->required();
  fetch->add_option("--export", s->exports,
                    "also export the recipe into OUT/export: onnx-qdq, safetensors-fakequant, "
                    "safetensors-packed (comma-separated; needs --spec)");
  fetch->add_option("--spec", s->spec,
                    "the job spec that was submitted: its model and calibration, for --export")
      ->check(CLI::ExistingFile);

  return [=]() -> int {
    const bool any = scheduler->parsed() || worker->parsed() || submit->parsed() ||
                     watch->parsed() || get->parsed() || list->parsed() || cancel->parsed() ||
                     fetch->parsed();
    if (!any) return -1;
    if (!s->config_error.ok()) return Fail(s->config_error);
    if (scheduler->parsed()) return RunScheduler(s->service);
    if (worker->parsed()) return RunWorker(s->service);
    if (submit->parsed()) return Submit(*s);
    if (fetch->parsed()) return Fetch(*s);
    if (watch->parsed()) {
      auto client = ApiClient::Connect(s->client);
      if (!client.ok()) return Fail(client.status());
      return Watch(**client, s->name, s->json_output);
    }
    return Unary(*s, get->parsed() ? "get" : list->parsed() ? "list" : "cancel");
  };
}

}  // namespace qs::server
