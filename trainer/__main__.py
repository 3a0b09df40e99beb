"""Headless commands: the same engine functions and config objects the browser UI uses.

    python -m trainer create-embedding --name N [--init-text T] [--vectors K] [--overwrite]
    python -m trainer train-embedding --name N --dataset DIR [...]
    python -m trainer list-embeddings [--json]
    python -m trainer create-hypernetwork --name N [--sizes 768,320,640,1280] [--layer-structure "1, 2, 1"] [...]
    python -m trainer train-hypernetwork --name N --dataset DIR [... as train-embedding] [--hypernetwork-dir D]
    python -m trainer txt2img --prompt P [...]
    python -m trainer make-demo-dataset DIR [--concept "green square on a purple background"] [--count 20]

Errors are one line on stderr and exit code 2; Ctrl-C or SIGTERM during training interrupts and saves (exit code
130).
"""
import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from common.cpu_env import add_threads_argument, apply_cpu_defaults, set_threads  # noqa: E402 (imports no torch)

apply_cpu_defaults()  # passive OpenMP waits, huge-page allocations: before anything imports torch
from common.errors import UserError, with_hint  # noqa: E402
from common.events import Status  # noqa: E402
from trainer.training.config import CLIP_GRAD_MODES, LATENT_SAMPLING  # noqa: E402 (imports no torch)

# How this interface names the controls an error's sentence points at (the page names its checkboxes instead).
CLI_HINTS = {"overwrite": "Pass --overwrite to replace it.", "blip_model": "Or pass its folder with --blip-model."}


