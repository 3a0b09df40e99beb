"""The txt2img parameters of a training preview."""
from trainer.sampling.txt2img import Txt2ImgParams, validate_params
from trainer.training.config import PreviewSettings


def preview_params(cfg, caption: str) -> Txt2ImgParams:
    """The reference's default preview (the batch's first caption, 20 steps, CFG 7, random seed, training
    size) unless the user asked for the txt2img tab's parameters; UserError sentences for bad ones."""
    p = cfg.preview or PreviewSettings()
    return validate_params(Txt2ImgParams(
        prompt=p.prompt or caption, negative_prompt=p.negative_prompt, sampler=p.sampler, steps=p.steps,
        cfg_scale=p.cfg_scale, seed=p.seed, width=p.width or cfg.width, height=p.height or cfg.height))
