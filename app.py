"""Start the web UI:  python app.py [--port 7860] [--listen --gradio-auth user:pass] [--model demo|PATH] ...

Serves on http://127.0.0.1:7860 with no download and no GPU needed (the embedded demo model is the default).
"""
import argparse
import os
import sys
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                   "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}.items():
    os.environ.setdefault(key, value)
from trainer.cpu_env import add_threads_argument, apply_cpu_defaults, set_threads  # noqa: E402 (no torch)

apply_cpu_defaults()  # passive OpenMP waits, huge-page allocations: before anything imports torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Textual inversion trainer (the AUTOMATIC1111 Train tab, standalone)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 (requires --gradio-auth)")
    parser.add_argument("--gradio-auth", default=None, help="user:password[,user2:password2]")
    parser.add_argument("--model", default=None, help='checkpoint to load at start: "demo", a name in --ckpt-dir, or a path')
    parser.add_argument("--ckpt-dir", default="models/Stable-diffusion")
    parser.add_argument("--embeddings-dir", default="embeddings")
    parser.add_argument("--hypernetwork-dir", default="models/hypernetworks")
    parser.add_argument("--textual-inversion-templates-dir", default="textual_inversion_templates")
    parser.add_argument("--outputs-dir", default="outputs", help="where txt2img images are kept")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"])
    add_threads_argument(parser)
    return parser.parse_args(argv)


def parse_auth(text: str):
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--gradio-auth expects user:password, got {item.strip()!r}")
        pairs.append((user, password))
    return pairs


def main(argv=None) -> int:
    args = parse_args(argv)
    auth = None
    try:
        if args.gradio_auth:
            auth = parse_auth(args.gradio_auth)
        if args.listen and not auth:
            raise ValueError("--listen serves the app to the network; set --gradio-auth user:password too")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be at least 1, not {args.threads}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    set_threads(args.threads)
    from trainer.errors import UserError
    from trainer.workspace import Folders, Workspace
    from webui.app import build_app
    from webui.job_view import CSS

    folders = Folders(Path(args.ckpt_dir), Path(args.embeddings_dir), Path(args.hypernetwork_dir),
                      Path(args.textual_inversion_templates_dir), Path(args.outputs_dir))
    ws = Workspace(folders, args.device)
    try:
        ws.load_model(args.model or "demo")
        loaded, skipped = ws.embeddings()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Model: {ws.model.name} [{ws.model.checkpoint_hash}] on {ws.model.device}")
    print(f"Loaded a total of {len(loaded)} textual inversion embeddings.")
    if loaded:
        print("Embeddings: " + ", ".join(sorted(loaded)))
    if skipped:
        print(f"Skipped {len(skipped)}: " + ", ".join(f"{name} ({reason})" for name, (_, reason) in sorted(skipped.items())))
    demo = build_app(ws)
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, auth=auth,
                css=CSS, footer_links=[], show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
