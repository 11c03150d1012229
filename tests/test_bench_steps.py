"""``make bench``'s step timing: how many interleaved rounds it runs (benchmarks/__main__.py)."""
from benchmarks.__main__ import MAX_ROUNDS, MIN_ROUNDS, ROUND_BUDGET_S, more_rounds


def test_given_rounds_are_run_exactly_whatever_the_time():
    assert [more_rounds(done, 1e9, rounds=4) for done in range(6)] == [True] * 4 + [False] * 2
    assert more_rounds(0, 0.0, rounds=1) and not more_rounds(1, 0.0, rounds=1)


def test_a_cheap_model_gets_rounds_until_the_budget_is_spent_and_no_more_than_the_cap():
    per_round = ROUND_BUDGET_S / 10   # ten rounds fit the budget
    done = 0
    while more_rounds(done, done * per_round):
        done += 1
    assert done == 10
    done = 0
    while more_rounds(done, 0.0):   # rounds that cost nothing stop at the cap
        done += 1
    assert done == MAX_ROUNDS


def test_an_expensive_model_still_gets_the_minimum_of_rounds():
    done = 0
    while more_rounds(done, done * ROUND_BUDGET_S):   # one round alone spends the budget
        done += 1
    assert done == MIN_ROUNDS
