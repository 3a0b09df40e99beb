"""Hypernetworks: the reference `.pt` layout both ways, the structures it allows, and how one acts in attention."""
import collections
import pickle
import threading
import zipfile

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from common.errors import UserError
from trainer.hypernetworks.network import (ACTIVATIONS, Hypernetwork, HypernetworkFolder, HypernetworkMLP,
                                  HypernetworkReadError, create_hypernetwork, default_sizes, hypernetwork_from_data,
                                  list_hypernetworks, read_hypernetwork, save_hypernetwork)
from trainer.hypernetworks.attention import (HypernetworkAttnProcessor, apply_hypernetworks, extract_hypernetwork_tags,
                                            resolve_prompt_hypernetworks)
from trainer.sampling.txt2img import Txt2ImgParams, txt2img

METADATA_KEYS = {"step", "name", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization",
                 "sd_checkpoint", "sd_checkpoint_name", "activate_output", "use_dropout", "dropout_structure",
                 "last_layer_dropout", "optional_info"}


def saved_dict(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------ files


def test_create_writes_the_reference_layout(tmp_path):
    path = create_hypernetwork("my hn!", [768, 320], hypernetwork_dir=tmp_path, checkpoint_hash="abc",
                               checkpoint_name="v1-5", seed=0)
    assert path == tmp_path / "my hn.pt"
    assert not zipfile.is_zipfile(path)  # the legacy container the reference's pickle check accepts
    data = saved_dict(path)
    assert set(data) == {768, 320} | METADATA_KEYS
    assert (data["name"], data["step"], data["layer_structure"], data["activation_func"]) == ("my hn", 0, [1, 2, 1],
                                                                                              "linear")
    assert (data["weight_initialization"], data["is_layer_norm"], data["use_dropout"]) == ("Normal", False, False)
    assert (data["dropout_structure"], data["last_layer_dropout"], data["activate_output"]) == ([0, 0, 0], False,
                                                                                               False)
    assert (data["sd_checkpoint"], data["sd_checkpoint_name"], data["optional_info"]) == ("abc", "v1-5", None)
    k_state, v_state = data[768]
    assert list(k_state) == ["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"]
    assert k_state["linear.0.weight"].shape == (1536, 768) and k_state["linear.1.weight"].shape == (768, 1536)
    assert 0.008 < float(k_state["linear.0.weight"].std()) < 0.012  # Normal: N(0, 0.01), biases 0
    assert not k_state["linear.0.bias"].any() and not torch.equal(k_state["linear.0.weight"],
                                                                  v_state["linear.0.weight"])


def test_layer_norm_activation_and_dropout_keep_the_reference_indices(tmp_path):
    path = create_hypernetwork("deep", [64], layer_structure="1, 1.5, 2, 1", activation="relu",
                               weight_init="KaimingNormal", layer_norm=True, use_dropout=True,
                               dropout_structure="0, 0.1, 0.2, 0", hypernetwork_dir=tmp_path, seed=1)
    k_state, _ = saved_dict(path)[64]
    # Linear, ReLU, LayerNorm, Dropout | Linear, ReLU, LayerNorm, Dropout | Linear, LayerNorm
    assert [key for key in k_state if key.endswith("weight")] == [
        "linear.0.weight", "linear.2.weight", "linear.4.weight", "linear.6.weight", "linear.8.weight",
        "linear.9.weight"]
    assert k_state["linear.0.weight"].shape == (96, 64) and k_state["linear.4.weight"].shape == (128, 96)
    assert torch.equal(k_state["linear.2.weight"], torch.ones(96))  # LayerNorm starts as the identity
    data = saved_dict(path)
    assert data["dropout_structure"] == [0, 0.1, 0.2, 0] and data["last_layer_dropout"] and data["use_dropout"]
    loaded = read_hypernetwork(path)
    assert loaded.dropout_structure == [0, 0.1, 0.2, 0] and loaded.activation == "relu" and loaded.layer_norm
    dropouts = [m.p for m in loaded.pair(64)[0].linear if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.1, 0.2]


@pytest.mark.parametrize("options", [
    dict(),
    dict(activation="swish", weight_init="XavierUniform", layer_structure="1, 1.5, 1"),
    dict(activation="prelu", layer_norm=True, weight_init="KaimingUniform"),  # PReLU has a weight of its own
    dict(activation="silu", use_dropout=True, dropout_structure="0, 0.3, 0", weight_init="XavierNormal"),
])
def test_round_trip(tmp_path, options):
    path = create_hypernetwork("rt", [32, 64], hypernetwork_dir=tmp_path, seed=3, **options)
    first = read_hypernetwork(path)
    first.step, first.optional_info = 42, "notes"
    save_hypernetwork(first, tmp_path / "copy.pt")
    second = read_hypernetwork(tmp_path / "copy.pt")
    assert (second.step, second.optional_info, second.name) == (42, "notes", "copy")
    assert second.to_reference_dict().keys() == first.to_reference_dict().keys()
    for (key, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), key
    x = torch.randn(2, 5, 32)
    assert torch.equal(first.pair(32)[1](x), second.pair(32)[1](x))


def test_older_layouts_are_read(tmp_path):
    # The first hypernetworks: linear1/linear2 weights and nothing else (1, 2, 1, no activation).
    state = lambda: {"linear1.weight": torch.randn(16, 8), "linear1.bias": torch.randn(16),  # noqa: E731
                     "linear2.weight": torch.randn(8, 16), "linear2.bias": torch.randn(8)}
    k, v = state(), state()
    torch.save({8: (k, v)}, tmp_path / "old.pt")
    old = read_hypernetwork(tmp_path / "old.pt")
    assert old.sizes == [8] and old.layer_structure == [1, 2, 1] and old.activation == "linear"
    assert torch.equal(old.pair(8)[0].linear[1].weight, k["linear2.weight"])
    # Dropout before dropout structures: use_dropout (+ last_layer_dropout) meant 0.3 after hidden layers.
    for last_layer_dropout, expected in ((False, [0, 0.3, 0, 0]), (True, [0, 0.3, 0.3, 0])):
        mlp = HypernetworkMLP(8, [1, 2, 2, 1], dropout_structure=expected)
        data = {8: (mlp.state_dict(), mlp.state_dict()), "layer_structure": [1, 2, 2, 1], "use_dropout": True,
                "last_layer_dropout": last_layer_dropout}
        assert hypernetwork_from_data(data, "d").dropout_structure == expected
    # activate_output defaults to True for files that do not say (the reference's reading)
    relu_mlp = HypernetworkMLP(8, [1, 2, 1], "relu", activate_output=True)
    data = {8: (relu_mlp.state_dict(), relu_mlp.state_dict()), "activation_func": "relu"}
    assert hypernetwork_from_data(data, "a").activate_output


def test_bad_files_are_refused_with_a_reason(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({768: Evil()}, protocol=2))
    with pytest.raises(HypernetworkReadError, match="refused"):
        read_hypernetwork(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    torch.save({"string_to_param": {"*": torch.zeros(1, 8)}}, tmp_path / "embedding.pt")
    with pytest.raises(HypernetworkReadError, match="no hypernetwork modules"):
        read_hypernetwork(tmp_path / "embedding.pt")
    mlp = HypernetworkMLP(8, [1, 2, 1])
    torch.save({8: (mlp.state_dict(), mlp.state_dict()), "layer_structure": [1, 3, 1]}, tmp_path / "shape.pt")
    with pytest.raises(HypernetworkReadError, match="does not match its layer structure"):
        read_hypernetwork(tmp_path / "shape.pt")
    folder = HypernetworkFolder(tmp_path)
    assert "shape" in folder
    with pytest.raises(UserError, match="cannot be used"):
        folder["shape"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="  "), "enter a name"),
    (dict(layer_structure="2, 1"), "start and end with 1"),
    (dict(layer_structure="1, x, 1"), "not a number"),
    (dict(layer_structure="1, -2, 1"), "positive"),
    (dict(activation="softmax"), "Unknown activation"),
    (dict(weight_init="Zeros"), "Unknown weight initialization"),
    (dict(use_dropout=True, dropout_structure="0, 0.1"), "one per layer-structure entry"),
    (dict(use_dropout=True, dropout_structure="0.1, 0.1, 0"), "start and end with 0"),
    (dict(use_dropout=True, dropout_structure="0, 1.5, 0"), "below 1"),
    (dict(sizes=[]), "at least one module size"),
])
def test_create_refuses_bad_input_with_a_sentence(tmp_path, kwargs, message):
    args = dict(name="x", sizes=[32], hypernetwork_dir=tmp_path)
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        create_hypernetwork(args.pop("name"), args.pop("sizes"), **args)
    assert not list(tmp_path.iterdir())


