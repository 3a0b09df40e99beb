"""The HTTP API (`python app.py --api`), driven by the real `webuiapi` client and by raw HTTP: the reference's
routes and shapes, one job at a time shared with the page (409 for a second), truthful `info`, progress polled
from another connection while training runs, Interrupt, 4xx JSON errors that write nothing, and HTTP basic auth.

One real app process serves the whole module (demo model, a small dataset of real photos, 64 px)."""
import base64
import io
import json
import threading
import time

import pytest
import requests
import webuiapi
from PIL import Image

from helpers_api import files_under, non_loopback_address, running_app
from helpers_cli import workdir
from helpers_images import make_dataset
from helpers_models import save_diffusers_folder, tiny_components
from trainer.embeddings.library import read_embedding_file

USER, PASSWORD = "alice", "s3cret"
API = "/sdapi/v1"
SMALL = {"training_width": 64, "training_height": 64, "preview_steps": 2, "preview_width": 64,
         "preview_height": 64, "preview_from_txt2img": True, "template_filename": "subject_filewords.txt"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = workdir(tmp_path_factory.mktemp("api"))
    make_dataset(folder / "data", size=(64, 64))
    (folder / "notes").mkdir()
    (folder / "notes" / "readme.txt").write_text("no pictures here\n")
    save_diffusers_folder(tiny_components("sd2", seed=3), folder / "models" / "Stable-diffusion" / "tiny-sd2")
    with running_app(folder, "--api", "--api-auth", f"{USER}:{PASSWORD}") as url:
        created = requests.post(url + API + "/create/embedding", auth=(USER, PASSWORD), timeout=300,
                                json={"name": "toy", "num_vectors_per_token": 2, "init_text": "toy"})
        assert created.json() == {"info": f"create embedding filename: {folder / 'embeddings' / 'toy.pt'}"}
        yield url, folder


@pytest.fixture(scope="module")
def api(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, username=USER, password=PASSWORD, sampler="Euler a",
                             steps=4)


def http(server, method, route, **kwargs):
    url, _ = server
    kwargs.setdefault("auth", (USER, PASSWORD))
    return requests.request(method, url + API + route, timeout=300, **kwargs)


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


# --- lists, options, txt2img ----------------------------------------------------------------------------------
def test_models_samplers_options_and_lists(api):
    models = api.get_sd_models()
    titles = [m["title"] for m in models]
    demo = next(m for m in models if m["model_name"] == "demo")
    assert demo["title"] == f"demo [{demo['hash']}]" and len(demo["hash"]) == 10
    assert "tiny-sd2" in titles
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert api.util_get_current_model() == demo["title"]

    names = api.util_get_sampler_names()
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM"} <= set(names)
    karras = next(s for s in api.get_samplers() if s["name"] == "DPM++ 2M Karras")
    assert karras["options"] == {"scheduler": "karras"} and karras["aliases"] == []

    options = api.get_options()
    assert options["sd_model_checkpoint"] == demo["title"] and options["save_optimizer_state"] is True
    assert api.get_hypernetworks() == []
    embeddings = api.get_embeddings()
    assert embeddings["skipped"] == {} and list(embeddings["loaded"]) == ["toy"]
    assert embeddings["loaded"]["toy"] == {"step": 0, "sd_checkpoint": demo["hash"], "sd_checkpoint_name": "demo",
                                           "shape": embeddings["loaded"]["toy"]["shape"], "vectors": 2}


def test_embedding_in_prompt_is_honoured(api, server):
    """An embedding seeded from the word "dog" draws exactly what "dog" draws: the vectors reach the model."""
    _, folder = server
    created = api.custom_post("sdapi/v1/create/embedding",
                              {"name": "dogvec", "num_vectors_per_token": 1, "init_text": "dog"})
    assert created.info == f"create embedding filename: {folder / 'embeddings' / 'dogvec.pt'}"
    assert (folder / "embeddings" / "dogvec.pt").is_file()
    loaded = api.get_embeddings()["loaded"]
    assert loaded["dogvec"]["vectors"] == 1 and loaded["dogvec"]["step"] == 0

    common = dict(seed=1234, width=64, height=64, steps=3, cfg_scale=7.0)
    with_embedding = api.txt2img(prompt="a photo of dogvec", **common)
    with_word = api.txt2img(prompt="a photo of dog", **common)
    with_other = api.txt2img(prompt="a photo of cat", **common)
    assert with_embedding.image.size == (64, 64)
    assert with_embedding.image.tobytes() == with_word.image.tobytes()
    assert with_embedding.image.tobytes() != with_other.image.tobytes()

    info = with_embedding.info  # webuiapi parsed the JSON string
    assert info["prompt"] == "a photo of dogvec" and info["seed"] == 1234 and info["all_seeds"] == [1234]
    assert info["sampler_name"] == "Euler a" and info["steps"] == 3 and info["cfg_scale"] == 7.0
    assert (info["width"], info["height"]) == (64, 64)
    assert info["infotexts"][0].startswith("a photo of dogvec\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 1234")
    assert with_embedding.image.info["parameters"] == info["infotexts"][0]  # the PNG carries its infotext
    assert with_embedding.parameters["prompt"] == "a photo of dogvec"


def test_txt2img_grammar_batches_and_hypernetworks(api, server):
    common = dict(seed=7, width=64, height=64, steps=3)
    batch = api.txt2img(prompt="a red circle", n_iter=2, **common)
    assert len(batch.images) == 2 and batch.info["all_seeds"] == [7, 8]
    # prompt editing at step 0 of 3 ("[a:b:0]" is "b" from the start) draws what "b" draws
    edited = api.txt2img(prompt="a [blue:red:0] circle", **common)
    assert edited.image.tobytes() == batch.images[0].tobytes()

    created = api.custom_post("sdapi/v1/create/hypernetwork", {"name": "hn", "layer_structure": "1, 2, 1",
                                                               "weight_init": "XavierNormal"})
    assert created.info.startswith("create hypernetwork filename: ") and created.info.endswith("hn.pt")
    assert [h["name"] for h in api.get_hypernetworks()] == ["hn"]
    with_hn = api.txt2img(prompt="a red circle <hypernet:hn:1>", **common)
    assert with_hn.image.tobytes() != batch.images[0].tobytes()

    response = http(server, "POST", "/txt2img", json={"prompt": "x <hypernet:missing:1>", "width": 64,
                                                      "height": 64, "steps": 2})
    assert response.status_code == 400 and "missing" in response.json()["detail"]


def test_switching_checkpoint_through_options(api, server):
    api.set_options({"sd_model_checkpoint": "tiny-sd2"})
    assert api.util_get_current_model().startswith("tiny-sd2 [")
    # embeddings made for the demo model's text width are listed as skipped, with the reason
    embeddings = api.get_embeddings()
    assert "dogvec" in embeddings["skipped"] and "width" in embeddings["skipped"]["dogvec"]["reason"]
    image = api.txt2img(prompt="a photo", seed=1, width=64, height=64, steps=2).image
    assert image.size == (64, 64)
    api.util_set_model("demo")  # webuiapi picks the closest title and posts it to /options
    assert api.util_get_current_model().startswith("demo [")
    assert "dogvec" in api.get_embeddings()["loaded"]


# --- training, progress, interrupt, one job at a time ---------------------------------------------------------
def test_train_while_another_connection_polls_progress(api, server):
    url, folder = server
    seen, refusals, stop = [], [], threading.Event()
    poller = webuiapi.WebUIApi(baseurl=url + API, username=USER, password=PASSWORD)

    def poll():
        while not stop.is_set():
            seen.append(poller.get_progress())
            if seen[-1]["state"]["job"] == "train-embedding" and not refusals:
                started = time.time()
                # bodies that would be refused anyway once idle (so a late request cannot start anything)
                body = {"embedding_name": "toy", "data_root": "data", "steps": 1, "name": "toy",
                        "process_src": "no-such-folder", "process_dst": "pp"}
                for route in ("/train/embedding", "/preprocess", "/create/embedding"):
                    response = http(server, "POST", route, json=body)
                    refusals.append((route, response.status_code, response.json(), time.time() - started))
            time.sleep(0.1)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        result = api.custom_post("sdapi/v1/train/embedding", {
            "embedding_name": "toy", "data_root": "data", "log_directory": "logs", "steps": 16,
            "create_image_every": 4, "save_embedding_every": 8, "learn_rate": "0.005", **SMALL})
    finally:
        stop.set()
        thread.join()

    path = folder / "embeddings" / "toy.pt"
    assert result.info.startswith(f"train embedding complete: filename: {path} error: None. "
                                  f"Training finished at 16 steps. Embedding saved to {path}. Best validation loss ")
    assert read_embedding_file(path).step == 16

    training = [p for p in seen if p["state"]["job"] == "train-embedding"]
    assert training, "no progress was seen while training"
    assert all(p["state"]["job_count"] == 16 for p in training)
    steps = [p["state"]["job_no"] for p in training]
    assert steps == sorted(steps) and steps[-1] > 0
    stepped = [p for p in training if "Loss: " in (p["textinfo"] or "")]
    assert stepped
    text = stepped[-1]["textinfo"]
    loss = float(text.split("Loss: ")[1].split("<br/>")[0])
    assert loss > 0 and f"Step: {stepped[-1]['state']['job_no']}<br/>" in text and "Last prompt: " in text
    assert all(0 < p["progress"] <= 1 and p["eta_relative"] >= 0 for p in training)
    previews = [p["current_image"] for p in training if p["current_image"]]
    assert previews and decode_png(previews[-1]).size == (64, 64)

    # every second job was refused at once, while training went on
    assert [(route, status) for route, status, _, _ in refusals] == [
        ("/train/embedding", 409), ("/preprocess", 409), ("/create/embedding", 409)]
    assert all(body["error"] == "Conflict" and "another job is running" in body["detail"] and elapsed < 5
               for _, _, body, elapsed in refusals)

    # idle again: nothing counted, the closing words kept (what util_wait_for_ready waits for)
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    assert idle["textinfo"].startswith("Training finished at 16 steps.")


def test_interrupt_saves_and_says_so(api, server):
    _, folder = server
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=api.custom_post("sdapi/v1/train/embedding", {
        "embedding_name": "toy", "data_root": "data", "log_directory": "logs", "steps": 100000,
        "create_image_every": 0, "save_embedding_every": 0, **SMALL})))
    thread.start()
    deadline = time.time() + 120
    while api.get_progress()["state"]["job_no"] < 18 and time.time() < deadline:  # resumed from step 16
        time.sleep(0.1)
    progress = api.get_progress()
    assert progress["state"]["job"] == "train-embedding" and progress["state"]["job_count"] == 100000
    assert api.interrupt() == {}
    thread.join(timeout=120)
    info = outcome["result"].info
    step = read_embedding_file(folder / "embeddings" / "toy.pt").step
    assert step > 16
    path = folder / "embeddings" / "toy.pt"
    assert info.startswith(f"train embedding interrupted: filename: {path} error: None. "
                           f"Training interrupted at {step} steps. Embedding saved to {path}.")
    after = api.get_progress()
    assert after["state"]["interrupted"] is True and after["state"]["job_count"] == 0
    # asking for fewer steps than it already has is refused before anything starts
    response = http(server, "POST", "/train/embedding", json={"embedding_name": "toy", "data_root": "data",
                                                              "steps": 10})
    assert response.status_code == 400 and f"already has {step} steps" in response.json()["detail"]


