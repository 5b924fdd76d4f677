"""Replica choice and cool-down (judge_endpoints.EndpointPool), and reading the api base setting."""

import time

import pytest

from open_instruct.judge_endpoints import EndpointPool, _error_message, parse_api_bases


def test_api_bases_are_read_from_commas_spaces_or_a_list():
    assert parse_api_bases("http://a:1/v1") == ["http://a:1/v1"]
    assert parse_api_bases("http://a:1/v1/, http://b:2/v1") == ["http://a:1/v1", "http://b:2/v1"]
    assert parse_api_bases(["http://a:1/v1", "https://b/v1"]) == ["http://a:1/v1", "https://b/v1"]
    assert parse_api_bases(None) == [] and parse_api_bases("") == []
    with pytest.raises(ValueError, match="'a:1/v1' is not an http"):
        parse_api_bases("http://ok/v1,a:1/v1")


def test_the_replica_with_fewest_outstanding_requests_is_picked_and_ties_take_turns():
    pool = EndpointPool(["a", "b", "c"], cooldown=10)
    pool.outstanding = [2, 0, 1]
    assert pool.pick() == 1
    pool.outstanding = [0, 0, 0]
    assert {pool.pick() for _ in range(3)} == {0, 1, 2}  # equal load: each in turn
    assert pool.pick(exclude={0, 1}) == 2


def test_a_replica_at_its_cap_is_not_picked():
    pool = EndpointPool(["a", "b"], cooldown=10, cap=2)
    pool.outstanding = [2, 2]
    assert pool.pick() is None
    pool.outstanding = [2, 1]
    assert pool.pick() == 1


def test_a_failed_replica_leaves_rotation_for_the_cooldown_then_returns():
    pool = EndpointPool(["a", "b"], cooldown=0.2)
    pool.fail(0, "connection refused")
    assert pool.available() == [1] and all(pool.pick() == 1 for _ in range(5))
    assert pool.pick(exclude={1}) is None and pool.pick_any() == 1
    time.sleep(0.25)
    assert pool.available() == [0, 1]


def test_when_every_replica_cools_down_the_first_to_return_is_used():
    pool = EndpointPool(["a", "b"], cooldown=5)
    pool.fail(1, "x")
    time.sleep(0.01)
    pool.fail(0, "x")
    assert pool.pick() is None and pool.pick_any() == 1


def test_a_lone_replica_is_never_taken_out():
    pool = EndpointPool(["a"], cooldown=60)
    pool.fail(0, "timeout")
    assert pool.pick() == 0 and pool.failures == [1]


def test_error_bodies_are_read_in_openai_and_vllm_shapes():
    assert _error_message('{"error": {"message": "model not found"}}') == "model not found"
    assert _error_message('{"object": "error", "message": "too long"}') == "too long"
    assert _error_message("<html>bad gateway</html>") == "<html>bad gateway</html>"
