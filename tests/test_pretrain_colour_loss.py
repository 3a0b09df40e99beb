"""The demo's pretraining can ask its VAE to space colours in the latent as people see them, or as the square root of
that, which counts close colours (yellow and orange) for more."""
import torch

from test_pretrain_whitening import load_script
from trainer.toy.world import PALETTE


def palette_patches() -> torch.Tensor:
    """A picture of 16 x 32 patches of 8x8 pixels, column c in the palette's colour c % 8: [1, 3, 128, 256]."""
    colours = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 127.5 - 1  # [8, 3]
    patches = colours[torch.arange(32) % 8].T[:, None, :].expand(3, 16, 32)
    return patches.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)[None]


def test_latents_that_follow_cielab_meet_the_linear_target_and_not_the_square_root():
    script = load_script()
    pixels = palette_patches()
    lab = script.lab(torch.nn.functional.avg_pool2d(pixels, 8))  # [1, 3, 16, 32]: one CIELAB colour per patch
    latents = torch.cat([lab, torch.zeros_like(lab[:, :1])], dim=1)  # distances exactly the CIELAB ones

    def loss(target, z):
        return script.colour_distance_loss(z, pixels, torch.Generator().manual_seed(0), target).item()

    assert loss("linear", latents) < 1e-6
    assert loss("sqrt", latents) > 0.02
    assert loss("linear", latents * 7) < 1e-6  # only the shape of the spread counts, not its size


def test_yellow_and_orange_pull_apart_harder_under_the_square_root():
    script = load_script()
    pixels = palette_patches()
    lab = script.lab(torch.nn.functional.avg_pool2d(pixels, 8))
    latents = torch.cat([lab / 50, torch.zeros_like(lab[:, :1])], dim=1).requires_grad_(True)  # about unit size
    names = list(PALETTE)
    yellow, orange = names.index("yellow"), names.index("orange")

    def separation_push(target) -> float:
        """How strongly one gradient step would move yellow's and orange's latents apart, per unit of their gap."""
        latents.grad = None
        script.colour_distance_loss(latents, pixels, torch.Generator().manual_seed(0), target).backward()
        z, g = script.by_pixel(latents.detach()), script.by_pixel(latents.grad)
        column = torch.arange(len(z)) % 8  # by_pixel walks the rows of patches, so pixel i has colour i % 8
        gap = z[yellow] - z[orange]
        pull = g[column == yellow].sum(dim=0) - g[column == orange].sum(dim=0)
        return -pull.dot(gap).item() / gap.norm().item() ** 2

    sqrt, linear = separation_push("sqrt"), separation_push("linear")
    assert sqrt > 0 and abs(linear) < sqrt / 100  # the linear target is met here: it pushes nothing



def test_the_margin_target_parts_two_colours_that_share_a_place_and_leaves_the_rest_alone():
    script = load_script()
    pixels = palette_patches()
    names = list(PALETTE)
    yellow, orange = names.index("yellow"), names.index("orange")
    column = torch.arange(16 * 32) % 8  # by_pixel walks the rows of patches, so pixel i has colour i % 8

    def latents_from(places: torch.Tensor) -> torch.Tensor:
        """Latent maps [1, channels, 16, 32] in which each pixel sits at its colour's place (a row of `places`)."""
        return places[column].T.reshape(1, places.shape[1], 16, 32).clone().requires_grad_(True)

    def loss(latents) -> torch.Tensor:
        return script.colour_distance_loss(latents, pixels, torch.Generator().manual_seed(0), "margin")

    assert loss(latents_from(torch.eye(8))).item() == 0.0  # every colour in its own corner: none too close

    places = torch.eye(8)
    places[orange] = places[yellow] + 0.05 * torch.eye(8)[orange]  # orange almost where yellow is
    latents = latents_from(places)
    value = loss(latents)
    assert value.item() > 0
    value.backward()
    g = script.by_pixel(latents.grad)
    others = [i for i in range(8) if i not in (yellow, orange)]
    assert all(g[column == i].abs().sum() == 0 for i in others)  # the other colours are far enough already
    apart = places[orange] - places[yellow]
    step = -(g[column == orange].sum(dim=0) - g[column == yellow].sum(dim=0))  # how gradient descent moves the gap
    assert step.dot(apart) > 0.5 * step.norm() * apart.norm()  # it widens it, and mostly along it


def test_the_margin_target_leaves_patches_on_an_edge_alone():
    script = load_script()
    pixels = palette_patches()
    pixels[..., 4:12] = pixels[..., 4:12].flip(-1)  # the second column of patches is now half one colour, half another
    latents = (torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(1)) * 0.01).requires_grad_(True)
    script.colour_distance_loss(latents, pixels, torch.Generator().manual_seed(0), "margin").backward()
    moved = latents.grad.abs().sum(dim=(0, 1)) > 0  # [16, 32]: which latent pixels the loss moves
    assert not moved[:, 1].any() and moved[:, 2:].any()
