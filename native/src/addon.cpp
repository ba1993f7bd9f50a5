// The addon boundary: JS values in, checked once, handed to a Backend; coded errors out as JS errors whose `.code`
// is the LLM_ERR_* string. Nothing here exits or aborts the process.
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <new>
#include <string>
#include <type_traits>

#include "backend.h"
#include "loader.h"
#include "sampling.h"
#include "../cpu/vision.h"
#ifdef DYNAMO_CUDA
#include <cuda_runtime_api.h>
#endif

namespace dsg {
namespace {

Napi::Error codedError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

/** Runs fn, turning C++ failures into coded JS errors. */
template <class F>
auto guarded(Napi::Env env, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const EngineError& e) {
    throw codedError(env, e.code, e.what());
  } catch (const std::bad_alloc&) {
    throw codedError(env, "LLM_ERR_OUT_OF_MEMORY", "host memory allocation failed in the engine");
  } catch (const std::exception& e) {
    throw codedError(env, "LLM_ERR_INTERNAL", std::string("engine: ") + e.what());
  }
}

[[noreturn]] void bad(const std::string& code, const std::string& message) { throw EngineError(code, message); }

Napi::Value field(const Napi::Object& o, const char* where, const char* name) {
  if (!o.Has(name)) bad("LLM_ERR_MODEL_FORMAT", std::string(where) + "." + name + " is missing");
  return o.Get(name);
}

double num(const Napi::Object& o, const char* where, const char* name) {
  Napi::Value v = field(o, where, name);
  if (!v.IsNumber()) bad("LLM_ERR_MODEL_FORMAT", std::string(where) + "." + name + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) bad("LLM_ERR_MODEL_FORMAT", std::string(where) + "." + name + " must be finite");
  return d;
}

int integer(const Napi::Object& o, const char* where, const char* name) {
  const double d = num(o, where, name);
  if (d != std::floor(d) || std::fabs(d) > 2147483647.0) bad("LLM_ERR_MODEL_FORMAT", std::string(where) + "." + name + " must be a 32-bit integer, got " + std::to_string(d));
  return (int)d;
}

bool boolean(const Napi::Object& o, const char* where, const char* name) {
  Napi::Value v = field(o, where, name);
  if (!v.IsBoolean()) bad("LLM_ERR_MODEL_FORMAT", std::string(where) + "." + name + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string str(const Napi::Object& o, const char* where, const char* name) {
  Napi::Value v = field(o, where, name);
  if (!v.IsString()) bad("LLM_ERR_MODEL_FORMAT", std::string(where) + "." + name + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

DType parseDType(const std::string& s, const std::string& tensor) {
  if (s == "f32") return DType::F32;
  if (s == "f16") return DType::F16;
  if (s == "bf16") return DType::BF16;
  bad("LLM_ERR_UNSUPPORTED_DTYPE", "tensor " + tensor + ": dtype '" + s + "' unsupported (f32, f16, bf16)");
}

ModelDesc parseDesc(const Napi::Object& spec) {
  const char* W = "ModelSpec";
  ModelDesc d;
  const std::string arch = str(spec, W, "architecture");
  if (arch == "llama") d.arch = Arch::Llama;
  else if (arch == "qwen2") d.arch = Arch::Qwen2;
  else if (arch == "qwen3") d.arch = Arch::Qwen3;
  else if (arch == "bert") d.arch = Arch::Bert;
  else bad("LLM_ERR_UNSUPPORTED_ARCH", "ModelSpec.architecture '" + arch + "' unsupported (llama, qwen2, qwen3, bert)");
  d.vocabSize = integer(spec, W, "vocabSize");
  d.hiddenSize = integer(spec, W, "hiddenSize");
  d.intermediateSize = integer(spec, W, "intermediateSize");
  d.numLayers = integer(spec, W, "numLayers");
  d.numHeads = integer(spec, W, "numHeads");
  d.numKvHeads = integer(spec, W, "numKvHeads");
  d.headDim = integer(spec, W, "headDim");
  d.rmsNormEps = (float)num(spec, W, "rmsNormEps");
  d.ropeTheta = num(spec, W, "ropeTheta");
  d.maxPositionEmbeddings = integer(spec, W, "maxPositionEmbeddings");
  d.tieWordEmbeddings = boolean(spec, W, "tieWordEmbeddings");
  d.qkvBias = boolean(spec, W, "qkvBias");
  d.qkNorm = boolean(spec, W, "qkNorm");
  if (d.arch == Arch::Bert) d.typeVocabSize = integer(spec, W, "typeVocabSize");
  const std::string layout = str(spec, W, "ropeLayout");
  if (layout == "half") d.ropeLayout = RopeLayout::Half;
  else if (layout == "interleaved") d.ropeLayout = RopeLayout::Interleaved;
  else bad("LLM_ERR_MODEL_FORMAT", "ModelSpec.ropeLayout '" + layout + "' unsupported (half, interleaved)");
  if (spec.Has("mropeSection") && !spec.Get("mropeSection").IsUndefined()) {
    Napi::Value mv = spec.Get("mropeSection");
    if (!mv.IsArray() || mv.As<Napi::Array>().Length() != 3) bad("LLM_ERR_MODEL_FORMAT", "ModelSpec.mropeSection must be three integers");
    int sum = 0;
    for (uint32_t i = 0; i < 3; ++i) {
      Napi::Value e = mv.As<Napi::Array>().Get(i);
      if (!e.IsNumber() || e.As<Napi::Number>().Int32Value() < 1) bad("LLM_ERR_MODEL_FORMAT", "ModelSpec.mropeSection must be three positive integers");
      sum += (d.mropeSection[i] = e.As<Napi::Number>().Int32Value());
    }
    if (sum * 2 != d.headDim) bad("LLM_ERR_MODEL_FORMAT", "ModelSpec.mropeSection must sum to headDim / 2");
  }
  if (spec.Has("vision") && spec.Get("vision").IsObject()) d.imageTokenId = integer(spec.Get("vision").As<Napi::Object>(), "ModelSpec.vision", "imageTokenId");
  Napi::Value rs = field(spec, W, "ropeScaling");
  if (rs.IsObject()) {
    Napi::Object r = rs.As<Napi::Object>();
    const char* R = "ModelSpec.ropeScaling";
    if (str(r, R, "type") != "llama3") bad("LLM_ERR_MODEL_FORMAT", "ModelSpec.ropeScaling.type must be 'llama3'");
    d.ropeScaling.enabled = true;
    d.ropeScaling.factor = num(r, R, "factor");
    d.ropeScaling.lowFreqFactor = num(r, R, "lowFreqFactor");
    d.ropeScaling.highFreqFactor = num(r, R, "highFreqFactor");
    d.ropeScaling.originalMaxPositionEmbeddings = integer(r, R, "originalMaxPositionEmbeddings");
    if (!(d.ropeScaling.factor > 0) || !(d.ropeScaling.highFreqFactor > d.ropeScaling.lowFreqFactor))
      bad("LLM_ERR_MODEL_FORMAT", "ModelSpec.ropeScaling: need factor > 0 and highFreqFactor > lowFreqFactor");
  } else if (!rs.IsNull() && !rs.IsUndefined()) {
    bad("LLM_ERR_MODEL_FORMAT", "ModelSpec.ropeScaling must be an object or null");
  }
  return d;
}

std::vector<TensorRefDesc> parseTensors(const Napi::Object& spec) {
  Napi::Value tv = field(spec, "ModelSpec", "tensors");
  if (!tv.IsArray()) bad("LLM_ERR_MODEL_FORMAT", "ModelSpec.tensors must be an array");
  Napi::Array arr = tv.As<Napi::Array>();
  std::vector<TensorRefDesc> out(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value e = arr.Get(i);
    const std::string where = "ModelSpec.tensors[" + std::to_string(i) + "]";
    if (!e.IsObject()) bad("LLM_ERR_MODEL_FORMAT", where + " must be an object");
    Napi::Object o = e.As<Napi::Object>();
    TensorRefDesc& t = out[i];
    t.name = str(o, where.c_str(), "name");
    t.file = str(o, where.c_str(), "file");
    const double off = num(o, where.c_str(), "offset");
    if (off < 0 || off != std::floor(off)) bad("LLM_ERR_MODEL_FORMAT", where + ".offset must be a non-negative integer");
    t.offset = (uint64_t)off;
    t.dtype = parseDType(str(o, where.c_str(), "dtype"), t.name);
    Napi::Value sv = field(o, where.c_str(), "shape");
    if (!sv.IsArray()) bad("LLM_ERR_MODEL_FORMAT", where + ".shape must be an array");
    Napi::Array sa = sv.As<Napi::Array>();
    for (uint32_t j = 0; j < sa.Length(); ++j) {
      Napi::Value dv = sa.Get(j);
      if (!dv.IsNumber() || dv.As<Napi::Number>().DoubleValue() < 0) bad("LLM_ERR_MODEL_FORMAT", where + ".shape has a bad dimension");
      t.shape.push_back(dv.As<Napi::Number>().Int64Value());
    }
  }
  return out;
}

/** EngineOptions.tp: the rank's place in its group (the shard layout is filled in once the model desc is known). */
TensorParallel parseTensorParallel(const Napi::Value& v) {
  const char* W = "EngineOptions.tp";
  if (!v.IsObject()) bad("LLM_ERR_CONFIG", "EngineOptions.tp must be an object {rank, size, group, timeoutMs?}");
  const Napi::Object o = v.As<Napi::Object>();
  TensorParallel tp;
  tp.rank = integer(o, W, "rank");
  tp.size = integer(o, W, "size");
  tp.group = str(o, W, "group");
  if (o.Has("timeoutMs") && !o.Get("timeoutMs").IsUndefined()) {
    const double ms = num(o, W, "timeoutMs");
    if (!(ms > 0)) bad("LLM_ERR_CONFIG", "EngineOptions.tp.timeoutMs must be > 0, got " + std::to_string(ms));
    tp.timeoutSec = ms / 1000;
  }
  if (tp.size < 1) bad("LLM_ERR_CONFIG", "EngineOptions.tp.size must be >= 1, got " + std::to_string(tp.size));
  if (tp.rank < 0 || tp.rank >= tp.size)
    bad("LLM_ERR_CONFIG", "EngineOptions.tp.rank " + std::to_string(tp.rank) + " out of range [0, " + std::to_string(tp.size) + ")");
  if (tp.size > 1 && tp.group.empty()) bad("LLM_ERR_CONFIG", "EngineOptions.tp.group must be non-empty when tp.size > 1");
  if (o.Has("customAllReduce") && !o.Get("customAllReduce").IsUndefined()) {
    if (!o.Get("customAllReduce").IsBoolean()) bad("LLM_ERR_CONFIG", "EngineOptions.tp.customAllReduce must be a boolean");
    tp.customAllReduce = o.Get("customAllReduce").As<Napi::Boolean>().Value();
  }
  if (o.Has("distInitAddr") && !o.Get("distInitAddr").IsUndefined()) {
    tp.distInitAddr = str(o, W, "distInitAddr");
    if (tp.distInitAddr.empty()) bad("LLM_ERR_CONFIG", "EngineOptions.tp.distInitAddr must be HOST:PORT, got an empty string");
  }
  return tp;
}

BackendOptions parseOptions(const Napi::Object& o, std::string& backendName) {
  const char* W = "EngineOptions";
  auto cfg = [&](auto fn) {
    try {
      return fn();
    } catch (const EngineError& e) {
      throw EngineError("LLM_ERR_CONFIG", e.what());
    }
  };
  BackendOptions b;
  backendName = cfg([&] { return str(o, W, "backend"); });
  b.deviceId = cfg([&] { return integer(o, W, "deviceId"); });
  b.pageSize = cfg([&] { return integer(o, W, "pageSize"); });
  b.memFractionStatic = cfg([&] { return num(o, W, "memFractionStatic"); });
  b.maxBatchTokens = cfg([&] { return integer(o, W, "maxBatchTokens"); });
  b.maxSeqsPerStep = cfg([&] { return integer(o, W, "maxSeqsPerStep"); });
  if (o.Has("numPages") && !o.Get("numPages").IsUndefined()) b.numPages = cfg([&] { return integer(o, W, "numPages"); });
  if (o.Has("threads") && !o.Get("threads").IsUndefined()) b.threads = cfg([&] { return integer(o, W, "threads"); });
  auto atLeast = [](const char* name, int64_t v, int64_t lo) {
    if (v < lo) bad("LLM_ERR_CONFIG", std::string("EngineOptions.") + name + " must be >= " + std::to_string(lo) + ", got " + std::to_string(v));
  };
  atLeast("pageSize", b.pageSize, 1);
  atLeast("maxBatchTokens", b.maxBatchTokens, 1);
  atLeast("maxSeqsPerStep", b.maxSeqsPerStep, 1);
  atLeast("numPages", b.numPages, 0);
  atLeast("threads", b.threads, 0);
  if (!(b.memFractionStatic > 0 && b.memFractionStatic <= 1))
    bad("LLM_ERR_CONFIG", "EngineOptions.memFractionStatic must be in (0, 1], got " + std::to_string(b.memFractionStatic));
  if (o.Has("tp") && !o.Get("tp").IsUndefined()) b.tp = cfg([&] { return parseTensorParallel(o.Get("tp")); });
  return b;
}

template <class T>
constexpr napi_typedarray_type typedArrayTypeOf() {
  if constexpr (std::is_same_v<T, int32_t>) return napi_int32_array;
  else if constexpr (std::is_same_v<T, float>) return napi_float32_array;
  else return napi_uint8_array;
}

template <class T>
Napi::TypedArrayOf<T> typedArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray()) bad("LLM_ERR_BAD_REQUEST", std::string(what) + " must be a typed array");
  Napi::TypedArray ta = info[i].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != typedArrayTypeOf<T>()) bad("LLM_ERR_BAD_REQUEST", std::string(what) + " has the wrong element type");
  return ta.As<Napi::TypedArrayOf<T>>();
}

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeEngine",
                       {InstanceMethod("step", &EngineWrap::Step), InstanceMethod("stepBegin", &EngineWrap::StepBegin),
                        InstanceMethod("stepEnd", &EngineWrap::StepEnd), InstanceMethod("stepReady", &EngineWrap::StepReady),
                        InstanceMethod("embed", &EngineWrap::Embed),
                        InstanceMethod("exportPages", &EngineWrap::ExportPages),
                        InstanceMethod("importPages", &EngineWrap::ImportPages),
                        InstanceMethod("kvIpcExport", &EngineWrap::KvIpcExportJs),
                        InstanceMethod("kvIpcOpen", &EngineWrap::KvIpcOpenJs),
                        InstanceMethod("kvIpcPull", &EngineWrap::KvIpcPullJs),
                        InstanceMethod("kvIpcClose", &EngineWrap::KvIpcCloseJs),
                        InstanceMethod("kvInfo", &EngineWrap::KvInfoJs),
                        InstanceMethod("memoryInfo", &EngineWrap::MemoryInfoJs),
                        InstanceMethod("close", &EngineWrap::Close)});
  }

  EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    guarded(info.Env(), [&] {
      if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject())
        bad("LLM_ERR_BAD_REQUEST", "NativeEngine(spec, options): both arguments must be objects");
      std::string backendName;
      BackendOptions opts = parseOptions(info[1].As<Napi::Object>(), backendName);
      const Napi::Object spec = info[0].As<Napi::Object>();
      const ModelDesc desc = parseDesc(spec);
      const std::vector<TensorRefDesc> tensors = parseTensors(spec);
      if (backendName != "cpu" && backendName != "cuda")
        bad("LLM_ERR_CONFIG", "EngineOptions.backend '" + backendName + "' unknown (cpu, cuda)");
#ifndef DYNAMO_CUDA
      if (backendName == "cuda")
        bad("LLM_ERR_NATIVE_BUILD", "the native addon was built without the CUDA backend (no CUDA toolkit with cuBLAS at build time, or DYNAMO_SGLANG_CPU_ONLY=1)");
#endif
      if (desc.arch == Arch::Bert && backendName == "cuda")
        bad("LLM_ERR_UNSUPPORTED_ARCH", "BERT-style encoders run on the CPU backend only in this build (use --device cpu)");
      if (desc.arch == Arch::Bert && opts.tp.size > 1)
        bad("LLM_ERR_CONFIG", "BERT-style encoders run without tensor parallelism in this build (tp size " + std::to_string(opts.tp.size) + ")");
      model_ = loadModel(desc, tensors);
      opts.tp.shard = shardLayout(model_->desc, opts.tp.rank, opts.tp.size);
      shardWeights(*model_, opts.tp.shard);
#ifdef DYNAMO_CUDA
      if (backendName == "cuda") backend_ = createCudaBackend(model_->desc, model_->weights, opts);
#endif
      if (!backend_) backend_ = createCpuBackend(model_->desc, model_->weights, opts);
      opts_ = opts;
      return 0;
    });
  }

 private:
  Backend& live() {
    if (!backend_) bad("LLM_ERR_SHUTDOWN", "engine is closed");
    return *backend_;
  }

  /** The backend, when no step is begun and not ended (every call but stepBegin/stepEnd needs the engine idle). */
  Backend& idle() {
    Backend& be = live();
    if (!pending_.empty())
      bad("LLM_ERR_STEP_INVALID", std::to_string(pending_.size()) + " step(s) begun and not ended: call stepEnd first");
    return be;
  }

  /** Checks the descriptor, allocates the result arrays and begins the step on the backend (backend.h stepBegin). */
  /** step(desc, multimodal): checks the side input {positions: Int32Array [3 * numTokens], imageEmbeds?: Float32Array}
   *  against the checked step and points the view at it (step.h StepView). */
  void attachMultimodal(const Napi::Value& mv, StepView& v) {
    const ModelDesc& d = model_->desc;
    if (!mv.IsObject()) bad("LLM_ERR_BAD_REQUEST", "step(descriptor, multimodal): multimodal must be an object");
    if (d.mropeSection[0] == 0) bad("LLM_ERR_BAD_REQUEST", "multimodal step: this model has no M-RoPE (not a vision-language model)");
    if (std::string(live().name()) != "cpu")
      bad("LLM_ERR_UNSUPPORTED_ARCH", std::string("multimodal steps run on the cpu backend only in this build (engine backend: ") + live().name() + ")");
    const Napi::Object o = mv.As<Napi::Object>();
    Napi::Value pv = o.Get("positions");
    if (!pv.IsTypedArray() || pv.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      bad("LLM_ERR_BAD_REQUEST", "multimodal.positions must be an Int32Array");
    Napi::Int32Array pos = pv.As<Napi::Int32Array>();
    if ((int64_t)pos.ElementLength() != 3 * (int64_t)v.numTokens)
      bad("LLM_ERR_BAD_REQUEST", "multimodal.positions has " + std::to_string(pos.ElementLength()) + " values, 3 x " + std::to_string(v.numTokens) + " tokens needed");
    for (size_t i = 0; i < pos.ElementLength(); ++i)
      if (pos[i] < 0 || pos[i] > (1 << 24))
        bad("LLM_ERR_BAD_REQUEST", "multimodal.positions[" + std::to_string(i) + "] = " + std::to_string(pos[i]) + " out of range [0, 2^24]");
    v.mropePositions = pos.Data();
    Napi::Value ev = o.Get("imageEmbeds");
    if (ev.IsUndefined() || ev.IsNull()) return;
    if (!ev.IsTypedArray() || ev.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      bad("LLM_ERR_BAD_REQUEST", "multimodal.imageEmbeds must be a Float32Array");
    Napi::Float32Array emb = ev.As<Napi::Float32Array>();
    int64_t imageTokens = 0;
    for (int32_t t = 0; t < v.numTokens; ++t) imageTokens += v.tokens[t] == d.imageTokenId ? 1 : 0;
    if ((int64_t)emb.ElementLength() != imageTokens * d.hiddenSize)
      bad("LLM_ERR_BAD_REQUEST", "multimodal.imageEmbeds has " + std::to_string(emb.ElementLength()) + " values; the step has " + std::to_string(imageTokens) +
                                     " image tokens (id " + std::to_string(d.imageTokenId) + ") x hidden " + std::to_string(d.hiddenSize));
    const float* e = emb.Data();
    for (size_t i = 0; i < emb.ElementLength(); ++i)
      if (!std::isfinite(e[i])) bad("LLM_ERR_BAD_REQUEST", "multimodal.imageEmbeds[" + std::to_string(i) + "] is not finite");
    v.imageEmbeds = e;
    v.numImageEmbeds = (int32_t)imageTokens;
  }

  void beginStep(Napi::Env env, const Napi::CallbackInfo& info, bool allowPlaceholders) {
    Backend& be = live();
    if ((int)pending_.size() >= Backend::kMaxStepsInFlight)
      bad("LLM_ERR_STEP_INVALID", std::to_string(pending_.size()) + " steps begun and not ended (at most " +
                                      std::to_string(Backend::kMaxStepsInFlight) + "): call stepEnd first");
    Napi::Int32Array desc = typedArg<int32_t>(info, 0, "step descriptor");
    const KvInfo kv = be.kvInfo();
    const StepLimits lim{model_->desc.vocabSize, kv.pageSize, opts_.maxBatchTokens, opts_.maxSeqsPerStep, kv.numPages};
    try {
      static const std::vector<uint8_t> kNoPrevious;
      checkStep(desc.Data(), desc.ElementLength(), lim, checked_, pageOwner_,
                allowPlaceholders ? (hasPrevious_ ? &previousSampled_ : &kNoPrevious) : nullptr);
    } catch (...) {
      hasPrevious_ = false;  // the next step's placeholders would name this step's rows: it sampled nothing
      throw;
    }
    StepView v = checked_.view;
    if (!allowPlaceholders && info.Length() > 1 && !info[1].IsUndefined()) attachMultimodal(info[1], v);
    Napi::Int32Array tokens = Napi::Int32Array::New(env, v.numSeqs);
    Napi::Float32Array logprobs = Napi::Float32Array::New(env, v.numSeqs);
    Napi::Int32Array topIds = Napi::Int32Array::New(env, (size_t)v.numSeqs * v.maxTopN);
    Napi::Float32Array topLogprobs = Napi::Float32Array::New(env, (size_t)v.numSeqs * v.maxTopN);
    Napi::Object result = Napi::Object::New(env);
    StepOutputs out;
    out.tokens = tokens.Data();
    out.logprobs = logprobs.Data();
    out.topIds = topIds.Data();
    out.topLogprobs = topLogprobs.Data();
    if (v.returnLogits) {
      Napi::Float32Array logits = Napi::Float32Array::New(env, (size_t)v.numSeqs * model_->desc.vocabSize);
      out.logits = logits.Data();
      result.Set("logits", logits);
    }
    result.Set("tokens", tokens);
    result.Set("logprobs", logprobs);
    result.Set("topN", Napi::Number::New(env, v.maxTopN));
    result.Set("topIds", topIds);
    result.Set("topLogprobs", topLogprobs);
    try {
      be.stepBegin(v, out);
    } catch (...) {
      hasPrevious_ = false;
      throw;
    }
    // The arrays the backend writes at stepEnd stay referenced until then.
    pending_.push_back(Napi::Persistent(result));
    previousSampled_.resize(v.numSeqs);
    for (int32_t i = 0; i < v.numSeqs; ++i) previousSampled_[i] = v.seqs[i].sample ? 1 : 0;
    hasPrevious_ = true;
  }

  /** Completes the oldest begun step and returns its result object. */
  Napi::Value endStep(Napi::Env env) {
    Backend& be = live();
    if (pending_.empty()) bad("LLM_ERR_STEP_INVALID", "stepEnd: no step was begun");
    Napi::ObjectReference ref = std::move(pending_.front());
    pending_.pop_front();
    try {
      be.stepEnd();
    } catch (...) {
      hasPrevious_ = false;  // a failed step sampled nothing a placeholder could name
      throw;
    }
    return ref.Value();
  }

  Napi::Value Step(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      idle();
      beginStep(env, info, false);
      return endStep(env);
    });
  }

  Napi::Value StepBegin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      beginStep(env, info, true);
      return env.Undefined();
    });
  }

  Napi::Value StepEnd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value { return endStep(env); });
  }

  Napi::Value StepReady(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      Backend& be = live();
      if (pending_.empty()) bad("LLM_ERR_STEP_INVALID", "stepReady: no step was begun");
      return Napi::Boolean::New(env, be.stepReady());
    });
  }

  /** embed(tokenIds, lens, pooling, normalize): lens[i] tokens of sequence i, back to back in tokenIds; pooling 0 last,
   *  1 mean, 2 cls (EmbedPooling). Returns [numSeqs * hidden] floats. */
  Napi::Value Embed(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      Backend& be = idle();
      Napi::Int32Array ids = typedArg<int32_t>(info, 0, "embed token ids");
      Napi::Int32Array lens = typedArg<int32_t>(info, 1, "embed sequence lengths");
      if (info.Length() < 4 || !info[2].IsNumber() || !info[3].IsBoolean())
        bad("LLM_ERR_BAD_REQUEST", "embed(tokenIds, lens, pooling, normalize): pooling must be a number and normalize a boolean");
      const int32_t pooling = info[2].As<Napi::Number>().Int32Value();
      if (pooling < 0 || pooling > 2) bad("LLM_ERR_BAD_REQUEST", "embed: pooling " + std::to_string(pooling) + " is not 0 (last), 1 (mean) or 2 (cls)");
      const int64_t numSeqs = (int64_t)lens.ElementLength();
      if (numSeqs < 1 || numSeqs > opts_.maxSeqsPerStep)
        bad("LLM_ERR_BAD_REQUEST", "embed: " + std::to_string(numSeqs) + " sequences, the engine takes 1.." + std::to_string(opts_.maxSeqsPerStep) + " (maxSeqsPerStep)");
      int64_t total = 0;
      for (int64_t i = 0; i < numSeqs; ++i) {
        if (lens[i] < 1) bad("LLM_ERR_BAD_REQUEST", "embed: sequence " + std::to_string(i) + " has " + std::to_string(lens[i]) + " tokens (at least 1)");
        // an encoder's learned positions end at its maximum
        if (model_->desc.arch == Arch::Bert && lens[i] > model_->desc.maxPositionEmbeddings)
          bad("LLM_ERR_CONTEXT_LENGTH", "embed: sequence " + std::to_string(i) + " has " + std::to_string(lens[i]) + " tokens, the encoder's positions end at " + std::to_string(model_->desc.maxPositionEmbeddings));
        total += lens[i];
      }
      if (total != (int64_t)ids.ElementLength())
        bad("LLM_ERR_BAD_REQUEST", "embed: the lengths sum to " + std::to_string(total) + " tokens, " + std::to_string(ids.ElementLength()) + " were given");
      if (total > opts_.maxBatchTokens)
        bad("LLM_ERR_CONTEXT_LENGTH", "embed: " + std::to_string(total) + " tokens in one pass, the engine takes at most " + std::to_string(opts_.maxBatchTokens) + " (maxBatchTokens)");
      const int32_t V = model_->desc.vocabSize;
      for (int64_t i = 0; i < total; ++i)
        if (ids[i] < 0 || ids[i] >= V)
          bad("LLM_ERR_BAD_REQUEST", "embed: token " + std::to_string(ids[i]) + " at index " + std::to_string(i) + " out of range [0, " + std::to_string(V) + ")");
      const int64_t H = model_->desc.hiddenSize;
      Napi::Float32Array out = Napi::Float32Array::New(env, (size_t)(numSeqs * H));
      be.embed(ids.Data(), lens.Data(), (int32_t)numSeqs, (EmbedPooling)pooling, info[3].As<Napi::Boolean>().Value(), out.Data());
      return out;
    });
  }

  void checkPages(const Napi::Int32Array& pages, int64_t numPages) {
    for (size_t i = 0; i < pages.ElementLength(); ++i)
      if (pages[i] < 0 || pages[i] >= numPages)
        bad("LLM_ERR_KV_TRANSFER", "page " + std::to_string(pages[i]) + " at index " + std::to_string(i) + " out of range [0, " + std::to_string(numPages) + ")");
  }

  Napi::Value ExportPages(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      Backend& be = idle();
      Napi::Int32Array pages = typedArg<int32_t>(info, 0, "pages");
      const KvInfo kv = be.kvInfo();
      checkPages(pages, kv.numPages);
      Napi::Uint8Array out = Napi::Uint8Array::New(env, pages.ElementLength() * (size_t)kv.bytesPerPage);
      be.exportPages(pages.Data(), (int32_t)pages.ElementLength(), out.Data());
      return out;
    });
  }

  Napi::Value ImportPages(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      Backend& be = idle();
      Napi::Int32Array pages = typedArg<int32_t>(info, 0, "pages");
      Napi::Uint8Array data = typedArg<uint8_t>(info, 1, "page data");
      const KvInfo kv = be.kvInfo();
      checkPages(pages, kv.numPages);
      if (data.ElementLength() != pages.ElementLength() * (size_t)kv.bytesPerPage)
        bad("LLM_ERR_KV_TRANSFER", "page data has " + std::to_string(data.ElementLength()) + " bytes, expected " +
                                       std::to_string(pages.ElementLength()) + " pages x " + std::to_string(kv.bytesPerPage));
      be.importPages(pages.Data(), (int32_t)pages.ElementLength(), data.Data());
      return env.Undefined();
    });
  }

  // GPU-to-GPU KV transfer (backend.h kvIpc*): the pool description crosses as a plain object, the handle as bytes.
  Napi::Value KvIpcExportJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      const KvIpcPool p = idle().kvIpcExport();
      Napi::Object o = Napi::Object::New(env);
      o.Set("handle", Napi::Uint8Array::New(env, sizeof(p.handle)));
      std::memcpy(o.Get("handle").As<Napi::Uint8Array>().Data(), p.handle, sizeof(p.handle));
      o.Set("tensors", (double)p.tensors);
      o.Set("tensorStrideElems", (double)p.tensorStrideElems);
      o.Set("rowElems", (double)p.rowElems);
      o.Set("pageSize", p.pageSize);
      o.Set("pciBusId", p.pciBusId);
      return o;
    });
  }

  Napi::Value KvIpcOpenJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      Backend& be = idle();
      if (info.Length() < 1 || !info[0].IsObject()) bad("LLM_ERR_BAD_REQUEST", "kvIpcOpen(pool): pool must be an object");
      const Napi::Object o = info[0].As<Napi::Object>();
      const char* W = "KV IPC pool";
      const Napi::Value h = field(o, W, "handle");
      if (!h.IsTypedArray() || h.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array || h.As<Napi::Uint8Array>().ElementLength() != 64)
        bad("LLM_ERR_KV_TRANSFER", "KV IPC pool.handle must be 64 bytes (a cudaIpcMemHandle_t)");
      KvIpcPool p;
      std::memcpy(p.handle, h.As<Napi::Uint8Array>().Data(), sizeof(p.handle));
      p.tensors = (int64_t)num(o, W, "tensors");
      p.tensorStrideElems = (int64_t)num(o, W, "tensorStrideElems");
      p.rowElems = (int64_t)num(o, W, "rowElems");
      p.pageSize = integer(o, W, "pageSize");
      const Napi::Value bus = field(o, W, "pciBusId");
      p.pciBusId = bus.IsString() ? bus.As<Napi::String>().Utf8Value() : "";
      if (p.tensors < 1 || p.tensorStrideElems < 1 || p.rowElems < 1 || p.pageSize < 1) bad("LLM_ERR_KV_TRANSFER", "KV IPC pool geometry must be positive");
      return Napi::Number::New(env, be.kvIpcOpen(p));
    });
  }

  Napi::Value KvIpcPullJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      Backend& be = idle();
      if (info.Length() < 5 || !info[0].IsNumber() || !info[2].IsNumber() || !info[4].IsNumber())
        bad("LLM_ERR_BAD_REQUEST", "kvIpcPull(remote, srcPages, srcToken0, dstPages, numTokens)");
      Napi::Int32Array src = typedArg<int32_t>(info, 1, "source pages");
      Napi::Int32Array dst = typedArg<int32_t>(info, 3, "destination pages");
      const KvInfo kv = be.kvInfo();
      checkPages(dst, kv.numPages);
      const KvPullStats st = be.kvIpcPull(info[0].As<Napi::Number>().Int32Value(), src.Data(), (int32_t)src.ElementLength(),
                                          info[2].As<Napi::Number>().Int32Value(), dst.Data(), (int32_t)dst.ElementLength(),
                                          info[4].As<Napi::Number>().Int32Value());
      Napi::Object o = Napi::Object::New(env);
      o.Set("bytes", (double)st.bytes);
      o.Set("deviceMs", st.deviceMs);
      o.Set("hostMs", st.hostMs);
      return o;
    });
  }

  Napi::Value KvIpcCloseJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      if (info.Length() < 1 || !info[0].IsNumber()) bad("LLM_ERR_BAD_REQUEST", "kvIpcClose(remote)");
      idle().kvIpcClose(info[0].As<Napi::Number>().Int32Value());
      return env.Undefined();
    });
  }

  Napi::Value KvInfoJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      const KvInfo kv = live().kvInfo();
      Napi::Object o = Napi::Object::New(env);
      o.Set("pageSize", kv.pageSize);
      o.Set("numPages", (double)kv.numPages);
      o.Set("bytesPerPage", (double)kv.bytesPerPage);
      return o;
    });
  }

  Napi::Value MemoryInfoJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      const MemInfo m = live().memInfo();
      Napi::Object o = Napi::Object::New(env);
      o.Set("weightsBytes", (double)m.weightsBytes);
      o.Set("kvPoolBytes", (double)m.kvPoolBytes);
      o.Set("workspaceBytes", (double)m.workspaceBytes);
      o.Set("deviceFreeBytes", m.deviceFreeBytes < 0 ? env.Null() : Napi::Number::New(env, (double)m.deviceFreeBytes));
      o.Set("deviceTotalBytes", m.deviceTotalBytes < 0 ? env.Null() : Napi::Number::New(env, (double)m.deviceTotalBytes));
      return o;
    });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    backend_.reset();  // waits for the device, so begun steps' result arrays are no longer written after this
    model_.reset();
    pending_.clear();
    hasPrevious_ = false;
    return info.Env().Undefined();
  }

  std::unique_ptr<LoadedModel> model_;
  std::unique_ptr<Backend> backend_;
  BackendOptions opts_;
  CheckedStep checked_;
  std::vector<int32_t> pageOwner_;
  std::deque<Napi::ObjectReference> pending_;  // result objects of begun steps, oldest first
  std::vector<uint8_t> previousSampled_;       // which rows of the last begun step sample (placeholder targets)
  bool hasPrevious_ = false;
};

