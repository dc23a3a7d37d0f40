// Implements: counting the model FLOPs of the ops a region runs (convolutions, matrix products,
// scaled-dot-product attention: 2 FLOPs per multiply-add), from their input shapes, through
// ATen's RecordFunction callbacks (what torch's profiler does with with_flops=True). Ops inside
// a counted op (SDPA's math fallback, say) are not counted again. For benchmarks: model FLOP
// utilisation = FLOPs of a step / its time / the device's peak.
#pragma once

#include <ATen/record_function.h>

#include <atomic>
#include <cstring>
#include <memory>

namespace t2i::bench {

class FlopCounter {
  public:
    FlopCounter() {
        handle_ = at::addGlobalCallback(
            at::RecordFunctionCallback(&FlopCounter::on_start, &FlopCounter::on_end)
                .needsInputs(true)
                .scopes({at::RecordScope::FUNCTION}));
    }
    ~FlopCounter() { at::removeCallback(handle_); }
    FlopCounter(const FlopCounter&)            = delete;
    FlopCounter& operator=(const FlopCounter&) = delete;

    static double flops() { return static_cast<double>(total().load()); }
    static void reset() { total() = 0; }

  private:
    struct Inside : at::ObserverContext {};
    static std::atomic<int64_t>& total() {
        static std::atomic<int64_t> t{0};
        return t;
    }
    static int& depth() {
        thread_local int d = 0;
        return d;
    }
    static int64_t numel(const c10::IValue& v) { return v.isTensor() ? v.toTensor().numel() : 0; }
    // FLOPs of one op from its inputs, or -1 when it is not an op that is counted.
    static int64_t count(const at::RecordFunction& fn) {
        const char* name = fn.name();
        const auto in    = fn.inputs();
        auto sizes       = [&](size_t i) { return in[i].toTensor().sizes(); };
        if (!std::strcmp(name, "aten::convolution")) {
            // input [N, C, H, W], weight [O, C/g, kh, kw], bias, stride, padding, dilation,
            // transposed, output_padding, groups
            const auto x = sizes(0), w = sizes(1);
            if (x.size() != 4 || in[6].toBool()) return 0;
            const auto s = in[3].toIntVector(), p = in[4].toIntVector(), d = in[5].toIntVector();
            int64_t out = x[0] * w[0];
            for (int k = 0; k < 2; ++k)
                out *= (x[2 + k] + 2 * p[k] - d[k] * (w[2 + k] - 1) - 1) / s[k] + 1;
            return 2 * out * w[1] * w[2] * w[3];
        }
        if (!std::strcmp(name, "aten::mm")) return 2 * sizes(0)[0] * sizes(0)[1] * sizes(1)[1];
        if (!std::strcmp(name, "aten::addmm")) return 2 * sizes(1)[0] * sizes(1)[1] * sizes(2)[1];
        if (!std::strcmp(name, "aten::bmm"))
            return 2 * sizes(0)[0] * sizes(0)[1] * sizes(0)[2] * sizes(1)[2];
        if (!std::strcmp(name, "aten::baddbmm"))
            return 2 * sizes(1)[0] * sizes(1)[1] * sizes(1)[2] * sizes(2)[2];
        if (!std::strcmp(name, "aten::scaled_dot_product_attention")) {
            const auto q = sizes(0), k = sizes(1);  // [N, h, S, d], [N, h, L, d]
            return 4 * (numel(in[0]) / q.back()) * k[k.size() - 2] * q.back();
        }
        return -1;
    }
    static std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
        if (depth() > 0) return nullptr;
        const int64_t f = count(fn);
        if (f < 0) return nullptr;
        total() += f;
        ++depth();
        return std::make_unique<Inside>();
    }
    static void on_end(const at::RecordFunction&, at::ObserverContext* ctx) {
        if (ctx) --depth();
    }
    at::CallbackHandle handle_;
};

}  // namespace t2i::bench
