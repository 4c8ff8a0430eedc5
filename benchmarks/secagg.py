"""Time one in-process SecAgg+ round: clients' work, the server's unmasking, the total.

    .venv/bin/python benchmarks/secagg.py                 # 10, 50, 100 clients x 100k params
    .venv/bin/python benchmarks/secagg.py --dropout 0.1   # 10% drop after their masked input

All clients run one after another in this process, so "total" is the sum of every client's
work plus the server's; in a deployment the clients run in parallel and a round costs about
"per client" + "server".
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from pollinate.secagg import SecAggClient, SecAggConfig, SecAggServer


def one_round(n: int, size: int, dropout: float) -> tuple[float, float, float]:
    config = SecAggConfig()
    ids = list(range(1, n + 1))
    keys = {u: ec.generate_private_key(ec.SECP256R1()) for u in ids}
    peers = {u: k.public_key() for u, k in keys.items()}
    seed = bytes(32)
    rng = np.random.default_rng(0)
    values = {u: rng.uniform(-1, 1, size) for u in ids}
    start = time.perf_counter()
    clients = {u: SecAggClient(u, keys[u], peers, ids, seed, config) for u in ids}
    server = SecAggServer(ids, seed, config)
    adverts = server.relay_adverts(c.advertise_keys() for c in clients.values())
    inbox = server.relay_shares(s for u, c in clients.items() for s in c.share_keys(adverts[u]))
    for u, c in clients.items():
        server.receive_masked(c.masked_input(values[u], inbox[u]))
    request = server.unmask_request()
    gone = set(ids[: round(dropout * n)])
    reveals = [c.unmask(request) for u, c in clients.items() if u not in gone]
    unmask_start = time.perf_counter()
    result = server.finish(request, reveals)
    end = time.perf_counter()
    assert np.allclose(result.values, sum(values.values()), atol=n * n * 8 / 2**32 + 1e-9)
    total = end - start
    server_time = end - unmask_start
    return total, (total - server_time) / n, server_time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 50, 100])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'clients':>8} {'params':>8} {'total s':>9} {'per client s':>13} {'server s':>9}")
    for n in args.clients:
        runs = sorted(one_round(n, args.size, args.dropout) for _ in range(args.repeat))
        total, per_client, server = runs[0]
        print(f"{n:>8} {args.size:>8} {total:>9.3f} {per_client:>13.4f} {server:>9.3f}")


if __name__ == "__main__":
    main()
