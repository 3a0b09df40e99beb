"""app.py refuses to serve to the network without a password, in one sentence."""
from helpers_cli import ROOT, run_subprocess


def test_listen_without_auth_is_refused(tmp_path):
    result = run_subprocess([ROOT / "app.py", "--listen"], tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --listen serves the app to the network; set --gradio-auth "
                                     "user:password too")


def test_malformed_auth_is_refused(tmp_path):
    result = run_subprocess([ROOT / "app.py", "--gradio-auth", "nopassword"], tmp_path, timeout=60)
    assert result.returncode == 2 and "user:password" in result.stderr and "Traceback" not in result.stderr


def test_api_to_the_network_needs_api_auth(tmp_path):
    result = run_subprocess([ROOT / "app.py", "--listen", "--gradio-auth", "a:b", "--api"], tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --listen with --api serves the API to the network; set --api-auth "
                                     "user:password too")


def test_malformed_api_auth_is_refused(tmp_path):
    result = run_subprocess([ROOT / "app.py", "--api", "--api-auth", "alice"], tmp_path, timeout=60)
    assert result.returncode == 2 and "--api-auth expects user:password" in result.stderr
    assert "Traceback" not in result.stderr