def test_overwrite_and_listing(tmp_path):
    create_hypernetwork("b", [32], hypernetwork_dir=tmp_path)
    with pytest.raises(UserError, match="already exists"):
        create_hypernetwork("b", [64], hypernetwork_dir=tmp_path)
    create_hypernetwork("b", [64], hypernetwork_dir=tmp_path, overwrite=True)
    assert read_hypernetwork(tmp_path / "b.pt").sizes == [64]
    create_hypernetwork("A", [32], hypernetwork_dir=tmp_path / "sub")
    (tmp_path / "None.pt").write_bytes(b"x")
    assert list(list_hypernetworks(tmp_path)) == ["A", "b"]


def test_activation_menu():
    names = list(ACTIVATIONS)
    assert names[:7] == ["linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid"]
    assert ACTIVATIONS["swish"] is torch.nn.Hardswish and ACTIVATIONS["silu"] is torch.nn.SiLU
    assert not {"hardswish", "softmax", "glu", "threshold", "multiheadattention"} & set(names)
    x = torch.randn(2, 3, 8)
    for name in names:  # every choice builds a module that keeps the width
        assert HypernetworkMLP(8, [1, 2, 1], name, activate_output=True)(x).shape == x.shape, name


def test_dropout_is_active_only_in_training():
    mlp = HypernetworkMLP(16, [1, 2, 1], dropout_structure=[0, 0.5, 0])
    mlp.initialise("XavierNormal")
    x = torch.randn(4, 16)
    mlp.train()
    assert not torch.equal(mlp(x), mlp(x))
    mlp.eval()
    assert torch.equal(mlp(x), mlp(x))


