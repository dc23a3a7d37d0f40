// Implements: util/activation_checkpoint.h.
#include "util/activation_checkpoint.h"

#include <mutex>

#include "util/autocast.h"

namespace t2i {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What backward needs besides the saved inputs; held by the autograd context as a capsule.
struct CheckpointState : torch::CustomClassHolder {
    CheckpointFn fn;
    std::vector<bool> input_defined;  // per input of fn; undefined ones are not node inputs
    std::vector<bool> input_requires_grad;
    size_t num_inputs = 0;  // defined inputs (the first node inputs); parameters follow
    std::vector<torch::Tensor> parameters;
    AutocastState autocast;
    torch::Tensor cpu_rng_state;
    c10::optional<torch::Device> cuda_device;  // set when an input lives on CUDA
    torch::Tensor cuda_rng_state;
};

at::Generator default_generator(torch::Device device) {
    if (device.is_cpu()) return at::detail::getDefaultCPUGenerator();
    return at::globalContext().defaultGenerator(device);
}

torch::Tensor get_rng_state(torch::Device device) {
    auto gen = default_generator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state();
}

void set_rng_state(torch::Device device, const torch::Tensor& state) {
    auto gen = default_generator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
}

// torch.random.fork_rng: sets the forward-time RNG states for the recomputation and puts the
// current ones back afterwards, so checkpointing does not shift the random stream of later ops.
class RngFork {
  public:
    explicit RngFork(const CheckpointState& s) : cuda_device_(s.cuda_device) {
        cpu_state_ = get_rng_state(torch::kCPU);
        set_rng_state(torch::kCPU, s.cpu_rng_state);
        if (cuda_device_) {
            cuda_state_ = get_rng_state(*cuda_device_);
            set_rng_state(*cuda_device_, s.cuda_rng_state);
        }
    }
    ~RngFork() {
        set_rng_state(torch::kCPU, cpu_state_);
        if (cuda_device_) set_rng_state(*cuda_device_, cuda_state_);
    }

  private:
    c10::optional<torch::Device> cuda_device_;
    torch::Tensor cpu_state_, cuda_state_;
};

// fn's argument list: the node's defined inputs with undefined ones put back in place.
std::vector<torch::Tensor> fn_inputs(const CheckpointState& s, at::TensorList defined) {
    std::vector<torch::Tensor> inputs;
    size_t next = 0;
    for (bool d : s.input_defined) inputs.push_back(d ? defined[next++] : torch::Tensor());
    return inputs;
}

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
    // tensors: fn's defined inputs, then the parameters. Function::apply already runs this
    // with grad disabled; the guard states the point of the exercise.
    static torch::Tensor forward(AutogradContext* ctx, c10::intrusive_ptr<CheckpointState> state,
                                 at::TensorList tensors) {
        torch::NoGradGuard no_grad;
        state->autocast      = autocast_state();
        state->cpu_rng_state = get_rng_state(torch::kCPU);
        if (state->cuda_device) state->cuda_rng_state = get_rng_state(*state->cuda_device);
        auto inputs = tensors.slice(0, state->num_inputs);
        ctx->save_for_backward(inputs.vec());
        ctx->saved_data["state"] = c10::IValue::make_capsule(state);
        return state->fn(fn_inputs(*state, inputs));
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
        auto state = c10::static_intrusive_pointer_cast<CheckpointState>(
            ctx->saved_data["state"].toCapsule());
        const auto saved   = ctx->get_saved_variables();
        const auto& params = state->parameters;
        // 1. recompute fn on detached copies of the inputs, under the forward's RNG / autocast
        std::vector<torch::Tensor> detached;
        for (size_t i = 0; i < saved.size(); ++i)
            detached.push_back(saved[i].detach().requires_grad_(state->input_requires_grad[i]));
        torch::Tensor output;
        {
            RngFork rng(*state);
            AutocastGuard autocast(state->autocast);
            torch::AutoGradMode enable_grad(true);
            output = state->fn(fn_inputs(*state, detached));
        }
        // 2. differentiate the recomputation w.r.t. the inputs and parameters that need it
        variable_list wrt;
        for (const auto& t : detached)
            if (t.requires_grad()) wrt.push_back(t);
        for (const auto& p : params)
            if (p.requires_grad()) wrt.push_back(p);
        variable_list grads;
        if (output.requires_grad() && !wrt.empty())
            grads = torch::autograd::grad({output}, wrt, {grad_outputs[0]},
                                          /*retain_graph=*/false, /*create_graph=*/false,
                                          /*allow_unused=*/true);
        grads.resize(wrt.size());  // output independent of everything: undefined gradients
        // 3. one entry per forward argument: none for `state`, then inputs, then parameters
        variable_list result{torch::Tensor()};
        size_t next = 0;
        for (const auto& t : detached)
            result.push_back(t.requires_grad() ? grads[next++] : torch::Tensor());
        for (const auto& p : params)
            result.push_back(p.requires_grad() ? grads[next++] : torch::Tensor());
        return result;
    }
};

}  // namespace

torch::Tensor checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs,
                         const std::vector<torch::Tensor>& parameters) {
    bool any_requires_grad = false;
    for (const auto& t : inputs) any_requires_grad |= t.defined() && t.requires_grad();
    for (const auto& p : parameters) any_requires_grad |= p.requires_grad();
    if (!torch::GradMode::is_enabled() || !any_requires_grad) return fn(inputs);

    auto state = c10::make_intrusive<CheckpointState>();
    state->fn  = fn;
    std::vector<torch::Tensor> tensors;
    for (const auto& t : inputs) {
        state->input_defined.push_back(t.defined());
        if (!t.defined()) continue;
        state->input_requires_grad.push_back(t.requires_grad());
        if (t.is_cuda() && !state->cuda_device) state->cuda_device = t.device();
        tensors.push_back(t);
    }
    state->num_inputs = tensors.size();
    state->parameters = parameters;
    tensors.insert(tensors.end(), parameters.begin(), parameters.end());
    return CheckpointFunction::apply(state, at::TensorList(tensors));
}

}  // namespace t2i
