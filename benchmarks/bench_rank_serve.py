"""``rank serve`` under many annotators saving at once: how many of N simultaneous saves are
answered (200), reset, or fail otherwise, for the server as shipped and for the standard library's
defaults it replaced (``ThreadingHTTPServer``: listen backlog 5, one thread per connection).

N client threads meet at a barrier, then each opens its own connection to 127.0.0.1 and posts one
ranking; this repeats `--rounds` times on a fresh gallery (the hand-made one of the tests: 4 world
prompts, 3 models).

    nice -n 10 python benchmarks/bench_rank_serve.py --clients 40 100 200 --rounds 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.gallery.conftest builds the gallery


def stdlib_server(server):
    """The same app and handler behind the standard library's ThreadingHTTPServer defaults."""
    handler = server.RequestHandlerClass
    host, port = server.server_address[:2]
    server.server_close()

    class Plain(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    plain = Plain((host, port), handler)
    plain.app = server.app
    return plain


def one_round(server, clients: int) -> dict[str, int]:
    port = server.server_address[1]
    barrier = threading.Barrier(clients, timeout=60)
    outcome: list[str] = [""] * clients

    def work(k: int) -> None:
        body = json.dumps(
            {"annotator": f"a{k}", "index": k % 4, "order": ["good", "bad", "bad2"], "ties": []}
        )
        try:
            barrier.wait()
            con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            con.request("POST", "/api/rank", body, {"Content-Type": "application/json"})
            status = con.getresponse().status
            con.close()
            outcome[k] = "ok" if status == 200 else f"http_{status}"
        except ConnectionResetError:
            outcome[k] = "reset"
        except Exception as e:  # noqa: BLE001 - counted by kind
            outcome[k] = type(e).__name__

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts: dict[str, int] = {}
    for o in outcome:
        counts[o] = counts.get(o, 0) + 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[40, 100, 200])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="(no randomness; kept for the command convention)")
    args = ap.parse_args()

    from tests.gallery.conftest import build_gallery

    from compalign.ranking.server import make_server, serve_in_thread

    rows = []
    for kind in ("shipped", "stdlib"):
        for n in args.clients:
            total: dict[str, int] = {}
            for _ in range(args.rounds):
                root = Path(tempfile.mkdtemp()) / "g"
                build_gallery(root)
                server = make_server(root, "127.0.0.1", 0)
                if kind == "stdlib":
                    server = stdlib_server(server)
                serve_in_thread(server)
                try:
                    for k, v in one_round(server, n).items():
                        total[k] = total.get(k, 0) + v
                finally:
                    server.shutdown()
                    server.server_close()
            rows.append({"server": kind, "clients": n, "saves": n * args.rounds, **total})
            print(json.dumps(rows[-1]), flush=True)
    print(f"# {platform.machine()} {platform.python_version()}, {args.rounds} round(s) each")


if __name__ == "__main__":
    main()
