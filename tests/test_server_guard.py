"""The real app (app.py, started once) under forged Host and Origin headers, before and after logging in, and
against password guessing; app.py's refusals to start; SIGTERM ending it cleanly."""
import http.client
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers_cli import ROOT, run_cli, run_subprocess, workdir
from helpers_corpus import one_sentence
from trainer.embeddings.library import read_embedding_file
from trainer.training.config import TrainConfig
from trainer.workspace import Folders, Workspace

SECRETS = ("secretemb", "secrethn", "secret_template", "secretckpt")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """app.py with a password on 127.0.0.1:<port>, its folders holding names a visitor must not see."""
    work = workdir(tmp_path_factory.mktemp("served"))
    assert run_cli(["create-embedding", "--name", "secretemb"], work)[0] == 0
    assert run_cli(["create-hypernetwork", "--name", "secrethn"], work)[0] == 0
    templates = work / "templates"
    templates.mkdir()
    (templates / "secret_template.txt").write_text("a photo of [name]\n")
    (work / "models" / "Stable-diffusion").mkdir(parents=True)
    (work / "models" / "Stable-diffusion" / "secretckpt.safetensors").write_bytes(b"x")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--listen", "127.0.0.1",
                                "--gradio-auth", "user:right-password", "--textual-inversion-templates-dir",
                                "templates"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py ended: {process.stdout.read()}")
        try:
            if request(port, "GET", "/")[0] == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("app.py did not start")
    yield port
    process.send_signal(signal.SIGTERM)  # like systemd or Docker stopping it
    try:
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def request(port, method, path, headers=None, body=None):
    """(status, body, response headers) of one HTTP request to 127.0.0.1:port with the headers given (Host
    included: http.client then sends ours instead of its own)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = dict(headers or {})
    connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
    for key, value in headers.items():
        connection.putheader(key, value)
    data = body.encode() if isinstance(body, str) else body
    if data is not None:
        connection.putheader("Content-Length", str(len(data)))
    connection.endheaders(data)
    response = connection.getresponse()
    result = response.status, response.read(), response.headers
    connection.close()
    return result


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
FOREIGN_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                 "localhost.evil.example", "attacker.test:80", "0.0.0.0:{port}", "[::2]:{port}"]
CALLS = [("GET", "/", None), ("GET", "/config", None), ("GET", "/gradio_api/info", None),
         ("POST", "/login", "username=user&password=right-password"),
         ("POST", "/gradio_api/queue/join", "{}"), ("POST", "/gradio_api/upload", "x")]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_requests_under_a_foreign_host_name_are_refused(server, host):
    for method, path, body in CALLS:
        status, text, _ = request(server, method, path, {"Host": host.format(port=server), **FORM}, body)
        assert status == 400 and b"host name" in text, (host, method, path, status)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}",
                                  "127.0.0.1"])
def test_the_served_names_are_let_in(server, host):
    assert request(server, "GET", "/", {"Host": host.format(port=server)})[0] == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://localhost",
                                    "http://localhost.evil.example:{port}", "file://", "not a url"])
def test_state_changing_calls_from_other_origins_are_refused(server, origin):
    host = {"Host": f"127.0.0.1:{server}", "Origin": origin.format(port=server), **FORM}
    for method, path, body in CALLS:
        if method == "POST":
            status, _, _ = request(server, method, path, host, body)
            assert status == 403, (origin, path, status)
    assert request(server, "GET", "/", host)[0] == 200  # reading the page is no state change


def test_own_origin_and_scripts_without_origin_reach_the_app(server):
    for origin in ({"Origin": f"http://127.0.0.1:{server}"}, {"Origin": f"http://localhost:{server}"}, {}):
        status, text, _ = request(server, "POST", "/login", {"Host": f"127.0.0.1:{server}", **FORM, **origin},
                                  "username=user&password=wrong")
        assert status == 400 and b"Incorrect credentials" in text  # Gradio's own answer: the guard let it by
        request(server, "POST", "/login", {"Host": f"127.0.0.1:{server}", **FORM},
                "username=user&password=right-password")  # clears the failure count again
    status, _, _ = request(server, "POST", "/login", {"Host": "localhost", "Origin": "https://localhost", **FORM},
                           "username=user&password=right-password")  # behind a reverse proxy on port 443
    assert status == 200


def test_the_login_page_carries_no_names_until_logged_in(server):
    host = {"Host": f"127.0.0.1:{server}"}
    for path in ("/", "/?view=api", "/gradio_api/info", "/config", "/gradio_api/openapi.json"):
        status, text, _ = request(server, "GET", path, host)
        assert not any(name.encode() in text for name in SECRETS), (path, status)
        assert status in (200, 401), path
    status, text, headers = request(server, "POST", "/login", {**host, **FORM}, "username=user&password=right-password")
    assert status == 200
    cookies = "; ".join(value.split(";")[0] for key, value in headers.items() if key.lower() == "set-cookie")
    status, text, _ = request(server, "GET", "/", {**host, "Cookie": cookies})
    assert status == 200 and b"secretemb" in text and b"secrethn" in text  # the same page, once logged in


def test_repeated_wrong_passwords_are_slowed_down(server):
    host = {"Host": f"127.0.0.1:{server}", **FORM}
    times = []
    for _ in range(5):
        started = time.perf_counter()
        status, _, _ = request(server, "POST", "/login", host, "username=user&password=guess")
        times.append(time.perf_counter() - started)
        assert status == 400
    assert times[0] < 0.5 and times[4] >= 0.9  # 0, 0, 0.25, 0.5, 1 s: doubling after the second failure
    started = time.perf_counter()
    assert request(server, "POST", "/login", host, "username=user&password=right-password")[0] == 200
    assert time.perf_counter() - started >= 1.8  # the right password waits its turn too
    started = time.perf_counter()
    assert request(server, "POST", "/login", host, "username=user&password=guess")[0] == 400
    assert time.perf_counter() - started < 0.5  # a success cleared the count


# --- app.py refusing to start -----------------------------------------------------------------------------------

def test_app_start_problems_are_one_sentence_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_subprocess([ROOT / "app.py", "--port", port], tmp_path, timeout=60)
        assert result.returncode == 2 and f"port {port}" in one_sentence(result.stderr)
    (tmp_path / "embeddings-file").write_text("x")
    for args, expected in ((["--port", 70000], "--port must be a number from 1 to 65535"),
                           (["--port", "abc"], "argument --port"),
                           (["--embeddings-dir", "embeddings-file"], "is a file, not a folder"),
                           (["--bogus"], "unrecognized arguments")):
        result = run_subprocess([ROOT / "app.py", "--port", free_port(), *args], tmp_path, timeout=60)
        assert result.returncode == 2 and expected in one_sentence(result.stderr), (args, result.stderr)


def test_stopping_the_app_lets_a_running_training_save(work, demo_model):
    sys.path.insert(0, str(ROOT))
    import app

    assert run_cli(["create-embedding", "--name", "cat"], work)[0] == 0
    ws = Workspace(Folders(embeddings_dir=work / "embeddings", templates_dir=work / "textual_inversion_templates"),
                   "cpu", model=demo_model)
    job = ws.start_training(TrainConfig(name="cat", dataset=str(work / "data"), width=64, height=64, steps=100000,
                                        save_every=0, preview_every=0, log_dir=str(work / "logs"), seed=1))
    deadline = time.time() + 120
    while not job.losses and job.running and time.time() < deadline:
        time.sleep(0.05)
    assert app.finish_running_job(ws) == 130
    assert job.state == "interrupted" and read_embedding_file(work / "embeddings" / "cat.pt").step == job.result.step > 0
