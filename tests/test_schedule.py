"""Learning-rate schedule strings behave like the reference webui's."""
import pytest

from common.errors import UserError
from trainer.training.schedule import parse_schedule


def walk(schedule, start, max_steps):
    """The value used at each step until the schedule ends training (or max steps)."""
    values = []
    for step in range(start, max_steps):
        value = schedule.advance(step)
        if value is None:
            break
        values.append(value)
    return values


def test_single_rate_holds_to_max_steps():
    assert walk(parse_schedule("0.005", 10), 0, 10) == [0.005] * 10


def test_pairs_then_bare_rate():
    values = walk(parse_schedule("5e-2:3, 5e-3:5, 5e-6", 8), 0, 8)
    assert values == [0.05] * 3 + [0.005] * 2 + [5e-6] * 3


def test_schedule_that_runs_out_ends_training_before_max_steps():
    values = walk(parse_schedule("0.005:2, 1e-3:4", 100), 0, 100)
    assert values == [0.005, 0.005, 0.001, 0.001]


def test_pairs_at_or_below_resume_step_are_skipped():
    schedule = parse_schedule("0.1:10, 0.01:20, 0.001", 30, start_step=10)
    assert schedule.pieces == [(0.01, 20), (0.001, 30)]
    assert walk(schedule, 10, 30) == [0.01] * 10 + [0.001] * 10


def test_step_beyond_max_is_clamped_and_ends_the_list():
    schedule = parse_schedule("0.1:5, 0.01:50, 0.001", 20)
    assert schedule.pieces == [(0.1, 5), (0.01, 20)]


def test_minus_one_means_max_steps():
    assert parse_schedule("0.1:-1, 0.5", 7).pieces == [(0.1, 7)]


def test_spaces_and_empty_parts_are_tolerated():
    assert parse_schedule(" 0.1 : 3 ,, 0.2 ", 5).pieces == [(0.1, 3), (0.2, 5)]


@pytest.mark.parametrize("text", ["", "abc", "0.1:ten", "0.1:5:6", "nan", "-0.1", "0.1:5,x"])
def test_malformed_strings_are_one_clear_sentence(text):
    with pytest.raises(UserError) as info:
        parse_schedule(text, 100)
    message = str(info.value)
    assert "schedule" in message and "0.005" in message  # says what is wrong and shows the syntax
    assert "\n" not in message


def test_nothing_left_after_resume_is_an_error():
    with pytest.raises(UserError, match="nothing left"):
        parse_schedule("0.1:10", 100, start_step=10)
