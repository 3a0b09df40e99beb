"""The diffusion model's own training objective, shared by both trainers and the validation loss."""
import torch
import torch.nn.functional as F


def denoising_loss(noise_scheduler, batch, generator, device, predict) -> torch.Tensor:
    """The objective on one batch: noise the latents at random timesteps, ask ``predict(noisy, timesteps)`` for
    the noise (or the velocity, for v-prediction models), MSE, weighted by the alpha-channel weights when the
    batch has them. Mean over everything."""
    latents = batch.latents.to(device)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(latents.device)
    return noise_prediction_loss(noise_scheduler, latents, noise, timesteps, batch.weights, predict)


def noise_prediction_loss(noise_scheduler, latents, noise, timesteps, weights, predict) -> torch.Tensor:
    """The objective for given noise and timesteps (the validation set fixes them; training draws them)."""
    device = latents.device
    noise, timesteps = noise.to(device), timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = predict(noisy, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if weights is not None:
        loss = loss * weights.to(loss.device)
    return loss.mean()
