// edgekit-et-runner: time one ExecuTorch .pte on a Linux board without torch.
//
// Built for aarch64 by `make emulator` (edgekit/emulator/native_runner.py)
// against the headers and shared libraries that ship in the executorch
// aarch64 wheel; deployed with those libraries beside it (rpath $ORIGIN).
// It prints the same JSON object as edgekit/runtime/runner.py so that
// `edgekit deploy`, `bench` and `report` read it the same way:
//
//   edgekit-et-runner model.pte [--threads N] [--warmup W] [--runs R]
//       [--min-seconds S] [--inputs in.bin] [--outputs out.bin] [--count]
//
// Inputs: shapes and dtypes come from the program's own method metadata; the
// values are seeded pseudo-random numbers, or raw little-endian bytes from
// --inputs: K samples, each the bytes of every input in order (what
// `edgekit validate --emulate` sends, so that outputs can be compared with
// the host run). --outputs runs each of the K samples once and writes their
// outputs the same way; the timed runs then use the last sample.
//
// --count runs one more inference between two marker syscalls. A qemu TCG
// plugin (insn_count.c) counts the guest instructions executed between them:
// a deterministic cost under emulation, where wall time means nothing.
//
// --generate N --prompt-ids FILE: greedy generation with a text-generation
// build's decoder (see generate() below) instead of timing one inference.
//
// Exit status: 0 ok, 1 the runtime failed, 2 bad arguments or inputs.

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

// The wheel ships the threadpool library but not its header; this is the one
// call we need from it (same declaration as extension/threadpool/threadpool.h).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::extension::module::Module;
using executorch::runtime::EValue;
using executorch::runtime::Error;
using executorch::aten::ScalarType;

// Guest syscall numbers no kernel defines: ENOSYS on a board, a start/stop
// marker for the instruction-count plugin under qemu. Keep in sync with
// insn_count.c.
constexpr long kMarkSyscall = 0x4ed6;
#ifndef EDGEKIT_ET_VERSION
#define EDGEKIT_ET_VERSION "unknown"
#endif
constexpr const char* kVersion = EDGEKIT_ET_VERSION;  // the executorch wheel it was built against

struct Args {
  std::string artifact, inputs, outputs, prompt_ids;
  int threads = 1, warmup = 10, runs = 50;
  double min_seconds = 0.0;
  bool count = false;
  int generate = 0;  // > 0: generation mode, this many new tokens at most
  int64_t max_seq_len = 256, eos = -1;
  bool runs_given = false, warmup_given = false;  // generation mode: one run, no warmup, unless asked
};

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') { out += '\\'; out += c; }
    else if (static_cast<unsigned char>(c) < 0x20) { char buf[8]; snprintf(buf, sizeof buf, "\\u%04x", c); out += buf; }
    else out += c;
  }
  return out;
}

[[noreturn]] void fail(const std::string& kind, const std::string& message, int code) {
  printf("{\"ok\": false, \"error\": \"%s\", \"error_kind\": \"%s\", \"runner\": \"edgekit-et-runner\"}\n",
         json_escape(message).c_str(), kind.c_str());
  fflush(stdout);
  exit(code);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail("usage", k + " needs a value", 2);
      return argv[++i];
    };
    auto number = [&](double lo) -> double {
      std::string v = value();
      char* end = nullptr;
      double d = strtod(v.c_str(), &end);
      if (end == v.c_str() || *end || d < lo) fail("usage", k + " must be a number >= " + std::to_string(static_cast<int>(lo)) + ", got '" + v + "'", 2);
      return d;
    };
    if (k == "--threads") a.threads = static_cast<int>(number(1));
    else if (k == "--warmup") { a.warmup = static_cast<int>(number(0)); a.warmup_given = true; }
    else if (k == "--runs") { a.runs = static_cast<int>(number(1)); a.runs_given = true; }
    else if (k == "--min-seconds") a.min_seconds = number(0);
    else if (k == "--inputs") a.inputs = value();
    else if (k == "--outputs") a.outputs = value();
    else if (k == "--count") a.count = true;
    else if (k == "--generate") a.generate = static_cast<int>(number(1));
    else if (k == "--prompt-ids") a.prompt_ids = value();
    else if (k == "--max-seq-len") a.max_seq_len = static_cast<int64_t>(number(2));
    else if (k == "--eos") a.eos = static_cast<int64_t>(number(0));
    else if (k == "--timeout") { value(); }  // accepted for the Python runner's argv; the host enforces it
    else if (!k.empty() && k[0] == '-') fail("usage", "unknown option " + k, 2);
    else if (a.artifact.empty()) a.artifact = k;
    else fail("usage", "more than one artifact given: " + k, 2);
  }
  if (a.artifact.empty()) fail("usage", "usage: edgekit-et-runner model.pte [--threads N] [--warmup W] [--runs R]", 2);
  if ((a.generate > 0) != !a.prompt_ids.empty()) fail("usage", "--generate N and --prompt-ids FILE go together", 2);
  return a;
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

