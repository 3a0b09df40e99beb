"""The reference webui's HTTP API (`python app.py --api`): `/sdapi/v1/...` on the page's own server and port.

Every route calls the same Workspace the page uses. Create, train and preprocess requests run as the workspace's
one background job, so a training started here shows live in an open page (and the other way round), Interrupt
works from either side, and a second job is refused at once with 409 Conflict instead of racing. `/train/*`
answers when the job ends, saying truthfully how it ended. Bad requests get a 4xx `{"error", "detail"}` body and
change nothing.

`api_app_kwargs(ws, credentials)` gives the keyword arguments for `Blocks.launch(app_kwargs=...)`: the routes,
the error handlers, and `/docs` + `/openapi.json` behind the same auth.
"""
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from common.errors import UserError
from common.events import Status
from trainer.job import JobBusy
from trainer.sampling.samplers import SAMPLERS
from trainer.training.config import LATENT_SAMPLING, PreviewSettings, TrainConfig

from . import api_models as m
from .api_http import (API_PREFIX, ApiError, BasicAuth, api_error_handler, docs_page, same_origin,
                       validation_error_handler)
from .api_progress import Generation, png_base64, progress_body

VERSION = "ti-trainer"


@dataclass
class TrainingOptions:
    """The reference's settings (GET/POST /options) that this app honours, applied to API-started training and
    txt2img. Kept for the life of the server."""

    save_optimizer_state: bool = True
    dataset_filename_word_regex: str = ""
    dataset_filename_join_string: str = " "
    training_write_csv_every: int = 1
    CLIP_stop_at_last_layers: int = 1


@dataclass
class Outcome:
    """What a create job returns to the job runner."""

    status: Status
    message: str
    path: str


