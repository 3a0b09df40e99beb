"""The sampler menu: the reference webui's sampler names, each made from a diffusers scheduler.

Every scheduler is built from the checkpoint's own noise-schedule config with
`SchedulerClass.from_config(config, **overrides)`, so betas, timestep count and the prediction type
(epsilon or v_prediction) carry over; the overrides only pick the solver and its spacing of timesteps.

The k-diffusion samplers of the reference (Euler, LMS, Heun, DPM2, DPM++) space their steps evenly over the
model's timesteps, which is diffusers' "linspace" spacing; its DDIM and PLMS use "leading" spacing with the
model's `steps_offset`. "... Karras" variants use the Karras et al. sigma schedule.

"DPM++ SDE" is diffusers' DPMSolverSDEScheduler (Brownian-tree noise from `torchsde`, seeded with the image's
seed so it is reproducible). Not offered: "DPM++ 2S a", "DPM fast" and "DPM adaptive" (no diffusers counterpart).
"""
import inspect
from dataclasses import dataclass

import diffusers

from common.errors import UserError

_KDIFF = (("timestep_spacing", "linspace"),)
_NO_KARRAS = _KDIFF + (("use_karras_sigmas", False),)
_KARRAS = _KDIFF + (("use_karras_sigmas", True),)
_DPMPP_2M = (("algorithm_type", "dpmsolver++"), ("solver_order", 2))
_DPMPP_2M_SDE = (("algorithm_type", "sde-dpmsolver++"), ("solver_order", 2))


@dataclass(frozen=True)
class SamplerSpec:
    """One menu entry: the reference's name, the diffusers scheduler class name and config overrides."""

    name: str
    scheduler_class: str
    overrides: tuple = ()  # (key, value) pairs passed to from_config


SAMPLER_SPECS = (
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", _KDIFF),
    SamplerSpec("Euler", "EulerDiscreteScheduler", _NO_KARRAS),
    SamplerSpec("LMS", "LMSDiscreteScheduler", _NO_KARRAS),
    SamplerSpec("Heun", "HeunDiscreteScheduler", _NO_KARRAS),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", _NO_KARRAS),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", _NO_KARRAS),
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", _NO_KARRAS + _DPMPP_2M),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _NO_KARRAS + _DPMPP_2M_SDE),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", _NO_KARRAS),
    SamplerSpec("LMS Karras", "LMSDiscreteScheduler", _KARRAS),
    SamplerSpec("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS),
    SamplerSpec("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS),
    SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", _KARRAS + _DPMPP_2M),
    SamplerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", _KARRAS + _DPMPP_2M_SDE),
    SamplerSpec("DPM++ SDE Karras", "DPMSolverSDEScheduler", _KARRAS),
    SamplerSpec("DDIM", "DDIMScheduler", (("timestep_spacing", "leading"),)),
    SamplerSpec("PLMS", "PNDMScheduler", (("timestep_spacing", "leading"), ("skip_prk_steps", True))),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", _NO_KARRAS),
)

#: The sampler names, in menu order ("Euler a" first, the reference's default).
SAMPLERS = tuple(spec.name for spec in SAMPLER_SPECS)


def sampler_spec(name: str) -> SamplerSpec:
    """The menu entry called `name`; a UserError naming the valid choices if there is none."""
    for spec in SAMPLER_SPECS:
        if spec.name == name:
            return spec
    raise UserError(f"Unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}.")


def make_scheduler(name: str, scheduler_config: dict, prediction_type: str | None = None, seed: int | None = None):
    """A fresh diffusers scheduler for the sampler `name`, built on the model's noise-schedule config.

    `prediction_type` (when given) wins over the config's, so an SD 2.x v-prediction model always samples as one.
    `seed` seeds the noise of samplers that draw their own (the SDE sampler's Brownian tree).
    """
    spec = sampler_spec(name)
    overrides = dict(spec.overrides)
    if prediction_type:
        overrides["prediction_type"] = prediction_type
    scheduler_class = getattr(diffusers, spec.scheduler_class)
    if seed is not None and "noise_sampler_seed" in inspect.signature(scheduler_class.__init__).parameters:
        overrides["noise_sampler_seed"] = seed
    return scheduler_class.from_config(dict(scheduler_config), **overrides)