def test_default_sizes_follow_the_model(demo_model):
    assert default_sizes(demo_model) == [64, 128]  # text width, then the attention width of its UNet


# ------------------------------------------------------------------------------------------ attention


def attention(cross_dim=None):
    torch.manual_seed(0)
    return Attention(query_dim=16, cross_attention_dim=cross_dim, heads=2, dim_head=8).eval()


def strong(name, sizes, seed=0):
    return Hypernetwork(name, sizes, weight_init="XavierNormal").initialise(seed)


def reference_attention(attn, x, context_k, context_v):
    """What the reference computes: Q from the hidden states, K and V from their rewritten contexts."""
    def heads(t):
        return t.view(t.shape[0], -1, 2, 8).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(attn.to_q(x)), heads(attn.to_k(context_k)), heads(attn.to_v(context_v)))
    return attn.to_out[0](out.transpose(1, 2).reshape(x.shape[0], -1, 16))


@torch.no_grad()
def test_cross_attention_keys_and_values_use_their_own_mlp():
    attn = attention(cross_dim=8)
    x, text = torch.randn(2, 6, 16), torch.randn(2, 4, 8)
    hn = strong("h", [8, 16])
    k_mlp, v_mlp = hn.pair(8)
    with apply_hypernetworks(attn, [(hn, 0.7)]):
        assert isinstance(attn.processor, HypernetworkAttnProcessor)
        out = attn(x, encoder_hidden_states=text)
    expected = reference_attention(attn, x, text + k_mlp.linear(text) * 0.7, text + v_mlp.linear(text) * 0.7)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, attn(x, encoder_hidden_states=text), atol=1e-4)


@torch.no_grad()
def test_self_attention_context_is_the_hidden_states_and_several_stack():
    attn = attention()
    x = torch.randn(2, 6, 16)
    first, second = strong("a", [16], 1), strong("b", [16], 2)
    with apply_hypernetworks(attn, [(first, 1.0), (second, 0.5)]):
        out = attn(x)
    (k1, v1), (k2, v2) = first.pair(16), second.pair(16)
    context_k = k2(k1(x, 1.0), 0.5)
    context_v = v2(v1(x, 1.0), 0.5)
    assert torch.allclose(out, reference_attention(attn, x, context_k, context_v), atol=1e-6)