def test_train_hypernetwork_and_preprocess(api, server):
    _, folder = server
    result = api.custom_post("sdapi/v1/train/hypernetwork", {
        "hypernetwork_name": "hn", "data_root": "data", "log_directory": "logs", "steps": 3,
        "create_image_every": 0, "save_hypernetwork_every": 0, "learn_rate": "0.0001", **SMALL})
    assert result.info.startswith("train hypernetwork complete: filename: ")
    assert "Training finished at 3 steps." in result.info

    done = api.custom_post("sdapi/v1/preprocess", {"process_src": "data", "process_dst": "pp",
                                                   "process_width": 64, "process_height": 64, "process_flip": True})
    assert done.info.startswith("preprocess complete: ")
    assert len(list((folder / "pp").glob("*.png"))) == 8  # four photos and their mirrored copies


def test_refresh_routes_and_calls_from_other_sites(api, server):
    _, folder = server
    assert api.refresh_checkpoints() is None  # the reference answers null
    assert http(server, "POST", "/refresh-embeddings").json() is None
    # a page of another site cannot make a visitor's browser start work here
    before = files_under(folder)
    response = http(server, "POST", "/create/embedding", json={"name": "from-elsewhere"},
                    headers={"Origin": "http://evil.example"})
    assert response.status_code == 403  # (from the API, or from the server-wide guard when it runs first)
    assert files_under(folder) == before


