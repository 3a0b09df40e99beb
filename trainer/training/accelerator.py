"""The run's accelerate setup: device, mixed precision, gradient accumulation, data-parallel processes, and the
random streams each process draws from."""
import random

import torch
from accelerate import Accelerator

from common.errors import UserError
from trainer.models.precision import resolve_mixed_precision


def make_accelerator(device: str, grad_accum: int, mixed_precision: str = "") -> Accelerator:
    """Autocast in the run's precision (`trainer.models.precision`: fp16 with a grad scaler by default on CUDA, fp32
    by default elsewhere, bf16 on request)."""
    device = str(device)
    mixed = resolve_mixed_precision(mixed_precision, device)
    allow_precision_change(mixed)
    return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed, cpu=device == "cpu")


def allow_precision_change(mixed: str):
    """accelerate keeps one process-wide state and refuses a second Accelerator with another precision; the app
    and the tests train with different settings in one process. A single process forgets the old choice (its
    `_reset_state` is accelerate's own way to do so); under `accelerate launch` the launch decides."""
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if not state or state.get("_mixed_precision") == mixed:
        return
    if PartialState().num_processes > 1:
        raise UserError(f"This run was launched with {state.get('_mixed_precision')} mixed precision; "
                        f"set the same in the training settings (not {mixed}).")
    AcceleratorState._reset_state()


def seeded_randomness(seed: int | None, accelerator):
    """(seed, prompt/shuffle rng, noise generator); a random seed when `seed` is None; each data-parallel process
    draws its own stream."""
    seed = seed if seed is not None else random.randrange(2**31)
    rng = random.Random(seed + accelerator.process_index)
    generator = torch.Generator().manual_seed(seed + accelerator.process_index)
    return seed, rng, generator


def data_parallel_sentence(accelerator, flat: torch.Tensor, what: str) -> str | None:
    """With several processes, whether every one ends with the very same trained values (None with one)."""
    if accelerator.num_processes <= 1:
        return None
    gathered = accelerator.gather(flat.float().to(accelerator.device)[None]).cpu()
    in_sync = all(torch.equal(gathered[0], other) for other in gathered[1:])
    return (f"Data parallel over {accelerator.num_processes} processes; {what} "
            + ("identical on every process." if in_sync else "DIFFER between processes."))
