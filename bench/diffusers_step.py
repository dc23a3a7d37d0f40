"""diffusers' side of the side-by-side in bench/gpu_check.sh and bench/bench_train.sh: the body
of one optimizer step of examples/text_to_image/train_text_to_image.py (accelerate,
--mixed_precision bf16 or no: VAE and text encoder in that dtype, the UNet in fp32 under
autocast; DDPM noise, MSE loss, backward, clip_grad_norm_ at 1.0, torch.optim.AdamW with its
default implementation, zero_grad), on a model folder t2i can also read.
Without --data the batches are random pixels already on the device (no data loading), which
favours diffusers; with --data DIR (an imagefolder with metadata.jsonl) the images go through the
script's train_transforms (Resize lanczos, CenterCrop, RandomHorizontalFlip, ToTensor, Normalize)
in a torch DataLoader with the script's default num_workers=0, as the script loads them.

    python3 bench/diffusers_step.py --model DIR --batch B [--gradient_checkpointing] [--steps 8]
        [--device cpu --mixed_precision no --data DIR --resolution 256 --threads 2]

Prints one JSON line: median seconds per step over the steps after the first two, samples/s,
the peak GPU memory torch allocated, the peak RSS, and the median seconds per stage (data, vae,
text, unet_fwd, bwd, optim: the stages of t2i's --profile). Not part of t2i (t2i runs no Python);
a benchmark only.
"""
import argparse
import json
import os
import random
import resource
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
    ap.add_argument("--mixed_precision", default="bf16", choices=["no", "bf16"])
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device(a.device)
    wdt = torch.bfloat16 if a.mixed_precision == "bf16" else torch.float32
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
    batches = data_loader(a, tok) if a.data else None
    amp = torch.autocast(dev.type, dtype=wdt, enabled=wdt != torch.float32)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times, stages = [], []
    for step in range(a.steps):
        t0 = time.perf_counter()
        marks = {}
        last = [t0]

        def mark(name):
            sync()
            now = time.perf_counter()
            marks[name] = now - last[0]
            last[0] = now

        if batches is not None:
            try:
                batch = next(batches)
            except StopIteration:
                batches = data_loader(a, tok)
                batch = next(batches)
            pixels = batch["pixel_values"].to(dev, dtype=wdt)
            ids = batch["input_ids"].to(dev)
        else:
            pixels = torch.rand(a.batch, 3, a.resolution, a.resolution, device=dev, dtype=wdt) * 2 - 1
        mark("data_s")
        with amp:
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            mark("vae_s")
            noise = torch.randn_like(latents)
            t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=dev).long()
            noisy = sched.add_noise(latents, noise, t)
            ehs = te(ids, return_dict=False)[0]
            mark("text_s")
            pred = unet(noisy, t, ehs, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            mark("unet_fwd_s")
        loss.backward()
        mark("bwd_s")
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the script logs the loss every step
        mark("optim_s")
        times.append(time.perf_counter() - t0)
        stages.append(marks)
    med = sorted(times[2:])[len(times[2:]) // 2]
    profile = {k: round(sorted(s[k] for s in stages[2:])[len(stages[2:]) // 2], 4) for k in stages[0]}
    print(json.dumps({"bench": "diffusers_train_step", "batch": a.batch,
                      "gradient_checkpointing": a.gradient_checkpointing,
                      "mixed_precision": a.mixed_precision, "device": a.device,
                      "median_s_per_step": round(med, 4), "samples_per_s": round(a.batch / med, 2),
                      "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else -1,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "profile": profile}))


def data_loader(a, tok):
    """The script's dataset path for an imagefolder: train_transforms + tokenize_captions, a
    shuffled torch DataLoader with num_workers=0 (the script's defaults)."""
    from PIL import Image
    from torchvision import transforms

    rows = [json.loads(l) for l in open(os.path.join(a.data, "metadata.jsonl")) if l.strip()]
    tf = transforms.Compose([
        transforms.Resize(a.resolution, interpolation=transforms.InterpolationMode.LANCZOS),
        transforms.CenterCrop(a.resolution),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            r = rows[i]
            image = Image.open(os.path.join(a.data, r["file_name"])).convert("RGB")
            ids = tok(r["text"], max_length=tok.model_max_length, padding="max_length",
                      truncation=True, return_tensors="pt").input_ids[0]
            return {"pixel_values": tf(image), "input_ids": ids}

    return iter(torch.utils.data.DataLoader(DS(), batch_size=a.batch, shuffle=True, num_workers=0))


if __name__ == "__main__":
    main()