def test_a_failed_run_says_why(api, server):
    """A learning rate far too high breaks the run: the answer says it failed and why (the reference said
    "error: None")."""
    _, folder = server
    api.custom_post("sdapi/v1/create/embedding", {"name": "wild", "init_text": "cat"})
    result = api.custom_post("sdapi/v1/train/embedding", {
        "embedding_name": "wild", "data_root": "data", "log_directory": "logs", "steps": 50,
        "create_image_every": 0, "save_embedding_every": 0, "learn_rate": "1e38", **SMALL})
    # (the optimizer overflows at once, or the loss turns NaN: either way the run stops and says so)
    assert result.info.startswith(f"train embedding failed: filename: {folder / 'embeddings' / 'wild.pt'} error: Training ")
    assert "Training failed at step 1: " in result.info or "NaN or infinite" in result.info
    assert "error: None" not in result.info
    assert read_embedding_file(folder / "embeddings" / "wild.pt").step == 0  # the created file is untouched


# --- refusals: 4xx JSON, nothing written ----------------------------------------------------------------------
BAD_REQUESTS = [
    ("/train/embedding", {"embedding_name": "nope", "data_root": "data"}, 404, "'nope' was not found"),
    ("/train/embedding", {"embedding_name": "toy", "data_root": "data", "learn_rate": "0.1:abc"}, 400,
     "learning rate schedule"),
    ("/train/embedding", {"embedding_name": "toy", "data_root": "no-such-folder"}, 400, "no-such-folder"),
    ("/train/embedding", {"embedding_name": "../toy", "data_root": "data"}, 400, "not a path"),
    ("/train/embedding", {"embedding_name": "toy", "data_root": "data", "template_filename": "../../app.py"}, 400,
     "not a path"),
    ("/train/embedding", {"embedding_name": "toy", "data_root": "data", "steps": "many"}, 422, "'steps'"),
    ("/train/embedding", {"data_root": "data"}, 422, "'embedding_name' is required"),
    ("/train/embedding", {"embedding_name": "toy", "data_root": "notes"}, 400, "has no images to train on"),
    ("/train/hypernetwork", {"hypernetwork_name": "absent", "data_root": "data"}, 404, "'absent' was not found"),
    ("/create/embedding", {"name": "../../escape"}, 400, "not a path"),
    ("/create/embedding", {"name": "toy"}, 400, "already exists"),
    ("/create/hypernetwork", {"name": "hn2", "layer_structure": "2, 1"}, 400, "start and end with 1"),
    ("/preprocess", {"process_src": "no-such-folder", "process_dst": "out"}, 400, "does not exist"),
    ("/txt2img", {"prompt": "x", "sampler_name": "Nope"}, 400, "Unknown sampler"),
    ("/txt2img", {"prompt": "x", "width": 65}, 400, "multiple of 8"),
    ("/options", {"sd_model_checkpoint": "missing.safetensors"}, 404, "missing.safetensors"),
    ("/options", {"dataset_filename_word_regex": "(unclosed"}, 400, "regular expression"),
    ("/options", [1, 2], 422, "JSON object"),
]


