"""Prompt -> conditioning: emphasis, 75-token chunks, BREAK, comma backtrack, embeddings, clip skip."""
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from trainer.prompts.conditioning import PromptEncoder
from common.errors import UserError

TOKENIZER_DIR = "trainer/assets/clip_tokenizer"
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, model_max_length=77)


@pytest.fixture(scope="module")
def text_encoder():
    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                            max_position_embeddings=77, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
                            hidden_act="quick_gelu")
    model = CLIPTextModel(config).eval()
    with torch.no_grad():  # like a trained CLIP, whose outputs have a clearly non-zero mean
        model.final_layer_norm.bias.normal_(0.0, 0.5)
    model.requires_grad_(False)
    return model


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def plain_encoding(tokenizer, text_encoder, token_ids):
    """What the text encoder gives for one chunk: BOS, tokens, EOS, padded with EOS to 77."""
    row = [BOS] + token_ids + [EOS] * (76 - len(token_ids))
    with torch.no_grad():
        return text_encoder(input_ids=torch.tensor([row])).last_hidden_state[0]


def fed_ids(encoder, prompts):
    """The token ids the encoder feeds the text encoder (one row per chunk), captured with a pre-hook."""
    seen = []
    layer = encoder.text_encoder.get_input_embeddings()
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            encoder(prompts)
    finally:
        handle.remove()
    return seen[0].tolist()


# ------------------------------------------------------------------------------------------------ plain text