class Api:
    def __init__(self, ws, credentials=None):
        self.ws = ws
        self.options = TrainingOptions()
        self.generation = Generation()
        self.auth = BasicAuth(credentials)
        self.router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(self.auth), Depends(same_origin)])
        get, post = self._get, self._post
        get("/sd-models", self.sd_models, list[m.SDModelItem])
        get("/samplers", self.samplers, list[m.SamplerItem])
        get("/embeddings", self.embeddings, m.EmbeddingsResponse)
        get("/hypernetworks", self.hypernetworks, list[m.HypernetworkItem])
        get("/progress", self.progress, m.ProgressResponse)
        get("/options", self.get_options, dict[str, Any])
        get("/scripts", self.scripts, dict[str, list])
        post("/options", self.set_options)
        post("/txt2img", self.txt2img, m.Txt2ImgResponse)
        post("/interrupt", self.interrupt)
        post("/refresh-checkpoints", self.refresh_checkpoints)
        post("/refresh-embeddings", self.refresh_embeddings)
        post("/create/embedding", self.create_embedding, m.CreateResponse)
        post("/create/hypernetwork", self.create_hypernetwork, m.CreateResponse)
        post("/train/embedding", self.train_embedding, m.TrainResponse)
        post("/train/hypernetwork", self.train_hypernetwork, m.TrainResponse)
        post("/preprocess", self.preprocess, m.PreprocessResponse)

    def _get(self, path, endpoint, response_model=None):
        self.router.add_api_route(path, endpoint, methods=["GET"], response_model=response_model,
                                  responses=ERROR_RESPONSES)

    def _post(self, path, endpoint, response_model=None):
        self.router.add_api_route(path, endpoint, methods=["POST"], response_model=response_model,
                                  responses=ERROR_RESPONSES)

    # --- lists -------------------------------------------------------------------------------------------
    def sd_models(self):
        """The checkpoints the page's dropdown lists (the loaded one with its short hash in the title)."""
        model = self.ws.model
        items = []
        for name in self.ws.checkpoints():
            loaded = name == model.name
            items.append({"title": checkpoint_title(name, model.checkpoint_hash if loaded else None),
                          "model_name": model_name(name), "hash": model.checkpoint_hash if loaded else None,
                          "sha256": None, "filename": checkpoint_filename(self.ws, name), "config": None})
        return items

    def samplers(self):
        return [{"name": name, "aliases": [], "options": {"scheduler": "karras"} if name.endswith(" Karras") else {}}
                for name in SAMPLERS]

    def embeddings(self):
        """Loaded and skipped embeddings for the loaded model (skipped ones with the reason)."""
        from trainer.embeddings.library import to_api_json

        return to_api_json(*self.ws.embeddings())

    def hypernetworks(self):
        from trainer.hypernetworks.network import list_hypernetworks

        return [{"name": name, "path": str(path)} for name, path in
                list_hypernetworks(self.ws.folders.hypernetwork_dir).items()]

    def scripts(self):
        return {"txt2img": [], "img2img": []}

    def refresh_checkpoints(self):
        self.ws.checkpoints()  # the list is read from the folder on every call
        return None

    def refresh_embeddings(self):
        self.ws.embeddings()  # re-read when a file in the folder changed
        return None

    # --- state -------------------------------------------------------------------------------------------
    def progress(self, skip_current_image: bool = False):
        return progress_body(self.ws.runner.current, self.generation.snapshot(), skip_current_image)

    def interrupt(self):
        """Stop the running job (it still saves) and any API generation."""
        self.ws.runner.interrupt()
        if self.generation.snapshot() is not None:
            self.generation.stop.set()
        return {}

    def get_options(self):
        model = self.ws.model
        return {"sd_model_checkpoint": checkpoint_title(model.name, model.checkpoint_hash),
                "sd_checkpoint_hash": model.checkpoint_hash, **dataclasses.asdict(self.options)}

    def set_options(self, options: dict[str, Any] = Body(...)):
        """`sd_model_checkpoint` loads that checkpoint (as the page's dropdown does); the training options above
        are checked and kept; other keys are ignored, as the reference ignores keys it does not know."""
        updates = {}
        for field in dataclasses.fields(TrainingOptions):
            if field.name in options:
                updates[field.name] = check_option(field.name, options[field.name])
        checkpoint = None
        if options.get("sd_model_checkpoint") is not None:
            checkpoint = self._find_checkpoint(options["sd_model_checkpoint"])
            self._refuse_if_busy("switch the checkpoint")
            try:
                self.ws.load_model(checkpoint)
            except UserError as e:
                raise ApiError(409 if self._busy() else 400, str(e)) from None
        self.options = dataclasses.replace(self.options, **updates)
        return None

    def _find_checkpoint(self, value) -> str:
        if not isinstance(value, str):
            raise ApiError(400, f"sd_model_checkpoint must be a checkpoint title or name, not {value!r}.")
        wanted = re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", value.strip())
        for name in self.ws.checkpoints():
            if wanted in (name, model_name(name)):
                return name
        raise ApiError(404, f"Checkpoint '{value}' is not in {self.ws.folders.ckpt_dir}; "
                            f"GET {API_PREFIX}/sd-models lists the checkpoints.")

    # --- txt2img -----------------------------------------------------------------------------------------
    def txt2img(self, req: m.Txt2ImgRequest):
        """Images as base64 PNG (each carrying its infotext); the prompt grammar, embeddings and
        <hypernet:name:multiplier> work as in the page. Runs beside a training job, as the page's Generate."""
        from trainer.sampling.txt2img import Txt2ImgParams, save_txt2img_outputs, txt2img

        overrides = req.override_settings or {}
        wanted = overrides.get("sd_model_checkpoint")
        if wanted and self._find_checkpoint(wanted) != self.ws.model.name:
            raise ApiError(400, f"override_settings asks for checkpoint '{wanted}' but '{self.ws.model.name}' is "
                                f"loaded; switch it first with POST {API_PREFIX}/options.")
        clip_skip = overrides.get("CLIP_stop_at_last_layers", self.options.CLIP_stop_at_last_layers)
        params = Txt2ImgParams(prompt=req.prompt, negative_prompt=req.negative_prompt, sampler=self._sampler(req),
                               steps=req.steps, cfg_scale=req.cfg_scale, seed=req.seed, width=req.width,
                               height=req.height, batch_count=max(1, req.n_iter) * max(1, req.batch_size),
                               clip_skip=clip_skip)
        loaded, _ = self.ws.embeddings()
        vectors = {name: e.vectors for name, e in loaded.items()}
        with self.generation.running(req.steps, params.batch_count) as generation:
            try:
                results = txt2img(self.ws.model, params, vectors, progress=generation.report,
                                  should_stop=generation.stop.is_set, hypernetworks=self.ws.hypernetwork_library())
            except UserError as e:
                raise ApiError(400, str(e)) from None
        if req.save_images and results:
            save_txt2img_outputs(results, self.ws.folders.outputs_dir)
        model = self.ws.model
        first = results[0] if results else None
        info = {
            "prompt": req.prompt, "all_prompts": [req.prompt] * len(results),
            "negative_prompt": req.negative_prompt, "all_negative_prompts": [req.negative_prompt] * len(results),
            "seed": first.seed if first else req.seed, "all_seeds": [r.seed for r in results],
            "subseed": -1, "all_subseeds": [-1] * len(results), "subseed_strength": 0,
            "width": req.width, "height": req.height, "sampler_name": params.sampler, "cfg_scale": req.cfg_scale,
            "steps": req.steps, "batch_size": req.batch_size, "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": model.name, "sd_model_hash": model.checkpoint_hash, "sd_vae_name": None,
            "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": None,
            "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": [r.infotext for r in results],
            "styles": req.styles or [], "job_timestamp": "", "clip_skip": params.clip_skip,
            "is_using_inpainting_conditioning": False, "version": VERSION,
            "interrupted": len(results) < params.batch_count,
        }
        images = [png_base64(r.image, r.infotext) for r in results] if req.send_images else []
        return {"images": images, "parameters": req.model_dump(), "info": json.dumps(info)}

    def _sampler(self, req: m.Txt2ImgRequest) -> str:
        name = (req.sampler_name or req.sampler_index or "Euler").strip()
        by_lower = {s.lower(): s for s in SAMPLERS}
        name = by_lower.get(name.lower(), name)
        if (req.scheduler or "").lower() == "karras" and f"{name} Karras" in SAMPLERS:
            name = f"{name} Karras"
        if name not in SAMPLERS:
            raise ApiError(400, f"Unknown sampler {name!r}; GET {API_PREFIX}/samplers lists them.")
        return name

    # --- create ------------------------------------------------------------------------------------------
    def create_embedding(self, req: m.CreateEmbeddingRequest):
        """Create `<embeddings dir>/<name>.pt` (as the Create embedding tab), as a job of the shared runner."""
        from . import create_embedding_tab

        check_plain_name(req.name, "Embedding name")

        def create(job):
            path = create_embedding_tab.create(self.ws, req.name, req.init_text, req.num_vectors_per_token,
                                               req.overwrite_old)
            return Outcome(Status.FINISHED, f"Created: {path}", str(path))

        job = self._run_job("create-embedding", f"Creating embedding {req.name}", create)
        return {"info": f"create embedding filename: {job.result.path}"}

    def create_hypernetwork(self, req: m.CreateHypernetworkRequest):
        """Create `<hypernetwork dir>/<name>.pt` (as the Create hypernetwork tab), as a job of the shared runner."""
        from trainer.hypernetworks.network import DEFAULT_DROPOUT_STRUCTURE, DEFAULT_LAYER_STRUCTURE, default_sizes

        from . import create_hypernetwork_tab

        check_plain_name(req.name, "Hypernetwork name")
        sizes = req.enable_sizes if req.enable_sizes is not None else default_sizes(self.ws.model)

        def create(job):
            path = create_hypernetwork_tab.create(
                self.ws, req.name, sizes, req.layer_structure or DEFAULT_LAYER_STRUCTURE,
                req.activation_func or "linear", req.weight_init or "Normal", req.add_layer_norm, req.use_dropout,
                req.dropout_structure if req.dropout_structure is not None else DEFAULT_DROPOUT_STRUCTURE,
                req.overwrite_old)
            return Outcome(Status.FINISHED, f"Created: {path}", str(path))

        job = self._run_job("create-hypernetwork", f"Creating hypernetwork {req.name}", create)
        return {"info": f"create hypernetwork filename: {job.result.path}"}

    # --- train -------------------------------------------------------------------------------------------
    def train_embedding(self, req: m.TrainEmbeddingRequest):
        """Train an embedding as the page's Train Embedding button does; answers when the run ends."""
        self._refuse_if_busy("train")
        name = check_plain_name(req.embedding_name, "embedding_name")
        loaded, skipped = self.ws.embeddings()
        if name not in loaded:
            if name in skipped:
                raise ApiError(400, f"Embedding '{name}' cannot be trained on this model: {skipped[name][1]}.")
            raise ApiError(404, f"Embedding '{name}' was not found in {self.ws.folders.embeddings_dir}; create it "
                                f"first (POST {API_PREFIX}/create/embedding).")
        cfg = self._train_config(req, name, req.learn_rate, req.save_embedding_every,
                                 req.save_image_with_stored_embedding, "Embedding", start_step=loaded[name].step or 0)
        job = self._start(lambda: self.ws.start_training(cfg))
        return {"info": self._train_info(job, "embedding")}

    def train_hypernetwork(self, req: m.TrainHypernetworkRequest):
        """Train a hypernetwork as the page's Train Hypernetwork button does; answers when the run ends."""
        self._refuse_if_busy("train")
        name = check_plain_name(req.hypernetwork_name, "hypernetwork_name")
        if name not in self.ws.hypernetworks():
            raise ApiError(404, f"Hypernetwork '{name}' was not found in {self.ws.folders.hypernetwork_dir}; create "
                                f"it first (POST {API_PREFIX}/create/hypernetwork).")
        cfg = self._train_config(req, name, req.learn_rate, req.save_hypernetwork_every, False, "Hypernetwork",
                                 start_step=0)
        job = self._start(lambda: self.ws.start_hypernetwork_training(cfg))
        return {"info": self._train_info(job, "hypernetwork")}

    def _train_config(self, req: m.TrainRequest, name, learn_rate, save_every, png_embedding, what, start_step):
        """The TrainConfig for a request, checked before anything runs (each problem a 4xx sentence)."""
        template = check_plain_name(req.template_filename, "template_filename")
        if template not in self.ws.templates():
            raise ApiError(404, f"Prompt template '{template}' is not in {self.ws.folders.templates_dir}; choose "
                                f"one of: {', '.join(self.ws.templates())}.")
        dataset = Path(req.data_root.strip()).expanduser() if req.data_root.strip() else None
        if dataset is None:
            raise ApiError(400, "data_root is empty; give the dataset directory.")
        if not dataset.is_dir():
            raise ApiError(400, f"Dataset directory '{req.data_root}' does not exist or is not a directory.")
        if not any(dataset.iterdir()):
            raise ApiError(400, f"Dataset directory '{req.data_root}' is empty.")
        if req.latent_sampling_method not in LATENT_SAMPLING:
            raise ApiError(400, f"latent_sampling_method must be one of {', '.join(LATENT_SAMPLING)}, "
                                f"not {req.latent_sampling_method!r}.")
        preview = None
        if req.preview_from_txt2img:
            preview = PreviewSettings(req.preview_prompt, req.preview_negative_prompt,
                                      preview_sampler(req.preview_sampler_name), req.preview_steps,
                                      req.preview_cfg_scale, req.preview_seed, req.preview_width, req.preview_height)
        options = self.options
        cfg = TrainConfig(
            name=name, dataset=str(dataset), log_dir=req.log_directory, template=template,
            learn_rate=schedule_text(learn_rate), batch_size=req.batch_size, grad_accum=req.gradient_step,
            width=req.training_width, height=req.training_height, no_resize=req.varsize, steps=req.steps,
            save_every=save_every, preview_every=req.create_image_every, alpha_weight=req.use_weight,
            png_embedding=png_embedding, shuffle_tags=req.shuffle_tags, tag_dropout=req.tag_drop_out,
            latent_sampling=req.latent_sampling_method, clip_grad_mode=req.clip_grad_mode,
            clip_grad_value=schedule_text(req.clip_grad_value), save_optimizer_state=options.save_optimizer_state,
            word_regex=options.dataset_filename_word_regex, join_string=options.dataset_filename_join_string,
            loss_csv_every=options.training_write_csv_every, preview=preview)
        try:  # the Workspace checks the settings too; the steps left to train only the API knows before starting
            cfg.validate(what.lower())
            cfg.schedules(start_step, what.lower())
        except UserError as e:
            raise ApiError(400, str(e)) from None
        return cfg

    def _train_info(self, job, what: str) -> str:
        """The reference's "train embedding complete: filename: ... error: ..." line, made truthful."""
        result = job.result
        path = getattr(result, "trained_file", None) or ""
        if job.state == Status.FINISHED:
            return f"train {what} complete: filename: {path} error: None. {job.message}"
        if job.state == Status.INTERRUPTED:
            return f"train {what} interrupted: filename: {path} error: None. {job.message}"
        return f"train {what} failed: filename: {path} error: {job.error or job.message}"

    # --- preprocess --------------------------------------------------------------------------------------
    def preprocess(self, req: m.PreprocessRequest):
        """Preprocess a folder of images (the v1.6 Preprocess images tab) as the shared job; answers when done."""
        from preprocess.pipeline import PreprocessConfig

        self._refuse_if_busy("preprocess")
        if req.process_caption_deepbooru:
            raise ApiError(400, "Deepbooru captions are not available in this app; use process_caption (BLIP).")
        defaults = PreprocessConfig()
        config = PreprocessConfig(
            src=req.process_src, dst=req.process_dst, width=req.process_width, height=req.process_height,
            caption_action=req.preprocess_txt_action, keep_original_size=req.process_keep_original_size,
            flip=req.process_flip, split=req.process_split, split_threshold=req.split_threshold,
            overlap_ratio=req.overlap_ratio, focal_crop=req.process_focal_crop,
            face_weight=req.process_focal_crop_face_weight, entropy_weight=req.process_focal_crop_entropy_weight,
            edges_weight=req.process_focal_crop_edges_weight, focal_debug=req.process_focal_crop_debug,
            autosize=bool(req.process_multicrop),
            min_dim=_or(req.process_multicrop_mindim, defaults.min_dim),
            max_dim=_or(req.process_multicrop_maxdim, defaults.max_dim),
            min_area=_or(req.process_multicrop_minarea, defaults.min_area),
            max_area=_or(req.process_multicrop_maxarea, defaults.max_area),
            objective=_or(req.process_multicrop_objective, defaults.objective),
            error_threshold=_or(req.process_multicrop_threshold, defaults.error_threshold),
            caption="blip" if req.process_caption else "")
        job = self._start(lambda: self.ws.start_preprocess(config))
        told = "\n".join([job.message, *job.warnings])  # the summary, then each skipped file and warning
        if job.state == Status.FINISHED:
            return {"info": f"preprocess complete: {told}"}
        if job.state == Status.INTERRUPTED:
            return {"info": f"preprocess interrupted: {told}"}
        return {"info": f"preprocess failed: {job.error or job.message}"}

    # --- the shared job ----------------------------------------------------------------------------------
    def _busy(self) -> bool:
        job = self.ws.runner.current
        return bool(job is not None and job.running)

    def _refuse_if_busy(self, action: str):
        job = self.ws.runner.current
        if job is not None and job.running:
            raise ApiError(409, f"Cannot {action} now: another job is running ({job.title}); wait for it to end or "
                                f"POST {API_PREFIX}/interrupt.")

    def _start(self, start):
        """Start a job through the workspace and wait for its end; a refusal before any work is a 4xx."""
        try:
            job = start()
        except JobBusy as e:
            raise ApiError(409, str(e)) from None
        except UserError as e:
            raise ApiError(400, str(e)) from None
        job.wait()
        if job.bad_input:
            raise ApiError(400, job.error)
        return job

    def _run_job(self, kind: str, title: str, work):
        what = kind.split("-", 1)[1]
        self._refuse_if_busy(f"create {'an' if what[0] in 'aeiou' else 'a'} {what}")
        job = self._start(lambda: self.ws.runner.start(kind, title, work))
        if job.state != Status.FINISHED:
            raise ApiError(500, job.error or job.message)
        return job

    # --- assembly ----------------------------------------------------------------------------------------
    def openapi(self) -> dict:
        return get_openapi(title="Textual inversion trainer API (A1111-compatible)", version="1",
                           routes=self.router.routes)

    def app_kwargs(self) -> dict:
        """For `Blocks.launch(app_kwargs=...)`: the API routes first (so nothing of the page shadows them), our
        error shape, and docs behind the same auth; FastAPI's own docs stay off."""
        docs = [APIRoute("/openapi.json", lambda: self.openapi(), methods=["GET"], include_in_schema=False,
                         dependencies=[Depends(self.auth)]),
                APIRoute("/docs", lambda: docs_page(self.openapi()), methods=["GET"], include_in_schema=False,
                         dependencies=[Depends(self.auth)])]
        return {"routes": list(self.router.routes) + docs, "openapi_url": None, "docs_url": None,
                "redoc_url": None,
                "exception_handlers": {ApiError: api_error_handler,
                                       RequestValidationError: validation_error_handler}}


