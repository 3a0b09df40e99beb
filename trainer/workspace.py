"""The one owner of state: folders, the loaded model, the embeddings found on disk, the job runner.

`app.py` and the CLI each create one `Workspace` and hand it to whoever needs it; nothing is global.
"""
import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.embeddings.library import load_embeddings_dir
from common import events
from common.events import Status
from common.folders import Folders
from common.errors import UserError
from trainer.job import JobRunner
from trainer.models.loading import list_checkpoints, load_model


def best_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def folder_fingerprint(folder: Path) -> tuple:
    """What changes when a file below `folder` is added, removed, replaced or rewritten."""
    entries = []
    for path in folder.rglob("*"):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(entries))


class Workspace:
    def __init__(self, folders: Folders | None = None, device: str | None = None, model=None):
        """`model`: an already loaded SDModel to start with (else the demo model is loaded when first needed)."""
        self.folders = folders or Folders()
        self.device = device or best_device()
        self.runner = JobRunner()
        self._model = model
        self._model_lock = threading.Lock()
        self._hypernetwork_library = None
        self._embeddings = None  # (folder fingerprint, (loaded, skipped))
        self._embeddings_lock = threading.Lock()

    # --- model ---------------------------------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            self.load_model("demo")
        return self._model

    @property
    def model_name(self) -> str:
        return self._model.name if self._model is not None else ""

    @property
    def loaded_model(self):
        """The loaded model, or None before the first one is loaded (unlike `model`, this never loads one)."""
        return self._model

    def checkpoints(self) -> list:
        return list_checkpoints(self.folders.ckpt_dir)

    def load_model(self, spec: str):
        job = self.runner.current
        if job is not None and job.running:
            raise UserError("Cannot switch checkpoints while a job is running; interrupt it first.")
        with self._model_lock:
            if self._model is not None and self._model.name == spec:
                return self._model
            try:  # load, then swap: a checkpoint that fails to load leaves the loaded model in use
                model = load_model(spec, self.folders.ckpt_dir, self.device)
            except UserError as e:
                if self._model is None:
                    raise
                raise UserError(f"{str(e).rstrip('.')}; {self._model.name} stays loaded.") from None
            self._model = model
            return self._model

    # --- embeddings and templates ------------------------------------------------------------------------
    def embeddings(self):
        """(loaded, skipped) from the embeddings folder. Users drop files in at any time, so the folder is read
        again whenever a file in it was added, removed or changed (a stat walk tells); otherwise the last read
        is reused (the txt2img prompt box asks on every keystroke). The embeddings returned are shared: read only."""
        folder = self.folders.embeddings_dir
        if folder.exists() and not folder.is_dir():
            raise UserError(f"The embeddings folder {folder} is a file, not a folder.")
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model
        key = (model.checkpoint_hash, model.text_width, folder_fingerprint(folder))
        with self._embeddings_lock:
            if self._embeddings is None or self._embeddings[0] != key:
                self._embeddings = (key, load_embeddings_dir(folder, model.text_width,
                                                             clip_l_width=model.clip_l_width))
            return self._embeddings[1]

    def embedding_vectors(self) -> dict:
        loaded, _ = self.embeddings()
        return {name: e.vectors for name, e in loaded.items()}

    # --- hypernetworks -------------------------------------------------------------------------------------
    def hypernetworks(self) -> list:
        """Names of the hypernetworks in the folder (files are not opened), sorted as the reference lists them."""
        from trainer.hypernetworks.network import list_hypernetworks

        return list(list_hypernetworks(self.folders.hypernetwork_dir))

    def hypernetwork_library(self):
        """The hypernetworks folder as a mapping name -> Hypernetwork (loaded once, reloaded when a file changes),
        for `<hypernet:name:multiplier>` in prompts."""
        from trainer.hypernetworks.network import HypernetworkFolder

        if self._hypernetwork_library is None or self._hypernetwork_library.folder != Path(self.folders.hypernetwork_dir):
            self._hypernetwork_library = HypernetworkFolder(self.folders.hypernetwork_dir)
        return self._hypernetwork_library

    def templates(self) -> list:
        folder = self.folders.templates_dir
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.suffix == ".txt")

    # --- jobs -----------------------------------------------------------------------------------------------
    def current_job(self):
        """The running job, or the last one that ran (None before the first)."""
        return self.runner.current

    def job_running(self) -> bool:
        job = self.runner.current
        return job is not None and job.running

    def interrupt_job(self) -> bool:
        """Ask the running job to stop after its current step; False when nothing is running."""
        return self.runner.interrupt()

    def start_training(self, cfg):
        """Start training an embedding in the background job; refused (UserError) while another job runs."""
        from trainer.training.textual_inversion import train_embedding

        return self._start_training_job(cfg, "embedding", lambda model, job: train_embedding(
            model, cfg, self.folders.embeddings_dir, self.folders.templates_dir,
            other_embeddings=self.embedding_vectors(), progress=job.report, should_stop=job.stop.is_set))

    def start_hypernetwork_training(self, cfg):
        """Start training a hypernetwork in the background job; refused (UserError) while another job runs."""
        from trainer.training.hypernetwork import train_hypernetwork
        from trainer.models.sdxl import refuse_sdxl_hypernetwork_training

        refuse_sdxl_hypernetwork_training(self.model)
        return self._start_training_job(cfg, "hypernetwork", lambda model, job: train_hypernetwork(
            model, cfg, self.folders.hypernetwork_dir, self.folders.templates_dir,
            embeddings=self.embedding_vectors(), progress=job.report, should_stop=job.stop.is_set))

    def _start_training_job(self, cfg, what: str, train):
        cfg.validate(what)
        if str(cfg.dataset).strip():
            cfg.dataset = str(self.folders.resolve(cfg.dataset))
        if str(cfg.log_dir).strip():
            cfg.log_dir = str(self.folders.resolve(cfg.log_dir))
        model = self.model
        cfg.model = model.name
        return self.runner.start(f"train-{what}", f"Training {what} {cfg.name}", lambda job: train(model, job),
                                 settings=cfg, max_steps=cfg.steps)  # known before the dataset is ready (HTTP API)

    def start_preprocess(self, config):
        """Run preprocess.run_preprocess as the background job (image i/N progress, Interrupt after an image)."""
        from preprocess.pipeline import run_preprocess, validate_config

        typed = {key: self.folders.resolve(getattr(config, key)) for key in ("src", "dst")
                 if str(getattr(config, key) or "").strip()}  # relative to the data folder; empty stays empty
        config = dataclasses.replace(config, **typed)
        if config.blip_default_dir is None:  # BLIP is looked for (and named when missing) in the data folder
            config = dataclasses.replace(config, blip_default_dir=self.folders.resolve("models/BLIP"))
        if config.yunet_model is None:
            from preprocess.focal import find_yunet_model

            config = dataclasses.replace(config, yunet_model=find_yunet_model(self.folders.resolve("models/opencv")))
        config = validate_config(config)

        def work(job):
            result = run_preprocess(config, progress=job.report, should_stop=job.stop.is_set)
            for skipped in result.skipped:
                job.report(events.Warning(f"Skipped {skipped.name}: {skipped.reason}"))
            for warning in result.warnings:
                job.report(events.Warning(warning))
            return PreprocessOutcome(Status.INTERRUPTED if result.interrupted else Status.FINISHED, result.summary,
                                     result)

        return self.runner.start("preprocess", "Preprocessing images", work, settings=config)


@dataclass
class PreprocessOutcome:
    status: Status
    message: str
    result: object