def test_plain_prompt_equals_the_text_encoder(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    with torch.no_grad():
        z = encoder(["a photo of a cat"])
    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert z.shape == (1, 77, 32)
    assert torch.equal(z[0], text_encoder(input_ids=ids).last_hidden_state[0])


def test_weight_one_equals_plain(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    with torch.no_grad():
        assert torch.equal(encoder(["a (cat:1.0) on a mat"]), encoder(["a cat on a mat"]))
        assert torch.equal(encoder(["a ((cat):0.90909090909)"]), encoder(["a cat"]))


def test_emphasis_scales_tokens_and_keeps_the_mean(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    with torch.no_grad():
        plain = encoder(["a cat on a mat"])[0]
        weighted = encoder(["a (cat:1.5) on [a mat]"])[0]
    multipliers = torch.ones(77, 1)
    multipliers[2] = 1.5  # BOS, a, cat
    multipliers[4:6] = 1 / 1.1  # on, a, mat -> a, mat
    expected = plain * multipliers
    expected = expected * (plain.mean() / expected.mean())
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert torch.isclose(weighted.mean(), plain.mean(), atol=1e-6)


def test_emphasis_stays_finite_when_the_mean_is_zero(tokenizer):
    torch.manual_seed(1)
    untrained = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                             num_hidden_layers=2, max_position_embeddings=77,
                                             hidden_act="quick_gelu")).eval()
    with torch.no_grad():
        plain = PromptEncoder(tokenizer, untrained)(["a cat"])[0]
        weighted = PromptEncoder(tokenizer, untrained)(["a (cat:1.5)"])[0]
    assert torch.isfinite(weighted).all()
    assert torch.allclose(weighted[2], plain[2] * 1.5, atol=1e-6)


def test_empty_prompt_is_one_chunk(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    assert fed_ids(encoder, [""]) == [[BOS] + [EOS] * 76]


# ------------------------------------------------------------------------------------------------ chunks

def test_long_prompt_is_split_into_chunks_of_75(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    cat = ids_of(tokenizer, "cat")[0]
    rows = fed_ids(encoder, ["cat " * 80])
    assert rows == [[BOS] + [cat] * 75 + [EOS], [BOS] + [cat] * 5 + [EOS] * 71]
    with torch.no_grad():
        z = encoder(["cat " * 80])[0]
    assert z.shape == (154, 32)
    assert torch.equal(z[:77], plain_encoding(tokenizer, text_encoder, [cat] * 75))
    assert torch.equal(z[77:], plain_encoding(tokenizer, text_encoder, [cat] * 5))


def test_break_ends_a_chunk(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    with torch.no_grad():
        z = encoder(["a cat BREAK a dog"])[0]
        assert torch.equal(z[:77], encoder(["a cat"])[0])
        assert torch.equal(z[77:], encoder(["a dog"])[0])
    assert z.shape == (154, 32)


def test_comma_backtrack_moves_the_tail_to_the_next_chunk(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    cat, dog, comma = ids_of(tokenizer, "cat")[0], ids_of(tokenizer, "dog")[0], ids_of(tokenizer, ",")[0]
    rows = fed_ids(encoder, ["cat " * 70 + ", " + "dog " * 10])
    assert rows[0] == [BOS] + [cat] * 70 + [comma] + [EOS] * 5
    assert rows[1] == [BOS] + [dog] * 10 + [EOS] * 66


def test_comma_too_far_back_does_not_move_anything(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    cat, dog, comma = ids_of(tokenizer, "cat")[0], ids_of(tokenizer, "dog")[0], ids_of(tokenizer, ",")[0]
    rows = fed_ids(encoder, ["cat " * 50 + ", " + "dog " * 30])
    assert rows[0] == [BOS] + [cat] * 50 + [comma] + [dog] * 24 + [EOS]
    assert rows[1] == [BOS] + [dog] * 6 + [EOS] * 70


def test_prompts_are_padded_to_the_same_chunk_count(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    with torch.no_grad():
        z = encoder(["a cat", "cat " * 80, "x BREAK y BREAK z"])
        empty = encoder([""])[0]
        single = encoder(["a cat"])[0]
    assert z.shape == (3, 231, 32)
    assert torch.equal(z[0, :77], single)
    assert torch.equal(z[0, 77:154], empty) and torch.equal(z[0, 154:], empty)
    assert torch.equal(z[1, 154:], empty)


def test_batching_does_not_change_a_prompts_encoding(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder)
    with torch.no_grad():
        together = encoder(["a (red:1.4) ball", "[blue] sky"])
        alone = encoder(["a (red:1.4) ball"])
    assert torch.allclose(together[0], alone[0], atol=1e-6)


def test_sd2_style_padding_uses_the_pad_token(text_encoder):
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, model_max_length=77, pad_token="!")
    assert tokenizer.pad_token_id == 0
    encoder = PromptEncoder(tokenizer, text_encoder)
    a, cat = ids_of(tokenizer, "a")[0], ids_of(tokenizer, "cat")[0]
    assert fed_ids(encoder, ["a", "cat " * 80]) == [
        [BOS, a, EOS] + [0] * 74,
        [BOS, EOS] + [0] * 75,  # the empty chunk that pads the first prompt to two chunks
        [BOS] + [cat] * 75 + [EOS],
        [BOS] + [cat] * 5 + [EOS] + [0] * 70,
    ]


# ------------------------------------------------------------------------------------------------ tokens

@pytest.mark.parametrize("prompt, expected", [
    ("", (0, 75)),
    ("a photo of a cat", (5, 75)),
    ("cat " * 75, (75, 75)),
    ("cat " * 76, (76, 150)),
    ("a BREAK b", (76, 150)),
    ("a [cat:a big fat cat:5]", (5, 75)),  # the longest text of the schedule
    ("a cat AND a big fat cat", (4, 75)),
    ("<hypernet:anime:1.0> a cat", (2, 75)),
    ("a [cat:1e999]", (8, 75)),  # the schedule cannot be computed: the text as written
    ("(a cat:.)", (5, 75)),  # half-typed weight: counted without emphasis
])
def test_count_tokens(tokenizer, text_encoder, prompt, expected):
    assert PromptEncoder(tokenizer, text_encoder).count_tokens(prompt) == expected


# ------------------------------------------------------------------------------------------------ embeddings

def test_embedding_vectors_are_spliced_at_their_positions(tokenizer, text_encoder):
    words = ids_of(tokenizer, "red ball")
    vectors = text_encoder.get_input_embeddings().weight[words].clone()  # the embedding *is* "red ball"
    encoder = PromptEncoder(tokenizer, text_encoder, {"mystyle": vectors})
    with torch.no_grad():
        assert torch.equal(encoder(["a photo of mystyle, (mystyle:1.2)"]),
                           encoder(["a photo of red ball, (red ball:1.2)"]))
        assert not torch.equal(encoder(["a photo of mystyle"]), encoder(["a photo of mystyle2"]))
    assert fed_ids(encoder, ["a mystyle"])[0][:5] == [BOS, ids_of(tokenizer, "a")[0], 0, 0, EOS]
    assert encoder.count_tokens("a photo of mystyle") == (5, 75)


def test_embedding_names_match_case_insensitively(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder, {"MyStyle": torch.randn(1, 32)})
    a, and_ = ids_of(tokenizer, "a")[0], ids_of(tokenizer, "and")[0]
    assert fed_ids(encoder, ["a MYSTYLE and mystyle"])[0][:6] == [BOS, a, 0, and_, 0, EOS]


def test_the_hook_is_removed_after_each_call(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder, {"mystyle": torch.randn(2, 32)})
    layer = text_encoder.get_input_embeddings()
    with torch.no_grad():
        encoder(["mystyle"])
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_gradients_reach_the_embedding(tokenizer, text_encoder):
    vectors = torch.nn.Parameter(torch.randn(3, 32))
    encoder = PromptEncoder(tokenizer, text_encoder, {"mystyle": vectors})
    z = encoder(["a photo of (mystyle:1.3), art by someone", "mystyle " + "x " * 80])
    (z ** 2).mean().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0
    assert text_encoder.get_input_embeddings().weight.grad is None


def test_no_gradient_when_the_embedding_is_not_in_the_prompt(tokenizer, text_encoder):
    vectors = torch.nn.Parameter(torch.randn(3, 32))
    encoder = PromptEncoder(tokenizer, text_encoder, {"mystyle": vectors})
    z = encoder(["a photo of a cat"])
    assert not z.requires_grad


def test_longest_name_wins(tokenizer, text_encoder):
    for order in (["cat", "cat-toy"], ["cat-toy", "cat"]):
        tensors = {"cat": torch.randn(1, 32), "cat-toy": torch.randn(2, 32)}
        encoder = PromptEncoder(tokenizer, text_encoder, {name: tensors[name] for name in order})
        a, comma, toy = ids_of(tokenizer, "a")[0], ids_of(tokenizer, ",")[0], ids_of(tokenizer, "toy")[0]
        assert fed_ids(encoder, ["a cat-toy"])[0][:5] == [BOS, a, 0, 0, EOS]  # cat-toy: 2 vectors
        assert fed_ids(encoder, ["a cat, a toy"])[0][:7] == [BOS, a, 0, comma, a, toy, EOS]  # cat: 1 vector
        assert fed_ids(encoder, ["cat cat-toy"])[0][:5] == [BOS, 0, 0, 0, EOS]
        assert fed_ids(encoder, ["cat-toy"])[0][:4] == [BOS, 0, 0, EOS]


def test_embedding_is_never_split_between_chunks(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder, {"mystyle": torch.randn(3, 32)})
    cat = ids_of(tokenizer, "cat")[0]
    rows = fed_ids(encoder, ["cat " * 74 + "mystyle"])
    assert rows == [[BOS] + [cat] * 74 + [EOS] * 2, [BOS, 0, 0, 0] + [EOS] * 73]


def test_comma_backtrack_carries_the_embedding_along(tokenizer, text_encoder):
    words = ids_of(tokenizer, "red ball")
    vectors = text_encoder.get_input_embeddings().weight[words].clone()
    encoder = PromptEncoder(tokenizer, text_encoder, {"mystyle": vectors})
    tail = " mystyle" + " dog" * 10
    with torch.no_grad():
        assert torch.equal(encoder(["cat " * 70 + "," + tail]), encoder(["cat " * 70 + ", red ball" + " dog" * 10]))


def test_a_weight_that_is_not_a_number_is_a_user_error(tokenizer, text_encoder):
    with pytest.raises(UserError):
        PromptEncoder(tokenizer, text_encoder)(["(a cat:1.2.3)"])


def test_too_many_vectors_is_a_user_error(tokenizer, text_encoder):
    encoder = PromptEncoder(tokenizer, text_encoder, {"huge": torch.randn(76, 32)})
    with pytest.raises(UserError):
        encoder(["huge"])


# ------------------------------------------------------------------------------------------------ clip skip

def test_clip_skip_takes_an_earlier_layer_through_the_final_norm(tokenizer, text_encoder):
    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(input_ids=ids, output_hidden_states=True).hidden_states
        expected = text_encoder.final_layer_norm(hidden[-2])
        z = PromptEncoder(tokenizer, text_encoder, clip_skip=2)(["a photo of a cat"])
        deepest = PromptEncoder(tokenizer, text_encoder, clip_skip=12)(["a photo of a cat"])
    assert torch.equal(z, expected)
    assert torch.equal(deepest, text_encoder.final_layer_norm(hidden[0]))  # clamped to the first state


def test_two_threads_encoding_at_once_do_not_see_each_others_embeddings(tokenizer, text_encoder):
    """A training job and a txt2img request share the text encoder; a splice hook only acts on its own thread."""
    import threading

    with_embedding = PromptEncoder(tokenizer, text_encoder, {"zzemb": torch.randn(3, 32) * 5})
    without = PromptEncoder(tokenizer, text_encoder)
    prompts = ["a photo of zzemb on a hill"]
    expected = {"with": with_embedding(prompts), "without": without(prompts)}
    mismatches = []

    def run(key, encoder):
        for _ in range(40):
            if not torch.equal(encoder(prompts), expected[key]):
                mismatches.append(key)

    threads = [threading.Thread(target=run, args=("with", with_embedding)),
               threading.Thread(target=run, args=("without", without))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not torch.equal(expected["with"], expected["without"]) and mismatches == []