@torch.no_grad()
def test_multiplier_zero_is_none_and_processors_are_restored(demo_model):
    unet = demo_model.unet
    before = dict(unet.attn_processors)
    sample, t, text = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 64)
    plain = unet(sample, t, text).sample
    hn = strong("h", [64, 128])
    with apply_hypernetworks(unet, [(hn, 0.0)]):
        assert unet.attn_processors == before  # nothing installed at all
        assert torch.equal(unet(sample, t, text).sample, plain)
    zero = strong("z", [64, 128])
    for p in zero.parameters():
        p.zero_()
    with apply_hypernetworks(unet, [(zero, 1.0)]):  # our attention path itself equals the default one
        assert torch.allclose(unet(sample, t, text).sample, plain, atol=1e-6)
    with apply_hypernetworks(unet, [(hn, 1.0)]):
        assert not torch.allclose(unet(sample, t, text).sample, plain, atol=1e-4)
    assert unet.attn_processors == before


@torch.no_grad()
def test_another_thread_does_not_see_the_hypernetwork():
    attn = attention(cross_dim=8)
    x, text = torch.randn(1, 6, 16), torch.randn(1, 4, 8)
    plain = attn(x, encoder_hidden_states=text)
    inside, release = threading.Event(), threading.Event()

    def hold():
        with apply_hypernetworks(attn, [(strong("h", [8]), 1.0)]):
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert inside.wait(10)
        assert isinstance(attn.processor, HypernetworkAttnProcessor)
        assert torch.equal(attn(x, encoder_hidden_states=text), plain)
    finally:
        release.set()
        worker.join()
    assert not isinstance(attn.processor, HypernetworkAttnProcessor)


# ------------------------------------------------------------------------------------------ prompts


def test_tags_are_parsed_and_removed():
    assert extract_hypernetwork_tags("a <hypernet:x:0.5> cat <hypernet:my net>") == ("a  cat ", [("x", 0.5),
                                                                                              ("my net", 1.0)])
    with pytest.raises(UserError, match="not a number"):
        extract_hypernetwork_tags("<hypernet:x:strong>")
    source = collections.OrderedDict(Anime=strong("Anime", [8]))
    text, stack = resolve_prompt_hypernetworks("<hypernet:anime:0.3>cat", source)
    assert text == "cat" and stack == [(source["Anime"], 0.3)]
    with pytest.raises(UserError, match="'ghost'.*not found.*Anime"):
        resolve_prompt_hypernetworks("<hypernet:ghost>", source)


def test_the_parsed_prompt_view_marks_hypernetworks():
    from trainer.prompts.view import describe_prompt

    [part] = describe_prompt("(a cat:1.2) <hypernet:style:0.5>, photo", 20)
    segments = part["schedule"][0]["segments"]
    assert [s["kind"] for s in segments] == ["text", "text", "hypernetwork", "text"]
    assert (segments[2]["name"], segments[2]["multiplier"]) == ("style", 0.5)


def test_txt2img_applies_tags_and_multiplier_zero_equals_none(demo_model, tmp_path):
    hn = Hypernetwork("style", [64, 128], weight_init="XavierNormal").initialise(0)
    save_hypernetwork(hn, tmp_path / "style.pt")

    def image(prompt):
        params = Txt2ImgParams(prompt, steps=3, seed=7, width=64, height=64)
        return txt2img(demo_model, params, hypernetworks=tmp_path)[0]

    plain = image("a cat")
    zero = image("a cat <hypernet:style:0>")
    full = image("a cat <hypernet:style:1>")
    assert zero.image.tobytes() == plain.image.tobytes()  # the tag is gone from the text, and 0 applies nothing
    assert full.image.tobytes() != plain.image.tobytes()
    assert full.infotext.startswith("a cat <hypernet:style:1>\n")
    with pytest.raises(UserError, match="not found"):
        image("a cat <hypernet:nothing>")