/** Test entry: the reference sampler on given logits. sampleFromLogits(logits, params, seedLo, seedHi, outputIndex). */
Napi::Value SampleFromLogitsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    Napi::Float32Array logits = typedArg<float>(info, 0, "logits");
    if (logits.ElementLength() == 0) bad("LLM_ERR_BAD_REQUEST", "logits is empty");
    if (info.Length() < 5 || !info[1].IsObject()) bad("LLM_ERR_BAD_REQUEST", "sampleFromLogits(logits, params, seedLo, seedHi, outputIndex)");
    Napi::Object p = info[1].As<Napi::Object>();
    const char* W = "params";
    SamplingParams sp;
    sp.temperature = (float)num(p, W, "temperature");
    sp.topP = (float)num(p, W, "topP");
    sp.topK = integer(p, W, "topK");
    sp.minP = (float)num(p, W, "minP");
    sp.logprobs = integer(p, W, "logprobs");
    sp.seed = (uint64_t)info[2].As<Napi::Number>().Uint32Value() | ((uint64_t)info[3].As<Napi::Number>().Uint32Value() << 32);
    sp.outputIndex = info[4].As<Napi::Number>().Int32Value();
    if (sp.logprobs > MAX_TOP_LOGPROBS) bad("LLM_ERR_BAD_REQUEST", "params.logprobs above " + std::to_string(MAX_TOP_LOGPROBS));
    const int32_t vocab = (int32_t)logits.ElementLength();
    const int32_t topN = sp.logprobs > 0 ? sp.logprobs : 0;
    std::vector<uint8_t> scratch(samplingScratchBytes(vocab));
    Napi::Int32Array topIds = Napi::Int32Array::New(env, topN);
    Napi::Float32Array topLogprobs = Napi::Float32Array::New(env, topN);
    float logprob = 0;
    const int32_t token = sampleFromLogits(logits.Data(), vocab, sp, topN, &logprob, topIds.Data(), topLogprobs.Data(), scratch.data());
    Napi::Object r = Napi::Object::New(env);
    r.Set("token", token);
    r.Set("logprob", logprob);
    r.Set("topIds", topIds);
    r.Set("topLogprobs", topLogprobs);
    return r;
  });
}


