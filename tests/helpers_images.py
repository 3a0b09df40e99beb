"""Real photographs (scikit-image ships them) saved as small dataset folders."""
from pathlib import Path

import numpy as np
from PIL import Image


def photos():
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
            "rocket": data.rocket()}


def make_dataset(folder: Path, size=(96, 80), captions=True, count=4) -> Path:
    """`count` photos as PNGs named like preprocess output, with a caption .txt for each when asked."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, array) in enumerate(list(photos().items())[:count]):
        image = Image.fromarray(np.asarray(array)).convert("RGB").resize(size)
        stem = f"{i:05}-0-{name}"
        image.save(folder / f"{stem}.png")
        if captions:
            (folder / f"{stem}.txt").write_text(f"a photo of a {name}, daylight, detailed\n")
    return folder