ERROR_RESPONSES = {code: {"model": m.ErrorResponse} for code in (400, 401, 403, 404, 409, 422)}


def api_app_kwargs(ws, credentials=None) -> dict:
    """`app_kwargs` for `demo.launch` that serve the API (credentials: [(user, password)] or None)."""
    return Api(ws, credentials).app_kwargs()


def no_api_app_kwargs() -> dict:
    """Without --api: no API routes and no schema pages at all."""
    return {"openapi_url": None, "docs_url": None, "redoc_url": None}


# --- small helpers -----------------------------------------------------------------------------------------
def check_plain_name(value: str, label: str) -> str:
    """A file name inside its folder: no path separators, not "." or ".."; a 400 otherwise."""
    text = (value or "").strip()
    if not text:
        raise ApiError(400, f"{label} is empty.")
    if "/" in text or "\\" in text or "\x00" in text or text in (".", ".."):
        raise ApiError(400, f"{label} {value!r} must be a plain name inside its folder, not a path.")
    return text


def check_option(name: str, value):
    if name == "save_optimizer_state":
        if not isinstance(value, bool):
            raise ApiError(400, f"Option {name} must be true or false, not {value!r}.")
    elif name in ("training_write_csv_every", "CLIP_stop_at_last_layers"):
        low = 0 if name == "training_write_csv_every" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low or value > 1_000_000:
            raise ApiError(400, f"Option {name} must be a whole number from {low}, not {value!r}.")
        if name == "CLIP_stop_at_last_layers" and value > 12:
            raise ApiError(400, f"Option {name} must be between 1 and 12, not {value}.")
    elif not isinstance(value, str):
        raise ApiError(400, f"Option {name} must be text, not {value!r}.")
    elif name == "dataset_filename_word_regex" and value:
        try:
            re.compile(value)
        except re.error as e:
            raise ApiError(400, f"Option {name} is not a valid regular expression: {e}.") from None
    return value


def schedule_text(value) -> str:
    return value if isinstance(value, str) else repr(float(value))


def preview_sampler(value) -> str:
    """A sampler name, or the index into the sampler list older clients send."""
    if isinstance(value, int):
        if not 0 <= value < len(SAMPLERS):
            raise ApiError(400, f"preview_sampler_name index {value} is out of range 0..{len(SAMPLERS) - 1}.")
        return SAMPLERS[value]
    if value not in SAMPLERS:
        raise ApiError(400, f"Unknown preview sampler {value!r}; GET {API_PREFIX}/samplers lists them.")
    return value


def checkpoint_title(name: str, short_hash: str | None) -> str:
    return f"{name} [{short_hash}]" if short_hash else name


def model_name(name: str) -> str:
    return re.sub(r"\.(safetensors|ckpt)$", "", name, flags=re.IGNORECASE)


def checkpoint_filename(ws, name: str) -> str:
    from trainer.models.loading import DEMO

    return name if name == DEMO else str((Path(ws.folders.ckpt_dir) / name).resolve())


def _or(value, default):
    return default if value is None else value


__all__ = ["Api", "api_app_kwargs", "no_api_app_kwargs", "schedule_text"]