def add_common(parser, embeddings=True):
    parser.add_argument("--model", default="demo", help='checkpoint: "demo", a name in --ckpt-dir, or a path')
    parser.add_argument("--data-dir", default=None,
                        help="the folder embeddings/, models/, textual_inversion/ and outputs/ are in (default: "
                             "$TI_TRAINER_DATA_DIR, else the current folder); relative folder flags start there too")
    parser.add_argument("--ckpt-dir", default=None, help="default: models/Stable-diffusion")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"])
    add_threads_argument(parser)
    if embeddings:
        parser.add_argument("--embeddings-dir", default=None, help="default: embeddings")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag or value as one line naming it (not the whole usage), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help).\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m trainer", description="Textual inversion, headless.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("create-embedding", help="create an empty embedding from initialization text")
    p.add_argument("--name", required=True)
    p.add_argument("--init-text", default="*")
    p.add_argument("--vectors", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--format", default="pt", choices=["pt", "safetensors"],
                   help="file format (default: the reference's .pt)")
    add_common(p)

    p = commands.add_parser("train-embedding", help="train an embedding on a folder of images",
                            argument_default=argparse.SUPPRESS)  # unset flags fall back to --settings, then defaults
    add_training_arguments(p, "0.005")
    add_common(p)

    p = commands.add_parser("list-embeddings", help="list the embeddings the model can use, and the skipped ones")
    p.add_argument("--json", action="store_true")
    add_common(p)

    p = commands.add_parser("create-hypernetwork", help="create a hypernetwork with fresh weights")
    p.add_argument("--name", required=True)
    p.add_argument("--sizes", default=None,
                   help="module sizes, comma-separated (default: the model's text width and attention widths, "
                        "768,320,640,1280 on SD 1.x)")
    p.add_argument("--layer-structure", default="1, 2, 1", help='relative layer widths, first and last 1')
    p.add_argument("--activation", default="linear", help="linear, relu, leakyrelu, elu, swish (Hardswish), "
                                                           "silu, tanh, sigmoid, ...")
    p.add_argument("--init", default="Normal", help="Normal, KaimingUniform, KaimingNormal, XavierUniform, XavierNormal")
    p.add_argument("--layer-norm", action="store_true")
    p.add_argument("--dropout", default=None, help='dropout structure like "0, 0.1, 0" (turns dropout on)')
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=None, help="seed for the initial weights")
    p.add_argument("--hypernetwork-dir", default=None, help="default: models/hypernetworks")
    add_common(p, embeddings=False)

    p = commands.add_parser("train-hypernetwork", help="train a hypernetwork on a folder of images",
                            argument_default=argparse.SUPPRESS)
    add_training_arguments(p, "0.00001")
    p.add_argument("--hypernetwork-dir", default=None, help="default: models/hypernetworks")
    add_common(p)

    p = commands.add_parser("txt2img", help="generate an image")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--width", type=int, default=None, help="default: the model's native size")
    p.add_argument("--height", type=int, default=None, help="default: the model's native size")
    p.add_argument("--batch-count", type=int, default=1)
    p.add_argument("--out", default=None, help="file to write (with --batch-count N: name-0.png ...); default: "
                                              "numbered files in outputs/txt2img-images/<date>/ in the data folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--outputs-dir", default=None, help="default: outputs")
    p.add_argument("--hypernetwork-dir", default=None, help="default: models/hypernetworks")
    add_common(p)

    p = commands.add_parser("make-demo-dataset", help="write pictures of one concept of the demo model's toy "
                                                      "world, with captions, to train an embedding on")
    p.add_argument("dir", help="folder to write the images and .txt captions into")
    p.add_argument("--concept", default="green square on a purple background",
                   help='e.g. "orange circle on a blue background"; parts may be left out ("a star")')
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels (the demo model's native 128)")
    p.add_argument("--overwrite", action="store_true")
    return parser


def add_training_arguments(p, default_learn_rate: str):
    """The flags train-embedding and train-hypernetwork share (the Train subtab's controls)."""
    p.add_argument("--name", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--settings", help="a settings-*.json written by an earlier run; flags given here win")
    p.add_argument("--log-dir", help="default: textual_inversion in the data folder")
    p.add_argument("--template", help="file in --templates-dir (default: style_filewords.txt) or a path")
    p.add_argument("--templates-dir", "--textual-inversion-templates-dir", dest="templates_dir", default=None,
                   help="default: textual_inversion_templates in the data folder, else the shipped templates")
    p.add_argument("--learn-rate", help=f'rate or schedule like "{default_learn_rate}" (default) or '
                                        f'"0.05:100, 0.005"')
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--width", type=int, help="default: the model's native size (512 SD 1.x, 128 demo)")
    p.add_argument("--height", type=int, help="default: the model's native size")
    p.add_argument("--no-resize", action="store_true")
    p.add_argument("--steps", type=int, help="max steps (default 100000)")
    p.add_argument("--save-every", type=int, help="save a copy every N steps, 0 = off (default 500)")
    p.add_argument("--preview-every", type=int, help="save a preview every N steps, 0 = off (default 500)")
    p.add_argument("--alpha-weight", action="store_true")
    p.add_argument("--png-embedding", action=argparse.BooleanOptionalAction)
    p.add_argument("--shuffle-tags", action="store_true")
    p.add_argument("--tag-dropout", type=float)
    p.add_argument("--latent-sampling", choices=LATENT_SAMPLING)
    p.add_argument("--clip-grad-mode", choices=CLIP_GRAD_MODES)
    p.add_argument("--clip-grad-value")
    p.add_argument("--no-optimizer-state", action="store_true", help="do not save/restore the .optim file")
    p.add_argument("--preview-prompt", help="preview prompt (default: the batch's first caption)")
    p.add_argument("--preview-negative-prompt")
    p.add_argument("--preview-sampler")
    p.add_argument("--preview-steps", type=int)
    p.add_argument("--preview-cfg-scale", type=float)
    p.add_argument("--preview-seed", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"],
                   help="compute precision (default: fp16 on CUDA, no on the CPU; bf16 works on both)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                   help="recompute UNet activations in backward: less memory, slower steps")
    p.add_argument("--latent-cache-dir", help="where encoded images are kept between runs "
                                              "(default: <log dir>/latent_cache)")
    p.add_argument("--latent-cache", action=argparse.BooleanOptionalAction,
                   help="keep encoded images on disk between runs (default on; --no-latent-cache: memory only)")
    p.add_argument("--validate-every", type=int,
                   help="validation loss on a fixed set every N steps and before the first, 0 = off (default 100)")
    p.add_argument("--early-stop", type=int, metavar="K",
                   help="stop when validation has not improved for K checks, 0 = off (default)")
    p.add_argument("--validation-split", type=float, metavar="SHARE",
                   help="hold out this share of the images for validation, e.g. 0.1 (default 0: the training images)")
    p.add_argument("--quiet", action="store_true", default=False)


def folders_from_args(args):
    """The folders, all resolved against the one data folder (see `Folders.under`)."""
    from common.folders import Folders

    return Folders.under(getattr(args, "data_dir", None), ckpt_dir=getattr(args, "ckpt_dir", None),
                         embeddings_dir=getattr(args, "embeddings_dir", None),
                         hypernetwork_dir=getattr(args, "hypernetwork_dir", None),
                         templates_dir=getattr(args, "templates_dir", None),
                         outputs_dir=getattr(args, "outputs_dir", None))


def make_workspace(args):
    from trainer.workspace import Workspace

    workspace = Workspace(folders_from_args(args), args.device)
    workspace.load_model(args.model)
    return workspace


def cmd_create_embedding(args):
    from trainer.embeddings.library import create_embedding

    ws = make_workspace(args)
    model = ws.model
    path = create_embedding(model.tokenizer, model.text_encoder, args.name, init_text=args.init_text,
                            num_vectors=args.vectors, overwrite=args.overwrite,
                            embeddings_dir=ws.folders.embeddings_dir, checkpoint_hash=model.checkpoint_hash,
                            checkpoint_name=model.name, file_format=args.format, text_encoder_2=model.text_encoder_2)
    print(f"Created: {Path(path).resolve()}")
    return 0


CONFIG_FIELDS = ("name", "dataset", "log_dir", "template", "learn_rate", "batch_size", "grad_accum", "width",
                 "height", "no_resize", "steps", "save_every", "preview_every", "alpha_weight", "png_embedding",
                 "shuffle_tags", "tag_dropout", "latent_sampling", "clip_grad_mode", "clip_grad_value", "seed",
                 "latent_cache", "latent_cache_dir", "mixed_precision", "gradient_checkpointing",
                 "validate_every", "early_stop", "validation_split")


def train_config_from_args(args, default_learn_rate: str | None = None):
    """Defaults (`default_learn_rate` for the learning rate when given), overridden by --settings, overridden by
    the flags actually given."""
    from trainer.training.config import PreviewSettings, TrainConfig, read_settings_file, settings_values

    values = {"learn_rate": default_learn_rate} if default_learn_rate else {}
    if getattr(args, "settings", None):  # may lack name/dataset: --name/--dataset fill them in
        values.update(settings_values(read_settings_file(args.settings), f"Settings file {args.settings}"))
    given = vars(args)
    values.update({key: given[key] for key in CONFIG_FIELDS if key in given})
    values["model"] = args.model
    for key in ("width", "height"):
        values.setdefault(key, 0)  # 0: the model's native size, filled in once the model is loaded
    if "no_optimizer_state" in given:
        values["save_optimizer_state"] = False
    preview = {key[len("preview_"):]: value for key, value in given.items()
               if key.startswith("preview_") and key != "preview_every"}
    if preview:
        values["preview"] = PreviewSettings(**{**vars(PreviewSettings()), **preview})
    return TrainConfig.from_json(values)


def run_training(args, cfg, train, what: str):
    """Shared by train-embedding and train-hypernetwork (`what`): the settings checked, accelerator, workspace,
    Ctrl-C, printing the result.
    `train(workspace, progress, should_stop, accelerator)` runs the loop and returns its TrainResult."""
    from trainer.cli_progress import ConsoleProgress
    from trainer.training.accelerator import make_accelerator
    from trainer.workspace import best_device

    cfg.validate(what)
    folders = folders_from_args(args)
    cfg.log_dir = str(folders.resolve(cfg.log_dir)) if str(cfg.log_dir).strip() else cfg.log_dir
    accelerator = make_accelerator(args.device or best_device(), cfg.grad_accum, cfg.mixed_precision)
    args.device = str(accelerator.device)
    ws = make_workspace(args)
    cfg.width, cfg.height = cfg.width or ws.model.native_size, cfg.height or ws.model.native_size
    stop = threading.Event()
    # Ctrl-C, and SIGTERM (what kill, systemd, Docker and job schedulers send): stop, save, exit 130
    previous_handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = ConsoleProgress(enabled=not args.quiet and accelerator.is_main_process)
    try:
        result = train(ws, progress, stop.is_set, accelerator)
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    if accelerator.is_main_process:
        for warning in progress.warnings:  # again at the end: the bar may have scrolled them away
            print(f"Warning: {warning}", file=sys.stderr)
        print(result.message)
    return {Status.FINISHED: 0, Status.INTERRUPTED: 130}.get(result.status, 1)


def cmd_train_embedding(args):
    from trainer.training.textual_inversion import train_embedding

    def train(ws, progress, should_stop, accelerator):
        return train_embedding(ws.model, cfg, ws.folders.embeddings_dir, ws.folders.templates_dir,
                               other_embeddings=ws.embedding_vectors(), progress=progress,
                               should_stop=should_stop, accelerator=accelerator)

    cfg = train_config_from_args(args)
    return run_training(args, cfg, train, "embedding")


def cmd_create_hypernetwork(args):
    from trainer.hypernetworks.network import create_hypernetwork, default_sizes

    ws = make_workspace(args)
    model = ws.model
    path = create_hypernetwork(
        args.name, args.sizes if args.sizes else default_sizes(model), layer_structure=args.layer_structure,
        activation=args.activation, weight_init=args.init, layer_norm=args.layer_norm,
        use_dropout=args.dropout is not None, dropout_structure=args.dropout, overwrite=args.overwrite,
        hypernetwork_dir=ws.folders.hypernetwork_dir, checkpoint_hash=model.checkpoint_hash,
        checkpoint_name=model.name, seed=args.seed)
    print(f"Created: {Path(path).resolve()}")
    return 0


def cmd_train_hypernetwork(args):
    from trainer.training.hypernetwork import DEFAULT_LEARN_RATE, train_hypernetwork

    def train(ws, progress, should_stop, accelerator):
        return train_hypernetwork(ws.model, cfg, ws.folders.hypernetwork_dir, ws.folders.templates_dir,
                                  embeddings=ws.embedding_vectors(), progress=progress, should_stop=should_stop,
                                  accelerator=accelerator)

    cfg = train_config_from_args(args, DEFAULT_LEARN_RATE)
    return run_training(args, cfg, train, "hypernetwork")


def cmd_list_embeddings(args):
    from trainer.embeddings.library import to_api_json

    ws = make_workspace(args)
    loaded, skipped = ws.embeddings()
    if args.json:
        print(json.dumps(to_api_json(loaded, skipped), indent=2))
        return 0
    model = ws.model
    width = (f"SDXL, clip_l {model.clip_l_width} + clip_g {model.text_width - model.clip_l_width}" if model.is_sdxl
             else f"width {model.text_width}")
    print(f"Loaded {len(loaded)} textual inversion embeddings for {model.name} ({width}):")
    for name, e in sorted(loaded.items()):
        print(f"  {name}: {e.num_vectors} vectors, step {e.step}, {e.filename}")
    if skipped:
        print(f"Skipped {len(skipped)}:")
        for name, (_, reason) in sorted(skipped.items()):
            print(f"  {name}: {reason}")
    return 0


def cmd_txt2img(args):
    from trainer.prompts.view import embedding_notes
    from common.files import save_png
    from trainer.sampling.txt2img import Txt2ImgParams, save_txt2img_outputs, txt2img

    targets = None
    if args.out is not None:  # checked before any work: an existing file is never replaced without --overwrite
        out = Path(args.out)
        targets = [out] if args.batch_count == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}")
                                                         for i in range(max(args.batch_count, 0))]
        for target in targets:
            if target.is_dir():
                raise UserError(f"--out {target} is a folder; give a file name like {target / 'image.png'}.")
            if target.exists() and not args.overwrite:
                raise UserError(f"{target} already exists; pass --overwrite to replace it or choose another --out.")
    ws = make_workspace(args)
    params = Txt2ImgParams(args.prompt, args.negative_prompt, args.sampler, args.steps, args.cfg_scale, args.seed,
                           args.width or ws.model.native_size, args.height or ws.model.native_size,
                           args.batch_count)
    loaded, skipped = ws.embeddings()
    results = txt2img(ws.model, params, ws.embedding_vectors(), hypernetworks=ws.hypernetwork_library())
    for note in embedding_notes(f"{args.prompt} {args.negative_prompt}", loaded, skipped, ws.folders.embeddings_dir):
        print(f"Note: {note}", file=sys.stderr)
    if targets is None:
        paths = save_txt2img_outputs(results, ws.folders.outputs_dir)  # numbered on, like the txt2img tab
    else:
        paths = []
        for (image, infotext, _), path in zip(results, targets):
            try:
                paths.append(save_png(image, path, infotext, exclusive=not args.overwrite))
            except FileExistsError:
                raise UserError(f"{path} appeared while generating; it was kept, pass --overwrite to replace it.") from None
    for path, (_, infotext, _) in zip(paths, results):
        print(f"{Path(path).resolve()}\n{infotext}")
    return 0


def cmd_make_demo_dataset(args):
    from trainer.toy.world import parse_concept, write_dataset

    concept = parse_concept(args.concept)
    paths = write_dataset(args.dir, concept, count=args.count, seed=args.seed, size=args.size,
                          overwrite=args.overwrite)
    print(f"Wrote {len(paths)} pictures of {concept.describe()} with captions to {Path(args.dir).resolve()}")
    return 0


COMMANDS = {
    "create-embedding": cmd_create_embedding,
    "train-embedding": cmd_train_embedding,
    "list-embeddings": cmd_list_embeddings,
    "create-hypernetwork": cmd_create_hypernetwork,
    "train-hypernetwork": cmd_train_hypernetwork,
    "txt2img": cmd_txt2img,
    "make-demo-dataset": cmd_make_demo_dataset,
}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (already said in one line)
        return e.code if isinstance(e.code, int) else 2
    try:
        set_threads(getattr(args, "threads", None))
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {with_hint(e, CLI_HINTS)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug or an environment problem: one line, not a traceback
        if os.environ.get("TI_TRAINER_DEBUG"):
            raise
        print(f"error: {e.__class__.__name__}: {e} (set TI_TRAINER_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
