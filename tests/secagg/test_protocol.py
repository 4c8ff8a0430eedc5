"""SecAgg+ in one process: exact sums under dropouts, uniform-looking masked inputs, and a
server that swaps keys is caught."""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pollinate.secagg.client import SecAggClient
from pollinate.secagg.config import SecAggConfig
from pollinate.secagg.field import (
    dequantize_sum,
    expand_mask,
    levels_for,
    quantize,
)
from pollinate.secagg.graph import neighbour_graph
from pollinate.secagg.messages import (
    AggregateSum,
    KeyAdvert,
    MaskedInput,
    SecAggError,
    UnmaskRequest,
)
from pollinate.secagg.server import SecAggServer

SEED = bytes(range(32))


class Round:
    """Clients and a server wired together in-process; tests drive it step by step."""

    def __init__(self, n: int, config: SecAggConfig | None = None, size: int = 50) -> None:
        self.config = config or SecAggConfig()
        self.ids = list(range(1, n + 1))
        node_keys = {u: ec.generate_private_key(ec.SECP256R1()) for u in self.ids}
        peers = {u: k.public_key() for u, k in node_keys.items()}
        self.clients = {
            u: SecAggClient(u, node_keys[u], peers, self.ids, SEED, self.config) for u in self.ids
        }
        self.server = SecAggServer(self.ids, SEED, self.config)
        rng = np.random.default_rng(n)
        self.values = {u: rng.uniform(-1, 1, size) for u in self.ids}

    def run(
        self,
        drop_after_advert: Collection[int] = (),
        drop_after_share: Collection[int] = (),
        drop_after_masked: Collection[int] = (),
        swap: dict[int, KeyAdvert] | None = None,
    ) -> AggregateSum:
        present = [u for u in self.ids if u not in drop_after_advert]
        adverts = self.server.relay_adverts(self.clients[u].advertise_keys() for u in present)
        for relayed in adverts.values():
            relayed.update({v: a for v, a in (swap or {}).items() if v in relayed})
        shares = [s for u in present for s in self.clients[u].share_keys(adverts[u])]
        inbox = self.server.relay_shares(shares)
        sending = [u for u in present if u not in drop_after_share]
        for u in sending:
            self.server.receive_masked(self.clients[u].masked_input(self.values[u], inbox[u]))
        request = self.server.unmask_request()
        answering = [u for u in sending if u not in drop_after_masked]
        reveals = [self.clients[u].unmask(request) for u in answering]
        return self.server.finish(request, reveals)

    def plain_sum(self, contributors: Collection[int]) -> np.ndarray:
        levels = levels_for(self.config.modulus_bits, len(self.ids))
        quantized = [
            quantize(self.values[u], self.config.clipping_range, levels) for u in contributors
        ]
        return np.sum(quantized, axis=0, dtype=np.uint64)


def dropped(n: int, fraction: float, seed: int) -> set[int]:
    rng = np.random.default_rng(seed)
    return {int(u) for u in rng.choice(np.arange(1, n + 1), round(fraction * n), replace=False)}


@pytest.mark.parametrize("n", [10, 30])
def test_unmasked_sum_equals_the_plain_quantized_sum_exactly(n: int) -> None:
    round_ = Round(n)
    result = round_.run()
    assert result.count == n
    np.testing.assert_array_equal(result.quantized, round_.plain_sum(round_.ids))
    np.testing.assert_allclose(result.values, sum(round_.values.values()), atol=n * 8 / 2**20)


@pytest.mark.parametrize("n", [10, 30])
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_sum_is_exact_when_clients_drop_after_sending_their_masked_input(
    n: int, fraction: float
) -> None:
    round_ = Round(n)
    result = round_.run(drop_after_masked=dropped(n, fraction, seed=n))
    # Their inputs arrived, so they count; their self masks come from their neighbours' shares.
    np.testing.assert_array_equal(result.quantized, round_.plain_sum(round_.ids))


@pytest.mark.parametrize("n", [10, 30])
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_sum_is_exact_when_clients_drop_after_sharing_keys(n: int, fraction: float) -> None:
    round_ = Round(n)
    gone = dropped(n, fraction, seed=n)
    result = round_.run(drop_after_share=gone)
    survivors = [u for u in round_.ids if u not in gone]
    assert result.clients == frozenset(survivors)
    np.testing.assert_array_equal(result.quantized, round_.plain_sum(survivors))