/** The Qwen2.5-VL vision tower (cpu/vision.h): new VisionTower(visionSpec, {threads}); encode(pixelValues, t, h, w)
 *  -> Float32Array [t*h*w / merge^2, outHiddenSize]. The image's shapes and values are checked here, once. */
class VisionTowerWrap : public Napi::ObjectWrap<VisionTowerWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "VisionTower", {InstanceMethod("encode", &VisionTowerWrap::Encode), InstanceMethod("close", &VisionTowerWrap::Close)});
  }

  VisionTowerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VisionTowerWrap>(info) {
    guarded(info.Env(), [&] {
      if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject())
        bad("LLM_ERR_BAD_REQUEST", "VisionTower(visionSpec, options): both arguments must be objects");
      const Napi::Object v = info[0].As<Napi::Object>();
      const char* W = "VisionSpec";
      VisionDesc d;
      d.depth = integer(v, W, "depth");
      d.hiddenSize = integer(v, W, "hiddenSize");
      d.intermediateSize = integer(v, W, "intermediateSize");
      d.numHeads = integer(v, W, "numHeads");
      d.inChannels = integer(v, W, "inChannels");
      d.outHiddenSize = integer(v, W, "outHiddenSize");
      d.patchSize = integer(v, W, "patchSize");
      d.spatialMergeSize = integer(v, W, "spatialMergeSize");
      d.temporalPatchSize = integer(v, W, "temporalPatchSize");
      d.windowSize = integer(v, W, "windowSize");
      d.rmsNormEps = (float)num(v, W, "rmsNormEps");
      Napi::Value fv = field(v, W, "fullAttBlockIndexes");
      if (!fv.IsArray()) bad("LLM_ERR_MODEL_FORMAT", "VisionSpec.fullAttBlockIndexes must be an array");
      Napi::Array fa = fv.As<Napi::Array>();
      for (uint32_t i = 0; i < fa.Length(); ++i) {
        Napi::Value e = fa.Get(i);
        if (!e.IsNumber()) bad("LLM_ERR_MODEL_FORMAT", "VisionSpec.fullAttBlockIndexes must hold integers");
        d.fullAttBlockIndexes.push_back(e.As<Napi::Number>().Int32Value());
      }
      const Napi::Object o = info[1].As<Napi::Object>();
      const int threads = o.Has("threads") && o.Get("threads").IsNumber() ? o.Get("threads").As<Napi::Number>().Int32Value() : 1;
      tower_ = std::make_unique<VisionTower>(d, parseTensors(v), std::max(1, threads));
      return 0;
    });
  }

 private:
  Napi::Value Encode(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      if (!tower_) bad("LLM_ERR_SHUTDOWN", "vision tower is closed");
      if (info.Length() < 4 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
        bad("LLM_ERR_BAD_REQUEST", "encode(pixelValues: Float32Array, gridT, gridH, gridW)");
      const Napi::Float32Array px = info[0].As<Napi::Float32Array>();
      int grid[3];
      for (int i = 0; i < 3; ++i) {
        const double g = info[(size_t)i + 1].IsNumber() ? info[(size_t)i + 1].As<Napi::Number>().DoubleValue() : -1;
        if (!(g >= 1) || g != std::floor(g) || g > 65536) bad("LLM_ERR_BAD_REQUEST", "image grid_thw must be three integers in [1, 65536]");
        grid[i] = (int)g;
      }
      const VisionDesc& d = tower_->desc();
      const int m = d.spatialMergeSize;
      const std::string g = std::to_string(grid[0]) + "x" + std::to_string(grid[1]) + "x" + std::to_string(grid[2]);
      if (grid[1] % m != 0 || grid[2] % m != 0)
        bad("LLM_ERR_BAD_REQUEST", "image grid " + g + ": height and width must be multiples of the merge size " + std::to_string(m));
      const int64_t rows = (int64_t)grid[0] * grid[1] * grid[2];
      if ((int64_t)px.ElementLength() != rows * tower_->patchDim())
        bad("LLM_ERR_BAD_REQUEST", "image grid " + g + " needs " + std::to_string(rows) + " x " + std::to_string(tower_->patchDim()) +
                                       " pixel values, got " + std::to_string(px.ElementLength()));
      const float* data = px.Data();
      for (size_t i = 0; i < px.ElementLength(); ++i)
        if (!std::isfinite(data[i])) bad("LLM_ERR_BAD_REQUEST", "image pixel value " + std::to_string(i) + " is not finite");
      Napi::Float32Array out = Napi::Float32Array::New(env, (size_t)(rows / (m * m) * d.outHiddenSize));
      tower_->encode(data, grid[0], grid[1], grid[2], out.Data());
      return out;
    });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    tower_.reset();
    return info.Env().Undefined();
  }

  std::unique_ptr<VisionTower> tower_;
};