size_t element_size(ScalarType t) {
  switch (t) {
    case ScalarType::Float: case ScalarType::Int: return 4;
    case ScalarType::Long: case ScalarType::Double: return 8;
    case ScalarType::Half: case ScalarType::Short: return 2;
    case ScalarType::Bool: case ScalarType::Byte: case ScalarType::Char: return 1;
    default: return 0;
  }
}

const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Short: return "int16";
    case ScalarType::Bool: return "bool";
    case ScalarType::Byte: return "uint8";
    case ScalarType::Char: return "int8";
    default: return "unknown";
  }
}

struct Input {
  std::vector<int32_t> sizes;
  ScalarType type;
  std::vector<uint8_t> bytes;
};

// Seeded values in the range a model normally sees: [0, 1) for floats, 0/1 for
// integer inputs (valid token ids and mask values for any vocabulary).
void fill_random(Input& in, std::mt19937& rng) {
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  size_t n = in.bytes.size() / element_size(in.type);
  for (size_t i = 0; i < n; ++i) {
    switch (in.type) {
      case ScalarType::Float: { float v = uniform(rng); memcpy(&in.bytes[i * 4], &v, 4); break; }
      case ScalarType::Long: { int64_t v = rng() & 1; memcpy(&in.bytes[i * 8], &v, 8); break; }
      case ScalarType::Int: { int32_t v = rng() & 1; memcpy(&in.bytes[i * 4], &v, 4); break; }
      default: in.bytes[i * element_size(in.type)] = rng() & 1; break;
    }
  }
}

// One Input per model input for the first sample; `rest` gets the bytes of
// samples 2..K from --inputs.
std::vector<Input> make_inputs(Module& module, const Args& a, std::vector<uint8_t>& rest) {
  auto meta = module.method_meta("forward");
  if (!meta.ok()) fail("load_failed", "cannot read the forward method's metadata of " + a.artifact, 1);
  std::vector<Input> inputs;
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) fail("usage", "input " + std::to_string(i) + " is not a tensor; this runner feeds tensors only", 2);
    Input in;
    in.sizes.assign(info->sizes().begin(), info->sizes().end());
    in.type = info->scalar_type();
    if (!element_size(in.type)) fail("usage", std::string("input dtype not supported: ") + dtype_name(in.type), 2);
    in.bytes.resize(info->nbytes());
    inputs.push_back(std::move(in));
  }
  if (a.inputs.empty()) {
    std::mt19937 rng(0);
    for (auto& in : inputs) fill_random(in, rng);
    return inputs;
  }
  std::ifstream f(a.inputs, std::ios::binary);
  if (!f) fail("usage", "cannot read --inputs " + a.inputs, 2);
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t want = 0;
  for (auto& in : inputs) want += in.bytes.size();
  if (data.empty() || data.size() % want)
    fail("usage", "--inputs " + a.inputs + " has " + std::to_string(data.size()) + " bytes; each sample of the model's inputs needs " + std::to_string(want), 2);
  size_t off = 0;
  for (auto& in : inputs) { memcpy(in.bytes.data(), data.data() + off, in.bytes.size()); off += in.bytes.size(); }
  rest.assign(data.begin() + off, data.end());
  return inputs;
}

