"""Held-out loss of a trained model folder, computed by diffusers (an independent check of what
t2i trained): the mean epsilon-MSE of the UNet over every image of an imagefolder (center crop,
no flip) at 10 fixed timesteps (50, 150, ..., 950) with fixed noise, fp32, on the CPU.

    python3 bench/heldout_loss.py --model DIR --data DIR --resolution 64 [--lora DIR_OR_FILE]

--lora: the UNet with a LoRA loaded as diffusers' StableDiffusionPipeline.load_lora_weights does
(t2i train-lora's or diffusers' train_text_to_image_lora.py's output; needs peft).

Prints one JSON line {"heldout_loss": ...}. Not part of t2i (t2i runs no Python).
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from torchvision import transforms
from transformers import CLIPTextModel, CLIPTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sched = DDPMScheduler.from_pretrained(a.model, subfolder="scheduler")
    tok = CLIPTokenizer.from_pretrained(a.model, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(a.model, subfolder="text_encoder").eval()
    vae = AutoencoderKL.from_pretrained(a.model, subfolder="vae").eval()
    unet = UNet2DConditionModel.from_pretrained(a.model, subfolder="unet").eval()
    if a.lora:
        from diffusers import StableDiffusionPipeline
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.load_lora_weights(a.lora, weight_name="pytorch_lora_weights.safetensors"
                               if os.path.isdir(a.lora) else None)
    tf = transforms.Compose([
        transforms.Resize(a.resolution, interpolation=transforms.InterpolationMode.LANCZOS),
        transforms.CenterCrop(a.resolution), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    rows = [json.loads(l) for l in open(os.path.join(a.data, "metadata.jsonl")) if l.strip()]
    g = torch.Generator().manual_seed(1234)
    losses = []
    with torch.no_grad():
        for r in rows:
            px = tf(Image.open(os.path.join(a.data, r["file_name"])).convert("RGB"))[None]
            ids = tok(r["text"], max_length=tok.model_max_length, padding="max_length",
                      truncation=True, return_tensors="pt").input_ids
            ehs = te(ids)[0]
            lat = vae.encode(px).latent_dist.mean * vae.config.scaling_factor
            for t in range(50, 1000, 100):
                noise = torch.randn(lat.shape, generator=g)
                tt = torch.tensor([t])
                pred = unet(sched.add_noise(lat, noise, tt), tt, ehs).sample
                losses.append(F.mse_loss(pred, noise).item())
    print(json.dumps({"heldout_loss": round(sum(losses) / len(losses), 5), "images": len(rows)}))


if __name__ == "__main__":
    main()