def test_sum_is_exact_when_clients_drop_before_sharing_keys() -> None:
    round_ = Round(10)
    result = round_.run(drop_after_advert={4}, drop_after_share={7})
    survivors = [u for u in round_.ids if u not in {4, 7}]
    np.testing.assert_array_equal(result.quantized, round_.plain_sum(survivors))


def test_too_many_dropouts_abort_the_round_before_anything_is_unmasked() -> None:
    round_ = Round(10)
    with pytest.raises(SecAggError, match="only 6 of 10 clients sent masked inputs"):
        round_.run(drop_after_share={1, 2, 3, 4})


def test_too_many_dropped_neighbours_name_the_client_that_cannot_be_unmasked() -> None:
    config = SecAggConfig(neighbours=4, threshold_fraction=0.75, max_dropout_fraction=0.25)
    round_ = Round(12, config)
    graph = neighbour_graph(round_.ids, 4, SEED)
    victim = 1
    gone = set(graph[victim][:2])  # two of its four neighbours; t = 3
    with pytest.raises(SecAggError, match=rf"client {victim}'s self mask: 2 of its 4 neighbours"):
        round_.run(drop_after_masked=gone)


def chi_square_p_value(residues: np.ndarray, modulus_bits: int, bins: int = 64) -> float:
    """Upper tail of the chi-square statistic of ``residues`` against uniform over ``bins``,
    by the Wilson-Hilferty normal approximation (accurate for this many degrees of freedom)."""
    counts = np.bincount((residues >> np.uint64(modulus_bits - 6)).astype(np.int64), minlength=bins)
    expected = residues.size / bins
    statistic = float(np.sum((counts - expected) ** 2) / expected)
    df = bins - 1
    z = ((statistic / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


class RecordingServer(SecAggServer):
    """Keeps every masked input it sees: the server's view."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[MaskedInput] = []

    def receive_masked(self, masked: MaskedInput) -> None:
        self.seen.append(masked)
        super().receive_masked(masked)


class GreedyServer(SecAggServer):
    """Asks to unmask every survivor both ways, to strip all of its masks."""

    def unmask_request(self) -> UnmaskRequest:
        honest = super().unmask_request()
        return UnmaskRequest(honest.survivors, honest.survivors)


def test_a_masked_input_looks_uniform_to_the_server() -> None:
    config = SecAggConfig()
    round_ = Round(10, config, size=20_000)
    round_.server = server = RecordingServer(round_.ids, SEED, config)
    round_.run()
    masked = server.seen[0].vector
    levels = levels_for(config.modulus_bits, 10)
    plain = quantize(round_.values[server.seen[0].client], config.clipping_range, levels)
    # the masks are fresh random draws: a bound of 1e-6 fails an honest run once in a million
    assert chi_square_p_value(masked, config.modulus_bits) > 1e-6
    assert chi_square_p_value(plain, config.modulus_bits) < 1e-12  # the test can tell


def test_a_server_that_swaps_a_clients_public_key_is_caught() -> None:
    round_ = Round(10)
    attacker = ed25519.Ed25519PrivateKey.generate()
    forged = SecAggClient(3, attacker, {}, round_.ids, SEED, round_.config).advertise_keys()
    with pytest.raises(SecAggError, match="keys relayed for client 3 are not signed by client 3"):
        round_.run(swap={3: forged})


def test_an_advert_replayed_from_another_round_is_caught() -> None:
    round_ = Round(10)
    key = ec.generate_private_key(ec.SECP256R1())
    old = SecAggClient(5, key, {}, round_.ids, os.urandom(32), round_.config).advertise_keys()
    with pytest.raises(SecAggError, match="client 5"):
        round_.run(swap={5: old})


def test_ed25519_node_keys_work_as_well() -> None:
    ids = [1, 2, 3]
    keys = {u: ed25519.Ed25519PrivateKey.generate() for u in ids}
    peers = {u: k.public_key() for u, k in keys.items()}
    config = SecAggConfig(threshold_fraction=1.0, max_dropout_fraction=0.0)
    clients = {u: SecAggClient(u, keys[u], peers, ids, SEED, config) for u in ids}
    server = SecAggServer(ids, SEED, config)
    adverts = server.relay_adverts(c.advertise_keys() for c in clients.values())
    inbox = server.relay_shares(s for u, c in clients.items() for s in c.share_keys(adverts[u]))
    for u, c in clients.items():
        server.receive_masked(c.masked_input(np.full(4, float(u)), inbox[u]))
    request = server.unmask_request()
    result = server.finish(request, [c.unmask(request) for c in clients.values()])
    np.testing.assert_allclose(result.values, np.full(4, 6.0), atol=1e-6)


def test_a_client_never_reveals_both_kinds_of_share_for_one_neighbour() -> None:
    round_ = Round(10)
    round_.server = GreedyServer(round_.ids, SEED, round_.config)
    with pytest.raises(SecAggError, match=r"both survivors and dropped"):
        round_.run()


def test_steps_run_once_and_in_order() -> None:
    round_ = Round(3, SecAggConfig(threshold_fraction=1.0, max_dropout_fraction=0.0))
    client = round_.clients[1]
    client.advertise_keys()
    with pytest.raises(SecAggError, match="asked for step advertise while at step share"):
        client.advertise_keys()


def test_quantization_round_trip_error_is_at_most_half_a_step() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-3, 3, 10_000)
    levels = levels_for(32, 100)
    back = dequantize_sum(quantize(values, 2.0, levels), 2.0, levels, count=1)
    clipped = np.clip(values, -2.0, 2.0)
    assert np.max(np.abs(back - clipped)) <= 2.0 / levels + 1e-12


def test_quantized_sums_never_wrap_the_modulus() -> None:
    levels = levels_for(16, 100)
    top = quantize(np.full(3, 1e9), 1.0, levels)
    assert int(top[0]) * 100 < 2**16


def test_mask_expansion_is_deterministic_and_differs_across_seeds() -> None:
    a = expand_mask(SEED, 1000, 32)
    np.testing.assert_array_equal(a, expand_mask(SEED, 1000, 32))
    assert np.mean(a == expand_mask(bytes(32), 1000, 32)) < 0.01
    assert a.max() < 2**32 and a.dtype == np.uint64


def test_mask_expansion_refuses_short_seeds() -> None:
    with pytest.raises(ValueError, match="a mask seed is 32 bytes, got 4"):
        expand_mask(b"1234", 10, 32)


def test_neighbour_graph_is_symmetric_regular_and_seeded() -> None:
    ids = list(range(100))
    graph = neighbour_graph(ids, 20, SEED)
    assert {len(vs) for vs in graph.values()} == {20}
    assert all(u in graph[v] for u in ids for v in graph[u])
    assert graph == neighbour_graph(ids, 20, SEED)
    assert graph != neighbour_graph(ids, 20, bytes(32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold_fraction": 0.5}, r"threshold_fraction=0.5 must be in \(0.5, 1\]"),
        ({"threshold_fraction": 0.8, "max_dropout_fraction": 0.3}, "threshold_fraction \\+ max"),
        ({"max_dropout_fraction": 0.5}, r"max_dropout_fraction=0.5 must be in \[0, 0.5\)"),
        ({"neighbours": 5}, "k must be even"),
        ({"modulus_bits": 8}, "modulus_bits=8 is outside 16..64"),
        ({"clipping_range": 0.0}, "clipping_range=0.0 must be a positive number"),
    ],
)
def test_impossible_settings_are_refused_with_a_hint(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        SecAggConfig(**kwargs)
    assert "Hint:" in str(error.value)


def test_one_client_is_not_a_secure_aggregation() -> None:
    with pytest.raises(ValueError, match="at least 2 clients"):
        SecAggConfig().neighbour_count(1)


def test_only_the_secagg_modules_import_pycryptodome() -> None:
    src = Path(__file__).resolve().parents[2] / "src" / "pollinate"
    importers = {
        path.relative_to(src).as_posix()
        for path in src.rglob("*.py")
        if any(
            isinstance(node, ast.Import | ast.ImportFrom)
            and any(
                name.split(".")[0] == "Crypto"
                for name in (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
            )
            for node in ast.walk(ast.parse(path.read_text()))
        )
    }
    assert importers == {"secagg/crypto.py"}
