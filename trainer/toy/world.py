"""The demo model's world: one flat shape in one colour on a plain background of another, drawn by code.

Everything is seeded: the same seed draws the same scenes, pixels and captions. Shapes are drawn at four
times the size and scaled down, so edges are anti-aliased like a photo's, not jagged.

    scene = random_scene(random.Random(0))
    image = render(scene)            # a 128x128 PIL image
    caption(scene, random.Random(0)) # "a red circle on a blue background", or another phrasing of it
"""
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from common.errors import UserError
from common.files import atomic_write, atomic_write_text

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "star")
MIN_SIZE, MAX_SIZE = 0.35, 0.65  # the shape's bounding box, as a fraction of the image side
NATIVE_SIZE = 128
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SUPERSAMPLE = 4

# Plain-English ways to say one scene; {c} shape colour, {s} shape, {b} background colour, {a_c} / {a_b} the colour
# with its article ("a red", "an orange").
PHRASINGS = (
    "{a_c} {s} on {a_b} background",
    "a picture of {a_c} {s} on {b}",
    "{a_c} {s} against {a_b} background",
    "{c} {s}, {b} background",
    "{a_c} {s} on {b}",
    "an image of {a_c} {s} on {a_b} background",
)
# Words a concept may contain besides colours and shapes.
FILLER_WORDS = {"a", "an", "the", "on", "of", "picture", "image", "background", "against", "in", "with", "one",
                "five-pointed", "pointed", "five"}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: float  # bounding-box side / image side
    cx: float  # centre, as fractions of the image side
    cy: float

    def describe(self) -> str:
        return f"{with_article(self.colour)} {self.shape} on {with_article(self.background)} background"


@dataclass(frozen=True)
class Concept:
    """What a dataset shows: a shape in a colour on a background; a None part varies from image to image."""

    shape: str | None = None
    colour: str | None = None
    background: str | None = None

    def matches(self, shape: str | None, colour: str | None, background: str | None) -> bool:
        return all(want is None or want == got for want, got in
                   ((self.shape, shape), (self.colour, colour), (self.background, background)))

    def describe(self) -> str:
        thing = " ".join(w for w in (self.colour, self.shape or "shape") if w)
        return f"{thing} on a {self.background} background" if self.background else thing


def random_scene(rng: random.Random, shape: str | None = None, colour: str | None = None,
                 background: str | None = None) -> Scene:
    """A scene with the given parts fixed and the rest drawn from `rng` (background never the shape's colour)."""
    shape = shape or rng.choice(SHAPES)
    if colour is None:
        colour = rng.choice([c for c in COLOURS if c != background])
    if background is None:
        background = rng.choice([c for c in COLOURS if c != colour])
    if colour == background:
        raise UserError(f"A {colour} shape on a {background} background cannot be seen; choose two colours.")
    size = rng.uniform(MIN_SIZE, MAX_SIZE)
    half = size / 2 + 0.03
    return Scene(shape, colour, background, size, rng.uniform(half, 1 - half), rng.uniform(half, 1 - half))


def shape_polygon(shape: str, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    """The outline (in the same units as cx, cy, size) of a square, triangle or five-pointed star."""
    r = size / 2
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":  # pointing up, filling its bounding box
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":  # pointing up; inner radius of a regular pentagram; centred on its bounding box
        inner = r * math.sin(math.radians(18)) / math.sin(math.radians(54))
        top, bottom = r, r * math.cos(math.radians(36))
        cy += (top - bottom) / 2
        points = []
        for k in range(10):
            angle = math.radians(-90 + 36 * k)
            radius = r if k % 2 == 0 else inner
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = NATIVE_SIZE) -> Image.Image:
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    colour = PALETTE[scene.colour]
    cx, cy, side = scene.cx * big, scene.cy * big, scene.size * big
    if scene.shape == "circle":
        r = side / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon(shape_polygon(scene.shape, cx, cy, side), fill=colour)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def with_article(word: str) -> str:
    """"red" -> "a red", "orange" -> "an orange"."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def caption(scene: Scene, rng: random.Random) -> str:
    return rng.choice(PHRASINGS).format(c=scene.colour, s=scene.shape, b=scene.background,
                                        a_c=with_article(scene.colour), a_b=with_article(scene.background))


def known_words_sentence() -> str:
    return (f"the demo world knows the shapes {', '.join(SHAPES)} and the colours {', '.join(COLOURS)}, "
            'as in "orange circle on a blue background"')


def parse_concept(text: str) -> Concept:
    """"orange circle on a blue background" -> Concept("circle", "orange", "blue"); any part may be left out
    ("a star", "red on black"). A word the world does not know is refused with one sentence."""
    words = [w for w in re.split(r"[\s,]+", text.lower().strip()) if w]
    if not words:
        raise UserError(f"The concept is empty; {known_words_sentence()}.")
    shape = colour = background = None
    seen_on = False
    for i, word in enumerate(words):
        singular = word[:-1] if word.endswith("s") and word[:-1] in SHAPES else word
        if singular in SHAPES:
            if shape and shape != singular:
                raise UserError(f"The concept names two shapes ({shape} and {singular}); one image shows one shape.")
            shape = singular
        elif word in PALETTE:
            before_background = i + 1 < len(words) and words[i + 1] == "background"
            if seen_on or before_background or colour:
                if background and background != word:
                    raise UserError("The concept names too many colours; say one shape colour and one background.")
                background = word
            else:
                colour = word
        elif word in ("on", "against", "background"):
            seen_on = True
        elif word not in FILLER_WORDS:
            raise UserError(f"The word '{word}' is not in the demo world; {known_words_sentence()}.")
    if colour and background and colour == background:
        raise UserError(f"A {colour} shape on a {background} background cannot be seen; choose two colours.")
    if not (shape or colour or background):
        raise UserError(f"The concept names no shape or colour; {known_words_sentence()}.")
    return Concept(shape, colour, background)


def write_dataset(folder: str | Path, concept: Concept | None = None, count: int = 20, seed: int = 0,
                  size: int = NATIVE_SIZE, overwrite: bool = False) -> list[Path]:
    """`count` images of the concept (or of the whole world) with a caption .txt beside each; returns the
    image paths. Refuses to write over existing files unless `overwrite`."""
    if count < 1:
        raise UserError(f"The number of images must be at least 1, not {count}.")
    if not 16 <= size <= 2048:
        raise UserError(f"The image size must be between 16 and 2048 pixels, not {size}.")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"'{folder}' is a file, not a folder.")
    concept = concept or Concept()
    rng = random.Random(seed)
    names = [f"{concept_slug(concept)}-{i:03d}" for i in range(count)]
    if not overwrite and folder.is_dir():
        existing = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES or p.name in
                          {f"{n}.txt" for n in names})
        if existing:  # a second concept in the same folder would spoil training on the first
            raise UserError(f"'{folder}' already has pictures ({existing[0]}, ...); choose an empty folder or "
                            "overwrite.")
    paths = []
    for name in names:
        scene = random_scene(rng, concept.shape, concept.colour, concept.background)
        image = render(scene, size)
        path = folder / f"{name}.png"
        atomic_write(path, lambda temp: image.save(temp, format="PNG"))
        atomic_write_text(folder / f"{name}.txt", caption(scene, rng))
        paths.append(path)
    return paths


def concept_slug(concept: Concept) -> str:
    parts = [concept.colour, concept.shape, f"on-{concept.background}" if concept.background else None]
    return "-".join(p for p in parts if p) or "world"
