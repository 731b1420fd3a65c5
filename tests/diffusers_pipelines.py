"""Tiny diffusers pipelines built locally from random configs (no downloads), in float32, for the
scheduler tests and the tutorial: DDPMPipeline (UNet2DModel), DiTPipeline (class-conditional
transformer + VAE), StableDiffusionPipeline (conditional UNet + VAE; prompt embeddings passed in)
and StableDiffusion3Pipeline (flow-matching MMDiT + VAE; embeddings passed in)."""

from __future__ import annotations

import torch

F32 = torch.float32
EMBED = (7, 12)  # (tokens, width) of the prompt embeddings passed to the SD / SD3 pipelines
POOLED = 6


class float32_defaults:
    """Build modules with float32 parameters (the test suite's default dtype is float64)."""

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(F32)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


def vae(D):
    torch.manual_seed(1)
    return D.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                           up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                           norm_num_groups=4, sample_size=16, shift_factor=0.0).eval()


def unet2d(D, out_channels=3):
    torch.manual_seed(2)
    return D.UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, layers_per_block=1,
                         block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


def ddpm_pipeline(D, scheduler):
    p = D.DDPMPipeline(unet=unet2d(D), scheduler=scheduler)
    p.set_progress_bar_config(disable=True)
    return p


def dit_pipeline(D, scheduler):
    torch.manual_seed(3)
    dit = D.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                                  sample_size=8, patch_size=2, num_embeds_ada_norm=1000).eval()
    p = D.DiTPipeline(transformer=dit, vae=vae(D), scheduler=scheduler)
    p.set_progress_bar_config(disable=True)
    return p


def sd_pipeline(D, scheduler):
    torch.manual_seed(4)
    unet = D.UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                                  norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=EMBED[1],
                                  attention_head_dim=2).eval()
    p = D.StableDiffusionPipeline(vae=vae(D), text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def sd3_pipeline(D, scheduler, dtype=F32):
    torch.manual_seed(5)
    tr = D.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=EMBED[1], caption_projection_dim=16,
                                 pooled_projection_dim=POOLED, out_channels=4).eval().to(dtype)
    p = D.StableDiffusion3Pipeline(transformer=tr, scheduler=scheduler, vae=vae(D).to(dtype), text_encoder=None, tokenizer=None,
                                   text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    p.set_progress_bar_config(disable=True)
    return p


def prompt(batch=2, dtype=F32, pooled=False):
    """Prompt embeddings (and negative ones for classifier-free guidance) as the pipelines take them."""
    g = torch.Generator().manual_seed(7)
    kw = {"prompt_embeds": torch.randn(batch, *EMBED, generator=g).to(dtype),
          "negative_prompt_embeds": torch.zeros(batch, *EMBED, dtype=dtype)}
    if pooled:
        kw["pooled_prompt_embeds"] = torch.randn(batch, POOLED, generator=g).to(dtype)
        kw["negative_pooled_prompt_embeds"] = torch.zeros(batch, POOLED, dtype=dtype)
    return kw


def run(name: str, pipe, steps: int, seed: int = 0, **kw):
    """The pipeline's images (numpy, [0, 1]) for two samples, with a fixed generator."""
    g = torch.Generator().manual_seed(seed)
    if name == "ddpm":
        return pipe(batch_size=2, generator=g, num_inference_steps=steps, output_type="np", **kw).images
    if name == "dit":
        return pipe(class_labels=[1, 2], guidance_scale=3.0, generator=g, num_inference_steps=steps, output_type="np", **kw).images
    if name == "sd":
        return pipe(guidance_scale=5.0, num_inference_steps=steps, height=16, width=16, generator=g, output_type="np",
                    **prompt(), **kw).images
    if name == "sd3":
        return pipe(guidance_scale=4.0, num_inference_steps=steps, height=16, width=16, generator=g, output_type="np",
                    **prompt(pooled=True), **kw).images
    raise ValueError(name)


BUILDERS = {"ddpm": ddpm_pipeline, "dit": dit_pipeline, "sd": sd_pipeline, "sd3": sd3_pipeline}


def build(name: str, D, scheduler, **kw):
    """The tiny pipeline ``name`` with float32 modules and ``scheduler``."""
    with float32_defaults():
        return BUILDERS[name](D, scheduler, **kw)