std::vector<EValue> run_once(Module& module, std::vector<executorch::extension::TensorPtr>& tensors, const Args& a) {
  std::vector<EValue> evalues;
  for (auto& t : tensors) evalues.emplace_back(*t);
  auto result = module.forward(evalues);
  if (!result.ok()) fail("run_failed", "running " + a.artifact + " failed: ExecuTorch error " + std::to_string(static_cast<int>(result.error())), 1);
  return *result;
}

double percentile(const std::vector<double>& s, double q) {
  double pos = (s.size() - 1) * q / 100.0;
  size_t lo = static_cast<size_t>(std::floor(pos)), hi = static_cast<size_t>(std::ceil(pos));
  return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}

void write_outputs(const std::vector<EValue>& outputs, std::ofstream& out) {
  for (const auto& o : outputs)
    if (o.isTensor()) out.write(static_cast<const char*>(o.toTensor().const_data_ptr()), o.toTensor().nbytes());
}

std::string describe_outputs(const std::vector<EValue>& outputs) {
  std::ostringstream js;
  js << "[";
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (i) js << ", ";
    if (!outputs[i].isTensor()) { js << "{\"shape\": [], \"dtype\": \"non-tensor\"}"; continue; }
    const auto& t = outputs[i].toTensor();
    js << "{\"shape\": [";
    for (ssize_t d = 0; d < t.dim(); ++d) js << (d ? ", " : "") << t.size(d);
    js << "], \"dtype\": \"" << dtype_name(t.scalar_type()) << "\"}";
  }
  js << "]";
  return js.str();
}

// ---- generation mode (text-generation builds, edgekit/llm) ----
//
// --generate N --prompt-ids FILE [--max-seq-len L] [--eos ID] [--warmup W]
// [--runs R]: greedy generation with a decoder .pte whose forward(input_ids
// (1, n) int64, cache_position (n) int64) returns logits (1, n, vocab) and
// keeps its KV cache in the program's mutable buffers. FILE holds the prompt's
// token ids as raw little-endian int64. The prompt is prefilled in one call,
// then one call per token. W untimed generations (default 0), then R timed
// ones (default 1), each from position 0 (the cache is overwritten); the JSON
// has each run (samples), the medians and the first timed run's tokens, as
// runtime/runner.py's --generate prints them. With --count, the
// instruction-count markers bracket the first timed run's decode calls (every
// token after the first), so the count divided by them is guest instructions
// per decoded token.

int64_t argmax_last(const EValue& logits) {
  const auto& t = logits.toTensor();
  ssize_t vocab = t.size(t.dim() - 1);
  const float* row = t.const_data_ptr<float>() + (t.numel() - vocab);
  return static_cast<int64_t>(std::max_element(row, row + vocab) - row);
}

