"""diffusers vs `t2i generate --lora`: the same model, LoRA, prompt, seed and sampler give the same
latents? Runs diffusers' StableDiffusionPipeline with load_lora_weights and compares its final
latents with the ones t2i wrote (--save_latents). Not part of t2i (t2i runs no Python).

    t2i generate --model M --lora L:0.8 --prompt "a red circle" --seed 7 --scheduler ddim \\
        --num_inference_steps 10 --output x.png --save_latents t2i.safetensors
    python3 bench/lora_parity.py --model M --lora L --scale 0.8 --prompt "a red circle" --seed 7 \\
        --steps 10 --latents t2i.safetensors

Prints one JSON line: the largest absolute difference, the latents' largest magnitude, and the
difference the LoRA itself makes (diffusers without it), so the first reads against the last.
"""
import argparse
import json
import os

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--lora", required=True)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pipe = StableDiffusionPipeline.from_pretrained(a.model, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator("cpu").manual_seed(a.seed)
        return pipe(a.prompt, num_inference_steps=a.steps, generator=g, output_type="latent",
                    cross_attention_kwargs={"scale": a.scale}).images

    base = run()
    pipe.load_lora_weights(a.lora, weight_name="pytorch_lora_weights.safetensors"
                           if os.path.isdir(a.lora) else None)
    ref = run()
    t2i = load_file(a.latents)["latents"]
    print(json.dumps({"max_abs_diff": (t2i - ref).abs().max().item(),
                      "latents_absmax": ref.abs().max().item(),
                      "lora_effect_max_abs": (ref - base).abs().max().item()}))


if __name__ == "__main__":
    main()
