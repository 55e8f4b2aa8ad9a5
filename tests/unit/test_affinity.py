"""Rendezvous hashing: stable when unrelated backends come and go, spread by weight, and the
same in every process (no per-process hash seed)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_gateway.backends.affinity import rendezvous_order

names = st.lists(
    st.text(alphabet="abcdefghij:/.0123456789", min_size=1, max_size=24),
    min_size=2,
    max_size=8,
    unique=True,
)
weights = st.floats(min_value=0.1, max_value=10)


def winner(key: str, nodes: list[tuple[str, float]]) -> str:
    return nodes[rendezvous_order(key, nodes)[0]][0]


@given(key=st.text(max_size=40), urls=names, data=st.data())
def test_removing_a_backend_that_did_not_win_keeps_the_winner(
    key: str, urls: list[str], data: st.DataObject
) -> None:
    nodes = [(url, data.draw(weights)) for url in urls]
    best = winner(key, nodes)
    others = [node for node in nodes if node[0] != best]
    removed = data.draw(st.sampled_from(others))
    assert winner(key, [node for node in nodes if node != removed]) == best


@given(key=st.text(max_size=40), urls=names, new=st.text(min_size=1, max_size=10), data=st.data())
def test_adding_a_backend_moves_a_conversation_only_to_the_new_one(
    key: str, urls: list[str], new: str, data: st.DataObject
) -> None:
    nodes = [(url, data.draw(weights)) for url in urls if url != new]
    if not nodes:
        return
    best = winner(key, nodes)
    assert winner(key, [*nodes, (new, data.draw(weights))]) in (best, new)


@given(key=st.text(max_size=40), urls=names)
def test_the_order_does_not_depend_on_the_order_backends_are_listed(
    key: str, urls: list[str]
) -> None:
    nodes = [(url, 1.0) for url in urls]
    forward = [nodes[i][0] for i in rendezvous_order(key, nodes)]
    backward = [nodes[::-1][i][0] for i in rendezvous_order(key, nodes[::-1])]
    assert forward == backward


@settings(max_examples=5, deadline=None)
@given(split=st.sampled_from([(1.0, 1.0, 2.0), (1.0, 3.0), (1.0, 1.0, 1.0, 1.0)]))
def test_conversations_spread_by_weight(split: tuple[float, ...]) -> None:
    nodes = [(f"http://10.0.0.{n}:8000", weight) for n, weight in enumerate(split)]
    wins = Counter(winner(f"session-{n}", nodes) for n in range(4000))
    total = sum(split)
    for url, weight in nodes:
        share = wins[url] / 4000
        assert abs(share - weight / total) < 0.04, (url, share, weight / total)


def test_the_same_in_every_process() -> None:
    # Fixed figures: a process-seeded hash (Python's hash()) would change them between runs,
    # and N gateways behind one load balancer would each send a conversation elsewhere.
    nodes = [("http://a:8081", 1.0), ("http://b:8081", 1.0), ("http://c:8081", 1.0)]
    orders = [rendezvous_order(f"user:{n}", nodes) for n in range(6)]
    assert orders == EXPECTED_ORDERS


EXPECTED_ORDERS = [[2, 1, 0], [0, 2, 1], [1, 2, 0], [1, 2, 0], [2, 1, 0], [1, 2, 0]]