@pytest.mark.parametrize("route,body,status,phrase", BAD_REQUESTS)
def test_bad_requests_get_a_sentence_and_change_nothing(server, route, body, status, phrase):
    _, folder = server
    before = files_under(folder)
    response = http(server, "POST", route, json=body)
    assert response.status_code == status, response.text
    data = response.json()
    assert set(data) == {"error", "detail"} and phrase in data["detail"], data
    assert "Traceback" not in response.text
    assert files_under(folder) == before


def test_malformed_json_and_extra_fields(server):
    response = http(server, "POST", "/train/embedding", data='{"embedding_name": "toy", ',
                    headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "Bad Request", "detail": response.json()["detail"]}
    assert response.json()["detail"].startswith("The request body is not valid JSON")
    # fields the app does not know are ignored, as the reference does
    response = http(server, "POST", "/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                                      "enable_hr": True, "alwayson_scripts": {"x": {}}, "eta": 1})
    assert response.status_code == 200 and len(response.json()["images"]) == 1


# --- auth and exposure ----------------------------------------------------------------------------------------
def test_basic_auth_guards_routes_and_docs(server):
    url, _ = server
    for route in (API + "/progress", API + "/sd-models", "/docs", "/openapi.json"):
        response = requests.get(url + route, timeout=30)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Basic"
        assert response.json()["error"] == "Unauthorized"
        assert requests.get(url + route, auth=(USER, "wrong"), timeout=30).status_code == 401
    schema = requests.get(url + "/openapi.json", auth=(USER, PASSWORD), timeout=30).json()
    assert API + "/train/embedding" in schema["paths"] and all(p.startswith(API) for p in schema["paths"])
    docs = requests.get(url + "/docs", auth=(USER, PASSWORD), timeout=30)
    assert docs.status_code == 200 and "/sdapi/v1/train/embedding" in docs.text and "embedding_name" in docs.text
    assert "cdn" not in docs.text.lower()
    assert requests.get(url + "/", timeout=30).status_code == 200  # the page itself has no --gradio-auth here


def test_api_binds_loopback_only(server):
    url, _ = server
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    with pytest.raises(requests.ConnectionError):
        requests.get(url.replace("127.0.0.1", address) + API + "/progress", timeout=5)


def test_without_api_flag_the_routes_do_not_exist(demo_model, tmp_path):
    """The very launch arguments app.py uses without --api: no /sdapi, no /docs, no /openapi.json."""
    from trainer.workspace import Folders, Workspace
    from webui.api import no_api_app_kwargs
    from webui.app import build_app

    ws = Workspace(Folders(tmp_path / "ckpt", tmp_path / "embeddings", tmp_path / "hn", tmp_path / "templates",
                           tmp_path / "outputs"), "cpu", model=demo_model)
    demo = build_app(ws)
    demo.launch(prevent_thread_lock=True, quiet=True, app_kwargs=no_api_app_kwargs())
    try:
        for route in (API + "/progress", API + "/sd-models", "/docs", "/openapi.json"):
            assert requests.get(demo.local_url.rstrip("/") + route, timeout=30).status_code == 404
        assert requests.post(demo.local_url.rstrip("/") + API + "/train/embedding", json={},
                             timeout=30).status_code in (404, 405)
        assert requests.get(demo.local_url, timeout=30).status_code == 200
    finally:
        demo.close()


def test_info_is_a_json_string(server):
    response = http(server, "POST", "/txt2img", json={"prompt": "a circle", "seed": 5, "width": 64, "height": 64,
                                                      "steps": 2, "sampler_name": "DPM++ 2M", "scheduler": "Karras"})
    body = response.json()
    assert set(body) == {"images", "parameters", "info"}
    info = json.loads(body["info"])
    assert info["sampler_name"] == "DPM++ 2M Karras" and info["seed"] == 5
    assert decode_png(body["images"][0]).info["parameters"] == info["infotexts"][0]
