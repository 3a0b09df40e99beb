"""The A1111 prompt grammar: emphasis, prompt editing / alternation schedules, AND."""
import pytest

from trainer.prompts.parser import parse_prompt_attention, prompt_schedule, prompt_schedules, split_and

# ------------------------------------------------------------------------------------------------ emphasis

ATTENTION_CASES = [
    ("normal text", [["normal text", 1.0]]),
    ("", [["", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("((x))", [["x", 1.2100000000000002]]),
    ("[x]", [["x", 0.9090909090909091]]),
    ("[[x]]", [["x", 0.8264462809917354]]),
    ("(x:1.5)", [["x", 1.5]]),
    ("(x: 1.5 )", [["x", 1.5]]),
    ("(x:0)", [["x", 0.0]]),
    ("(x:-1)", [["x", -1.0]]),
    ("((x:1.5))", [["x", 1.6500000000000001]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("[unbalanced", [["unbalanced", 0.9090909090909091]]),
    ("a (b [c", [["a ", 1.0], ["b ", 1.1], ["c", 1.0]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("\\\\", [["\\", 1.0]]),
    ("a\\b", [["ab", 1.0]]),  # a backslash before anything else disappears
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1],
        ["hill", 0.55], [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
    ("unmatched) and]", [["unmatched) and]", 1.0]]),
    ("a:1.5) b", [["a:1.5) b", 1.0]]),  # an explicit weight with no open bracket is text
    ("a : b", [["a : b", 1.0]]),
    ("()", [["", 1.0]]),
    ("(a:b)", [["a:b", 1.1]]),
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("BREAK", [["", 1.0], ["BREAK", -1], ["", 1.0]]),
    ("aBREAK b", [["aBREAK b", 1.0]]),
    ("a\nBREAK\nb", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    ("(a BREAK b)", [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]]),  # weighted BREAK stays text
]


@pytest.mark.parametrize("text, expected", ATTENTION_CASES)
def test_parse_prompt_attention(text, expected):
    assert parse_prompt_attention(text) == expected


def test_attention_weights_are_not_rounded():
    assert parse_prompt_attention("(((a)))") == [["a", 1.3310000000000004]]


def test_attention_bad_weight_raises_like_the_reference():
    with pytest.raises(ValueError):
        parse_prompt_attention("(a:1.2.3)")


# ------------------------------------------------------------------------------------------------ schedules

def alternating(a, b, steps=10):
    return [[i, a if i % 2 else b] for i in range(1, steps + 1)]


SCHEDULE_CASES = [
    ("test", [[10, "test"]]),
    ("", [[10, ""]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [b:3 ]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("a [b:0.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("a [b:1.5] c", [[10, "a  c"]]),  # a fraction above 1 is capped at the last step
    ("a [b:1.] c", [[10, "a  c"]]),
    ("a [b:20] c", [[10, "a  c"]]),
    ("a [b:0] c", [[10, "a b c"]]),
    ("a [b:-2] c", [[10, "a b c"]]),
    ("a [b:1e1] c", [[10, "a  c"]]),
    ("a [b:0.29] c", [[2, "a  c"], [10, "a b c"]]),  # 0.29 * 10 = 2.9 -> step 2
    ("[from::3]", [[3, "from"], [10, ""]]),
    ("[::3]", [[3, ""], [10, ""]]),
    ("[a:b:c]", [[10, "[a:b:c]"]]),
    ("[a:b:1:2]", [[10, "[a:b:1:2]"]]),
    ("a [{b|d{:.5] c", [[10, "a [{b|d{:.5] c"]]),  # the reference's doctest is stale: '|' fails to parse
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", alternating("a", "(b:1.1)")),
    ("[fe|]male", alternating("female", "male")),
    ("[fe|||]male", [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)]),
    ("[a|b|c]", [[i, "abc"[(i - 1) % 3]] for i in range(1, 11)]),
    ("[a|a]", alternating("a", "a")),  # every step is listed even when the text repeats
    ("a|b", [[10, "a|b"]]),  # '|' outside an alternation: the prompt is used literally
    ("(a|b) [c:2]", [[10, "(a|b) [c:2]"]]),
    ("[a|b:1]", [[10, "[a|b:1]"]]),
    ("a\\", [[10, "a\\"]]),
    ("\\[a:1\\]", [[10, "\\[a:1\\]"]]),
    ("a \\| [b:1]", [[1, "a \\| "], [10, "a \\| b"]]),
    ("[a:1]]", [[1, "]"], [10, "a]"]]),
    ("[[a:1]", [[1, "["], [10, "[a"]]),
    ("[[a:1]:2]", [[1, ""], [2, ""], [10, "a"]]),
    ("[a:[b:1]:2]", [[1, "a"], [2, "a"], [10, "b"]]),
    ("[[a|b]:3]", [[1, ""], [2, ""], [3, ""], [4, "b"], [5, "a"], [6, "b"], [7, "a"], [8, "b"], [9, "a"],
                   [10, "b"]]),
    ("[[a:b:2]|c]", [[1, "a"], [2, "c"], [3, "b"], [4, "c"], [5, "b"], [6, "c"], [7, "b"], [8, "c"],
                     [9, "b"], [10, "c"]]),
    ("(a [b:2])", [[2, "(a )"], [10, "(a b)"]]),
    ("(a:[b:2])", [[2, "(a:)"], [10, "(a:b)"]]),
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
     "[ in background:0.25] [shoddy:masterful:0.5]", None),
]


@pytest.mark.parametrize("prompt, expected", [c for c in SCHEDULE_CASES if c[1] is not None])
def test_prompt_schedule(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


def test_reference_comment_example():
    prompt = SCHEDULE_CASES[-1][0]
    assert prompt_schedule(prompt, 100) == [
        [25, "fantasy landscape with a mountain and an oak in foreground shoddy"],
        [50, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
        [60, "fantasy landscape with a lake and an oak in foreground in background masterful"],
        [75, "fantasy landscape with a lake and an oak in background masterful"],
        [100, "fantasy landscape with a lake and a christmas tree in background masterful"],
    ]


def test_one_step():
    assert prompt_schedule("[a|b] [c:d:0.5]", 1) == [[1, "a d"]]


def test_hires_and_old_scheduling():
    assert prompt_schedule("a [b:.5] c", 10, hires_steps=10) == [[10, "a b c"]]
    assert prompt_schedule("a [b:1.5] c", 10, hires_steps=10) == [[5, "a  c"], [10, "a b c"]]
    assert prompt_schedule("a [b:15] c", 10, hires_steps=10) == [[5, "a  c"], [10, "a b c"]]
    assert prompt_schedule("a [b:1.5] c", 10, use_old_scheduling=True) == [[1, "a  c"], [10, "a b c"]]
    assert prompt_schedule("a [b:0.5] c", 10, use_old_scheduling=True) == [[5, "a  c"], [10, "a b c"]]


def test_prompt_schedules_for_several_prompts():
    assert prompt_schedules(["a", "[b:c:1]", "a"], 2) == [[[2, "a"]], [[1, "b"], [2, "c"]], [[2, "a"]]]


def test_overlong_number_raises_like_the_reference():
    with pytest.raises(OverflowError):
        prompt_schedule("[a:1e999]", 10)


def test_deep_nesting_neither_recurses_too_deep_nor_is_slow():
    prompt = "[" * 2000 + "a" + "]" * 2000 + " [b|c]" + "(" * 3000 + "x" + ")" * 1000
    assert prompt_schedule(prompt, 3)[0] == [1, "[" * 2000 + "a" + "]" * 2000 + " b" + "(" * 3000 + "x" + ")" * 1000]


# ------------------------------------------------------------------------------------------------ AND

@pytest.mark.parametrize("prompt, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("", [("", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),  # trailing spaces go, leading ones stay
    ("a cat :1.5 AND a dog: 0.5", [("a cat", 1.5), (" a dog", 0.5)]),
    ("a cat:-1 AND b:.5", [("a cat", -1.0), (" b", 0.5)]),
    ("a cat:2.", [("a cat", 2.0)]),
    ("(a cat:1.2) AND b", [("(a cat:1.2)", 1.0), (" b", 1.0)]),
    ("a:1 :2", [("a:1", 2.0)]),
    ("a BAND c ANDROID", [("a BAND c ANDROID", 1.0)]),
    ("AND", [("", 1.0), ("", 1.0)]),
    ("x:1\n", [("x", 1.0)]),
])
def test_split_and(prompt, expected):
    assert split_and(prompt) == expected
