"""Start the web UI:  python app.py [--port 7860] [--listen --gradio-auth user:pass] [--model demo|PATH] ...
                     [--api [--api-auth user:pass]]   (the reference's HTTP API under /sdapi/v1, same port)

Serves on http://127.0.0.1:7860 with no download and no GPU needed (the embedded demo model is the default).
"""
import argparse
import os
import signal
import socket
import sys
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                   "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}.items():
    os.environ.setdefault(key, value)
from common.cpu_env import add_threads_argument, apply_cpu_defaults, set_threads  # noqa: E402 (no torch)

apply_cpu_defaults()  # passive OpenMP waits, huge-page allocations: before anything imports torch


class OneLineParser(argparse.ArgumentParser):
    """A bad flag or value is one line naming it (not the usage block), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"error: {message} (see --help).\n")


def parse_args(argv=None):
    parser = OneLineParser(description="Textual inversion trainer (the AUTOMATIC1111 Train tab, standalone)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--listen", nargs="?", const="0.0.0.0", default=None, metavar="HOST",
                        help="serve to the network: on HOST, or on every interface (requires --gradio-auth)")
    parser.add_argument("--allowed-hosts", default=None,
                        help="host names the browser may use to reach the server, comma-separated (default: "
                             "loopback names, plus the --listen host or this machine's names); * allows any")
    parser.add_argument("--gradio-auth", default=None, help="user:password[,user2:password2]")
    parser.add_argument("--model", default=None, help='checkpoint to load at start: "demo", a name in --ckpt-dir, or a path')
    parser.add_argument("--data-dir", default=None,
                        help="the folder every relative path below (and typed in the page) starts from "
                             "(default: $TI_TRAINER_DATA_DIR, else the folder the app runs in)")
    parser.add_argument("--ckpt-dir", default=None, help="checkpoints (default: models/Stable-diffusion)")
    parser.add_argument("--embeddings-dir", default=None, help="embeddings (default: embeddings)")
    parser.add_argument("--hypernetwork-dir", default=None, help="hypernetworks (default: models/hypernetworks)")
    parser.add_argument("--textual-inversion-templates-dir", default=None,
                        help="prompt templates (default: textual_inversion_templates, else the shipped ones)")
    parser.add_argument("--outputs-dir", default=None, help="where txt2img images are kept (default: outputs)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"])
    parser.add_argument("--api", action="store_true", help="serve the reference's HTTP API (/sdapi/v1/...) on the same port")
    parser.add_argument("--api-auth", default=None, help="user:password[,user2:password2] for the API (HTTP basic)")
    add_threads_argument(parser)
    return parser.parse_args(argv)


def check_port(host: str, port: int) -> None:
    """ValueError with a sentence when the port is not one, or is taken (checked before anything loads)."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be a number from 1 to 65535, not {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as e:
        raise ValueError(f"port {port} on {host} cannot be used ({e.strerror or e}); is another server running "
                         "there? Choose another with --port") from None


def check_folders(folders) -> None:
    """ValueError with a sentence when a folder the app writes to is a file."""
    for flag, value in (("--data-dir", folders.data_dir), ("--ckpt-dir", folders.ckpt_dir),
                        ("--embeddings-dir", folders.embeddings_dir), ("--hypernetwork-dir", folders.hypernetwork_dir),
                        ("--textual-inversion-templates-dir", folders.templates_dir),
                        ("--outputs-dir", folders.outputs_dir)):
        if Path(value).exists() and not Path(value).is_dir():
            raise ValueError(f"{flag} {value} is a file, not a folder")


def parse_auth(text: str, flag: str = "--gradio-auth"):
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{flag} expects user:password, got {item.strip()!r}")
        pairs.append((user, password))
    return pairs


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (already said in one line)
        return e.code if isinstance(e.code, int) else 2
    from common.folders import Folders

    folders = Folders.under(args.data_dir, ckpt_dir=args.ckpt_dir, embeddings_dir=args.embeddings_dir,
                            hypernetwork_dir=args.hypernetwork_dir, templates_dir=args.textual_inversion_templates_dir,
                            outputs_dir=args.outputs_dir)
    auth = None
    server_name = args.listen or "127.0.0.1"
    try:
        if args.gradio_auth:
            auth = parse_auth(args.gradio_auth)
        if args.listen and not auth:
            raise ValueError("--listen serves the app to the network; set --gradio-auth user:password too")
        api_auth = parse_auth(args.api_auth, "--api-auth") if args.api_auth else None
        if args.listen and args.api and not api_auth:
            raise ValueError("--listen with --api serves the API to the network; set --api-auth user:password too")
        check_folders(folders)
        check_port(server_name, args.port)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be at least 1, not {args.threads}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    set_threads(args.threads)
    from common.errors import UserError
    from trainer.workspace import Workspace
    from webui.api import api_app_kwargs, no_api_app_kwargs
    from webui.app import build_app
    from webui.job_view import CSS
    from webui.security import default_allowed_hosts, guard_middleware, parse_allowed_hosts

    ws = Workspace(folders, args.device)
    try:
        ws.load_model(args.model or "demo")
        loaded, skipped = ws.embeddings()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Data folder: {folders.data_dir} (embeddings: {folders.embeddings_dir}, checkpoints: {folders.ckpt_dir}, "
          f"outputs: {folders.outputs_dir})")
    print(f"Model: {ws.model.name} [{ws.model.checkpoint_hash}] on {ws.model.device}")
    print(f"Loaded a total of {len(loaded)} textual inversion embeddings.")
    if loaded:
        print("Embeddings: " + ", ".join(sorted(loaded)))
    if skipped:
        print(f"Skipped {len(skipped)}: " + ", ".join(f"{name} ({reason})" for name, (_, reason) in sorted(skipped.items())))
    demo = build_app(ws)
    demo.queue(default_concurrency_limit=2)
    allowed = parse_allowed_hosts(args.allowed_hosts) or default_allowed_hosts(server_name)
    if args.listen or args.allowed_hosts:
        print("Answering requests addressed to: " + ", ".join(sorted(allowed)) + " (add names with --allowed-hosts)")
    middleware = guard_middleware(allowed, args.port, throttle_logins=auth is not None,
                                  gradio_app=lambda: getattr(demo, "app", None))
    # SIGTERM (kill, systemd, Docker) ends the app like Ctrl-C: the server closes, a running training saves.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    app_kwargs = api_app_kwargs(ws, api_auth) if args.api else no_api_app_kwargs()
    try:
        demo.launch(server_name=server_name, server_port=args.port, auth=auth, css=CSS, footer_links=[],
                    show_error=True, app_kwargs={**app_kwargs, "middleware": middleware})
    except OSError as e:  # the port was taken between the check and now
        print(f"error: cannot serve on {server_name}:{args.port} ({e}).", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return finish_running_job(ws)


def raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def finish_running_job(ws) -> int:
    """After Ctrl-C or SIGTERM: a running job is interrupted and allowed to save before the process ends."""
    job = ws.runner.current
    if job is None or not job.running:
        return 0
    print(f"Stopping: {job.title} is interrupted and saves what it has...", file=sys.stderr)
    ws.runner.interrupt()
    job = ws.runner.wait()
    print(job.message or f"{job.title}: {job.state}.", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