struct Generation {
  std::vector<int64_t> tokens;
  double prefill_ms = 0, decode_ms = 0;
  std::string stopped = "max_new_tokens";
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

int generate(Module& module, const Args& a, double load_ms) {
  std::ifstream f(a.prompt_ids, std::ios::binary);
  if (!f) fail("usage", "cannot read --prompt-ids " + a.prompt_ids, 2);
  std::vector<char> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (raw.empty() || raw.size() % 8) fail("usage", "--prompt-ids " + a.prompt_ids + " must hold int64 token ids", 2);
  std::vector<int64_t> prompt(raw.size() / 8);
  memcpy(prompt.data(), raw.data(), raw.size());
  int64_t n = static_cast<int64_t>(prompt.size());
  if (n >= a.max_seq_len) fail("usage", "the prompt is " + std::to_string(n) + " tokens; the context holds " + std::to_string(a.max_seq_len), 2);

  auto step = [&](std::vector<int64_t>& ids, int64_t start) {
    std::vector<int64_t> positions(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) positions[i] = start + static_cast<int64_t>(i);
    auto input = executorch::extension::from_blob(ids.data(), {1, static_cast<int32_t>(ids.size())}, ScalarType::Long);
    auto cache_position = executorch::extension::from_blob(positions.data(), {static_cast<int32_t>(positions.size())}, ScalarType::Long);
    auto result = module.forward({EValue(*input), EValue(*cache_position)});
    if (!result.ok()) fail("run_failed", "running " + a.artifact + " failed: ExecuTorch error " + std::to_string(static_cast<int>(result.error())), 1);
    return argmax_last((*result)[0]);
  };

  auto once = [&](bool count) {
    Generation g;
    double t0 = now_ms();
    g.tokens.push_back(step(prompt, 0));
    g.prefill_ms = now_ms() - t0;
    if (count) syscall(kMarkSyscall, 1);
    double decode_start = now_ms();
    while (true) {
      if (a.eos >= 0 && g.tokens.back() == a.eos) { g.stopped = "eos"; break; }
      if (static_cast<int>(g.tokens.size()) >= a.generate) break;
      int64_t position = n + static_cast<int64_t>(g.tokens.size()) - 1;
      if (position >= a.max_seq_len) { g.stopped = "context_full"; break; }
      std::vector<int64_t> last{g.tokens.back()};
      g.tokens.push_back(step(last, position));
    }
    g.decode_ms = now_ms() - decode_start;
    if (count) syscall(kMarkSyscall, 2);
    return g;
  };

  int warmup = a.warmup_given ? a.warmup : 0, runs = a.runs_given ? a.runs : 1;
  std::vector<Generation> timed;
  double first_ms = 0;
  for (int i = 0; i < warmup + runs; ++i) {
    Generation g = once(a.count && i == warmup);
    if (i == 0) first_ms = g.prefill_ms;
    if (i >= warmup) timed.push_back(g);
  }
  const Generation& first = timed.front();
  size_t decoded = first.tokens.size() - 1;
  std::vector<double> ttft, rates;
  for (const auto& g : timed) {
    ttft.push_back(g.prefill_ms);
    if (decoded && g.decode_ms > 0) rates.push_back(decoded / (g.decode_ms / 1e3));
  }
  double ttft_ms = median(ttft);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  struct utsname un;
  uname(&un);
  std::ostringstream js;
  js.precision(4);
  js << std::fixed;
  js << "{\"ok\": true, \"runner\": \"edgekit-et-runner\", \"mode\": \"generate\""
     << ", \"runtime\": {\"name\": \"executorch-native\", \"version\": \"" << kVersion << "\"}"
     << ", \"machine\": \"" << json_escape(un.machine) << "\", \"threads\": " << a.threads
     << ", \"load_ms\": " << load_ms << ", \"first_ms\": " << first_ms
     << ", \"prompt_tokens\": " << n << ", \"new_tokens\": " << first.tokens.size()
     << ", \"time_to_first_token_ms\": " << ttft_ms
     << ", \"prefill_tokens_per_s\": " << (n / (ttft_ms / 1e3))
     << ", \"decode_tokens_per_s\": ";
  if (!rates.empty()) js << median(rates); else js << "null";
  js << ", \"decoded_tokens\": " << decoded << ", \"stopped\": \"" << first.stopped << "\""
     << ", \"runs\": " << runs << ", \"warmup\": " << warmup << ", \"samples\": [";
  for (size_t i = 0; i < timed.size(); ++i) {
    js << (i ? ", " : "") << "{\"time_to_first_token_ms\": " << timed[i].prefill_ms << ", \"decode_tokens_per_s\": ";
    if (decoded && timed[i].decode_ms > 0) js << decoded / (timed[i].decode_ms / 1e3); else js << "null";
    js << "}";
  }
  js << "], \"counted\": " << (a.count ? "true" : "false") << ", \"peak_rss_kb\": " << ru.ru_maxrss << ", \"tokens\": [";
  for (size_t i = 0; i < first.tokens.size(); ++i) js << (i ? ", " : "") << first.tokens[i];
  js << "]}";
  printf("%s\n", js.str().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The runtime logs to stdout on some paths; keep stdout for the one JSON object.
  Args a = parse(argc, argv);
  if (access(a.artifact.c_str(), R_OK) != 0) fail("usage", "cannot read " + a.artifact, 2);

  bool applied = executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(a.threads);

  double t0 = now_ms();
  Module module(a.artifact, Module::LoadMode::File);
  Error err = module.load_method("forward");
  if (err != Error::Ok) fail("load_failed", "loading " + a.artifact + " failed: ExecuTorch error " + std::to_string(static_cast<int>(err)), 1);
  double load_ms = now_ms() - t0;
  if (a.generate > 0) return generate(module, a, load_ms);

  // The memory plan's arena: what the method's activations need at most, fixed at export.
  size_t planned_bytes = 0;
  if (auto meta = module.method_meta("forward"); meta.ok())
    for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i)
      if (auto size = meta->memory_planned_buffer_size(i); size.ok()) planned_bytes += *size;

  std::vector<uint8_t> rest;
  std::vector<Input> inputs = make_inputs(module, a, rest);
  std::vector<executorch::extension::TensorPtr> tensors;
  for (auto& in : inputs)
    tensors.push_back(executorch::extension::from_blob(in.bytes.data(), {in.sizes.begin(), in.sizes.end()}, in.type));

  t0 = now_ms();
  std::vector<EValue> first = run_once(module, tensors, a);
  double first_ms = now_ms() - t0;
  std::string outputs = describe_outputs(first);
  size_t samples_done = 1;
  if (!a.outputs.empty()) {
    std::ofstream out(a.outputs, std::ios::binary);
    if (!out) fail("usage", "cannot write --outputs " + a.outputs, 2);
    write_outputs(first, out);
    // Samples 2..K: copy each into the input buffers the tensors point at.
    for (size_t off = 0; off < rest.size(); ++samples_done) {
      for (auto& in : inputs) { memcpy(in.bytes.data(), rest.data() + off, in.bytes.size()); off += in.bytes.size(); }
      write_outputs(run_once(module, tensors, a), out);
    }
    if (!out) fail("usage", "writing --outputs " + a.outputs + " failed", 2);
  }

  for (int i = 0; i < a.warmup; ++i) run_once(module, tensors, a);
  std::vector<double> samples;
  double begin = now_ms();
  while (static_cast<int>(samples.size()) < a.runs || (now_ms() - begin) < a.min_seconds * 1e3) {
    double s = now_ms();
    run_once(module, tensors, a);
    samples.push_back(now_ms() - s);
  }
  if (a.count) {
    syscall(kMarkSyscall, 1);
    run_once(module, tensors, a);
    syscall(kMarkSyscall, 2);
  }

  std::vector<double> s = samples;
  std::sort(s.begin(), s.end());
  double mean = 0;
  for (double x : s) mean += x;
  mean /= s.size();
  double var = 0;
  for (double x : s) var += (x - mean) * (x - mean);
  double stdev = s.size() > 1 ? std::sqrt(var / (s.size() - 1)) : 0.0;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  struct utsname un;
  uname(&un);

  std::ostringstream js;
  js.precision(4);
  js << std::fixed;
  std::string name = a.artifact.substr(a.artifact.find_last_of('/') + 1);
  js << "{\"ok\": true, \"runner\": \"edgekit-et-runner\", \"artifact\": \"" << json_escape(name) << "\""
     << ", \"load_ms\": " << load_ms << ", \"first_ms\": " << first_ms
     << ", \"runtime\": {\"name\": \"executorch-native\", \"version\": \"" << kVersion << "\"}"
     << ", \"threads\": " << a.threads << ", \"threads_applied\": " << (applied ? "true" : "false")
     << ", \"machine\": \"" << json_escape(un.machine) << "\""
     << ", \"mean\": " << mean << ", \"std\": " << stdev << ", \"min\": " << s.front()
     << ", \"p50\": " << percentile(s, 50) << ", \"p90\": " << percentile(s, 90) << ", \"p99\": " << percentile(s, 99)
     << ", \"max\": " << s.back() << ", \"runs\": " << s.size() << ", \"warmup\": " << a.warmup
     << ", \"counted\": " << (a.count ? "true" : "false") << ", \"samples_out\": " << (a.outputs.empty() ? 0 : samples_done)
     << ", \"planned_memory_bytes\": " << planned_bytes << ", \"peak_rss_kb\": " << ru.ru_maxrss << ", \"outputs\": " << outputs << ", \"samples_ms\": [";
  for (size_t i = 0; i < samples.size(); ++i) js << (i ? ", " : "") << samples[i];
  js << "]}";
  printf("%s\n", js.str().c_str());
  return 0;
}
