// Tests: the --device flag (parsing, and the one-line exit-2 refusal of `train` / `generate`
// on a machine without a GPU) and, where a CUDA GPU is present, the CUDA path against the CPU
// path in fp32: CLIP and VAE forward, a few sampler steps of the pipeline (with per-step noise),
// and training steps (the random draws come from the CPU generator on every device, so both
// runs see the same noise and timesteps). Without a GPU those are skipped with the reason.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "io/json_config.h"
#include "io/safetensors.h"
#include "pipeline/model_dir.h"
#include "pipeline/text_to_image.h"
#include "schedulers/scheduler.h"
#include "test_util.h"
#include "util/device.h"

namespace t2i {
namespace {

using testing::fixture;

bool have_cuda() { return cuda_device_count() > 0; }

#define T2I_REQUIRE_CUDA()                                                                      \
    if (!have_cuda())                                                                           \
    GTEST_SKIP() << "no CUDA GPU on this machine (libtorch sees 0 CUDA devices); this CUDA-vs-" \
                    "CPU comparison runs on a GPU machine (bench/gpu_check.sh runs it)"

void expect_device_error(const std::string& value, const std::string& needle) {
    try {
        resolve_device(value);
        ADD_FAILURE() << "--device " << value << " was accepted";
    } catch (const DeviceError& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("--device"), std::string::npos) << what;
        EXPECT_NE(what.find(needle), std::string::npos) << what;
    }
}

TEST(Device, ParsesCpuCudaAndCudaN) {
    EXPECT_EQ(resolve_device("cpu"), torch::Device(torch::kCPU));
    for (const char* bad :
         {"gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda:0:1", "cuda:99999", "cpu:0", ""})
        expect_device_error(bad, "expected cpu, cuda or cuda:N");
    const int n = cuda_device_count();
    if (n == 0) {
        for (const char* v : {"cuda", "cuda:0", "cuda:3"}) {
            expect_device_error(v, "no usable CUDA GPU");
            expect_device_error(v, "use --device cpu");
        }
    } else {
        EXPECT_EQ(resolve_device("cuda"), torch::Device(torch::kCUDA, 0));
        EXPECT_EQ(resolve_device("cuda", n - 1), torch::Device(torch::kCUDA, n - 1));
        expect_device_error("cuda:" + std::to_string(n), "CUDA device(s)");
    }
}

// t2i links the CPU half of libtorch; the CUDA half (and with it NCCL) loads on demand.
TEST(Device, TheCudaHalfOfLibtorchAndTheNcclPluginLoadOnDemand) {
    std::string why;
#ifdef T2I_TORCH_CUDA
    EXPECT_TRUE(load_cuda_runtime(&why)) << why;
#else
    EXPECT_FALSE(load_cuda_runtime(&why));
    EXPECT_NE(why.find("no CUDA"), std::string::npos) << why;
#endif
#ifdef T2I_NCCL_PLUGIN
    void* lib = ::dlopen(T2I_NCCL_PLUGIN, RTLD_NOW | RTLD_LOCAL);  // every symbol resolves
    ASSERT_NE(lib, nullptr) << ::dlerror();
    EXPECT_NE(::dlsym(lib, "t2i_make_nccl_backend"), nullptr);
#endif
    // A command line that names CUDA asks for it, one that does not stays on the CPU half.
    const char* gpu[] = {"t2i", "train", "--device", "cuda:1"};
    const char* cpu[] = {"t2i", "train", "--device", "cpu"};
    EXPECT_TRUE(command_line_wants_cuda(4, const_cast<char**>(gpu)));
    EXPECT_FALSE(command_line_wants_cuda(4, const_cast<char**>(cpu)));
}

TEST(Device, TrainAndGenerateRefuseCudaWithoutAGpuInOneLine) {
    if (have_cuda()) GTEST_SKIP() << "this machine has a CUDA GPU: nothing to refuse";
    testing::TempDir dir;
    const auto data                                  = testing::make_image_dataset(dir, 2);
    const std::vector<std::vector<std::string>> runs = {
        {"generate", "--model", fixture("tiny-sd1"), "--prompt", "a cat", "--output",
         dir.file("a.png"), "--device", "cuda"},
        {"train", "--pretrained_model_name_or_path", fixture("tiny-sd1"), "--train_data_dir", data,
         "--output_dir", dir.file("out"), "--resolution", "32", "--max_train_steps", "1",
         "--device", "cuda:0"},
        {"train", "--pretrained_model_name_or_path", fixture("tiny-sd1"), "--train_data_dir", data,
         "--output_dir", dir.file("out"), "--resolution", "32", "--max_train_steps", "1",
         "--device", "cuda", "--mixed_precision", "fp16"},
    };
    for (const auto& args : runs) {
        const auto r = testing::run_t2i(args);
        EXPECT_EQ(r.code, 2) << r.out;
        EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
        EXPECT_NE(r.out.find("--device cuda"), std::string::npos) << r.out;
        EXPECT_NE(r.out.find("no usable CUDA GPU"), std::string::npos) << r.out;
    }
    // NCCL with CPU tensors: refused by the flag check, before anything starts.
    const auto nccl = testing::run_t2i(
        {"train", "--pretrained_model_name_or_path", fixture("tiny-sd1"), "--train_data_dir", data,
         "--output_dir", dir.file("out"), "--resolution", "32", "--ddp_backend", "nccl"});
    EXPECT_EQ(nccl.code, 2) << nccl.out;
    EXPECT_NE(nccl.out.find("--ddp_backend: nccl moves CUDA tensors only"), std::string::npos)
        << nccl.out;
    EXPECT_FALSE(std::filesystem::exists(dir.file("a.png")));
    EXPECT_FALSE(std::filesystem::exists(dir.file("out")));
}

// fp32 means fp32 here: cuDNN's default TF32 convolutions (what diffusers users get too) round to
// ~1e-3, beyond these comparisons' tolerance.
struct NoTf32 {
    const bool cudnn  = at::globalContext().allowTF32CuDNN();
    const bool cublas = at::globalContext().allowTF32CuBLAS();
    NoTf32() {
        at::globalContext().setAllowTF32CuDNN(false);
        at::globalContext().setAllowTF32CuBLAS(false);
    }
    ~NoTf32() {
        at::globalContext().setAllowTF32CuDNN(cudnn);
        at::globalContext().setAllowTF32CuBLAS(cublas);
    }
};

// Loads tiny-sd1's component `load` on the CPU and on cuda:0.
template <typename Load>
auto on_both(Load load) {
    pipeline::LoadOptions cpu, cuda;
    cuda.device = torch::Device(torch::kCUDA, 0);
    return std::make_pair(load(cpu), load(cuda));
}

TEST(Cuda, ClipAndVaeForwardMatchCpu) {
    T2I_REQUIRE_CUDA();
    NoTf32 fp32;
    torch::NoGradGuard no_grad;
    const std::string dir = fixture("tiny-sd1");
    auto [te_cpu, te_gpu] = on_both([&](const pipeline::LoadOptions& o) {
        return pipeline::load_text_encoder(dir + "/text_encoder", o);
    });
    const auto tok        = tokenizer::CLIPTokenizer::from_pretrained(dir + "/tokenizer");
    const auto ids   = tok.batch_input_ids({"a photo of a cat", "an astronaut riding a horse"});
    const auto h_cpu = te_cpu->forward(ids).last_hidden_state;
    const auto h_gpu = te_gpu->forward(ids.cuda()).last_hidden_state;
    EXPECT_TRUE(h_gpu.is_cuda());
    EXPECT_TRUE(testing::allclose(h_gpu.cpu(), h_cpu, 1e-4, 1e-4));

    auto [vae_cpu, vae_gpu] = on_both(
        [&](const pipeline::LoadOptions& o) { return pipeline::load_vae(dir + "/vae", o); });
    torch::manual_seed(0);
    const auto x     = torch::rand({2, 3, 64, 64}) * 2 - 1;
    const auto m_cpu = vae_cpu->encode(x).mean;
    const auto m_gpu = vae_gpu->encode(x.cuda()).mean;
    EXPECT_TRUE(testing::allclose(m_gpu.cpu(), m_cpu, 1e-4, 1e-4));
    const auto d_cpu = vae_cpu->decode(m_cpu);
    const auto d_gpu = vae_gpu->decode(m_cpu.cuda());
    EXPECT_TRUE(testing::allclose(d_gpu.cpu(), d_cpu, 1e-4, 1e-4));
}

TEST(Cuda, SamplerStepsMatchCpu) {
    T2I_REQUIRE_CUDA();
    NoTf32 fp32;
    const std::string dir = fixture("tiny-sd1");
    auto make             = [&](const pipeline::LoadOptions& o) {
        return pipeline::StableDiffusionPipeline(
                        pipeline::load_unet(dir + "/unet", o), pipeline::load_vae(dir + "/vae", o),
                        pipeline::load_text_encoder(dir + "/text_encoder", o),
                        tokenizer::CLIPTokenizer::from_pretrained(dir + "/tokenizer"));
    };
    auto [cpu, gpu]   = on_both(make);
    const auto config = io::read_json(dir + "/scheduler/scheduler_config.json");
    // ddim: deterministic; euler_ancestral and ddpm: noise at every step from the seeded CPU
    // generator, as diffusers' randn_tensor draws it on the CPU and moves it to the device.
    for (const char* name : {"ddim", "euler_ancestral", "dpm++2m", "ddpm"}) {
        pipeline::GenerateOptions o;
        o.prompts             = {"a photo of a cat"};
        o.num_inference_steps = 4;
        o.guidance_scale      = 7.5;
        o.seed                = 1234;
        auto s_cpu            = schedulers::make_scheduler(name, config);
        auto s_gpu            = schedulers::make_scheduler(name, config);
        const auto a          = cpu(o, *s_cpu);
        const auto b          = gpu(o, *s_gpu);
        EXPECT_TRUE(b.latents.is_cuda()) << name;
        EXPECT_TRUE(testing::allclose(b.latents.cpu(), a.latents, 1e-3, 1e-3)) << name;
        EXPECT_TRUE(testing::allclose(b.images.cpu().to(torch::kFloat32),
                                      a.images.to(torch::kFloat32), 2.0, 0))
            << name;
    }
}

TEST(Cuda, TrainingStepsMatchCpu) {
    T2I_REQUIRE_CUDA();
    testing::TempDir dir;
    const auto data = testing::make_image_dataset(dir, 4);
    auto args       = [&](const std::string& device, const std::string& out) {
        return std::vector<std::string>{
            "train", "--pretrained_model_name_or_path", fixture("tiny-sd1"), "--train_data_dir",
            data, "--output_dir", out, "--resolution", "32", "--train_batch_size", "2",
            "--max_train_steps", "2", "--learning_rate", "1e-3", "--seed", "7", "--use_ema",
            "--snr_gamma", "5", "--noise_offset", "0.05", "--report_to", "jsonl",
            // As the multi-process test: a larger epsilon keeps Adam from turning gradients that
            // are zero up to rounding into full steps of random sign.
            "--adam_epsilon", "1e-3", "--device", device};
    };
    const auto r_cpu = testing::run_t2i(args("cpu", dir.file("cpu")));
    ASSERT_EQ(r_cpu.code, 0) << r_cpu.out;
    const auto r_gpu = testing::run_t2i(args("cuda", dir.file("gpu")));
    ASSERT_EQ(r_gpu.code, 0) << r_gpu.out;
    const auto a =
        io::load_safetensors(dir.file("cpu") + "/unet/diffusion_pytorch_model.safetensors");
    const auto b =
        io::load_safetensors(dir.file("gpu") + "/unet/diffusion_pytorch_model.safetensors");
    ASSERT_EQ(a.size(), b.size());
    const auto base =
        io::load_safetensors(fixture("tiny-sd1") + "/unet/diffusion_pytorch_model.safetensors");
    double moved = 0;
    for (const auto& [name, t] : a) {
        ASSERT_TRUE(b.count(name)) << name;
        EXPECT_TRUE(testing::allclose(b.at(name), t, 1e-4, 1e-3)) << name;
        moved = std::max(moved, (t - base.at(name)).abs().max().item<double>());
    }
    EXPECT_GT(moved, 1e-4);  // the steps did change the weights
}

}  // namespace
}  // namespace t2i