/** tpAbort(group, reason): wakes every rank of that group blocked in a join or a collective, now and later, with
 *  LLM_ERR_TP_ABORTED (TpGroup::abort). Callable from any thread while ranks are blocked in theirs. */
Napi::Value TpAbortJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) bad("LLM_ERR_BAD_REQUEST", "tpAbort(group, reason): both must be strings");
    const std::string group = info[0].As<Napi::String>().Utf8Value();
    TpGroup::abort(group, info[1].As<Napi::String>().Utf8Value());
#ifdef DYNAMO_CUDA
    abortCudaTpGroup(group);
#endif
    return env.Undefined();
  });
}

/** CUDA devices this process sees (0 in a CPU-only build, or when the driver finds none): what the topology checks
 *  --tp-size and --base-gpu-id against before it starts any rank. Creates no context. */
Napi::Value CudaDeviceCountJs(const Napi::CallbackInfo& info) {
  int n = 0;
#ifdef DYNAMO_CUDA
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 0;
  }
#endif
  return Napi::Number::New(info.Env(), n);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeEngine", EngineWrap::Init(env));
  exports.Set("VisionTower", VisionTowerWrap::Init(env));
  exports.Set("sampleFromLogits", Napi::Function::New(env, SampleFromLogitsJs));
  exports.Set("tpAbort", Napi::Function::New(env, TpAbortJs));
  exports.Set("cudaDeviceCount", Napi::Function::New(env, CudaDeviceCountJs));
  Napi::Array backends = Napi::Array::New(env);
  backends.Set((uint32_t)0, "cpu");
#ifdef DYNAMO_CUDA
  backends.Set((uint32_t)1, "cuda");
#endif
  exports.Set("backends", backends);
  exports.Set("stepLayoutVersion", STEP_VERSION);
  return exports;
}

}  // namespace
}  // namespace dsg

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return dsg::Init(env, exports); }

NODE_API_MODULE(dynamo_sglang, InitModule)
