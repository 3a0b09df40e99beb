"""Request and response bodies of the HTTP API (`--api`): the reference webui's field names and defaults.

Requests ignore fields they do not know (clients such as `webuiapi` send many for txt2img), as the reference
does. Defaults follow the reference's Train tab where its API function had none.
"""
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Schedule = str | float  # a learning-rate / clip-value schedule string ("0.005", "5e-2:100, 5e-3") or a number


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- create ------------------------------------------------------------------------------------------------
class CreateEmbeddingRequest(Request):
    name: str = Field(description="File name and prompt keyword (letters, digits, spaces and . _ -)")
    num_vectors_per_token: int = Field(default=1, description="Vectors per token, 1 to 75")
    overwrite_old: bool = False
    init_text: str = Field(default="*", description="Text whose token vectors seed the embedding")


class CreateHypernetworkRequest(Request):
    name: str
    enable_sizes: list[int | str] | str | None = Field(
        default=None, description="Module widths, e.g. [768, 320, 640, 1280]; default: the loaded model's")
    overwrite_old: bool = False
    layer_structure: list[float] | str | None = Field(default=None, description='e.g. "1, 2, 1"')
    activation_func: str | None = Field(default=None, description="linear, relu, leakyrelu, elu, swish, tanh, ...")
    weight_init: str | None = Field(default=None, description="Normal, KaimingUniform, KaimingNormal, ...")
    add_layer_norm: bool = False
    use_dropout: bool = False
    dropout_structure: list[float] | str | None = Field(default=None, description='e.g. "0, 0.05, 0"')


class CreateResponse(BaseModel):
    info: str


# --- train -------------------------------------------------------------------------------------------------
class TrainRequest(Request):
    """What /train/embedding and /train/hypernetwork share (the reference's train_* keyword arguments)."""

    id_task: str | None = Field(default=None, description="Ignored, as in the reference")
    batch_size: int = 1
    gradient_step: int = Field(default=1, description="Gradient accumulation steps")
    data_root: str = Field(description="Dataset directory")
    log_directory: str = "textual_inversion"
    training_width: int = 512
    training_height: int = 512
    varsize: bool = Field(default=False, description="Do not resize images")
    steps: int = Field(default=100000, description="Max steps")
    clip_grad_mode: str = Field(default="disabled", description="disabled, value or norm")
    clip_grad_value: Schedule = "0.1"
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = Field(default="once", description="once, deterministic or random")
    use_weight: bool = Field(default=False, description="Use PNG alpha channel as loss weight")
    create_image_every: int = 500
    template_filename: str = Field(default="style_filewords.txt", description="A file of the templates folder")
    preview_from_txt2img: bool = False
    preview_prompt: str = ""
    preview_negative_prompt: str = ""
    preview_steps: int = 20
    preview_sampler_name: str | int = "Euler a"
    preview_cfg_scale: float = 7.0
    preview_seed: int = -1
    preview_width: int = 512
    preview_height: int = 512


class TrainEmbeddingRequest(TrainRequest):
    embedding_name: str
    learn_rate: Schedule = "0.005"
    save_embedding_every: int = 500
    save_image_with_stored_embedding: bool = True


class TrainHypernetworkRequest(TrainRequest):
    hypernetwork_name: str
    learn_rate: Schedule = "0.00001"
    save_hypernetwork_every: int = 500


class TrainResponse(BaseModel):
    info: str = Field(description="How the run ended: finished or interrupted (with the step and the file saved), "
                                  "or failed and why")


# --- preprocess (the reference v1.6 fields) ----------------------------------------------------------------
class PreprocessRequest(Request):
    id_task: str | None = None
    process_src: str
    process_dst: str
    process_width: int = 512
    process_height: int = 512
    preprocess_txt_action: str = Field(default="ignore", description="ignore, copy, prepend or append")
    process_keep_original_size: bool = False
    process_flip: bool = False
    process_split: bool = False
    process_caption: bool = Field(default=False, description="Caption with BLIP (a local model folder)")
    process_caption_deepbooru: bool = False
    split_threshold: float = 0.5
    overlap_ratio: float = 0.2
    process_focal_crop: bool = False
    process_focal_crop_face_weight: float = 0.9
    process_focal_crop_entropy_weight: float = 0.15
    process_focal_crop_edges_weight: float = 0.5
    process_focal_crop_debug: bool = False
    process_multicrop: bool | None = None
    process_multicrop_mindim: int | None = None
    process_multicrop_maxdim: int | None = None
    process_multicrop_minarea: int | None = None
    process_multicrop_maxarea: int | None = None
    process_multicrop_objective: str | None = None
    process_multicrop_threshold: float | None = None


class PreprocessResponse(BaseModel):
    info: str


# --- txt2img -----------------------------------------------------------------------------------------------
class Txt2ImgRequest(Request):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = Field(default="Euler", description="Used when sampler_name is not given")
    scheduler: str | None = Field(default=None, description='"Karras" picks the Karras variant of the sampler')
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    override_settings: dict[str, Any] | None = None
    send_images: bool = True
    save_images: bool = False


class Txt2ImgResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="Base64 PNG images (with their infotext)")
    parameters: dict
    info: str = Field(description="A JSON string: prompt, seed, all_seeds, sampler_name, steps, cfg_scale, ...")


# --- lists and state ---------------------------------------------------------------------------------------
class ProgressResponse(BaseModel):
    progress: float = Field(description="0 to 1")
    eta_relative: float = Field(description="Seconds left (estimate)")
    state: dict
    current_image: str | None = Field(default=None, description="The latest preview, base64 PNG")
    textinfo: str | None = None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int | None = None
    vectors: int | None = None


class SkippedEmbeddingItem(EmbeddingItem):
    reason: str = Field(description="Why the embedding cannot be used with the loaded model")


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, SkippedEmbeddingItem]


class ErrorResponse(BaseModel):
    error: str = Field(description="The kind of error, e.g. Conflict, Not Found, Bad Request")
    detail: str = Field(description="One sentence naming what is wrong")
