"""diffusers' side of the side-by-side in bench/gpu_check.sh: the body of one optimizer step of
examples/text_to_image/train_text_to_image.py (accelerate, --mixed_precision bf16: VAE and text
encoder in bf16, the UNet in fp32 under autocast; DDPM noise, MSE loss, backward, clip_grad_norm_
at 1.0, torch.optim.AdamW with its CUDA default, zero_grad), on a model folder t2i can also read.
The batches are random pixels already on the GPU (no data loading), which favours diffusers.

    python3 bench/diffusers_step.py --model DIR --batch B [--gradient_checkpointing] [--steps 8]

Prints one JSON line: median seconds per step over the steps after the first two, samples/s and
the peak GPU memory torch allocated. Not part of t2i (t2i runs no Python); a benchmark only.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--gradient_checkpointing", action="store_true")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev, wdt = torch.device(a.device), torch.bfloat16
    sched = DDPMScheduler.from_pretrained(a.model, subfolder="scheduler")
    tok = CLIPTokenizer.from_pretrained(a.model, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(a.model, subfolder="text_encoder").to(dev, wdt).requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(a.model, subfolder="vae").to(dev, wdt).requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet").to(dev).train()
    if a.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    ids = tok(["a photo of a cat"] * a.batch, max_length=tok.model_max_length, padding="max_length",
              truncation=True, return_tensors="pt").input_ids.to(dev)
    times = []
    for step in range(a.steps):
        t0 = time.perf_counter()
        pixels = torch.rand(a.batch, 3, a.resolution, a.resolution, device=dev, dtype=wdt) * 2 - 1
        with torch.autocast(dev.type, dtype=wdt):
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, sched.config.num_train_timesteps, (a.batch,), device=dev).long()
            noisy = sched.add_noise(latents, noise, t)
            ehs = te(ids, return_dict=False)[0]
            pred = unet(noisy, t, ehs, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the script logs the loss every step
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = sorted(times[2:])[len(times[2:]) // 2]
    print(json.dumps({"bench": "diffusers_train_step", "batch": a.batch,
                      "gradient_checkpointing": a.gradient_checkpointing,
                      "median_s_per_step": round(med, 4), "samples_per_s": round(a.batch / med, 2),
                      "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else -1}))


if __name__ == "__main__":
    main()
