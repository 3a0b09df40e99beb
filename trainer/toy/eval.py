"""Measure what the demo model draws, with the toy-world judge: its world from words, and a trained concept.

Used by bench/ti_learning.py (the full measurement) and the test suite (a small one). Images are made by the
app's own txt2img (Euler a, 20 steps, CFG 7 unless told otherwise) and judged by trainer/toy/judge.py, which
knows nothing about the model.
"""
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from common import events
from common.events import Status
from trainer.embeddings.library import create_embedding, load_embeddings_dir
from trainer.sampling.txt2img import Txt2ImgParams, txt2img
from trainer.training.textual_inversion import train_embedding
from trainer.toy.judge import judge
from trainer.toy.world import Concept, random_scene, write_dataset
from trainer.training.config import TrainConfig


@dataclass
class Rendered:
    prompt: str
    seed: int
    image: Image.Image
    verdict: object
    hit: bool


@dataclass
class WorldScore:
    rendered: list = field(default_factory=list)

    @property
    def score(self) -> float:
        """Share of prompts whose picture shows exactly what was asked (shape, colour and background)."""
        return sum(r.hit for r in self.rendered) / max(1, len(self.rendered))

    def part_scores(self, scenes) -> dict:
        parts = {"shape": 0, "colour": 0, "background": 0}
        for r, scene in zip(self.rendered, scenes):
            for part in parts:
                parts[part] += getattr(r.verdict, part) == getattr(scene, part)
        return {k: v / max(1, len(self.rendered)) for k, v in parts.items()}


def world_prompts(count: int, seed: int = 1) -> list:
    """`count` scenes whose descriptions ("a yellow star on a purple background") are the world prompts."""
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(count)]


def render_and_judge(model, prompts: list[str], seeds: list[int], concepts: list[Concept], embeddings=None,
                     size: int | None = None, steps: int = 20, cfg_scale: float = 7.0) -> list[Rendered]:
    size = size or model.native_size
    out = []
    for prompt, seed, concept in zip(prompts, seeds, concepts):
        params = Txt2ImgParams(prompt=prompt, seed=seed, width=size, height=size, steps=steps, cfg_scale=cfg_scale)
        image = txt2img(model, params, embeddings or {})[0].image
        verdict = judge(image)
        out.append(Rendered(prompt, seed, image, verdict, verdict.shows(concept)))
    return out


def world_score(model, scenes, seed: int = 1000, **kwargs) -> WorldScore:
    prompts = [s.describe() for s in scenes]
    concepts = [Concept(s.shape, s.colour, s.background) for s in scenes]
    return WorldScore(render_and_judge(model, prompts, [seed + i for i in range(len(scenes))], concepts, **kwargs))


@dataclass
class ConceptRun:
    before: list
    after: list
    steps: int  # steps timed (the first step's event starts the clock)
    train_seconds: float

    @property
    def before_rate(self) -> float:
        return sum(r.hit for r in self.before) / max(1, len(self.before))

    @property
    def after_rate(self) -> float:
        return sum(r.hit for r in self.after) / max(1, len(self.after))

    def part_rates(self, concept: Concept, when: str) -> dict:
        """For "before" or "after": the share of previews whose shape, shape colour and background each match
        the concept's (partial credit: the learning shows here before whole pictures are right)."""
        rendered = self.before if when == "before" else self.after
        rates = {}
        for part in ("shape", "colour", "background"):
            wanted = getattr(concept, part)
            if wanted is not None:
                rates[part] = sum(getattr(r.verdict, part) == wanted for r in rendered) / max(1, len(rendered))
        return rates

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds else 0.0


def learn_concept(model, concept: Concept, work_dir: Path, templates_dir: Path, name: str = "toyconcept",
                  steps: int = 400, previews: int = 16, images: int = 20, learn_rate: str = "0.005",
                  template: str = "subject.txt", seed: int = 0, preview_steps: int = 20,
                  cfg_scale: float = 7.0) -> ConceptRun:
    """Create `name` from "*" (1 vector), render `previews` seeded pictures of "a picture of <name>", train it on
    `images` pictures of the concept (batch 1, `learn_rate`, at the model's native size), render them again."""
    work_dir = Path(work_dir)
    dataset = work_dir / "dataset"
    write_dataset(dataset, concept, count=images, seed=seed, size=model.native_size)
    embeddings_dir = work_dir / "embeddings"
    create_embedding(model.tokenizer, model.text_encoder, name, init_text="*", num_vectors=1,
                     embeddings_dir=embeddings_dir, checkpoint_hash=model.checkpoint_hash,
                     checkpoint_name=model.name)
    prompt = f"a picture of {name}"
    seeds = [seed + 100 + i for i in range(previews)]

    def previews_now():
        vectors = {n: e.vectors for n, e in load_embeddings_dir(embeddings_dir, model.text_width)[0].items()}
        return render_and_judge(model, [prompt] * previews, seeds, [concept] * previews, vectors,
                                steps=preview_steps, cfg_scale=cfg_scale)

    before = previews_now()
    cfg = TrainConfig(name=name, dataset=str(dataset), log_dir="", template=template, learn_rate=learn_rate,
                      batch_size=1, width=model.native_size, height=model.native_size, steps=steps, save_every=0,
                      preview_every=0, save_optimizer_state=False, seed=seed)
    step_times = []
    result = train_embedding(model, cfg, embeddings_dir, templates_dir, progress=lambda event: step_times.append(
        time.perf_counter()) if isinstance(event, events.Step) else None)
    if result.status != Status.FINISHED:
        raise RuntimeError(f"training did not finish: {result.message}")
    seconds = step_times[-1] - step_times[0] if len(step_times) > 1 else 0.0
    return ConceptRun(before, previews_now(), max(0, len(step_times) - 1), seconds)


def grid(images: list[Image.Image], columns: int, cell: int = 128) -> Image.Image:
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell, rows * cell), (128, 128, 128))
    for i, image in enumerate(images):
        sheet.paste(image.resize((cell, cell)), ((i % columns) * cell, (i // columns) * cell))
    return sheet
